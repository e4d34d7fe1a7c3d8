"""MMAR-Rubrics: how good the reasoning is, graded by an LLM judge (the Interspeech 2026 Audio Reasoning Challenge
metric, MMAR's `code/evaluation_rubrics.py`).

The protocol, rebuilt from the challenge's description:
- An item whose `answer_prediction` is wrong by MMAR's string rule (`runner.string_match`) scores 0 and costs no
  call; so does an item without a prediction or flagged with an error (as our accuracy counts it).
- Otherwise a judge (default `gpt-4o-2024-11-20`, temperature 0, seed 42) reads the question, the correct answer, the
  reference reasoning and the item's rubric (a list of criteria `{name, scoring_point, note, choices}`), then the
  model's `thinking_prediction` followed by "The answer is <answer_prediction>.", and replies with a JSON list of
  `{"name", "score"}`, one per criterion, each score one of that criterion's `choices`.
- One grade = the sum of the scores / the sum of the criteria's maxima (0 to 1).
- Five graders judge each item; the item's score is the mean of the middle three of the five sorted grades.
- The Rubrics score is the mean item score in % (the leaderboard's "Rubrics", e.g. 23.77 for the paper's team).

Choices of ours where the protocol is silent: a reply that is not such a list (unparseable, a criterion missing,
a score outside its choices) is asked again up to `reply_attempts` times, then recorded as an error; an error is
counted and never becomes a grade. An item's score uses the graders that gave a grade (middle three of five;
with fewer, the extremes are dropped as long as three remain); an item no grader could grade is left out of the
mean and counted (`n_unjudged`). Intervals are bootstrap 95 % percentile intervals over items.

Judge calls go through the `openai` client (`pip install tinygiant[judge]`) to any OpenAI-compatible endpoint
(OpenAI, vLLM, Ollama, ...; key from `OPENAI_API_KEY`). The client retries 429s, 5xx and timeouts with exponential
backoff (honouring `Retry-After`); concurrency and requests per second are bounded here. Every reply is appended to
`rubrics_judgements.jsonl` as it arrives, so a killed run, run again, judges only what is not in the file yet. A
judge still unreachable after the client's retries stops the run with a clear error; what was judged is kept.
"""

import json
import re
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from client_tinygiant import ServerError, openai_client, server_errors
from tinygiant.eval.mmar_format import LAYERS, MODALITIES, SUB_CATEGORIES
from tinygiant.eval.runner import string_match
from tinygiant.eval.stats import bootstrap_interval
from tinygiant.files import JsonlAppender, RateLimiter, read_jsonl_log

JUDGE_MODEL = "gpt-4o-2024-11-20"
JUDGE_TEMPERATURE = 0.0
JUDGE_SEED = 42
NUM_GRADERS = 5
BOOTSTRAP_SAMPLES = 2000  # resamples of the items for each interval (seed 0)
JUDGEMENTS_FILE = "rubrics_judgements.jsonl"
# Leaderboard Rubrics score of the paper's team (the Interspeech 2026 Audio Reasoning Challenge board).
PAPER_RUBRICS = 23.77
# Rough size of a reply (a name and a score per criterion) and of a token, for the cost estimate.
REPLY_TOKENS_PER_CRITERION = 20
CHARS_PER_TOKEN = 4

JUDGE_INSTRUCTIONS = (
    "You grade the reasoning of an audio question-answering model. You cannot hear the audio. You get the question, "
    "its correct answer, a reference explanation written by someone who heard the audio, a list of grading criteria "
    "and the model's reasoning followed by its final answer. The model's answer is already known to be correct; "
    "judge only whether its reasoning meets each criterion, using the reference explanation as evidence of what the "
    "audio contains. Reward a criterion only when the reasoning actually satisfies it; do not reward guesses, "
    "claims that contradict the reference, or reasoning that reaches the right answer for the wrong reasons.\n"
    "Reply with a JSON list and nothing else: one object per criterion, in the order given, "
    '{"name": <the criterion\'s name, exactly as given>, "score": <one of the criterion\'s allowed scores>}. '
    'You may add a short "reason" string to each object.'
)


class JudgeReplyError(ValueError):
    """A judge reply that is not a valid list of criterion scores."""


def check_rubric(item: dict) -> list[dict]:
    """The item's rubric criteria, checked: a non-empty list of dicts with a `name`, a `scoring_point` and numeric
    `choices` (unique names). Raises `ValueError` naming the item and the field."""
    name = item.get("id")
    rubric = item.get("rubric")
    if rubric is None:
        raise ValueError(f"item {name}: no 'rubric' field; MMAR-Rubrics needs the MMAR-meta.jsonl from GitHub "
                         "(ddlBoJack/MMAR, Feb 2026 or later), not the Hub's old MMAR-meta.json")
    if not isinstance(rubric, list) or not rubric:
        raise ValueError(f"item {name}: 'rubric' must be a non-empty list of criteria, got {rubric!r}")
    seen = set()
    for index, criterion in enumerate(rubric):
        where = f"item {name}: rubric criterion #{index}"
        if not isinstance(criterion, dict):
            raise ValueError(f"{where} is not an object: {criterion!r}")
        if not isinstance(criterion.get("name"), str) or not criterion["name"].strip():
            raise ValueError(f"{where} has no 'name'")
        if criterion["name"] in seen:
            raise ValueError(f"{where}: repeated name {criterion['name']!r}")
        seen.add(criterion["name"])
        if not isinstance(criterion.get("scoring_point"), str):
            raise ValueError(f"{where} ({criterion['name']!r}) has no 'scoring_point' text")
        choices = criterion.get("choices")
        if (not isinstance(choices, list) or not choices
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices)
                or max(choices) <= 0):
            raise ValueError(f"{where} ({criterion['name']!r}): 'choices' must be a list of numbers with a positive "
                             f"maximum, got {choices!r}")
    return rubric


def judge_messages(item: dict, prediction: dict) -> list[dict]:
    """The chat messages that ask the judge to grade `prediction` (a submission record) against `item`'s rubric."""
    criteria = []
    for number, criterion in enumerate(item["rubric"], 1):
        text = f"{number}. name: {criterion['name']}\n   what earns the score: {criterion['scoring_point']}"
        if criterion.get("note"):
            text += f"\n   note: {criterion['note']}"
        text += f"\n   allowed scores: {', '.join(str(c) for c in criterion['choices'])}"
        criteria.append(text)
    choices = "\n".join(f"- {c}" for c in item["choices"])
    reasoning = (prediction.get("thinking_prediction") or "").strip() or "(no reasoning given)"
    user = (
        f"Question: {item['question']}\nOptions:\n{choices}\nCorrect answer: {item['answer']}\n\n"
        f"Reference explanation:\n{(item.get('thinking') or '').strip() or '(none)'}\n\n"
        f"Criteria:\n" + "\n".join(criteria) + "\n\n"
        f"Model's reasoning and answer:\n{reasoning}\nThe answer is {prediction['answer_prediction']}."
    )
    return [{"role": "system", "content": JUDGE_INSTRUCTIONS}, {"role": "user", "content": user}]


def parse_grade(reply: str, rubric: list[dict]) -> tuple[float, dict[str, float]]:
    """The grade in [0, 1] that a judge `reply` gives, and its per-criterion scores.

    The reply must hold a JSON list (optionally inside a ``` fence, or after some text or a `<think>` block) with one
    `{"name", "score"}` per criterion of `rubric`, each score one of that criterion's `choices`. Raises
    `JudgeReplyError` otherwise.
    """
    # Reasoning judges (Qwen3, DeepSeek-R1 behind vLLM or Ollama) may think aloud first, brackets included.
    text = re.sub(r"<think>.*?</think>", "", reply or "", flags=re.DOTALL).strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end < start:
        raise JudgeReplyError(f"no JSON list in the reply: {reply[:200]!r}")
    try:
        entries = json.loads(text[start : end + 1])
    except json.JSONDecodeError as error:
        raise JudgeReplyError(f"the reply's list is not valid JSON ({error}): {reply[:200]!r}") from None
    if not all(isinstance(e, dict) and "name" in e and "score" in e for e in entries):
        raise JudgeReplyError(f"every entry needs 'name' and 'score': {reply[:200]!r}")
    by_name = {str(e["name"]).strip(): e["score"] for e in entries}
    scores = {}
    for criterion in rubric:
        name = criterion["name"]
        if name not in by_name:
            raise JudgeReplyError(f"no score for criterion {name!r}")
        value = by_name[name]
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise JudgeReplyError(f"criterion {name!r}: score {value!r} is not a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not any(
            abs(value - c) < 1e-9 for c in criterion["choices"]
        ):
            raise JudgeReplyError(f"criterion {name!r}: score {value!r} is not one of {criterion['choices']}")
        scores[name] = value
    unknown = sorted(set(by_name) - set(scores))
    if unknown:
        raise JudgeReplyError(f"scores for criteria the rubric does not have: {unknown}")
    grade = sum(scores.values()) / sum(max(c["choices"]) for c in rubric)
    return grade, scores


def middle_mean(grades: Iterable[float]) -> float | None:
    """Mean of the grades without the lowest and the highest (for five: the middle three), as long as three remain;
    the plain mean of one or two; None for none."""
    grades = sorted(grades)
    if len(grades) >= 3:
        grades = grades[1:-1]
    return sum(grades) / len(grades) if grades else None


def estimate_tokens(calls: Sequence[tuple[list[dict], list[dict]]]) -> tuple[int, int]:
    """Rough prompt and reply token counts for a list of `(messages, rubric)` judge calls (about 4 characters per
    token; a real tokenizer differs by some 10-20 %)."""
    prompt = sum(sum(len(m["content"]) for m in messages) for messages, _ in calls) // CHARS_PER_TOKEN
    reply = sum(REPLY_TOKENS_PER_CRITERION * len(rubric) for _, rubric in calls)
    return prompt, reply


# ---------------------------------------------------------------------------------------------------
# The judgement log (append-only, resumable)
# ---------------------------------------------------------------------------------------------------


def read_judgements(path: str | Path) -> dict[tuple[str, int], dict]:
    """`{(id, grader): record}` from the judgement log; a last line cut short by a crash is dropped from the file."""
    return {(record["id"], record["grader"]): record for record in read_jsonl_log(path, keys=("id", "grader"))}


# ---------------------------------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------------------------------


class Judge:
    """An LLM judge behind an OpenAI-compatible chat endpoint.

    Args:
        base_url: the endpoint (`None`: OpenAI's, or `OPENAI_BASE_URL`); e.g. `http://localhost:8000/v1` for vLLM,
            `http://localhost:11434/v1` for Ollama.
        model: the judge model (default the official `gpt-4o-2024-11-20`).
        api_key: default `OPENAI_API_KEY`; a local server that needs none gets a placeholder.
        timeout: seconds per request; max_retries: the client's retries (429, 5xx, timeouts, with backoff).
        reply_attempts: calls per grader while the reply is invalid, before an error is recorded.
        qps: requests started per second at most.
    """

    def __init__(self, base_url: str | None = None, model: str = JUDGE_MODEL, api_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 6, reply_attempts: int = 3,
                 qps: float | None = None) -> None:
        try:  # OpenAI's own API needs a key; a local server does not
            self.client = openai_client(base_url, api_key, "OPENAI_API_KEY", timeout, max_retries,
                                        key_required=base_url is None)
        except ValueError as error:
            raise ValueError(f"{error}, or pass --judge-base-url for another OpenAI-compatible endpoint (vLLM, "
                             "Ollama, ...)") from error
        self.model, self.reply_attempts = model, reply_attempts
        self.limiter = RateLimiter(qps)

    def grade(self, messages: list[dict], rubric: list[dict]) -> dict:
        """One grader's judgement: `{"grade", "scores", "reply"}`, or `{"error", "reply"}` after `reply_attempts`
        invalid replies. Raises `RuntimeError` if the endpoint fails after the client's retries."""
        problem, reply = None, None
        for _ in range(self.reply_attempts):
            self.limiter.wait()
            try:
                with server_errors(self.client):
                    response = self.client.chat.completions.create(
                        model=self.model, messages=messages, temperature=JUDGE_TEMPERATURE, seed=JUDGE_SEED
                    )
            except ServerError as error:  # after the client's retries
                raise RuntimeError(f"the judge at {self.client.base_url} failed after retries: {error}") from error
            reply = response.choices[0].message.content if response.choices else None
            try:
                grade, scores = parse_grade(reply or "", rubric)
            except JudgeReplyError as error:
                problem = str(error)
                continue
            return {"grade": grade, "scores": scores, "reply": reply}
        return {"error": f"invalid reply after {self.reply_attempts} attempts: {problem}", "reply": reply}


# ---------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------


def plan(meta: Sequence[dict], predictions: dict) -> tuple[dict[str, float], list[tuple[dict, dict]]]:
    """Split the items: `{id: 0.0}` for those that score 0 without a call, and `[(item, record)]` to be judged."""
    zero, to_judge = {}, []
    for item in meta:
        record = predictions.get(item["id"])
        answer = None if record is None or "error" in record else record.get("answer_prediction")
        if isinstance(answer, str) and string_match(item["answer"], answer, item["choices"]):
            check_rubric(item)
            to_judge.append((item, record))
        else:
            zero[item["id"]] = 0.0
    return zero, to_judge


def judge_items(to_judge: Sequence[tuple[dict, dict]], judge: Judge, judgements_path: str | Path, concurrency: int = 4,
                graders: int = NUM_GRADERS, progress: bool = True) -> dict[tuple[str, int], dict]:
    """Run the graders not yet in `judgements_path` on `to_judge` (from `plan`), appending each reply as it arrives;
    returns every judgement `{(id, grader): record}`."""
    from tqdm.auto import tqdm

    done = read_judgements(judgements_path)
    calls = [(item, record, k) for item, record in to_judge for k in range(graders) if (item["id"], k) not in done]
    if not calls:
        return done
    log = JsonlAppender(judgements_path)
    stop = threading.Event()  # set when a call fails: queued calls then return without calling

    def run(call: tuple[dict, dict, int]) -> dict | None:
        if stop.is_set():
            return None
        item, record, grader = call
        outcome = judge.grade(judge_messages(item, record), item["rubric"])
        entry = {"id": item["id"], "grader": grader, **outcome}
        log.append(entry)
        return entry

    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool, tqdm(
            total=len(calls), desc="judge", unit="call", disable=not progress
        ) as bar:
            futures = [pool.submit(run, call) for call in calls]
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in finished:
                    if future.exception() is not None:
                        stop.set()
                        for other in pending:
                            other.cancel()
                        raise future.exception()
                    entry = future.result()
                    done[(entry["id"], entry["grader"])] = entry
                    bar.update(1)
    finally:
        log.close()
    return done


def _cell(values: Sequence[float]) -> dict:
    values = [100 * v for v in values]
    return {"score": float(np.mean(values)) if values else None, "n": len(values),
            "ci95": bootstrap_interval(values, BOOTSTRAP_SAMPLES)}


def rubric_scores(meta: Sequence[dict], zero: dict[str, float], judgements: dict[tuple[str, int], dict],
                  graders: int = NUM_GRADERS) -> dict:
    """The Rubrics scores (in %) overall, by modality, layer and sub-category, with bootstrap 95 % intervals.

    `zero` and `judgements` come from `plan` and `judge_items`. Each cell is `{score, n, ci95}`; `n` counts the
    items that have a score (judged, or 0 for a wrong answer). Also: `items` (each item's score or None),
    `n_judged`, `n_unjudged` (no valid grade), `n_judge_errors` (grader calls recorded as errors).
    """
    grades, errors = {}, 0
    for (name, grader), record in judgements.items():
        if grader >= graders:
            continue
        if "error" in record:
            errors += 1
        else:
            grades.setdefault(name, []).append(record["grade"])
    items = {}
    for item in meta:
        name = item["id"]
        items[name] = zero[name] if name in zero else middle_mean(grades.get(name, []))
    groups = {
        "by_modality": ("modality", MODALITIES),
        "by_layer": ("category", list(LAYERS)),
        "by_sub_category": ("sub-category", SUB_CATEGORIES),
    }
    scored = [item for item in meta if items[item["id"]] is not None]
    result = {"overall": _cell([items[item["id"]] for item in scored])}
    for group, (key, names) in groups.items():
        result[group] = {g: _cell([items[item["id"]] for item in scored if item[key] == g]) for g in names}
    judged = [name for name in items if name not in zero]
    result.update({
        "n_judged": sum(items[name] is not None for name in judged),
        "n_unjudged": sum(items[name] is None for name in judged),
        "n_judge_errors": errors,
        "graders": graders,
        "items": items,
    })
    return result


def evaluate_rubrics(meta: Sequence[dict], predictions: dict, output_dir: str | Path, judge: Judge | None = None,
                     concurrency: int = 4, dry_run: bool = False, progress: bool = True,
                     **judge_kwargs: Any) -> dict | None:
    """Score `predictions` (`{id: record}`) with MMAR-Rubrics; judgements go to `output_dir/rubrics_judgements.jsonl`.

    Prints the number of items and calls and a token estimate first. `dry_run=True` stops there and returns None
    (no call is made). Otherwise returns `rubric_scores(...)` plus the judge's model and endpoint.
    `judge_kwargs` build the `Judge` when `judge` is not given.
    """
    judgements_path = Path(output_dir) / JUDGEMENTS_FILE
    zero, to_judge = plan(meta, predictions)
    done = read_judgements(judgements_path)
    pending = [(judge_messages(item, record), item["rubric"]) for item, record in to_judge
               for k in range(NUM_GRADERS) if (item["id"], k) not in done]
    prompt_tokens, reply_tokens = estimate_tokens(pending)
    print(f"MMAR-Rubrics: {len(meta)} items, {len(zero)} score 0 without a call (wrong or no answer), "
          f"{len(to_judge)} to judge by {NUM_GRADERS} graders: {len(pending)} calls still to make "
          f"(about {prompt_tokens:,} prompt + {reply_tokens:,} reply tokens)", flush=True)
    if dry_run:
        return None
    if pending and judge is None:
        judge = Judge(**judge_kwargs)
    judgements = judge_items(to_judge, judge, judgements_path, concurrency, progress=progress) if pending else done
    result = rubric_scores(meta, zero, judgements)
    result["judge"] = ({"model": judge.model, "base_url": str(judge.client.base_url)} if judge is not None else
                       {"model": judge_kwargs.get("model", JUDGE_MODEL),
                        "base_url": judge_kwargs.get("base_url") or "OpenAI"})
    return result
