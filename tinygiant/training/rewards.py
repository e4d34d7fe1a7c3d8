"""GRPO's rewards for TinyGiant: plain functions with TRL's reward signature, `f(completions, **columns) -> floats`.

    GRPOTrainer(..., reward_funcs=[accuracy_reward, format_reward], args=GRPOConfig(reward_weights=[2.0, 1.0]))

TRL passes every dataset column as a keyword list, one entry per completion: the multiple-choice rows of
`tinygiant.training.multiple_choice` give `choices` and `answer`. A completion is read back with the shipped parser
(`parsing_tinygiant.parse_response`), exactly as the pipeline and the MMAR harness read the model's output, so the
reward judges what users and benchmarks will see. Choices the issue leaves open:

- accuracy is 1.0 when the option the parser picks passes the benchmark's official string match (MMAR's rule, shared
  with MMAU) and 0.0 otherwise; an answer that names no option, or two, earns nothing;
- format is 1.0 for a closed think block holding CoTA's four sections in order, each non-empty, followed by a
  non-empty answer; anything else earns 0.0 (no partial credit, so the reward cannot be farmed by tags alone);
- the length term (`length_reward`) is 1.0 for a think block of at most `max_words` words, falling linearly to 0.0 at
  twice that (Ke-Omni-R keeps its think block near 50 words);
- the judge reward grades only correct answers (as MMAR-Rubrics does: a wrong answer scores 0 without a call).
A completion cut at the length limit (`finished` False: `TinyGiantGRPOTrainer` passes each completion's) has no answer,
as the MMAR harness reads it (`parse_output`): it earns neither accuracy nor format. Scored as written instead, a policy
that states the answer and never stops is rewarded in training and scores nothing in evaluation.
"""

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from parsing_tinygiant import parse_output, parse_response
from tinygiant.eval.runner import string_match

# CoTA's think sections, in the order Audio-Reasoner writes them.
THINK_SECTIONS = ("PLANNING", "CAPTION", "REASONING", "SUMMARY")
_SECTIONS = re.compile(
    r"^\s*" + r"\s*".join(rf"<{name}>(?P<{name.lower()}>.*?)</{name}>" for name in THINK_SECTIONS) + r"\s*$",
    re.DOTALL | re.IGNORECASE,
)


def completion_text(completion: str | list[dict]) -> str:
    """The text of one completion: TRL passes a string, or (conversational prompts) a list of assistant messages."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] or "" for message in completion if message.get("role") == "assistant")


def picked_choice(completion: str | list[dict], choices: Sequence[str], finished: bool = True) -> str | None:
    """The option a completion picks, read by the shipped parser; None if it picks none (or is ambiguous), or was cut
    at the length limit (`finished=False`)."""
    return parse_output(completion_text(completion), list(choices), finished)["choice"]


def _finished(finished: list[bool] | None, n: int) -> list[bool]:
    return [True] * n if finished is None else list(finished)


def accuracy_reward(completions: list, choices: list[Sequence[str]], answer: list[str],
                    finished: list[bool] | None = None, **kwargs) -> list[float]:
    """1.0 where the picked option passes the official MMAR/MMAU string match against `answer`, else 0.0."""
    return [float(string_match(right, picked_choice(completion, options, done), options))
            for completion, options, right, done in zip(completions, choices, answer,
                                                        _finished(finished, len(completions)), strict=True)]


def think_sections(completion: str | list[dict], finished: bool = True) -> dict[str, str] | None:
    """The four CoTA sections of a completion's closed think block, or None when the block is missing, unclosed, or
    does not hold exactly those sections in order, or the completion was cut at the length limit."""
    parsed = parse_output(completion_text(completion), finished=finished)
    if parsed["thinking"] is None or parsed["answer"] is None:  # no think block, or one never closed
        return None
    match = _SECTIONS.match(parsed["thinking"])
    return None if match is None else {name: match[name.lower()].strip() for name in THINK_SECTIONS}


def format_reward(completions: list, finished: list[bool] | None = None, **kwargs) -> list[float]:
    """1.0 for `<think>` + PLANNING, CAPTION, REASONING, SUMMARY (each non-empty) + `</think>` + an answer, ended
    before the length limit; else 0.0."""
    rewards = []
    for completion, done in zip(completions, _finished(finished, len(completions)), strict=True):
        sections = think_sections(completion, done)
        answer = parse_output(completion_text(completion), finished=done)["answer"]
        rewards.append(float(sections is not None and all(sections.values()) and bool(answer)))
    return rewards


def length_reward(max_words: int = 50) -> Callable[..., list[float]]:
    """A reward for a short think block: 1.0 up to `max_words` words, falling linearly to 0.0 at `2 * max_words`; a
    completion without a closed think block gets 0.0."""
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")

    def think_length_reward(completions: list, finished: list[bool] | None = None, **kwargs) -> list[float]:
        rewards = []
        for completion, done in zip(completions, _finished(finished, len(completions)), strict=True):
            parsed = parse_output(completion_text(completion), finished=done)
            if parsed["thinking"] is None or parsed["answer"] is None:
                rewards.append(0.0)
                continue
            words = len(parsed["thinking"].split())
            rewards.append(max(0.0, min(1.0, 2.0 - words / max_words)))
        return rewards

    think_length_reward.__name__ = f"think_length_reward_{max_words}"  # TRL logs each reward under its name
    return think_length_reward


# MMAR-Rubrics-style criteria for a question whose own rubric is unknown (training sets carry none): what the
# benchmark's rubrics reward, in general terms.
DEFAULT_RUBRIC = [
    {"name": "grounded", "scoring_point": "The reasoning describes what is audible in the clip (sounds, their number, "
     "order, pitch, voices) rather than guessing from the question's wording.", "choices": [0, 1, 2]},
    {"name": "consistent", "scoring_point": "Each step follows from the previous ones and the final answer follows "
     "from the summary; no step contradicts the reference explanation.", "choices": [0, 1, 2]},
    {"name": "concise", "scoring_point": "The reasoning is brief and does not repeat itself.", "choices": [0, 1]},
]


class RubricJudgeReward:
    """MMAR-Rubrics-style judge reward through any OpenAI-compatible endpoint (`tinygiant.eval.rubrics.Judge`: its
    retries and QPS bound), with a log of every grade that a resumed run reads back instead of asking again.

    A correct answer (by `accuracy_reward`'s rule) gets the judge's grade in [0, 1] of its reasoning against
    `rubric` (the item's own `rubric` column when the dataset has one); a wrong one gets 0.0 without a call, as in
    MMAR-Rubrics. A grade the judge could not give (invalid replies) counts as 0.0 and is logged with its error.
    """

    def __init__(self, judge, log_path: str | Path, rubric: list[dict] | None = None):
        from tinygiant.eval.rubrics import check_rubric, read_judgements

        self.judge = judge
        self.rubric = check_rubric({"id": "default", "rubric": rubric or DEFAULT_RUBRIC})
        self.log_path = Path(log_path)
        self.grades = {key: record for (key, _), record in read_judgements(self.log_path).items()}
        self.__name__ = "rubric_judge_reward"

    @staticmethod
    def key(question: str, choices: Sequence[str], completion: str) -> str:
        return hashlib.sha256(json.dumps([question, list(choices), completion]).encode()).hexdigest()

    def __call__(self, completions: list, question: list[str], choices: list[Sequence[str]], answer: list[str],
                 rubric: list | None = None, finished: list[bool] | None = None, **kwargs) -> list[float]:
        from tinygiant.eval.rubrics import judge_messages
        from tinygiant.files import JsonlAppender

        rewards = []
        with JsonlAppender(self.log_path) as log:
            done = _finished(finished, len(completions))
            for index, (completion, q, options, right) in enumerate(zip(completions, question, choices, answer,
                                                                        strict=True)):
                text = completion_text(completion)
                picked = picked_choice(text, options, done[index])
                if not string_match(right, picked, options):
                    rewards.append(0.0)
                    continue
                key = self.key(q, options, text)
                if key not in self.grades:
                    item = {"id": key, "question": q, "choices": list(options), "answer": right,
                            "rubric": (rubric[index] if rubric and rubric[index] else self.rubric)}
                    parsed = parse_response(text)
                    prediction = {"thinking_prediction": parsed["thinking"], "answer_prediction": picked}
                    record = {"id": key, "grader": 0, **self.judge.grade(judge_messages(item, prediction),
                                                                         item["rubric"])}
                    log.append(record)
                    self.grades[key] = record
                rewards.append(float(self.grades[key].get("grade", 0.0)))
        return rewards
