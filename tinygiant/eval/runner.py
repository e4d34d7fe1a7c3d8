"""The evaluation runner every benchmark shares: answer its items resumably with any answerer, score, report.

A benchmark (`tinygiant.eval.mmar`, `.mmau`, `.mmsu`, `.synthetic`) is a `Benchmark` subclass that holds only what is
its own: its loader, its scoring rule, its breakdowns, its published reference numbers and, where it needs one, its own
report. `main(benchmark, argv)` is the command line of all of them (`tinygiant eval NAME ...`):

- the answerer is the in-process pipeline (`--model`, with `--int8` or `--llama-cpp`), or any OpenAI-compatible audio
  chat endpoint (`--server URL`, `tinygiant.eval.endpoint`), or nothing (`--score-only FILE`);
- answers are appended to `OUT/predictions.jsonl` in the challenge submission format
  (`{"id", "thinking_prediction", "answer_prediction"}`) as each batch finishes, the raw output of each item (and the
  server's `finish_reason`) to `OUT/raw_outputs.jsonl`, and the run's answerer, date and settings to `OUT/run.json`;
  rerun the same command after an interruption and only the items not yet answered are asked;
- an item that cannot be answered is recorded as that item's error (`{"id", "error"}`) and scored wrong. Its audio
  missing or unreadable: final, a rerun does not ask again. A server that failed on it after the client's retries:
  the record is marked `"server_error": true`, and a rerun asks it again (the record is dropped from the file first);
- a failure that every request shares stops the run with the server's reason and a non-zero exit, and records nothing
  for the failing items, so a rerun against the fixed server asks them (no preflight request: the first items are the
  test). Run-wide means: an answer of 401, 403 or 404 (key, model or URL wrong), or no item answered yet and the first
  `RUN_WIDE_FAILURES` items failing with one and the same message; with fewer items left than that, all of them
  refused (4xx) with one message (a lone item's repeated 5xx stays that item's error);
- scores: accuracy overall and per breakdown, each cell `{correct, total, accuracy (%), ci95 [lo, hi] (%)}` with a 95 %
  Wilson interval; items without a prediction, or with an error, count as wrong; `official` is what the authors'
  scripts print, over the items that have a prediction only.
"""

import argparse
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from tinygiant.eval.stats import wilson_interval
from tinygiant.files import JsonlAppender, read_jsonl_log, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from client_tinygiant import ServerError
    from pipeline_tinygiant import TinyGiantAudioReasoningPipeline
    from tinygiant.eval.endpoint import ChatEndpoint

MAX_THINKING_CHARS = 10_000  # the MMAR challenge rejects longer `thinking_prediction`s
RUN_WIDE_FAILURES = 3  # this many items failing at the server, with none answered yet, is a failure of the whole run
RUN_WIDE_STATUSES = (401, 403, 404)  # the key, the model or the URL is wrong: every request would fail the same way
PREDICTIONS_FILE, RAW_FILE, RUN_FILE = "predictions.jsonl", "raw_outputs.jsonl", "run.json"


class RunWideFailure(RuntimeError):
    """Every request fails the same way (a wrong model name, `max_tokens` over the model's limit, ...)."""


# ---------------------------------------------------------------------------------------------------
# Items, predictions and the official matching rule
# ---------------------------------------------------------------------------------------------------


def read_json_records(path: str | Path) -> list:
    """A JSON array, or JSON lines (blank lines skipped)."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {number} is not valid JSON: {e}") from None
    return records


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"\b\w+\b", text.lower()))


def string_match(answer: str, prediction: str | None, choices: Sequence[str]) -> bool:
    """The official rule of MMAU's `evaluation.py`, which MMAR's `code/evaluation.py` copies: is `prediction` a
    correct pick of `answer` among `choices`?

    Texts are lower-cased and reduced to sets of `\\b\\w+\\b` tokens. An empty prediction is wrong.
    The "incorrect tokens" are, for every choice whose token set differs from the answer's, that
    choice's tokens minus the answer's tokens. Correct iff every answer token is in the prediction
    and no incorrect token is. So a bare letter ("D") is wrong and "D. Parrot" is right.
    A `None` prediction counts as empty (the official scripts would fail on it).
    """
    predicted = _tokens(prediction or "")
    if not predicted:
        return False
    expected = _tokens(answer)
    incorrect = set()
    for choice in choices:
        tokens = _tokens(choice)
        if tokens != expected:
            incorrect |= tokens - expected
    return expected <= predicted and not (predicted & incorrect)


def load_predictions(path: str | Path, meta: Sequence[dict] | None = None, benchmark: str = "the") -> dict:
    """Read predictions (JSON lines `{"id", "thinking_prediction", "answer_prediction"}`).

    Returns `{id: record}`. A record may carry an `"error"` field instead of an answer (e.g. the
    audio was missing); it is then scored wrong. Raises `ValueError` for a record without `id`,
    a record with neither a string `answer_prediction` nor an `error`, repeated ids, or (when
    `meta` is given) ids that are not in the meta, listed.
    """
    predictions, duplicates = {}, []
    for number, record in enumerate(read_json_records(path), 1):
        if not isinstance(record, dict) or "id" not in record:
            raise ValueError(f"{path}: record {number} has no 'id'")
        name = record["id"]
        if "error" not in record and not isinstance(record.get("answer_prediction"), str):
            raise ValueError(f"{path}: prediction {name} has no string 'answer_prediction' and no 'error'")
        if name in predictions:
            duplicates.append(name)
        predictions[name] = record
    if duplicates:
        raise ValueError(f"{path}: duplicate prediction ids: {sorted(set(duplicates))}")
    if meta is not None:
        check_known_ids(path, predictions, meta, benchmark)
    return predictions


def raise_problems(path: str | Path, problems: Sequence[str], what: str) -> None:
    """A benchmark file's problems as one `ValueError` (the first 20, then how many more); nothing if there are none."""
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{path}: {len(problems)} problem(s) with the {what}:\n  {shown}{more}")


def check_known_ids(path: str | Path, predictions: dict, meta: Sequence[dict], benchmark: str) -> None:
    unknown = sorted(set(predictions) - {item["id"] for item in meta}, key=str)
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} prediction id(s) not in {benchmark} meta: {unknown[:20]}")


# ---------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Breakdown:
    """One way to split the items: `scores[group]` has a cell per value of `item[key]`, in the order of `names`
    (values not in `names` follow in the order they first appear)."""

    group: str
    key: str
    names: tuple[str, ...] = ()


def cell(correct: int, total: int) -> dict:
    return {"correct": correct, "total": total, "accuracy": 100 * correct / total if total else None,
            "ci95": wilson_interval(correct, total)}


def score(meta: Sequence[dict], predictions: dict | list, breakdowns: Sequence[Breakdown],
          is_correct: Callable[[dict, str | None], bool], official_breakdowns: bool = False) -> dict:
    """Accuracy overall and per breakdown, plus what the official script would say.

    `predictions` is `{id: record}` (a list of records is accepted too). Each cell is `{correct, total, accuracy (%),
    ci95 [lo, hi] (%)}`; every name of every breakdown is present even when empty. Items without a prediction, or
    whose record has an `"error"`, count as wrong. `"official"` is the accuracy over the items that have an
    `answer_prediction` only, which is what the authors' scripts print (they skip the others); with
    `official_breakdowns`, `"official_by"` gives it per breakdown too. `"items"` lists each item's outcome: correct,
    wrong, missing or error.
    """
    if isinstance(predictions, list):
        predictions = {record["id"]: record for record in predictions}
    groups = {b.group: {name: [0, 0] for name in b.names} for b in breakdowns}
    official_groups = {b.group: {name: [0, 0] for name in b.names} for b in breakdowns}
    outcomes, official = [], [0, 0]
    for item in meta:
        record = predictions.get(item["id"])
        if record is None:
            status = "missing"
        else:
            answered = record.get("answer_prediction")
            right = isinstance(answered, str) and is_correct(item, answered)
            if "answer_prediction" in record:  # the official scripts skip items lacking the key
                official[0] += right
                official[1] += 1
                for b in breakdowns:
                    official_groups[b.group].setdefault(item[b.key], [0, 0])[0] += right
                    official_groups[b.group][item[b.key]][1] += 1
            status = "error" if "error" in record else ("correct" if right else "wrong")
        for b in breakdowns:
            groups[b.group].setdefault(item[b.key], [0, 0])[0] += status == "correct"
            groups[b.group][item[b.key]][1] += 1
        outcomes.append({"id": item["id"], "status": status, **{b.key: item[b.key] for b in breakdowns}})
    count = {s: sum(o["status"] == s for o in outcomes) for s in ("correct", "wrong", "missing", "error")}
    scores = {
        "overall": cell(count["correct"], len(meta)),
        **{group: {k: cell(*v) for k, v in cells.items()} for group, cells in groups.items()},
        "n_items": len(meta),
        "n_predicted": len(meta) - count["missing"],
        "n_missing": count["missing"],
        "n_errors": count["error"],
        "official": cell(*official),
        "items": outcomes,
    }
    if official_breakdowns:
        scores["official_by"] = {group: {k: cell(*v) for k, v in cells.items()}
                                 for group, cells in official_groups.items()}
    return scores


# ---------------------------------------------------------------------------------------------------
# Generation: answer every item, resumably
# ---------------------------------------------------------------------------------------------------


def resume(predictions_path: Path) -> set:
    """Ids already answered in `predictions_path`, for a run that goes on. A last line cut short by a crash is removed
    from the file, and so are the records of items the server failed on (`"server_error"`), so that they are asked
    again."""
    records = read_jsonl_log(predictions_path)
    kept = [r for r in records if not r.get("server_error")]
    if len(kept) < len(records):
        write_text_atomic(predictions_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return {record["id"] for record in kept}


def prediction_record(item: dict, output: dict) -> dict:
    """The challenge submission record for one output: the chosen option's text as the answer (a bare letter would
    score wrong), else the free answer, else "" (a cut-off output)."""
    answer = output.get("choice") or output.get("answer") or ""
    return {"id": item["id"], "thinking_prediction": (output.get("thinking") or "")[:MAX_THINKING_CHARS],
            "answer_prediction": answer}


def silence_like(path: Path) -> dict:
    """A clip of silence as long as the audio file at `path` (for a control run that hears nothing)."""
    import numpy as np

    from processing_tinygiant import load_audio

    waveform, rate = load_audio(str(path))
    return {"array": np.zeros_like(waveform), "sampling_rate": rate}


def _pipeline_outputs(pipe: "TinyGiantAudioReasoningPipeline", inputs: list[dict],
                      generate_kwargs: dict) -> list[dict | Exception]:
    """The pipeline's outputs, one batched generation; if one bad item spoils the batch, item by item, each bad one
    giving its exception."""
    try:
        return list(pipe(inputs, batch_size=max(1, len(inputs)), **generate_kwargs)) if inputs else []
    except (OSError, ValueError):
        outputs = []
        for x in inputs:
            try:
                outputs.append(pipe(x, **generate_kwargs))
            except (OSError, ValueError) as error:
                outputs.append(error)
        return outputs


def answer_batch(answerer: "TinyGiantAudioReasoningPipeline | ChatEndpoint", items: Sequence[dict],
                 audio_dir: str | Path, generate_kwargs: dict,
                 zero_audio: bool = False) -> tuple[list[dict], list[dict], list["ServerError"]]:
    """Answer `items`: returns their prediction records, their raw outputs (`{"id", "text", "finish_reason"}`, for the
    answered ones) and the server failures (`ServerError`s). A missing or unreadable audio gives an `error` record;
    `zero_audio=True` replaces every clip with silence of the same length (a control run)."""
    from client_tinygiant import ServerError

    records, ready = {}, []
    for item in items:
        path = Path(audio_dir) / item["audio_path"]
        if not path.is_file():
            records[item["id"]] = {"id": item["id"], "error": f"missing audio file {path}"}
            continue
        try:
            audio = silence_like(path) if zero_audio else str(path)
        except (OSError, ValueError) as error:
            records[item["id"]] = {"id": item["id"], "error": f"{type(error).__name__}: {error}"}
            continue
        ready.append((item, {"audio": audio, "question": item["question"], "choices": item["choices"]}))
    inputs = [x for _, x in ready]
    if hasattr(answerer, "answer_each"):  # an endpoint: one request per item, each failing on its own
        outputs = answerer.answer_each(inputs, **generate_kwargs)
    else:
        outputs = _pipeline_outputs(answerer, inputs, generate_kwargs)
    raw, failures = [], []
    for (item, x), output in zip(ready, outputs):
        if isinstance(output, ServerError):
            failures.append(output)
            records[item["id"]] = {"id": item["id"], "error": f"the server failed on {x['audio']}: {output}",
                                   "server_error": True}
        elif isinstance(output, Exception):
            records[item["id"]] = {"id": item["id"], "error": f"{type(output).__name__}: {output}"}
        else:
            records[item["id"]] = prediction_record(item, output)
            raw.append({"id": item["id"], "text": output.get("text"), "finish_reason": output.get("finish_reason")})
    return [records[item["id"]] for item in items], raw, failures


def shared_failure(failed: list["ServerError"], n_todo: int) -> bool:
    """Whether the server failures so far (none answered yet) are one failure that every request meets."""
    if len(failed) < min(RUN_WIDE_FAILURES, n_todo) or len({f.server_message for f in failed}) != 1:
        return False
    return n_todo >= RUN_WIDE_FAILURES or all(f.refused for f in failed)


def predict(meta: Sequence[dict], audio_dir: str | Path,
            model: "str | Path | TinyGiantAudioReasoningPipeline | ChatEndpoint", predictions_path: str | Path,
            batch_size: int = 4, limit: int | None = None, generate_kwargs: dict | None = None,
            zero_audio: bool = False) -> None:
    """Answer the items of `meta` not yet in `predictions_path`, appending one JSON line each as batches finish (and
    their raw outputs to `raw_outputs.jsonl` beside it).

    `model` is a Hub repo id, a folder, a ready `pipeline("audio-reasoning")` or a `ChatEndpoint`. `limit` caps the
    total number of items answered (for a quick look). Decoding is greedy with up to 1024 new tokens unless
    `generate_kwargs` says otherwise. `zero_audio=True` asks every question about silence instead of the clip (a
    control run). Lines are flushed and synced per batch, so an interrupted run loses at most the batch in flight.
    Raises `RunWideFailure` when every request fails the same way (see the module's docstring).
    """
    from tqdm.auto import tqdm

    predictions_path = Path(predictions_path)
    generate_kwargs = {"do_sample": False, "max_new_tokens": 1024, **(generate_kwargs or {})}
    done = resume(predictions_path)
    todo = [item for item in meta if item["id"] not in done]
    if limit is not None:
        todo = todo[: max(0, limit - len(done & {item["id"] for item in meta}))]
    if not todo:
        return
    if isinstance(model, (str, Path)):
        from pipeline_tinygiant import load_pipeline

        model = load_pipeline(str(model))
    answered, failed, stopped = 0, [], None
    with JsonlAppender(predictions_path) as out, JsonlAppender(predictions_path.with_name(RAW_FILE)) as raw_out, \
            tqdm(total=len(todo), desc="answering", unit="item") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            records, raw, failures = answer_batch(model, batch, audio_dir, generate_kwargs, zero_audio)
            answered += len(raw)
            failed += failures
            out.append(*records)
            raw_out.append(*raw)
            bar.update(len(batch))
            run_wide = [f for f in failures if f.status in RUN_WIDE_STATUSES]
            if run_wide or (not answered and shared_failure(failed, len(todo))):
                reasons = " | ".join(sorted({str(f) for f in (run_wide or failed)}))
                stopped = RunWideFailure(f"every request fails, so the run stops ({len(failed)} of the first "
                                         f"{start + len(batch)} items failed at the server); nothing is recorded for "
                                         f"them, a rerun asks them again. The server said: {reasons}")
                break
    if stopped is not None:
        resume(predictions_path)  # drops the server failures' records
        raise stopped


# ---------------------------------------------------------------------------------------------------
# The run's description, and reports
# ---------------------------------------------------------------------------------------------------


def describe_run(answerer: dict, settings: dict) -> dict:
    """`run.json`: what answered (`{"model", ...}`, with `"server"` for an endpoint), now, and with which settings."""
    return {"answerer": answerer, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "settings": settings}


def run_description(args: argparse.Namespace, endpoint: "ChatEndpoint | None" = None) -> dict:
    """What answered, when, and with which settings, from the command line (for `run.json` and the report)."""
    settings = {"max_new_tokens": args.max_new_tokens, "decoding": "greedy",
                "system_prompt": "the model's own" if args.system_prompt is None else
                ("none" if args.system_prompt == "" else args.system_prompt)}
    if endpoint is not None:
        settings.update(endpoint.settings())
        return describe_run({"server": endpoint.base_url, "model": endpoint.model}, settings)
    return describe_run({"model": args.model, "int8": args.int8, "llama_cpp": args.llama_cpp}, settings)


def count_cut_off(raw_path: Path, ids: Iterable) -> int:
    """How many of `ids` have a raw output cut at the length limit (`finish_reason == "length"`)."""
    ids = set(ids)
    return sum(r.get("finish_reason") == "length" and r["id"] in ids for r in read_jsonl_log(raw_path))


def run_lines(run: dict | None, scores: dict) -> list[str]:
    """Report lines naming what was evaluated, when and how."""
    if not run:
        return ["Answerer: not recorded (scored from a predictions file).", ""]
    answerer, settings = run["answerer"], run["settings"]
    who = (f"model `{answerer['model']}` served at {answerer['server']}" if "server" in answerer else
           f"`{answerer['model']}` in process" + (" (int8)" if answerer.get("int8") else "")
           + (" (llama.cpp)" if answerer.get("llama_cpp") else ""))
    lines = [f"Answerer: {who}; run on {run['date']}.",
             "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + "."]
    if "n_cut_off" in scores:
        lines.append(f"Replies cut at the length limit (`finish_reason` length, raw text in `{RAW_FILE}`): "
                     f"{scores['n_cut_off']}.")
    return [*lines, ""]


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def interval_text(c: dict) -> str:
    return "–" if c["ci95"] is None else f"{c['ci95'][0]:.1f}–{c['ci95'][1]:.1f}"


def table_row(name: str, c: dict, reference: float | None = None, with_reference: bool = True,
              reference_digits: int = 1) -> str:
    cells = [name, pct(c["accuracy"]), f"{c['correct']}/{c['total']}", interval_text(c)]
    if with_reference:
        cells.append(pct(reference, reference_digits))
    return "| " + " | ".join(cells) + " |"


def plot_groups(path: Path, labels: Sequence[str], series: Sequence[tuple], title: str) -> None:
    """Grouped bars: `series` is a list of (name, values, errors or None, hatch)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(labels))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(min(16, max(4, len(labels) * (0.6 + 0.25 * len(series)))), 4.5))
    for i, (name, values, errors, hatch) in enumerate(series):
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=name, hatch=hatch, yerr=errors,
               capsize=2, error_kw={"elinewidth": 0.8})
    ax.set_xticks(x, labels, rotation=30 if len(labels) > 8 else 0, ha="right" if len(labels) > 8 else "center")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def error_bars(cells: Sequence[dict]) -> list[list[float]]:
    """Asymmetric error bars (2 x n) from the Wilson intervals; 0 where a cell is empty."""
    low, high = [], []
    for c in cells:
        if c["ci95"] is None:
            low.append(0)
            high.append(0)
        else:
            # max(0, ...) because rounding can leave a -1e-15 that matplotlib rejects.
            low.append(max(0.0, c["accuracy"] - c["ci95"][0]))
            high.append(max(0.0, c["ci95"][1] - c["accuracy"]))
    return [low, high]


def peer_row(published: dict, run: dict | None) -> str | None:
    """The published row of the model a server run evaluated, when there is one (names compared without the
    organisation and case)."""
    if not run or "server" not in run["answerer"] or not run["answerer"].get("model"):
        return None
    served = str(run["answerer"]["model"]).rsplit("/", 1)[-1].lower()
    return next((name for name in published if name.lower() == served), None)


# ---------------------------------------------------------------------------------------------------
# A benchmark, and the command line
# ---------------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A benchmark's items, read and checked: `audio_dir` is what their `audio_path`s are relative to; `version`
    names the metadata scored, for the report."""

    items: list[dict]
    audio_dir: Path
    version: str = ""
    notes: list[str] = field(default_factory=list)


class Benchmark:
    """What one benchmark brings to the runner. Subclasses set the class attributes and `load`."""

    name = ""  # the command's name: `tinygiant eval NAME`
    title = ""  # as the report spells it
    breakdowns: tuple[Breakdown, ...] = ()
    official_breakdowns = False  # also the official script's figures per breakdown (`scores["official_by"]`)
    # Published overall accuracies (%) of models to stand beside, each `{"overall": x, "source": "..."}`.
    published: dict = {}
    plot_group = ""  # the breakdown plotted beside the overall accuracy

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The benchmark's own options."""

    def check_arguments(self, parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        """Refuse option combinations that make no sense for this benchmark (`parser.error`)."""

    def load(self, args: argparse.Namespace, output_dir: Path) -> Loaded:
        raise NotImplementedError

    def is_correct(self, item: dict, prediction: str | None) -> bool:
        """The official rule; by default the token-set rule MMAU and MMAR share."""
        return string_match(item["answer"], prediction, item["choices"])

    def read_predictions(self, path: Path, items: list[dict]) -> dict:
        return load_predictions(path, items, f"the {self.title}")

    def score(self, items: list[dict], predictions: dict) -> dict:
        return score(items, predictions, self.breakdowns, self.is_correct, self.official_breakdowns)

    def after_scoring(self, args: argparse.Namespace, items: list[dict], predictions: dict, scores: dict,
                      output_dir: Path) -> dict | None:
        """The scores with extra ones (MMAR-Rubrics); None stops before the report (a dry run)."""
        return scores

    def write_report(self, scores: dict, out_dir: str | Path, run: dict | None, loaded: Loaded) -> dict[str, Path]:
        """`scores.json`, `report.md` and `accuracy_by_<group>.png` (the generic layout)."""
        return write_report(self, scores, out_dir, run, loaded)

    def summary(self, scores: dict) -> str:
        o, off = scores["overall"], scores["official"]
        return (f"{self.title} accuracy: {pct(o['accuracy'], 2)} % ({o['correct']}/{o['total']}, 95 % CI "
                f"{interval_text(o)}); missing {scores['n_missing']}, errors {scores['n_errors']} (counted wrong)\n"
                f"official-script accuracy over predicted items: {pct(off['accuracy'], 2)} % "
                f"({off['correct']}/{off['total']})")


def write_report(benchmark: Benchmark, scores: dict, out_dir: str | Path, run: dict | None,
                 loaded: Loaded) -> dict[str, Path]:
    """The generic report: overall, the published rows beside it, then a table per breakdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "scores.json", scores)
    header = "| {} | accuracy (%) | correct/n | 95 % CI |\n|---|---|---|---|"
    peer = peer_row(benchmark.published, run)
    lines = [f"# {benchmark.title} results", "", *run_lines(run, scores)]
    if loaded.version:
        lines += [f"Metadata scored: {loaded.version}.", ""]
    lines += [*loaded.notes, "" if loaded.notes else None, "## Overall", "", header.format("items"),
              table_row("all", scores["overall"], with_reference=False), "",
              f"Items without a prediction: {scores['n_missing']}; items flagged with an error: {scores['n_errors']}. "
              "Both count as wrong here. The official script instead drops items that have no prediction; over the "
              f"items it would score it would print {pct(scores['official']['accuracy'])} % "
              f"({scores['official']['correct']}/{scores['official']['total']}).", ""]
    if benchmark.published:
        lines += ["## Published figures", "", "| model | accuracy (%) | source |", "|---|---|---|"]
        for name, row in benchmark.published.items():
            mark = " (the model evaluated here)" if name == peer else ""
            lines.append(f"| {name}{mark} | {pct(row['overall'])} | {row['source']} |")
        lines.append("")
    for b in benchmark.breakdowns:
        lines += [f"## By {b.key}", "", header.format(b.key)]
        lines += [table_row(name, c, with_reference=False) for name, c in scores[b.group].items()]
        lines.append("")
    write_text_atomic(out / "report.md", "\n".join(line for line in lines if line is not None))
    group = next(b for b in benchmark.breakdowns if b.group == benchmark.plot_group)
    cells = [*scores[group.group].values(), scores["overall"]]
    plot = out / f"accuracy_{group.group}.png"
    plot_groups(plot, [*scores[group.group], "Overall"],
                [("accuracy (95 % CI)", [c["accuracy"] for c in cells], error_bars(cells), None)],
                f"{benchmark.title} accuracy {group.group.replace('_', ' ')}")
    return {"scores.json": out / "scores.json", "report.md": out / "report.md", plot.name: plot}


def build_parser(benchmark: Benchmark) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"tinygiant eval {benchmark.name}",
                                     description=f"Score a model on {benchmark.title} and write a report.")
    parser.add_argument("--meta", help="the benchmark's metadata file (default with --model/--server: the Hub copy)")
    parser.add_argument("--audio-dir", help="the folder the meta's audio paths are relative to "
                                            "(default: the meta file's folder)")
    parser.add_argument("--output-dir", default=f"{benchmark.name}_eval",
                        help="where predictions, raw outputs, scores, report and plot go")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--model", help="a TinyGiant Hub repo id or folder to answer every item with")
    mode.add_argument("--score-only", metavar="PREDICTIONS", help="score an existing predictions file")
    mode.add_argument("--server", metavar="URL", help="answer through an OpenAI-compatible audio chat endpoint, e.g. "
                                                     "http://127.0.0.1:8000/v1 (tinygiant serve --engine vllm)")
    server = parser.add_argument_group("--server (tinygiant.eval.endpoint)")
    server.add_argument("--server-model", help="the served model's name (default: the endpoint's first model)")
    server.add_argument("--server-api-key", help="default: none needed (a local server)")
    server.add_argument("--concurrency", type=int, default=8, help="requests in flight at most")
    server.add_argument("--qps", type=float, default=None, help="requests started per second at most")
    server.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    server.add_argument("--server-sampling", choices=("greedy", "server"), default="greedy",
                        help="greedy: temperature 0 with top_p 1, top_k -1 and repetition_penalty 1 (vLLM's sampling "
                             "fields; overriding the model's generation_config); server: temperature 0 only, the "
                             "server's defaults for the rest (for servers that refuse vLLM's fields)")
    server.add_argument("--resample", type=int, metavar="HZ",
                        help="send every clip resampled to this rate (e.g. 16000, for servers that cannot resample)")
    parser.add_argument("--system-prompt", default=None,
                        help="default: none sent, the model's own applies (its chat template's); '' asks a TinyGiant "
                             "model for no system turn; TEXT sends TEXT")
    parser.add_argument("--batch-size", type=int, default=4, help="items per write of the predictions file (with "
                                                                  "--server: at least --concurrency)")
    parser.add_argument("--limit", type=int, help="answer at most this many items")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--int8", action="store_true", help="int8 weights for CPU inference (the pipeline's int8=True)")
    parser.add_argument("--llama-cpp", action="store_true",
                        help="the language model on llama.cpp, for faster CPU decoding (the pipeline's llama_cpp=True)")
    benchmark.add_arguments(parser)
    return parser


def _answerer(args: argparse.Namespace) -> tuple["str | TinyGiantAudioReasoningPipeline | ChatEndpoint", dict]:
    """The pipeline (or its name) or the endpoint that answers, and the generation settings to pass."""
    generate_kwargs = {"max_new_tokens": args.max_new_tokens}
    if args.server:
        from tinygiant.eval.endpoint import ChatEndpoint

        endpoint = ChatEndpoint(args.server, args.server_model, api_key=args.server_api_key,
                                concurrency=args.concurrency, qps=args.qps, timeout=args.timeout,
                                system_prompt=args.system_prompt, sampling=args.server_sampling,
                                resample=args.resample)
        return endpoint, generate_kwargs
    if args.system_prompt is not None:  # else the checkpoint's own
        generate_kwargs["system_prompt"] = args.system_prompt or None
    if args.llama_cpp or args.int8:
        from pipeline_tinygiant import load_pipeline

        return load_pipeline(args.model, int8=args.int8, llama_cpp=args.llama_cpp), generate_kwargs
    return args.model, generate_kwargs


def main(benchmark: Benchmark, argv: Sequence[str] | None = None) -> dict:
    """Answer the benchmark with a model or a server (or take an existing predictions file), score it and write the
    report; returns the scores."""
    parser = build_parser(benchmark)
    args = parser.parse_args(argv)
    if args.resample is not None and not args.server:
        parser.error("--resample applies to --server (the pipeline resamples itself)")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    benchmark.check_arguments(parser, args)
    output_dir = Path(args.output_dir)
    loaded = benchmark.load(args, output_dir)
    run = None
    if args.model or args.server:
        predictions_path = output_dir / PREDICTIONS_FILE
        answerer, generate_kwargs = _answerer(args)
        run = run_description(args, answerer if args.server else None)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output_dir / RUN_FILE, run)
        batch_size = max(args.batch_size, args.concurrency) if args.server else args.batch_size
        predict(loaded.items, loaded.audio_dir, answerer, predictions_path, batch_size, args.limit, generate_kwargs)
    else:
        predictions_path = Path(args.score_only)
        for folder in (output_dir, predictions_path.parent):  # the run that wrote the file, when it is known
            if (folder / RUN_FILE).is_file():
                run = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
                break
    predictions = benchmark.read_predictions(predictions_path, loaded.items)
    items = loaded.items
    if args.limit is not None and not args.score_only:  # a partial run: the items never asked are not wrong
        items = [item for item in items if item["id"] in predictions]
    scores = {"benchmark": benchmark.name, **benchmark.score(items, predictions)}
    raw_path = predictions_path.with_name(RAW_FILE)
    if raw_path.is_file():
        scores["n_cut_off"] = count_cut_off(raw_path, [item["id"] for item in items])
    if run:
        scores["run"] = run
    extended = benchmark.after_scoring(args, items, predictions, scores, output_dir)
    if extended is None:  # a dry run: nothing more computed, no report written
        return scores
    scores = extended
    paths = benchmark.write_report(scores, output_dir, run, loaded)
    print(benchmark.summary(scores))
    print(f"report: {paths['report.md']}")
    return scores
