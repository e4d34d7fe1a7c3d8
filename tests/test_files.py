"""tinygiant.files: atomic writes and the resumable JSON-lines logs; tinygiant.eval.stats: the shared bootstrap."""

import json

import numpy as np
import pytest

from tinygiant.eval.stats import bootstrap_interval
from tinygiant.files import leftover_partials, read_jsonl_log, replacing, write_json_atomic, write_text_atomic


def test_an_atomic_write_replaces_the_file_or_leaves_it_as_it_was(tmp_path):
    path = tmp_path / "report.json"
    write_json_atomic(path, {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'
    write_json_atomic(path, {"a": 2}, indent=None)
    assert path.read_text() == '{"a": 2}\n'
    with pytest.raises(RuntimeError), replacing(path) as partial:
        partial.write_text("half of")
        raise RuntimeError("killed")
    assert path.read_text() == '{"a": 2}\n'
    assert list(tmp_path.iterdir()) == [path]  # no partial file left
    write_text_atomic(path, "ünïcode\n")
    assert path.read_text(encoding="utf-8") == "ünïcode\n"


def test_leftover_partials_are_the_ones_beside_that_path(tmp_path):
    for name in (".model.partial-123", ".model.partial-7", ".model2.partial-1", "model"):
        (tmp_path / name).mkdir()
    assert [p.name for p in leftover_partials(tmp_path / "model")] == [".model.partial-123", ".model.partial-7"]


def test_a_log_cut_short_is_read_up_to_the_cut_and_repaired(tmp_path):
    path = tmp_path / "log.jsonl"
    assert read_jsonl_log(path) == []
    good = [{"id": "a", "grader": 0}, {"id": "a", "grader": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"id": "b", "gra')
    assert read_jsonl_log(path, keys=("id", "grader")) == good
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in good)
    path.write_text(json.dumps(good[0]) + "\n" + json.dumps({"grader": 2}) + "\n" + json.dumps(good[1]))
    assert read_jsonl_log(path) == [good[0]]  # a record without its key ends the log too
    path.write_text(json.dumps(good[0]))  # whole, but no newline: one is added
    assert read_jsonl_log(path) == [good[0]] and path.read_text().endswith("\n")


def test_bootstrap_interval():
    assert bootstrap_interval([], 100) is None
    values = np.arange(10.0)
    low, high = bootstrap_interval(values, 2000)
    assert low < values.mean() < high and bootstrap_interval(values, 2000) == [low, high]  # seed 0 by default
    rng = np.random.default_rng(0)
    assert bootstrap_interval(values, 2000, rng) == [low, high]
    assert bootstrap_interval(values, 2000, rng) != [low, high]  # a generator goes on where it was
