"""MMAR on the evaluation runner: its loader, breakdowns, published numbers, its report and MMAR-Rubrics.

MMAR (arXiv 2505.13032) has 1,000 multiple-choice items over 7 modalities, 4 layers (`category`)
and 16 sub-categories. A prediction is the text of the chosen option; it is judged with the
official token-set rule (`runner.string_match`, copied in behaviour from MMAR's `code/evaluation.py`).

Our numbers differ from the official script in one deliberate way: an item with no prediction, or
flagged with an `"error"` field (e.g. its audio was missing), counts as WRONG here, whereas the
official script silently leaves items without `answer_prediction` out of the denominator. The
report gives both numbers. Accuracies are percentages (0-100), with 95 % Wilson intervals.

Usage (or `python -m tinygiant.eval.mmar ...`):
    tinygiant eval mmar --model REPO_OR_DIR --meta MMAR-meta.jsonl --audio-dir MMAR --output-dir OUT
    tinygiant eval mmar --model REPO_OR_DIR --output-dir OUT          # online: fetches BoJack/MMAR
    tinygiant eval mmar --meta MMAR-meta.jsonl --score-only predictions.jsonl --output-dir OUT
    tinygiant eval mmar --server URL [--server-model NAME] --meta MMAR-meta.jsonl --output-dir OUT  # any endpoint
    tinygiant eval mmar ... --rubrics [--dry-run] [--judge-base-url URL --judge-model NAME]   # MMAR-Rubrics
Generation is resumable (`tinygiant.eval.runner`): rerun the same command after an interruption and
only the items missing from OUT/predictions.jsonl are answered.
"""

import argparse
import tarfile
from collections.abc import Sequence
from pathlib import Path

from parsing_tinygiant import format_question
from tinygiant.eval.mmar_format import LAYERS, MODALITIES, REQUIRED_KEYS, SUB_CATEGORIES
from tinygiant.eval.runner import (
    Benchmark,
    Breakdown,
    Loaded,
    error_bars,
    interval_text,
    pct,
    peer_row,
    plot_groups,
    raise_problems,
    read_json_records,
    run_lines,
    string_match,
    table_row,
)
from tinygiant.eval.runner import main as run_main
from tinygiant.eval.runner import score as score_items
from tinygiant.files import write_json_atomic, write_text_atomic

# The paper's (and the MMAR leaderboard's) short column names for the modalities.
MODALITY_SHORT = dict(zip(MODALITIES, ["S", "M", "Sp", "S-M", "S-Sp", "M-Sp", "All"]))


def _by_modality(values: Sequence[float]) -> dict[str, float]:
    return dict(zip(MODALITIES, values))


def _by_sub_category(values: Sequence[float]) -> dict[str, float]:
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
_TABLE4_FULL = [33.33, 62.50, 33.33, 46.43, 41.18, 36.36, 43.62, 45.83, 51.97, 50.00, 51.67, 46.48, 62.50, 57.69,
                30.00, 31.75]
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
                [27.78, 25.00, 40.00, 42.86, 41.18, 29.29, 31.54, 39.58, 45.07, 52.00, 40.00, 33.80, 37.50, 42.31,
                 30.00, 22.22]
            ),
        },
        "w/o IQ": {
            "overall": 39.70,
            "by_modality": _by_modality([38.79, 33.50, 44.56, 18.18, 40.37, 36.59, 41.67]),
            "by_sub_category": _by_sub_category(
                [22.22, 25.00, 26.67, 42.86, 23.53, 26.26, 39.60, 41.67, 45.39, 30.00, 46.67, 38.03, 50.00, 32.69,
                 30.00, 15.87]
            ),
        },
        "w/o CLAP": {
            "overall": 42.70,
            "by_modality": _by_modality([38.79, 35.44, 43.54, 36.36, 47.71, 50.00, 54.17]),
            "by_sub_category": _by_sub_category(
                [38.89, 50.00, 46.67, 35.71, 41.18, 40.40, 44.30, 41.67, 49.34, 38.00, 38.33, 42.25, 50.00, 44.23,
                 30.00, 22.22]
            ),
        },
        "Full": {
            "overall": 46.40,
            "by_modality": _by_modality([47.27, 37.86, 46.94, 45.45, 49.08, 58.54, 41.67]),
            "by_sub_category": _by_sub_category(_TABLE4_FULL),
        },
    },
}


# Published MMAR accuracies of peers (the MMAR README leaderboard), for the field's table.
PUBLISHED = {
    "TinyGiantALM": {"overall": PAPER_MMAR["overall"], "source": PAPER_MMAR["source"]},
    "Qwen2.5-Omni-3B": {"overall": 53.8, "source": "MMAR README leaderboard"},
    "R1-AQA": {"overall": 47.6, "source": "MMAR README leaderboard"},
    "Qwen2.5-Omni-7B": {"overall": 56.7, "source": "MMAR README leaderboard"},
    "Omni-R1": {"overall": 63.4, "source": "MMAR README leaderboard"},
}
BREAKDOWNS = (Breakdown("by_modality", "modality", tuple(MODALITIES)), Breakdown("by_layer", "category", tuple(LAYERS)),
              Breakdown("by_sub_category", "sub-category", tuple(SUB_CATEGORIES)))


# ---------------------------------------------------------------------------------------------------
# Items and scores
# ---------------------------------------------------------------------------------------------------


def _drop_empty_choices(items: list) -> tuple[list, list[str]]:
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


def load_meta(path: str | Path, skip_invalid: bool = False) -> list[dict]:
    """Read MMAR's `MMAR-meta.jsonl` (or the old `MMAR-meta.json` array) and check every item.

    Empty choices are dropped first (MMAR publishes 4 items whose last choice is `""`), with one printed warning
    naming the items. Returns the items (dicts) in file order. Raises `ValueError` naming the item id and the problem
    for: a missing required key, an `id`, `audio_path`, `answer`, modality, layer or sub-category that is not a
    non-empty string, an unknown modality, layer or sub-category (or a sub-category under the wrong layer), a
    question or choices the prompt cannot take (`format_question`: 2 to 6 distinct non-empty strings), an answer
    that is not one of the choices, or a repeated id. The old JSON has 6 answers outside their choices; use the GitHub
    JSONL, or pass `skip_invalid=True` to leave such items out with a printed warning (done for the Hub copy).
    """
    items, trimmed = _drop_empty_choices(read_json_records(path))
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
    raise_problems(path, problems, "MMAR items")
    return items


def score(meta: Sequence[dict], predictions: dict | list[dict]) -> dict:
    """Accuracy overall, by modality, layer and sub-category, plus what the official script would say
    (`runner.score`): all 7 modalities, 4 layers and 16 sub-categories are present even when empty."""
    return score_items(meta, predictions, BREAKDOWNS,
                       lambda item, prediction: string_match(item["answer"], prediction, item["choices"]))


# ---------------------------------------------------------------------------------------------------
# The Hub copy
# ---------------------------------------------------------------------------------------------------

MMAR_REPO = "BoJack/MMAR"
MAX_THINKING_CHARS = 10_000  # the challenge rejects longer `thinking_prediction`s


def fetch_mmar(cache_dir: str | Path) -> tuple[str, Path]:
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


# ---------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------


def _rubrics_section(rubrics: dict) -> list[str]:
    """Report lines for the MMAR-Rubrics scores (`tinygiant.eval.rubrics.rubric_scores`)."""
    from tinygiant.eval.rubrics import PAPER_RUBRICS

    def row(name: str, cell: dict, paper_value: float | None = None) -> str:
        return f"| {name} | {pct(cell['score'], 2)} | {cell['n']} | {interval_text(cell)} | {pct(paper_value, 2)} |"

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


def write_report(scores: dict, out_dir: str | Path, run: dict | None = None,
                 paper: dict = PAPER_MMAR) -> dict[str, Path]:
    """Write `scores.json`, `report.md` and `accuracy_by_modality.png` into `out_dir`; return their paths. `run` (the
    runner's `run.json`) names what answered; the paper column is TinyGiantALM's published figures, and a peer with a
    published MMAR figure gets its own line."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "scores.json", scores)

    overall, official = scores["overall"], scores["official"]
    header = "| {} | accuracy (%) | correct/n | 95 % CI | TinyGiantALM paper (%) |\n|---|---|---|---|---|"
    peer = peer_row(PUBLISHED, run)
    lines = [
        "# MMAR results",
        "",
        *run_lines(run, scores),
        f"Paper numbers: {paper['source']}."
        + (f" The model evaluated here, {peer}, published {PUBLISHED[peer]['overall']:.1f} % "
           f"({PUBLISHED[peer]['source']})." if peer and peer != "TinyGiantALM" else ""),
        "",
        "## Overall",
        "",
        header.format("items"),
        table_row("all", overall, paper["overall"]),
        "",
        f"Items without a prediction: {scores['n_missing']}; items flagged with an error: {scores['n_errors']}. "
        "Both count as wrong here. The official MMAR script instead drops items that have no "
        "`answer_prediction`; over the items it would score it would print "
        f"{pct(official['accuracy'])} % ({official['correct']}/{official['total']}).",
        "",
        "## By modality",
        "",
        header.format("modality"),
    ]
    for m in MODALITIES:
        lines.append(table_row(f"{m} ({MODALITY_SHORT[m]})", scores["by_modality"][m], paper["by_modality"].get(m)))
    lines += [
        "",
        "## By layer",
        "",
        "The paper gives no per-layer accuracy.",
        "",
        "| layer | accuracy (%) | correct/n | 95 % CI |\n|---|---|---|---|",
    ]
    lines += [table_row(layer, scores["by_layer"][layer], with_reference=False) for layer in LAYERS]
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
            lines.append(table_row(f"{layer} / {s}", scores["by_sub_category"][s], paper["by_sub_category"].get(s),
                                   reference_digits=2))
    if "rubrics" in scores:
        lines += _rubrics_section(scores["rubrics"])
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")

    cells = [scores["by_modality"][m] for m in MODALITIES] + [overall]
    series = [
        ("accuracy, ours (95 % CI)", [c["accuracy"] for c in cells], error_bars(cells), None),
        ("accuracy, paper", [paper["by_modality"].get(m) for m in MODALITIES] + [paper["overall"]], None, "//"),
    ]
    title = "MMAR accuracy by modality"
    if "rubrics" in scores:
        from tinygiant.eval.rubrics import PAPER_RUBRICS

        rubric_cells = [scores["rubrics"]["by_modality"][m] for m in MODALITIES] + [scores["rubrics"]["overall"]]
        series += [
            ("Rubrics, ours (95 % CI)", [c["score"] for c in rubric_cells],
             error_bars([{"accuracy": c["score"], "ci95": c["ci95"]} for c in rubric_cells]), "..")]
        series += [("Rubrics, paper's team", [None] * len(MODALITIES) + [PAPER_RUBRICS], None, "xx")]
        title = "MMAR accuracy and MMAR-Rubrics score by modality"
    plot_groups(out / "accuracy_by_modality.png", [MODALITY_SHORT[m] for m in MODALITIES] + ["Overall"], series,
                 title)
    return {name: out / name for name in ("scores.json", "report.md", "accuracy_by_modality.png")}


# ---------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------


class Mmar(Benchmark):
    name, title = "mmar", "MMAR"
    breakdowns = BREAKDOWNS
    published = PUBLISHED
    plot_group = "by_modality"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        judge = parser.add_argument_group("MMAR-Rubrics (an LLM judge grades the reasoning of correct answers)")
        judge.add_argument("--rubrics", action="store_true", help="also compute the MMAR-Rubrics score")
        judge.add_argument("--judge-base-url", help="an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 "
                                                    "(vLLM) or http://localhost:11434/v1 (Ollama); default OpenAI's")
        judge.add_argument("--judge-model", default=None, help="default gpt-4o-2024-11-20, the official judge")
        judge.add_argument("--judge-concurrency", type=int, default=4, help="judge calls in flight at most")
        judge.add_argument("--judge-qps", type=float, default=None, help="judge calls started per second at most")
        judge.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per judge request")
        judge.add_argument("--dry-run", action="store_true",
                           help="with --rubrics: print the number of judge calls and a token estimate, call nothing")

    def check_arguments(self, parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        if args.dry_run and not args.rubrics:
            parser.error("--dry-run estimates the judge's cost: use it with --rubrics")
        if args.judge_concurrency < 1:
            parser.error("--judge-concurrency must be at least 1")
        if args.meta is None and args.score_only:
            parser.error("--score-only needs --meta")

    def load(self, args: argparse.Namespace, output_dir: Path) -> Loaded:
        meta_path, audio_dir = args.meta, args.audio_dir
        if meta_path is None:
            meta_path, audio_dir = fetch_mmar(output_dir / "data")
        items = load_meta(meta_path, skip_invalid=args.meta is None)
        if args.rubrics:  # before any generation: the old meta has no rubrics
            from tinygiant.eval.rubrics import check_rubric

            for item in items:
                check_rubric(item)
        return Loaded(items, Path(audio_dir or Path(meta_path).parent))

    def score(self, items: list[dict], predictions: dict) -> dict:
        return score(items, predictions)

    def after_scoring(self, args: argparse.Namespace, items: list[dict], predictions: dict, scores: dict,
                      output_dir: Path) -> dict | None:
        if not args.rubrics:
            return scores
        from tinygiant.eval.rubrics import JUDGE_MODEL, evaluate_rubrics

        rubrics = evaluate_rubrics(items, predictions, output_dir, concurrency=args.judge_concurrency,
                                   dry_run=args.dry_run, base_url=args.judge_base_url,
                                   model=args.judge_model or JUDGE_MODEL, timeout=args.judge_timeout,
                                   qps=args.judge_qps)
        if rubrics is None:  # a dry run: nothing judged, nothing written
            return None
        return {**scores, "rubrics": rubrics}

    def write_report(self, scores: dict, out_dir: str | Path, run: dict | None, loaded: Loaded) -> dict[str, Path]:
        return write_report(scores, out_dir, run)

    def summary(self, scores: dict) -> str:
        text = super().summary(scores)
        if "rubrics" in scores:
            r = scores["rubrics"]
            text += (f"\nMMAR-Rubrics: {pct(r['overall']['score'], 2)} (n {r['overall']['n']}, 95 % CI "
                     f"{interval_text(r['overall'])}); judged {r['n_judged']}, unjudged {r['n_unjudged']}, judge "
                     f"errors {r['n_judge_errors']}")
        return text


BENCHMARK = Mmar()


def main(argv: Sequence[str] | None = None) -> dict:
    """`tinygiant eval mmar`: answer MMAR (or take a predictions file), score it and write the report."""
    return run_main(BENCHMARK, argv)


if __name__ == "__main__":
    main()
