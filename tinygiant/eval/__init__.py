"""Evaluation: one runner (`runner`), one module per benchmark, and the tools that compare runs.

    tinygiant eval mmar|mmau|mmsu|synthetic ...   # answer a benchmark, score it, write its report (`--help` each)
    tinygiant eval compare RUN_A RUN_B             # two runs on the same items: paired bootstrap and McNemar
    tinygiant eval report RUN ... [--output-dir OUT]  # the field's table: runs beside the peers' published figures

Each benchmark module defines `BENCHMARK` (a `runner.Benchmark`) and `main(argv)`; `BENCHMARKS` is the registry that
`tinygiant eval NAME` dispatches through.
"""

import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tinygiant.eval.runner import Benchmark

BENCHMARKS = {
    "mmar": "tinygiant.eval.mmar",
    "mmau": "tinygiant.eval.mmau",
    "mmsu": "tinygiant.eval.mmsu",
    "synthetic": "tinygiant.eval.synthetic",
}
COMMANDS = {"compare": "tinygiant.eval.compare", "report": "tinygiant.eval.field_table"}


def benchmark(name: str) -> "Benchmark":
    """The registered benchmark called `name`."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return importlib.import_module(BENCHMARKS[name]).BENCHMARK


def main(argv: Sequence[str] | None = None) -> dict | None:
    """`tinygiant eval NAME ...`: run a benchmark, `compare` or `report`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    modules = {**BENCHMARKS, **COMMANDS}
    if not argv or argv[0] not in modules:
        names = " | ".join(modules)
        if argv and argv[0] in ("-h", "--help"):
            print(f"usage: tinygiant eval {{{names}}} ...\n\n{__doc__}")
            return None
        raise SystemExit(f"usage: tinygiant eval {{{names}}} ... (got {argv[0] if argv else 'nothing'!r})")
    return importlib.import_module(modules[argv[0]]).main(argv[1:])
