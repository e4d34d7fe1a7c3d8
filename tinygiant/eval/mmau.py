"""MMAU on the evaluation runner: test-mini (1,000 items with answers) scored by the authors' rule, and test (9,000
items without answers) written as the file their evaluation service takes.

MMAU (arXiv 2410.19168; Sakshi113/MMAU on GitHub). Cite the metadata version `MMAU-v05.15.25` (May 2025: about 25 %
of the questions and answers were revised); the report names the version scored. An item is
`{"id", "audio_id", "question", "choices", "answer", "dataset", "task", "split", "category", "sub-category",
"difficulty"}`; `audio_id` (e.g. `./test-mini-audios/<id>.wav`) is relative to the folder the audio was extracted in
(`--audio-dir`). `task` is sound, music or speech; `difficulty` easy, medium or hard; there are 27 sub-categories.

Scoring is the authors' `evaluation.py`: the token-set rule (`runner.string_match`) applied to the prediction as
given; items without a prediction are skipped by their script (`official`, also per breakdown in `official_by`) and
counted wrong by ours (`overall` and the breakdowns). `--score-only FILE` takes either the project's predictions
JSONL (`{"id", "thinking_prediction", "answer_prediction"}`) or MMAU's own submission format: the test-mini JSON list
with a `model_output` field on each item.

Data taken as published: 27 test-mini items list a choice twice and one has 8 choices. A repeated choice is asked once
(the official rule gives the same verdict with or without the repeat); an item with more than 6 choices cannot be
asked with the lettered prompt (`format_question`) and is recorded as that item's error, counted wrong and listed.

    tinygiant eval mmau --model REPO_OR_DIR --meta mmau-test-mini.json --audio-dir DIR --output-dir OUT
    tinygiant eval mmau --meta mmau-test-mini.json --score-only FILE --output-dir OUT
    tinygiant eval mmau --server URL --meta mmau-test.json --audio-dir DIR --output-dir OUT   # writes the submission
"""

import argparse
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from tinygiant.eval.runner import Benchmark, Breakdown, Loaded, check_known_ids, raise_problems, read_json_records
from tinygiant.eval.runner import main as run_main
from tinygiant.eval.runner import write_report as write_generic_report
from tinygiant.files import write_json_atomic, write_text_atomic

VERSION = "MMAU-v05.15.25"
TASKS = ("sound", "music", "speech")
DIFFICULTIES = ("easy", "medium", "hard")
SUB_CATEGORIES = {  # as MMAU spells them, by task
    "sound": ("Acoustic Source Inference", "Temporal Event Reasoning", "Event-Based Sound Reasoning",
              "Ambient Sound Interpretation", "Acoustic Scene Reasoning", "Eco-Acoustic Knowledge",
              "Sound-Based Event Recognition"),
    "music": ("Temporal Reasoning", "Rhythm and Tempo Understanding", "Instrumentation",
              "Musical Texture Interpretation", "Musical Genre Reasoning", "Melodic Structure Interpretation",
              "Harmony and Chord Progressions", "Emotional Tone Interpretation", "Socio-cultural Interpretation",
              "Lyrical Reasoning"),
    "speech": ("Phonemic Stress Pattern Analysis", "Phonological Sequence Decoding", "Emotion State summarisation",
               "Dissonant Emotion Interpretation", "Event-Based Knowledge Retrieval", "Counting",
               "Multi Speaker Role Mapping", "Conversational Fact Retrieval", "Key highlight Extraction",
               "Emotion Flip Detection"),
}
REQUIRED_KEYS = ("id", "audio_id", "question", "choices", "task", "sub-category", "difficulty")
# Published MMAU test-mini accuracies (%), as their sources list them.
PUBLISHED = {
    "Qwen2.5-Omni-3B": {"overall": 63.3, "source": "Ke-Omni-R README (its base model)"},
    "Ke-Omni-R-3B": {"overall": 67.4, "source": "Ke-Omni-R README"},
    "R1-AQA": {"overall": 64.5, "source": "R1-AQA README"},
    "Qwen2.5-Omni-7B": {"overall": 65.6, "source": "Omni-R1, arXiv 2505.09439"},
    "Omni-R1": {"overall": 71.3, "source": "Omni-R1, arXiv 2505.09439"},
}
HUB_REPOS = {"test-mini": "gamma-lab-umd/MMAU-test-mini", "test": "gamma-lab-umd/MMAU-test"}
SUBMISSION_FILE = "mmau-test-submission.json"


def _distinct(choices: list) -> list:
    return list(dict.fromkeys(choices))


def load_meta(path: str | Path) -> list[dict]:
    """Read `mmau-test-mini.json` or `mmau-test.json` (a JSON list; JSON lines work too) and check every item.

    Returns the items, each with `audio_path` (its `audio_id`) and its choices asked once each. Raises `ValueError`
    naming what is missing (a meta file of another benchmark lacks `audio_id`, `task`, `difficulty`, ...), an unknown
    task or difficulty (the authors' script would stop on them too), repeated ids, an answer that is not one of the
    choices, or a file where some items have answers and others not. Prints one warning naming the items whose
    choices repeat, and those with more choices than the prompt takes.
    """
    records = read_json_records(path)
    problems, seen, items, repeated, too_many = [], set(), [], [], []
    answered = sum(isinstance(r, dict) and "answer" in r for r in records)
    if answered not in (0, len(records)):
        problems.append(f"{answered} of {len(records)} items have an 'answer': a file is test-mini (all) or test "
                        "(none)")
    for index, record in enumerate(records):
        name = record.get("id", f"#{index}") if isinstance(record, dict) else f"#{index}"
        missing = [k for k in REQUIRED_KEYS if not isinstance(record, dict) or k not in record]
        if missing:
            problems.append(f"item {name}: missing {missing} (is this MMAU's mmau-test-mini.json or mmau-test.json?)")
            continue
        if name in seen:
            problems.append(f"item {name}: duplicate id")
        seen.add(name)
        if record["task"] not in TASKS:
            problems.append(f"item {name}: unknown task {record['task']!r} (MMAU has {', '.join(TASKS)})")
        if record["difficulty"] not in DIFFICULTIES:
            problems.append(f"item {name}: unknown difficulty {record['difficulty']!r}")
        choices = record["choices"]
        if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
            problems.append(f"item {name}: 'choices' must be a list of non-empty strings")
            continue
        if answered and record["answer"] not in choices:
            problems.append(f"item {name}: answer {record['answer']!r} is not one of the choices")
        distinct = _distinct(choices)
        if len(distinct) < len(choices):
            repeated.append(str(name))
        if len(distinct) > 6:
            too_many.append(str(name))
        items.append({**record, "choices": distinct, "published_choices": choices, "answer": record.get("answer"),
                      "audio_path": record["audio_id"]})
    raise_problems(path, problems, "MMAU items")
    if repeated:
        print(f"warning: {path}: {len(repeated)} item(s) list a choice twice, asked once: {', '.join(repeated)}")
    if too_many:
        print(f"warning: {path}: {len(too_many)} item(s) have more than the 6 choices the prompt takes; they will be "
              f"recorded as errors and counted wrong: {', '.join(too_many)}")
    return items


def read_submission(path: str | Path, items: list[dict]) -> dict:
    """MMAU's own submission format (the meta's JSON list with `model_output` on each item) as prediction records:
    `{id: {"id", "answer_prediction"}}` for the items that have the key, as the authors' script reads them."""
    predictions = {}
    for number, record in enumerate(read_json_records(path), 1):
        if not isinstance(record, dict) or "id" not in record:
            raise ValueError(f"{path}: record {number} has no 'id'")
        if "model_output" not in record:
            continue  # the authors' script skips it
        if not isinstance(record["model_output"], str):
            raise ValueError(f"{path}: item {record['id']}: 'model_output' must be a string (the authors' script "
                             f"would fail on {record['model_output']!r})")
        if record["id"] in predictions:
            raise ValueError(f"{path}: duplicate id {record['id']}")
        predictions[record["id"]] = {"id": record["id"], "answer_prediction": record["model_output"]}
    check_known_ids(path, predictions, items, "the MMAU")
    return predictions


def fetch_mmau(split: str, cache_dir: Path) -> tuple[Path, Path]:
    """Download the split's Hub dataset repo (`HUB_REPOS`) and extract its audio archives once under `cache_dir`.

    Returns `(meta_path, audio_dir)`: the repo's JSON file whose name names the split, and the folder its `audio_id`
    paths are relative to. Raises `RuntimeError` saying what to pass instead when the download fails or the repo
    holds no such JSON file."""
    from huggingface_hub import snapshot_download

    repo = HUB_REPOS[split]
    try:
        folder = Path(snapshot_download(repo, repo_type="dataset"))
    except Exception as error:
        raise RuntimeError(f"could not download {repo} from the Hugging Face Hub ({type(error).__name__}: {error}); "
                           f"pass --meta mmau-{split}.json (from github.com/Sakshi113/MMAU) and --audio-dir (the "
                           "folder its ./test-mini-audios/ or ./test-audios/ paths are relative to)") from error
    metas = sorted(p for p in folder.rglob("*.json") if p.stem.lower().endswith(split))
    if not metas:
        raise RuntimeError(f"{repo} holds no mmau-{split}.json; pass --meta (from github.com/Sakshi113/MMAU) and "
                           "--audio-dir")
    audio_dir = Path(cache_dir) / f"mmau-{split}"
    if not (audio_dir / ".extracted").is_file():
        audio_dir.mkdir(parents=True, exist_ok=True)
        for archive in sorted(folder.rglob("*.tar*")):
            with tarfile.open(archive) as tar:
                tar.extractall(audio_dir, filter="data")
        for archive in sorted(folder.rglob("*.zip")):
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(audio_dir)
        (audio_dir / ".extracted").touch()
    return metas[0], audio_dir


def _answers_known(items: list[dict]) -> bool:
    return all(item["answer"] is not None for item in items)


class Mmau(Benchmark):
    name, title = "mmau", "MMAU"
    breakdowns = (Breakdown("by_task", "task", TASKS), Breakdown("by_difficulty", "difficulty", DIFFICULTIES),
                  Breakdown("by_sub_category", "sub-category",
                            tuple(s for subs in SUB_CATEGORIES.values() for s in subs)))
    official_breakdowns = True
    published = PUBLISHED
    plot_group = "by_task"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--split", choices=tuple(HUB_REPOS), default="test-mini",
                            help="without --meta: which Hub copy to fetch")

    def load(self, args: argparse.Namespace, output_dir: Path) -> Loaded:
        meta_path, audio_dir = args.meta, args.audio_dir
        if meta_path is None:
            if args.score_only:
                raise ValueError("--score-only needs --meta (mmau-test-mini.json)")
            meta_path, audio_dir = fetch_mmau(args.split, output_dir / "data")
        items = load_meta(meta_path)
        split = "test-mini" if _answers_known(items) else "test (no answers: written for the evaluation service)"
        return Loaded(items, Path(audio_dir or Path(meta_path).parent),
                      version=f"{Path(meta_path).name}, {split}; cite {VERSION} if this is that release")

    def read_predictions(self, path: Path, items: list[dict]) -> dict:
        records = read_json_records(path)
        if records and isinstance(records[0], dict) and "answer_prediction" not in records[0] \
                and "error" not in records[0]:
            return read_submission(path, items)  # MMAU's own format
        return super().read_predictions(path, items)

    def score(self, items: list[dict], predictions: dict) -> dict:
        if _answers_known(items):
            return super().score(items, predictions)
        outputs = [{"id": item["id"], "model_output": predictions.get(item["id"], {}).get("answer_prediction", "")}
                   for item in items]
        return {"n_items": len(items), "n_predicted": sum(item["id"] in predictions for item in items),
                "n_errors": sum("error" in predictions.get(item["id"], {}) for item in items), "no_answers": True,
                "items": outputs}

    def write_report(self, scores: dict, out_dir: str | Path, run: dict | None,
                     loaded: Loaded) -> dict[str, Path]:
        if not scores.get("no_answers"):
            return write_generic_report(self, scores, out_dir, run, loaded)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        outputs = {o["id"]: o["model_output"] for o in scores["items"]}
        submission = [{key: value for key, value in item.items() if key not in ("audio_path", "published_choices")}
                      | {"choices": item["published_choices"], "model_output": outputs[item["id"]]}
                      for item in loaded.items]
        write_json_atomic(out / SUBMISSION_FILE, submission)
        write_json_atomic(out / "scores.json", scores)
        write_text_atomic(out / "report.md", "\n".join([
            "# MMAU test", "", f"Metadata: {loaded.version}.", "",
            f"{scores['n_predicted']} of {scores['n_items']} items answered ({scores['n_errors']} errors, written "
            f"as an empty `model_output`). The test split has no answers: submit `{SUBMISSION_FILE}` to the "
            "authors' evaluation service (see github.com/Sakshi113/MMAU).", ""]))
        return {"report.md": out / "report.md", SUBMISSION_FILE: out / SUBMISSION_FILE}

    def summary(self, scores: dict) -> str:
        if scores.get("no_answers"):
            return f"MMAU test: {scores['n_predicted']} of {scores['n_items']} items answered; submission written"
        return super().summary(scores)


BENCHMARK = Mmau()


def main(argv: Sequence[str] | None = None) -> dict:
    """`tinygiant eval mmau`: answer MMAU (or take a predictions file), score it and write the report."""
    return run_main(BENCHMARK, argv)


if __name__ == "__main__":
    main()
