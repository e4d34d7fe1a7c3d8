"""tinygiant.files: atomic writes."""

import pytest

from tinygiant.files import leftover_partials, replacing, write_json_atomic, write_text_atomic


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

