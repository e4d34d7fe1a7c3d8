"""The field's table: runs of any benchmarks beside the published figures of the peers, in one Markdown table and one
PNG.

    tinygiant eval report RUN [RUN ...] [--output-dir OUT]     # RUN: a run's output folder (its scores.json)

A row per model: each run's model (named as its `run.json` names it, else by its folder) with its accuracy and 95 %
interval on each benchmark it ran, then each peer with a published figure on any of these benchmarks (the benchmark
modules' `published` rows, with their sources). Columns: the benchmarks, in the registry's order.
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from tinygiant.eval import BENCHMARKS, benchmark
from tinygiant.files import write_text_atomic


def read_run(run: str | Path) -> dict:
    """`{"benchmark", "model", "accuracy", "ci95", "n"}` of one scored run."""
    path = Path(run) / "scores.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass a run's output folder")
    scores = json.loads(path.read_text(encoding="utf-8"))
    if scores.get("benchmark") not in BENCHMARKS or "overall" not in scores:
        raise ValueError(f"{path} is not a scored run of a registered benchmark ({', '.join(BENCHMARKS)})")
    answerer = scores.get("run", {}).get("answerer", {})
    model = str(answerer.get("model") or Path(run).resolve().name)
    return {"benchmark": scores["benchmark"], "model": model, "accuracy": scores["overall"]["accuracy"],
            "ci95": scores["overall"]["ci95"], "n": scores["overall"]["total"]}


def field_table(runs: Sequence[str | Path]) -> dict:
    """`{"benchmarks": [names], "rows": {model: {benchmark: cell}}, "sources": {model: {benchmark: source}}}` with
    the runs' cells (`{"accuracy", "ci95", "n"}`) and the peers' published ones (`{"accuracy"}`)."""
    cells = [read_run(run) for run in runs]
    names = [name for name in BENCHMARKS if any(c["benchmark"] == name for c in cells)]
    rows, sources = {}, {}
    for c in cells:
        rows.setdefault(c["model"], {})[c["benchmark"]] = {k: c[k] for k in ("accuracy", "ci95", "n")}
    for name in names:
        for peer, published in benchmark(name).published.items():
            rows.setdefault(f"{peer} (published)", {})[name] = {"accuracy": published["overall"]}
            sources.setdefault(f"{peer} (published)", {})[name] = published["source"]
    return {"benchmarks": names, "rows": rows, "sources": sources}


def markdown(table: dict) -> str:
    titles = [benchmark(name).title for name in table["benchmarks"]]
    lines = ["| model | " + " | ".join(f"{t} (%)" for t in titles) + " |", "|---|" + "---|" * len(titles)]
    for model, row in table["rows"].items():
        texts = []
        for name in table["benchmarks"]:
            c = row.get(name)
            if c is None or c["accuracy"] is None:
                texts.append("–")
            elif "ci95" in c:
                texts.append(f"{c['accuracy']:.1f} [{c['ci95'][0]:.1f}, {c['ci95'][1]:.1f}], n={c['n']}")
            else:
                texts.append(f"{c['accuracy']:.1f}")
        lines.append(f"| {model} | " + " | ".join(texts) + " |")
    cited = sorted({(m, benchmark(n).title, s) for m, by in table["sources"].items() for n, s in by.items()})
    lines += ["", "Runs: accuracy [95 % Wilson interval], n items. Published figures as their sources give them:"]
    lines += [f"- {m}, {t}: {s}" for m, t, s in cited]
    return "\n".join(lines) + "\n"


def plot(table: dict, path: Path) -> None:
    from tinygiant.eval.runner import plot_groups

    series = []
    for model, row in table["rows"].items():
        values = [row.get(name, {}).get("accuracy") for name in table["benchmarks"]]
        errors = [[0.0 if row.get(n, {}).get("ci95") is None else row[n]["accuracy"] - row[n]["ci95"][0]
                   for n in table["benchmarks"]],
                  [0.0 if row.get(n, {}).get("ci95") is None else row[n]["ci95"][1] - row[n]["accuracy"]
                   for n in table["benchmarks"]]]
        series.append((model, values, errors, "//" if model.endswith("(published)") else None))
    plot_groups(path, [benchmark(n).title for n in table["benchmarks"]], series, "Accuracy beside the field")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="tinygiant eval report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run output folders (each with its scores.json)")
    parser.add_argument("--output-dir", default="field_table", help="where field_table.md and field_table.png go")
    args = parser.parse_args(argv)
    table = field_table(args.runs)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(table)
    write_text_atomic(out / "field_table.md", text)
    plot(table, out / "field_table.png")
    print(text)
    print(f"wrote {out / 'field_table.md'} and {out / 'field_table.png'}")
    return table


if __name__ == "__main__":
    main()
