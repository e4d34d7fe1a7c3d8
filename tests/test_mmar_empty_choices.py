"""MMAR as published: 4 of its 1,000 items end their choices with an empty string. The harness drops those choices
with one warning and scores and answers the items; other malformed rows still fail clearly.

`tests/data/mmar_empty_choice_rows.jsonl` holds the 4 items with their real ids and their empty last choice; their
questions, answers and rubrics are made up in MMAR's format."""

import json
import shutil
from pathlib import Path

import pytest
import soundfile
from helpers import tone

import tinygiant.eval.mmar
from tinygiant.eval.mmar import load_meta, score
from tinygiant.eval.runner import load_predictions

ROWS = Path(__file__).parent / "data" / "mmar_empty_choice_rows.jsonl"
IDS = ["BV1gK4y1t7gv_00-49-43_00-50-13", "BV1Tm4y1h7JU_00-00-00_00-00-25", "ztvEag8Y2_Y_00-00-00_00-00-16",
       "BV15a411S7M1_00-00-28_00-00-48"]


def raw_rows():
    return [json.loads(line) for line in ROWS.read_text(encoding="utf-8").splitlines()]


def test_the_fixture_is_the_published_shape():
    rows = raw_rows()
    assert [row["id"] for row in rows] == IDS
    assert all(row["choices"][-1] == "" for row in rows)
    assert all(set(tinygiant.eval.mmar.REQUIRED_KEYS) <= set(row) and len(row["rubric"]) == 5 for row in rows)


def test_empty_choices_are_dropped_with_one_warning_naming_the_items(capsys):
    meta = load_meta(ROWS)
    assert [item["choices"] for item in meta] == [row["choices"][:-1] for row in raw_rows()]
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "4 item(s)" in warnings[0]
    assert all(warnings[0].count(name) == 1 for name in IDS)


def test_score_only_scores_all_four(tmp_path, capsys):
    rows = raw_rows()
    # The answer's text is right; a non-empty distractor is wrong (the last item).
    picks = [row["answer"] for row in rows[:3]] + [rows[3]["choices"][1]]
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"id": row["id"], "thinking_prediction": "", "answer_prediction": pick})
                                   + "\n" for row, pick in zip(rows, picks)))
    scores = tinygiant.eval.mmar.main(["--meta", str(ROWS), "--score-only", str(predictions),
                                  "--output-dir", str(tmp_path / "out")])
    assert (scores["n_items"], scores["n_missing"], scores["n_errors"]) == (4, 0, 0)
    assert {o["id"]: o["status"] for o in scores["items"]} == dict(zip(IDS, ["correct"] * 3 + ["wrong"]))
    assert scores["overall"]["correct"] == 3 and scores["official"]["total"] == 4
    assert sum("warning" in line for line in capsys.readouterr().out.splitlines()) == 1
    # The official rule is unchanged: an empty choice has no tokens, so it never makes a prediction wrong.
    meta = load_meta(ROWS)
    assert score(raw_rows(), load_predictions(predictions, meta))["items"] == scores["items"]


def test_generation_answers_all_four(tiny_dir, tmp_path):
    shutil.copyfile(ROWS, tmp_path / "MMAR-meta.jsonl")
    (tmp_path / "audio").mkdir()
    for i, name in enumerate(IDS):
        soundfile.write(tmp_path / "audio" / f"{name}.wav", tone(1.0, 16000, 300.0 * (i + 1)), 16000)
    out = tmp_path / "eval"
    scores = tinygiant.eval.mmar.main(["--model", str(tiny_dir), "--meta", str(tmp_path / "MMAR-meta.jsonl"),
                                  "--output-dir", str(out), "--batch-size", "4", "--max-new-tokens", "3"])
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == IDS
    assert all("error" not in r and isinstance(r["answer_prediction"], str) for r in records)
    assert scores["n_items"] == 4 and scores["n_errors"] == 0 and scores["n_missing"] == 0


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda row: row.pop("question"), r"missing keys \['question'\]"),
        (lambda row: row.update(choices="Entered, Did not enter"), "choices must be a list or tuple"),
        (lambda row: row.update(choices=["Entered", ""]), "2 to 6 choices, got 1"),
        (lambda row: row.update(choices=["Entered", "entered", ""]), "duplicate choices"),
        (lambda row: row.update(question="  "), "the question is empty"),
    ],
)
def test_other_malformed_rows_still_fail_clearly(tmp_path, change, message):
    rows = raw_rows()
    change(rows[1])
    path = tmp_path / "meta.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match=f"item {IDS[1]}: .*{message}"):
        load_meta(path)
