"""Two runs of one benchmark compared item by item: did B differ from A beyond noise?

    tinygiant eval compare RUN_A RUN_B [--output-dir OUT]     # RUN_*: a run's output folder (its scores.json)
    compare_runs("runs/demo/model/eval", "runs/demo/control/eval")  # the same, from Python: a dict

Both runs must have scored the same items. For the items overall and for every breakdown the runs' `scores.json`
carry (each item outcome's fields: modality, task, difficulty, ...): the accuracy difference A - B in points with a
paired bootstrap 95 % interval (items resampled, both runs together), and McNemar's exact test on the items exactly
one run got right. The items that flipped each way are listed. An item with no prediction or an error counts as
wrong, as in the runs' own scores. Writes `compare.json` and `compare.md` into `--output-dir` when given.
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from tinygiant.eval.stats import paired_difference
from tinygiant.files import write_json_atomic, write_text_atomic

BOOTSTRAP_SAMPLES = 10_000
SIGNIFICANCE = 0.05
NOT_BREAKDOWNS = ("id", "status")


def item_outcomes(run: str | Path) -> list[dict]:
    """The item outcomes a run's `scores.json` lists (`{"id", "status", <breakdown fields>}`)."""
    path = Path(run) / "scores.json" if Path(run).is_dir() else Path(run)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass a run's output folder (with its scores.json)")
    scores = json.loads(path.read_text(encoding="utf-8"))
    if "items" not in scores or not isinstance(scores["items"], list) or scores.get("no_answers"):
        raise ValueError(f"{path} lists no scored items to compare")
    return scores["items"]


def compare_runs(run_a: str | Path, run_b: str | Path, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """Run A against run B: `{"overall": paired cell, "breakdowns": {field: {value: paired cell}}, "flipped":
    {"only_a_right": [ids], "only_b_right": [ids]}}`, each paired cell as `stats.paired_difference` gives it."""
    a, b = item_outcomes(run_a), item_outcomes(run_b)
    b_by_id = {o["id"]: o for o in b}
    only_a_ids = sorted({o["id"] for o in a} - set(b_by_id), key=str)
    only_b_ids = sorted(set(b_by_id) - {o["id"] for o in a}, key=str)
    if only_a_ids or only_b_ids:
        raise ValueError(f"the runs scored different items: {len(only_a_ids)} only in {run_a} "
                         f"({only_a_ids[:10]}), {len(only_b_ids)} only in {run_b} ({only_b_ids[:10]})")
    right_a = [o["status"] == "correct" for o in a]
    right_b = [b_by_id[o["id"]]["status"] == "correct" for o in a]
    result = {"a": str(run_a), "b": str(run_b),
              "overall": paired_difference(right_a, right_b, samples, seed), "breakdowns": {}}
    fields = [k for k in a[0] if k not in NOT_BREAKDOWNS] if a else []
    for key in fields:
        values = list(dict.fromkeys(str(o[key]) for o in a))
        result["breakdowns"][key] = {
            value: paired_difference([r for r, o in zip(right_a, a) if str(o[key]) == value],
                                     [r for r, o in zip(right_b, a) if str(o[key]) == value], samples, seed)
            for value in values}
    result["flipped"] = {"only_a_right": [o["id"] for o, x, y in zip(a, right_a, right_b) if x and not y],
                         "only_b_right": [o["id"] for o, x, y in zip(a, right_a, right_b) if y and not x]}
    return result


def _row(name: str, c: dict) -> str:
    ci = "–" if c["bootstrap_ci95"] is None else f"[{c['bootstrap_ci95'][0]:+.1f}, {c['bootstrap_ci95'][1]:+.1f}]"
    mark = " *" if c["mcnemar_p"] < SIGNIFICANCE else ""
    return (f"| {name} | {c['n']} | {c['accuracy_a']:.1f} | {c['accuracy_b']:.1f} | {c['difference']:+.1f} | {ci} | "
            f"{c['only_a_right']}/{c['only_b_right']} | {c['mcnemar_p']:.3g}{mark} |")


def markdown(result: dict, listed: int = 50) -> str:
    """The comparison as a Markdown report."""
    header = ("| {} | n | A (%) | B (%) | A - B (points) | 95 % paired bootstrap | only A / only B right | "
              "McNemar exact p |\n|---|---|---|---|---|---|---|---|")
    overall = result["overall"]
    verdict = ("a significant difference" if overall["mcnemar_p"] < SIGNIFICANCE
               else "no significant difference")
    lines = [f"# {result['a']} (A) against {result['b']} (B)", "",
             f"Overall: {verdict} (McNemar exact p = {overall['mcnemar_p']:.3g}; * marks p < {SIGNIFICANCE}).", "",
             header.format("items"), _row("all", overall), ""]
    for key, cells in result["breakdowns"].items():
        lines += [header.format(key), *[_row(value, c) for value, c in cells.items() if c["n"]], ""]
    for side, label in (("only_a_right", "A right, B wrong"), ("only_b_right", "B right, A wrong")):
        ids = result["flipped"][side]
        shown = ", ".join(map(str, ids[:listed])) + (f", ... ({len(ids) - listed} more)" if len(ids) > listed else "")
        lines += [f"{label} ({len(ids)}): {shown or 'none'}", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="tinygiant eval compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", help="run A's output folder (or its scores.json)")
    parser.add_argument("run_b", help="run B's output folder (or its scores.json)")
    parser.add_argument("--output-dir", help="also write compare.json and compare.md here")
    parser.add_argument("--samples", type=int, default=BOOTSTRAP_SAMPLES, help="bootstrap resamples")
    args = parser.parse_args(argv)
    result = compare_runs(args.run_a, args.run_b, args.samples)
    text = markdown(result)
    print(text)
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "compare.json", result)
        write_text_atomic(out / "compare.md", text)
    return result


if __name__ == "__main__":
    main()
