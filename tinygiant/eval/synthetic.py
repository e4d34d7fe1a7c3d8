"""The synthetic benchmark: the held-out multiple-choice questions of `tinygiant.demo.synthetic`'s data, on the runner.

    tinygiant eval synthetic --model runs/demo/model --meta runs/demo/data/eval-meta.jsonl --output-dir OUT

What the demo and the ablation score their runs with. Its items are `{"id", "audio_path", "question", "choices",
"answer", "task"}` (`eval-meta.jsonl`, written by `make_synthetic_dataset` and `make_scene_dataset`); the breakdown is
by task. The answers are the option texts, scored by the same token rule as MMAU and MMAR (`runner.string_match`):
the synthetic responses name the option by its text. There are no published figures; each task's chance accuracy
is in the dataset's `summary.json`.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

from tinygiant.eval.runner import Benchmark, Breakdown, Loaded, read_json_records
from tinygiant.eval.runner import main as run_main

REQUIRED_KEYS = ("id", "audio_path", "question", "choices", "answer", "task")
META_FILE = "eval-meta.jsonl"


def load_meta(path: str | Path) -> list[dict]:
    """The synthetic benchmark's items, checked: every key present, the answer one of the choices, ids unique."""
    items = read_json_records(path)
    problems, seen = [], set()
    for index, item in enumerate(items):
        missing = [k for k in REQUIRED_KEYS if not isinstance(item, dict) or k not in item]
        name = item.get("id", f"#{index}") if isinstance(item, dict) else f"#{index}"
        if missing:
            problems.append(f"item {name}: missing keys {missing}")
        elif item["answer"] not in item["choices"]:
            problems.append(f"item {name}: answer {item['answer']!r} is not one of the choices")
        elif name in seen:
            problems.append(f"item {name}: duplicate id")
        seen.add(name)
    if problems:
        raise ValueError(f"{path}: not the synthetic benchmark's meta ({len(problems)} problem(s)):\n  "
                         + "\n  ".join(problems[:20]))
    return items


class Synthetic(Benchmark):
    name, title = "synthetic", "Synthetic benchmark"
    breakdowns = (Breakdown("by_task", "task"),)
    plot_group = "by_task"

    def check_arguments(self, parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        if args.meta is None:
            parser.error(f"--meta is needed: the {META_FILE} that tinygiant.demo.synthetic wrote")

    def load(self, args: argparse.Namespace, output_dir: Path) -> Loaded:
        return Loaded(load_meta(args.meta), Path(args.audio_dir or Path(args.meta).parent))

    def load_folder(self, data_dir: str | Path) -> Loaded:
        """The items of the dataset that `tinygiant.demo.synthetic` wrote into `data_dir`."""
        return Loaded(load_meta(Path(data_dir) / META_FILE), Path(data_dir))


BENCHMARK = Synthetic()


def main(argv: Sequence[str] | None = None) -> dict:
    """`tinygiant eval synthetic`: answer the synthetic benchmark, score it and write the report."""
    return run_main(BENCHMARK, argv)


if __name__ == "__main__":
    main()
