"""MMSU on the evaluation runner: 5,000 spoken-language items over 47 tasks (arXiv 2506.04779; data on the Hub:
ddwang2000/MMSU).

An item has `question`, `choice_a` ... `choice_d`, `answer` (a letter), `category` (perception or reasoning),
`sub_category` (linguistics or paralinguistics) and `task_name`, plus its audio: offline, a meta file (JSON list or
JSON lines) whose `audio_path` (or `audio`, a path) is relative to `--audio-dir`; online, the Hub dataset, whose audio
is written once under the output folder. Breakdowns: category, category / sub-category, and task.

Scoring, our choice (MMSU publishes no scoring script; lmms-eval's asks for a letter and guesses at random when it
reads none): the chosen option is read from the answer with the parser the pipeline uses (`parse_response`: a stated
letter, else the one option the answer names, else none; nothing guessed), and is right iff it is the answer's
option. TinyGiant answers with a chain of thought, so the prompt is the same as for every benchmark (the question and
its lettered options) and the runner writes the chosen option's text as the prediction; a peer's free answer ("The
answer is B") is read by the same rule.

    tinygiant eval mmsu --model REPO_OR_DIR --meta mmsu.jsonl --audio-dir DIR --output-dir OUT
    tinygiant eval mmsu --model REPO_OR_DIR --output-dir OUT       # online: the Hub dataset
"""

import argparse
import string
from collections.abc import Sequence
from pathlib import Path

from parsing_tinygiant import parse_response
from tinygiant.eval.runner import Benchmark, Breakdown, Loaded, raise_problems, read_json_records
from tinygiant.eval.runner import main as run_main

HUB_REPO = "ddwang2000/MMSU"
CHOICE_KEYS = ("choice_a", "choice_b", "choice_c", "choice_d")
REQUIRED_KEYS = ("question", *CHOICE_KEYS, "answer", "category", "sub_category", "task_name")
CATEGORIES = ("perception", "reasoning")
SUB_CATEGORIES = ("linguistics", "paralinguistics")
# Published MMSU accuracies are not yet in the field's standard table; none are quoted.
PUBLISHED: dict = {}


def item_from_record(record: dict, index: int, audio_path: str) -> dict:
    """One MMSU record as a runner item; raises `ValueError` naming what is wrong."""
    name = record.get("id", f"#{index}")
    missing = [k for k in REQUIRED_KEYS if k not in record and not (k == "sub_category" and "sub-category" in record)]
    if missing:
        raise ValueError(f"item {name}: missing {missing} (is this MMSU's data?)")
    choices = [str(record[k]).strip() for k in CHOICE_KEYS if record[k] is not None and str(record[k]).strip()]
    letter = str(record["answer"]).strip().lower()
    if len(letter) != 1 or letter not in string.ascii_lowercase[: len(choices)]:
        raise ValueError(f"item {name}: answer {record['answer']!r} is not the letter of one of its "
                         f"{len(choices)} choices")
    category = str(record["category"]).strip().lower()
    sub_category = str(record.get("sub_category", record.get("sub-category"))).strip().lower()
    return {"id": str(record.get("id", f"{record['task_name']}-{index}")), "audio_path": audio_path,
            "question": record["question"], "choices": choices, "answer": choices[string.ascii_lowercase.index(letter)],
            "category": category, "category / sub_category": f"{category} / {sub_category}",
            "task_name": record["task_name"]}


def load_meta(path: str | Path) -> list[dict]:
    """MMSU's items from a JSON list or JSON lines file, each with its audio at `audio_path` (or `audio`)."""
    items, problems = [], []
    for index, record in enumerate(read_json_records(path)):
        try:
            if not isinstance(record, dict):
                raise ValueError(f"item #{index}: not a JSON object")
            audio = record.get("audio_path", record.get("audio"))
            if not isinstance(audio, str):
                raise ValueError(f"item {record.get('id', f'#{index}')}: no 'audio_path' (a path relative to "
                                 "--audio-dir)")
            items.append(item_from_record(record, index, audio))
        except ValueError as error:
            problems.append(str(error))
    ids = [item["id"] for item in items]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        problems.append(f"duplicate ids: {repeated[:20]}")
    raise_problems(path, problems, "MMSU items")
    return items


def fetch_mmsu(cache_dir: Path) -> tuple[list[dict], Path]:
    """The Hub dataset's items, their audio written once under `cache_dir/mmsu/audio` (the files' own bytes)."""
    from datasets import Audio, load_dataset

    try:
        dataset = load_dataset(HUB_REPO)
    except Exception as error:
        raise RuntimeError(f"could not load {HUB_REPO} from the Hugging Face Hub ({type(error).__name__}: {error}); "
                           "pass --meta and --audio-dir") from error
    split = next(iter(dataset.values())) if len(dataset) == 1 else dataset.get("test", dataset.get("train"))
    split = split.cast_column("audio", Audio(decode=False))
    audio_dir = Path(cache_dir) / "mmsu"
    (audio_dir / "audio").mkdir(parents=True, exist_ok=True)
    items = []
    for index, record in enumerate(split):
        audio = record.pop("audio")
        suffix = Path(audio.get("path") or "clip.wav").suffix or ".wav"
        item = item_from_record(record, index, "")
        item["audio_path"] = f"audio/{item['id']}{suffix}"
        if not (audio_dir / item["audio_path"]).is_file():
            data = audio["bytes"] if audio.get("bytes") else Path(audio["path"]).read_bytes()
            (audio_dir / item["audio_path"]).write_bytes(data)
        items.append(item)
    return items, audio_dir


class Mmsu(Benchmark):
    name, title = "mmsu", "MMSU"
    breakdowns = (Breakdown("by_category", "category", CATEGORIES),
                  Breakdown("by_sub_category", "category / sub_category",
                            tuple(f"{c} / {s}" for c in CATEGORIES for s in SUB_CATEGORIES)),
                  Breakdown("by_task", "task_name"))
    published = PUBLISHED
    plot_group = "by_sub_category"

    def load(self, args: argparse.Namespace, output_dir: Path) -> Loaded:
        if args.meta is None:
            if args.score_only:
                raise ValueError("--score-only needs --meta")
            items, audio_dir = fetch_mmsu(output_dir / "data")
            return Loaded(items, audio_dir, version=f"{HUB_REPO} (Hub)")
        return Loaded(load_meta(args.meta), Path(args.audio_dir or Path(args.meta).parent),
                      version=Path(args.meta).name)

    def is_correct(self, item: dict, prediction: str | None) -> bool:
        """The option the prediction chooses (`parse_response`), compared with the answer's option."""
        return parse_response(prediction or "", item["choices"])["choice"] == item["answer"]


BENCHMARK = Mmsu()


def main(argv: Sequence[str] | None = None) -> dict:
    """`tinygiant eval mmsu`: answer MMSU (or take a predictions file), score it and write the report."""
    return run_main(BENCHMARK, argv)


if __name__ == "__main__":
    main()
