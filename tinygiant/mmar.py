"""Score TinyGiant on MMAR and write a report next to the paper's published numbers.

MMAR (arXiv 2505.13032) has 1,000 multiple-choice items over 7 modalities, 4 layers (`category`)
and 16 sub-categories. A prediction is the text of the chosen option; it is judged with the
official token-set rule (`mmar_format.string_match`, copied in behaviour from MMAR's `code/evaluation.py`).

Our numbers differ from the official script in one deliberate way: an item with no prediction, or
flagged with an `"error"` field (e.g. its audio was missing), counts as WRONG here, whereas the
official script silently leaves items without `answer_prediction` out of the denominator. The
report gives both numbers. Accuracies are percentages (0-100), with 95 % Wilson intervals.

Usage (or `python -m tinygiant.mmar ...`):
    tinygiant eval mmar --model REPO_OR_DIR --meta MMAR-meta.jsonl --audio-dir MMAR --output-dir OUT
    tinygiant eval mmar --model REPO_OR_DIR --output-dir OUT          # online: fetches BoJack/MMAR
    tinygiant eval mmar --meta MMAR-meta.jsonl --score-only predictions.jsonl --output-dir OUT
    tinygiant eval mmar --server URL [--server-model NAME] --meta MMAR-meta.jsonl --output-dir OUT  # any endpoint
    tinygiant eval mmar ... --rubrics [--dry-run] [--judge-base-url URL --judge-model NAME]   # MMAR-Rubrics
Generation is resumable: rerun the same command after an interruption and
only the items missing from OUT/predictions.jsonl are answered.

Predictions are JSON lines in the challenge submission format:
    {"id": ..., "thinking_prediction": ..., "answer_prediction": ...}
"""

import argparse
import json
import math
import os
import tarfile
from pathlib import Path

from parsing_tinygiant import format_question
from tinygiant.files import read_jsonl_log
from tinygiant.mmar_format import LAYERS, MODALITIES, REQUIRED_KEYS, SUB_CATEGORIES, string_match

# The paper's (and the MMAR leaderboard's) short column names for the modalities.
MODALITY_SHORT = dict(zip(MODALITIES, ["S", "M", "Sp", "S-M", "S-Sp", "M-Sp", "All"]))


def _by_modality(values):
    return dict(zip(MODALITIES, values))


def _by_sub_category(values):
    # Table 4 row order, mapped to MMAR's names.
    names = [
        "Acoustic Quality Analysis",
        "Audio Difference Analysis",
        "Spatial Analysis",
        "Temporal Analysis",
        "Anomaly Detection",
        "Counting and Statistics",  # "Counting"
        "Environmental Perception and Reasoning",  # "Env. Perception"
        "Speaker Analysis",
        "Content Analysis",
        "Correlation Analysis",
        "Emotion and Intention",  # "Emotion & Intention"
        "Professional Knowledge and Reasoning",  # "Professional Knowledge"
        "Aesthetic Evaluation",
        "Culture of Speaker",
        "Imagination",
        "Music Theory",
    ]
    return dict(zip(names, values))


# Published numbers of TinyGiantALM (arXiv 2606.08425v2), accuracy in %. Table 1 gives the main
# result by modality; Tables 3 and 4 give the ablations (Full = the Table 1 model, 2 decimals).
# The paper's Table 4 groups sub-tasks into layers differently from MMAR (e.g. Spatial Analysis under
# "Signal"); we only use its sub-task numbers and MMAR's own `category` for layers. Every number is
# k/n of MMAR's item counts, but the paper's "w/o IQ" column does not add up to its 39.70 overall
# (by modality 394 correct = 39.4 %, by sub-task 373 = 37.3 %); kept as published.
_TABLE4_FULL = [33.33, 62.50, 33.33, 46.43, 41.18, 36.36, 43.62, 45.83, 51.97, 50.00, 51.67, 46.48, 62.50, 57.69, 30.00, 31.75]
PAPER_MMAR = {
    "source": "TinyGiantALM, arXiv:2606.08425v2",
    "overall": 46.4,
    "by_modality": _by_modality([47.3, 37.9, 46.9, 45.5, 49.1, 58.5, 41.7]),
    "by_sub_category": _by_sub_category(_TABLE4_FULL),
    "ablation": {
        "Vanilla": {
            "overall": 38.00,
            "by_modality": _by_modality([33.94, 35.92, 39.80, 9.09, 38.99, 43.90, 45.83]),
            "by_sub_category": _by_sub_category(
                [27.78, 25.00, 40.00, 42.86, 41.18, 29.29, 31.54, 39.58, 45.07, 52.00, 40.00, 33.80, 37.50, 42.31, 30.00, 22.22]
            ),
        },
        "w/o IQ": {
            "overall": 39.70,
            "by_modality": _by_modality([38.79, 33.50, 44.56, 18.18, 40.37, 36.59, 41.67]),
            "by_sub_category": _by_sub_category(
                [22.22, 25.00, 26.67, 42.86, 23.53, 26.26, 39.60, 41.67, 45.39, 30.00, 46.67, 38.03, 50.00, 32.69, 30.00, 15.87]
            ),
        },
        "w/o CLAP": {
            "overall": 42.70,
            "by_modality": _by_modality([38.79, 35.44, 43.54, 36.36, 47.71, 50.00, 54.17]),
            "by_sub_category": _by_sub_category(
                [38.89, 50.00, 46.67, 35.71, 41.18, 40.40, 44.30, 41.67, 49.34, 38.00, 38.33, 42.25, 50.00, 44.23, 30.00, 22.22]
            ),
        },
        "Full": {
            "overall": 46.40,
            "by_modality": _by_modality([47.27, 37.86, 46.94, 45.45, 49.08, 58.54, 41.67]),
            "by_sub_category": _by_sub_category(_TABLE4_FULL),
        },
    },
}


# ---------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------


def wilson_interval(correct, total, z=1.959963984540054):
    """95 % Wilson score interval for `correct / total`, in %, or None when `total` is 0."""
    if total == 0:
        return None
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return [100 * max(0.0, centre - half), 100 * min(1.0, centre + half)]


def _read_json_records(path):
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


def _drop_empty_choices(items):
    """`items` with every empty (or blank) choice left out, and the ids of the items that had one.

    MMAR as published has 4 such items, e.g. choices `["Entered", "Did not enter", ""]`. An empty choice has no tokens,
    so `string_match` scores every prediction the same without it; the prompt would not take it.
    """
    kept, names = [], []
    for index, item in enumerate(items):
        choices = item.get("choices") if isinstance(item, dict) else None
        if isinstance(choices, list) and any(isinstance(c, str) and not c.strip() for c in choices):
            item = {**item, "choices": [c for c in choices if not (isinstance(c, str) and not c.strip())]}
            names.append(str(item.get("id", f"#{index}")))
        kept.append(item)
    return kept, names


def load_meta(path, skip_invalid=False):
    """Read MMAR's `MMAR-meta.jsonl` (or the old `MMAR-meta.json` array) and check every item.

    Empty choices are dropped first (MMAR publishes 4 items whose last choice is `""`), with one printed warning
    naming the items. Returns the items (dicts) in file order. Raises `ValueError` naming the item id and the problem
    for: a missing required key, an `id`, `audio_path`, `answer`, modality, layer or sub-category that is not a
    non-empty string, an unknown modality, layer or sub-category (or a sub-category under the wrong layer), a
    question or choices the prompt cannot take (`format_question`: 2 to 6 distinct non-empty strings), an answer
    that is not one of the choices, or a repeated id. The old JSON has 6 answers outside their choices; use the GitHub JSONL, or pass
    `skip_invalid=True` to leave such items out with a printed warning (done for the Hub copy).
    """
    items, trimmed = _drop_empty_choices(_read_json_records(path))
    if trimmed:
        print(f"warning: {path}: dropped empty choices from {len(trimmed)} item(s): {', '.join(trimmed)}")
    problems, seen, invalid = [], set(), set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"item #{index}: not a JSON object")
            continue
        name = item.get("id", f"#{index}")
        before = len(problems)
        missing = [k for k in REQUIRED_KEYS if k not in item]
        if missing:
            problems.append(f"item {name}: missing keys {missing}")
            continue
        wrong_type = [k for k in ("id", "audio_path", "answer", "modality", "category", "sub-category")
                      if not isinstance(item[k], str) or not item[k].strip()]
        if wrong_type:
            problems.append(f"item {name}: {wrong_type} must be non-empty strings")
            invalid.add(index)
            continue
        if name in seen:
            problems.append(f"item {name}: duplicate id")
        seen.add(name)
        if item["modality"] not in MODALITIES:
            problems.append(f"item {name}: unknown modality {item['modality']!r}")
        if item["category"] not in LAYERS:
            problems.append(f"item {name}: unknown layer (category) {item['category']!r}")
        elif item["sub-category"] not in LAYERS[item["category"]]:
            where = "unknown" if item["sub-category"] not in SUB_CATEGORIES else f"not in {item['category']}:"
            problems.append(f"item {name}: sub-category {where} {item['sub-category']!r}")
        try:  # the question and choices as the prompt takes them: 2 to 6 distinct non-empty strings
            format_question(item["question"], item["choices"])
        except ValueError as error:
            problems.append(f"item {name}: 'question'/'choices': {error}")
        else:
            if item["answer"] not in item["choices"]:
                problems.append(f"item {name}: answer {item['answer']!r} is not one of the choices")
        if len(problems) > before:
            invalid.add(index)
    if problems and skip_invalid and len(invalid) == len(problems):
        print(f"warning: {path}: leaving out {len(problems)} invalid item(s):\n  " + "\n  ".join(problems))
        return [item for index, item in enumerate(items) if index not in invalid]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{path}: {len(problems)} invalid MMAR item(s):\n  {shown}{more}")
    return items


def load_predictions(path, meta=None):
    """Read predictions (JSON lines `{"id", "thinking_prediction", "answer_prediction"}`).

    Returns `{id: record}`. A record may carry an `"error"` field instead of an answer (e.g. the
    audio was missing); it is then scored wrong. Raises `ValueError` for a record without `id`,
    a record with neither a string `answer_prediction` nor an `error`, repeated ids, or (when
    `meta` is given) ids that are not in the meta.
    """
    predictions, duplicates = {}, []
    for number, record in enumerate(_read_json_records(path), 1):
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
        known = {item["id"] for item in meta}
        unknown = sorted(set(predictions) - known)
        if unknown:
            raise ValueError(f"{path}: {len(unknown)} prediction id(s) not in the MMAR meta: {unknown[:20]}")
    return predictions


def _cell(correct, total):
    return {
        "correct": correct,
        "total": total,
        "accuracy": 100 * correct / total if total else None,
        "ci95": wilson_interval(correct, total),
    }


def score(meta, predictions):
    """Accuracy overall, by modality, layer and sub-category, plus what the official script would say.

    `meta` is the list from `load_meta`; `predictions` is `{id: record}` from `load_predictions`
    (a list of records is accepted too). Each cell is `{correct, total, accuracy (%), ci95 [lo, hi] (%)}`;
    all 7 modalities, 4 layers and 16 sub-categories are present even when empty. Items without a
    prediction, or whose record has an `"error"`, count as wrong. `"official"` is the accuracy
    over the items that have an `answer_prediction` only, which is what MMAR's script prints.
    `"items"` lists each item's outcome: correct, wrong, missing or error.
    """
    if isinstance(predictions, list):
        predictions = {record["id"]: record for record in predictions}
    groups = {
        "by_modality": {m: [0, 0] for m in MODALITIES},
        "by_layer": {layer: [0, 0] for layer in LAYERS},
        "by_sub_category": {s: [0, 0] for s in SUB_CATEGORIES},
    }
    outcomes, official = [], [0, 0]
    for item in meta:
        record = predictions.get(item["id"])
        if record is None:
            status = "missing"
        else:
            answered = record.get("answer_prediction")
            right = isinstance(answered, str) and string_match(item["answer"], answered, item["choices"])
            if "answer_prediction" in record:  # the official script skips items lacking the key
                official[0] += right
                official[1] += 1
            status = "error" if "error" in record else ("correct" if right else "wrong")
        ok = status == "correct"
        for group, key in (("by_modality", "modality"), ("by_layer", "category"), ("by_sub_category", "sub-category")):
            groups[group][item[key]][0] += ok
            groups[group][item[key]][1] += 1
        outcomes.append(
            {"id": item["id"], "status": status, **{k: item[k] for k in ("modality", "category", "sub-category")}}
        )
    count = {s: sum(o["status"] == s for o in outcomes) for s in ("correct", "wrong", "missing", "error")}
    return {
        "overall": _cell(count["correct"], len(meta)),
        **{group: {k: _cell(*v) for k, v in cells.items()} for group, cells in groups.items()},
        "n_items": len(meta),
        "n_predicted": len(meta) - count["missing"],
        "n_missing": count["missing"],
        "n_errors": count["error"],
        "official": _cell(*official),
        "items": outcomes,
    }


# ---------------------------------------------------------------------------------------------------
# Generation: answer every item with the model, resumably
# ---------------------------------------------------------------------------------------------------

MMAR_REPO = "BoJack/MMAR"
MAX_THINKING_CHARS = 10_000  # the challenge rejects longer `thinking_prediction`s


def fetch_mmar(cache_dir):
    """Download MMAR from the Hub (`BoJack/MMAR`): its meta JSON and its audio, extracted once under `cache_dir`.

    Returns `(meta_path, audio_dir)`. The Hub holds the old meta (6 answers outside their choices, left out
    with a warning); the GitHub `MMAR-meta.jsonl` is the corrected one, pass it with `--meta` if you have it.
    """
    from huggingface_hub import hf_hub_download

    try:
        meta = hf_hub_download(MMAR_REPO, "MMAR-meta.json", repo_type="dataset")
        archive = hf_hub_download(MMAR_REPO, "mmar-audio.tar.gz", repo_type="dataset")
    except Exception as error:
        raise RuntimeError(
            f"could not download {MMAR_REPO} from the Hugging Face Hub ({type(error).__name__}: {error}); "
            "pass --meta MMAR-meta.jsonl and --audio-dir (the folder its ./audio/ paths are relative to)"
        ) from error
    audio_dir = Path(cache_dir) / "mmar"
    if not (audio_dir / ".extracted").is_file():
        audio_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(audio_dir, filter="data")
        (audio_dir / ".extracted").touch()
    return meta, audio_dir


def finished_ids(predictions_path):
    """Ids already answered in `predictions_path`. A last line cut short by a crash is removed from the file."""
    return {record["id"] for record in read_jsonl_log(predictions_path)}


def prediction_record(item, output):
    """The challenge submission record for one pipeline output: the chosen option's text as the answer (a bare
    letter would score wrong), else the free answer, else "" (a cut-off output)."""
    answer = output.get("choice") or output.get("answer") or ""
    return {"id": item["id"], "thinking_prediction": (output.get("thinking") or "")[:MAX_THINKING_CHARS],
            "answer_prediction": answer}


def silence_like(path):
    """A clip of silence as long as the audio file at `path` (for a control run that hears nothing)."""
    import numpy as np

    from processing_tinygiant import load_audio

    waveform, rate = load_audio(str(path))
    return {"array": np.zeros_like(waveform), "sampling_rate": rate}


def predict_batch(pipe, items, audio_dir, generate_kwargs, zero_audio=False):
    """Records for `items`: one batched generation; a missing or unreadable audio gives an `error` record.
    `zero_audio=True` replaces every clip with silence of the same length (a control run)."""
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
    try:
        outputs = pipe([x for _, x in ready], batch_size=max(1, len(ready)), **generate_kwargs) if ready else []
        pairs = list(zip(ready, outputs))
    except (OSError, ValueError):  # one bad item spoils the batch: redo it item by item to find it
        pairs = []
        for item, x in ready:
            try:
                pairs.append(((item, x), pipe(x, **generate_kwargs)))
            except (OSError, ValueError) as error:
                records[item["id"]] = {"id": item["id"], "error": f"{type(error).__name__}: {error}"}
    for (item, _), output in pairs:
        records[item["id"]] = prediction_record(item, output)
    return [records[item["id"]] for item in items]


def predict(meta, audio_dir, model, predictions_path, batch_size=4, limit=None, generate_kwargs=None,
            zero_audio=False):
    """Answer the items of `meta` not yet in `predictions_path`, appending one JSON line each as batches finish.

    `model` is a Hub repo id, a folder, or a ready `pipeline("audio-reasoning")`. `limit` caps the total number of
    items answered (for a quick look). Decoding is greedy with up to 1024 new tokens unless `generate_kwargs` says
    otherwise. `zero_audio=True` asks every question about silence instead of the clip (a control run). Lines are
    flushed and synced per batch, so an interrupted run loses at most the batch in flight.
    """
    from tqdm.auto import tqdm

    generate_kwargs = {"do_sample": False, "max_new_tokens": 1024, **(generate_kwargs or {})}
    done = finished_ids(predictions_path)
    todo = [item for item in meta if item["id"] not in done]
    if limit is not None:
        todo = todo[: max(0, limit - len(done & {item["id"] for item in meta}))]
    if not todo:
        return
    if isinstance(model, (str, Path)):
        from pipeline_tinygiant import load_pipeline

        model = load_pipeline(str(model))
    Path(predictions_path).parent.mkdir(parents=True, exist_ok=True)
    with open(predictions_path, "a", encoding="utf-8") as out, tqdm(total=len(todo), desc="MMAR", unit="item") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            for record in predict_batch(model, batch, audio_dir, generate_kwargs, zero_audio):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
            bar.update(len(batch))


# ---------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------


def _pct(value, digits=1):
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(cell):
    return "–" if cell["ci95"] is None else f"{cell['ci95'][0]:.1f}–{cell['ci95'][1]:.1f}"


def _row(name, cell, paper_value=None, with_paper=True, paper_digits=1):
    cells = [name, _pct(cell["accuracy"]), f"{cell['correct']}/{cell['total']}", _ci(cell)]
    if with_paper:
        cells.append(_pct(paper_value, paper_digits))  # as published: Table 1 has 1 decimal, 3 and 4 have 2
    return "| " + " | ".join(cells) + " |"


def _plot_groups(path, labels, series, title):
    """Grouped bars: `series` is a list of (name, values, errors or None, hatch)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(labels))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(min(16, len(labels) * (0.6 + 0.25 * len(series))), 4.5))
    for i, (name, values, errors, hatch) in enumerate(series):
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=name, hatch=hatch, yerr=errors,
               capsize=2, error_kw={"elinewidth": 0.8})
    ax.set_xticks(x, labels)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _error_bars(cells):
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


def _rubrics_section(rubrics):
    """Report lines for the MMAR-Rubrics scores (`tinygiant.rubrics.rubric_scores`)."""
    from tinygiant.rubrics import PAPER_RUBRICS

    def row(name, cell, paper_value=None):
        ci = "–" if cell["ci95"] is None else f"{cell['ci95'][0]:.1f}–{cell['ci95'][1]:.1f}"
        return f"| {name} | {_pct(cell['score'], 2)} | {cell['n']} | {ci} | {_pct(paper_value, 2)} |"

    header = "| {} | Rubrics score | n | 95 % CI (bootstrap) | paper's team |\n|---|---|---|---|---|"
    judge = rubrics.get("judge", {})
    lines = [
        "",
        "## MMAR-Rubrics",
        "",
        f"Mean item score in % (a wrong answer scores 0; a right one is graded by {rubrics['graders']} judge calls "
        f"against the item's rubric, mean of the middle 3). Judge: {judge.get('model', '?')} at "
        f"{judge.get('base_url', '?')}. Judged items: {rubrics['n_judged']}; items no grader could grade (left out): "
        f"{rubrics['n_unjudged']}; judge replies recorded as errors: {rubrics['n_judge_errors']}. "
        "Paper's team: the challenge leaderboard.",
        "",
        header.format("items"),
        row("all", rubrics["overall"], PAPER_RUBRICS),
        "",
        header.format("modality"),
    ]
    lines += [row(f"{m} ({MODALITY_SHORT[m]})", rubrics["by_modality"][m]) for m in MODALITIES]
    lines += ["", header.format("layer")]
    lines += [row(layer, rubrics["by_layer"][layer]) for layer in LAYERS]
    lines += ["", header.format("layer / sub-category")]
    lines += [row(f"{layer} / {s}", rubrics["by_sub_category"][s]) for layer, subs in LAYERS.items() for s in subs]
    return lines


def write_report(scores, out_dir, paper=PAPER_MMAR):
    """Write `scores.json`, `report.md` and `accuracy_by_modality.png` into `out_dir`; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    overall, official = scores["overall"], scores["official"]
    header = "| {} | accuracy (%) | correct/n | 95 % CI | paper (%) |\n|---|---|---|---|---|"
    lines = [
        "# MMAR results",
        "",
        f"Paper numbers: {paper['source']}.",
        "",
        "## Overall",
        "",
        header.format("items"),
        _row("all", overall, paper["overall"]),
        "",
        f"Items without a prediction: {scores['n_missing']}; items flagged with an error: {scores['n_errors']}. "
        "Both count as wrong here. The official MMAR script instead drops items that have no "
        "`answer_prediction`; over the items it would score it would print "
        f"{_pct(official['accuracy'])} % ({official['correct']}/{official['total']}).",
        "",
        "## By modality",
        "",
        header.format("modality"),
    ]
    for m in MODALITIES:
        lines.append(_row(f"{m} ({MODALITY_SHORT[m]})", scores["by_modality"][m], paper["by_modality"].get(m)))
    lines += [
        "",
        "## By layer",
        "",
        "The paper gives no per-layer accuracy.",
        "",
        "| layer | accuracy (%) | correct/n | 95 % CI |\n|---|---|---|---|",
    ]
    lines += [_row(layer, scores["by_layer"][layer], with_paper=False) for layer in LAYERS]
    lines += [
        "",
        "## By sub-category",
        "",
        "Paper column: Table 4, full model (its layer grouping differs from MMAR's; rows here follow MMAR).",
        "",
        "| layer / sub-category | accuracy (%) | correct/n | 95 % CI | paper (%) |\n|---|---|---|---|---|",
    ]
    for layer, subs in LAYERS.items():
        for s in subs:
            lines.append(_row(f"{layer} / {s}", scores["by_sub_category"][s], paper["by_sub_category"].get(s), paper_digits=2))
    if "rubrics" in scores:
        lines += _rubrics_section(scores["rubrics"])
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    cells = [scores["by_modality"][m] for m in MODALITIES] + [overall]
    series = [
        ("accuracy, ours (95 % CI)", [c["accuracy"] for c in cells], _error_bars(cells), None),
        ("accuracy, paper", [paper["by_modality"].get(m) for m in MODALITIES] + [paper["overall"]], None, "//"),
    ]
    title = "MMAR accuracy by modality"
    if "rubrics" in scores:
        from tinygiant.rubrics import PAPER_RUBRICS

        rubric_cells = [scores["rubrics"]["by_modality"][m] for m in MODALITIES] + [scores["rubrics"]["overall"]]
        series += [
            ("Rubrics, ours (95 % CI)", [c["score"] for c in rubric_cells],
             _error_bars([{"accuracy": c["score"], "ci95": c["ci95"]} for c in rubric_cells]), "..")]
        series += [("Rubrics, paper's team", [None] * len(MODALITIES) + [PAPER_RUBRICS], None, "xx")]
        title = "MMAR accuracy and MMAR-Rubrics score by modality"
    _plot_groups(out / "accuracy_by_modality.png", [MODALITY_SHORT[m] for m in MODALITIES] + ["Overall"], series,
                 title)
    return {name: out / name for name in ("scores.json", "report.md", "accuracy_by_modality.png")}


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def main(argv=None):
    """Answer MMAR with a model (or take an existing predictions file), score it and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meta", help="MMAR-meta.jsonl (or the old MMAR-meta.json); default with --model: the Hub copy")
    parser.add_argument("--audio-dir", help="the folder the meta's ./audio/... paths are relative to "
                                            "(default: the meta file's folder)")
    parser.add_argument("--output-dir", default="mmar_eval", help="where predictions, scores, report and plot go")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--model", help="a TinyGiant Hub repo id or folder to answer every item with")
    mode.add_argument("--score-only", metavar="PREDICTIONS", help="score an existing predictions JSONL")
    mode.add_argument("--server", metavar="URL", help="answer through an OpenAI-compatible audio chat endpoint, e.g. "
                                                     "http://127.0.0.1:8000/v1 (tinygiant serve --engine vllm)")
    server = parser.add_argument_group("--server (tinygiant.chat_endpoint)")
    server.add_argument("--server-model", help="the served model's name (default: the endpoint's first model)")
    server.add_argument("--server-api-key", help="default: none needed (a local server)")
    server.add_argument("--concurrency", type=int, default=8, help="requests in flight at most")
    server.add_argument("--qps", type=float, default=None, help="requests started per second at most")
    server.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--batch-size", type=int, default=4, help="items per write of the predictions file (with "
                                                                  "--server: at least --concurrency)")
    parser.add_argument("--limit", type=int, help="answer at most this many items")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--int8", action="store_true", help="int8 weights for CPU inference (the pipeline's int8=True)")
    parser.add_argument("--llama-cpp", action="store_true",
                        help="the language model on llama.cpp, for faster CPU decoding (the pipeline's llama_cpp=True)")
    judge = parser.add_argument_group("MMAR-Rubrics (an LLM judge grades the reasoning of correct answers)")
    judge.add_argument("--rubrics", action="store_true", help="also compute the MMAR-Rubrics score")
    judge.add_argument("--judge-base-url", help="an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM) "
                                                "or http://localhost:11434/v1 (Ollama); default OpenAI's")
    judge.add_argument("--judge-model", default=None, help="default gpt-4o-2024-11-20, the official judge")
    judge.add_argument("--judge-concurrency", type=int, default=4, help="judge calls in flight at most")
    judge.add_argument("--judge-qps", type=float, default=None, help="judge calls started per second at most")
    judge.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per judge request")
    judge.add_argument("--dry-run", action="store_true",
                       help="with --rubrics: print the number of judge calls and a token estimate, call nothing")
    args = parser.parse_args(argv)
    if args.dry_run and not args.rubrics:
        parser.error("--dry-run estimates the judge's cost: use it with --rubrics")
    if args.judge_concurrency < 1:
        parser.error("--judge-concurrency must be at least 1")

    output_dir = Path(args.output_dir)
    meta_path, audio_dir = args.meta, args.audio_dir
    if meta_path is None:
        if args.score_only:
            parser.error("--score-only needs --meta")
        meta_path, audio_dir = fetch_mmar(output_dir / "data")
    meta = load_meta(meta_path, skip_invalid=args.meta is None)
    if args.rubrics:  # before any generation: the old meta has no rubrics
        from tinygiant.rubrics import check_rubric

        for item in meta:
            check_rubric(item)
    if args.model or args.server:
        predictions_path = output_dir / "predictions.jsonl"
        model, batch_size = args.model, args.batch_size
        if args.server:
            from tinygiant.chat_endpoint import ChatEndpoint

            model = ChatEndpoint(args.server, args.server_model, api_key=args.server_api_key,
                                 concurrency=args.concurrency, qps=args.qps, timeout=args.timeout)
            if model.model is None:
                model.model = model.client.models.list().data[0].id
            batch_size = max(batch_size, args.concurrency)
        elif args.llama_cpp or args.int8:
            from pipeline_tinygiant import load_pipeline

            model = load_pipeline(args.model, int8=args.int8, llama_cpp=args.llama_cpp)
        predict(meta, audio_dir or Path(meta_path).parent, model, predictions_path, batch_size, args.limit,
                {"max_new_tokens": args.max_new_tokens})
    else:
        predictions_path = args.score_only
    predictions = load_predictions(predictions_path, meta)
    scores = score(meta, predictions)
    if args.rubrics:
        from tinygiant.rubrics import JUDGE_MODEL, evaluate_rubrics

        rubrics = evaluate_rubrics(meta, predictions, output_dir, concurrency=args.judge_concurrency,
                                   dry_run=args.dry_run, base_url=args.judge_base_url,
                                   model=args.judge_model or JUDGE_MODEL, timeout=args.judge_timeout,
                                   qps=args.judge_qps)
        if rubrics is None:  # a dry run: nothing judged, nothing written
            return scores
        scores["rubrics"] = rubrics
    paths = write_report(scores, output_dir)

    o, off = scores["overall"], scores["official"]
    print(
        f"MMAR accuracy: {_pct(o['accuracy'], 2)} % ({o['correct']}/{o['total']}, 95 % CI {_ci(o)}); "
        f"missing {scores['n_missing']}, errors {scores['n_errors']} (counted wrong)"
    )
    print(f"official-script accuracy over predicted items: {_pct(off['accuracy'], 2)} % ({off['correct']}/{off['total']})")
    if "rubrics" in scores:
        r = scores["rubrics"]
        ci = r["overall"]["ci95"]
        print(f"MMAR-Rubrics: {_pct(r['overall']['score'], 2)} (n {r['overall']['n']}, 95 % CI "
              f"{'–' if ci is None else f'{ci[0]:.1f}–{ci[1]:.1f}'}); judged {r['n_judged']}, unjudged "
              f"{r['n_unjudged']}, judge errors {r['n_judge_errors']}")
    print(f"report: {paths['report.md']}")
    return scores


if __name__ == "__main__":
    main()
