"""`tinygiant eval compare` (paired bootstrap and McNemar on two runs), `tinygiant eval report` (the field's table),
MMSU's loader and rule, and the registry `tinygiant eval NAME` dispatches through."""

import json

import pytest
import soundfile
from helpers import tone

from tinygiant import cli
from tinygiant.eval import BENCHMARKS, benchmark, mmsu
from tinygiant.eval.compare import compare_runs
from tinygiant.eval.stats import mcnemar_exact

TASKS = ("count", "pitch")


def synthetic_run(folder, name, right):
    """A scored synthetic-benchmark run of 60 items (two tasks) whose item i is answered right iff `right(i)`."""
    items = [{"id": f"s{i}", "question": f"q{i}?", "choices": ["yes", "no"], "answer": "yes", "task": TASKS[i % 2],
              "audio_path": f"audio/s{i}.wav"} for i in range(60)]
    (folder / "eval-meta.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    (folder / f"{name}.jsonl").write_text("".join(
        json.dumps({"id": item["id"], "thinking_prediction": "", "answer_prediction": "yes" if right(i) else "no"})
        + "\n" for i, item in enumerate(items)))
    cli.main(["eval", "synthetic", "--meta", str(folder / "eval-meta.jsonl"), "--score-only",
              str(folder / f"{name}.jsonl"), "--output-dir", str(folder / name)])
    return folder / name


def test_compare_finds_a_real_difference_and_lists_the_flips(tmp_path, capsys):
    model = synthetic_run(tmp_path, "model", lambda i: i % 10 != 0)  # 54 of 60 right
    control = synthetic_run(tmp_path, "control", lambda i: i % 2 == 0 or i == 1)  # 31 of 60 right
    capsys.readouterr()
    result = cli.main(["eval", "compare", str(model), str(control), "--output-dir", str(tmp_path / "cmp")])
    printed = capsys.readouterr().out
    assert result == 0 and "a significant difference" in printed
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    overall = saved["overall"]
    only_model = [f"s{i}" for i in range(60) if i % 10 != 0 and not (i % 2 == 0 or i == 1)]
    only_control = [f"s{i}" for i in range(60) if i % 10 == 0]
    assert saved["flipped"] == {"only_a_right": only_model, "only_b_right": only_control}
    assert (overall["only_a_right"], overall["only_b_right"]) == (len(only_model), len(only_control))
    assert overall["difference"] == pytest.approx(100 * (54 - 31) / 60)
    assert overall["mcnemar_p"] == pytest.approx(mcnemar_exact(len(only_model), len(only_control)))
    assert overall["mcnemar_p"] < 1e-3 and overall["bootstrap_ci95"][0] > 0
    # Per breakdown: the task cells partition the items.
    assert sum(c["n"] for c in saved["breakdowns"]["task"].values()) == 60
    assert saved["breakdowns"]["task"]["pitch"]["only_b_right"] == 0  # odd items: the control is right only on s1
    assert "A right, B wrong (29)" in (tmp_path / "cmp" / "compare.md").read_text()


def test_compare_of_a_run_with_itself_finds_nothing_and_runs_of_other_items_are_refused(tmp_path):
    run = synthetic_run(tmp_path, "a", lambda i: i % 3 == 0)
    same = compare_runs(run, run)["overall"]
    assert same["difference"] == 0 and same["mcnemar_p"] == 1.0 and same["bootstrap_ci95"] == [0.0, 0.0]
    other = tmp_path / "other"
    other.mkdir()
    scores = json.loads((run / "scores.json").read_text())
    scores["items"] = scores["items"][:-1]
    (other / "scores.json").write_text(json.dumps(scores))
    with pytest.raises(ValueError, match=r"different items: 1 only in .*\['s59'\]"):
        compare_runs(run, other)


def test_field_table_puts_runs_beside_the_published_peers(tmp_path, capsys):
    run = synthetic_run(tmp_path, "a", lambda i: i % 3 == 0)
    mmau_run = tmp_path / "mmau"
    mmau_run.mkdir()
    cell = {"correct": 500, "total": 1000, "accuracy": 50.0, "ci95": [46.9, 53.1]}
    (mmau_run / "scores.json").write_text(json.dumps({"benchmark": "mmau", "overall": cell,
                                                      "run": {"answerer": {"model": "runs/tiny"}}}))
    cli.main(["eval", "report", str(run), str(mmau_run), "--output-dir", str(tmp_path / "table")])
    text = (tmp_path / "table" / "field_table.md").read_text()
    assert text.splitlines()[0] == "| model | MMAU (%) | Synthetic benchmark (%) |"
    assert "| runs/tiny | 50.0 [46.9, 53.1], n=1000 | – |" in text
    assert "| Ke-Omni-R-3B (published) | 67.4 | – |" in text and "Ke-Omni-R README" in text
    assert "| a | – | 33.3 [" in text  # the synthetic run, named by its folder (20 of 60 right)
    assert (tmp_path / "table" / "field_table.png").read_bytes()[:4] == b"\x89PNG"


def test_registry_dispatches_every_benchmark():
    assert {name: benchmark(name).name for name in BENCHMARKS} == {name: name for name in BENCHMARKS}
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        benchmark("nope")


def mmsu_record(i, answer="B", **changes):
    return {"id": f"m{i}", "audio_path": f"audio/m{i}.wav", "question": f"What does speaker {i} mean?",
            "choice_a": "a joke", "choice_b": "a threat", "choice_c": "a question", "choice_d": "a greeting",
            "answer": answer, "category": ["Perception", "Reasoning"][i % 2],
            "sub_category": ["Linguistics", "Paralinguistics"][i // 2 % 2], "task_name": f"task_{i % 3}", **changes}


def test_mmsu_reads_the_chosen_option_and_breaks_down_by_its_taxonomy(tmp_path):
    (tmp_path / "audio").mkdir()
    records = [mmsu_record(i) for i in range(8)]
    (tmp_path / "mmsu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for i in range(7):  # one clip missing: counted wrong, listed
        soundfile.write(tmp_path / "audio" / f"m{i}.wav", tone(0.5, 16000, 300.0 + 40 * i), 16000)
    answers = ["a threat", "The answer is B.", "(b)", "B. a threat", "a joke", "It is either a joke or a threat.",
               "", "a threat"]
    (tmp_path / "p.jsonl").write_text("".join(
        json.dumps({"id": f"m{i}", "thinking_prediction": "", "answer_prediction": a}) + "\n"
        for i, a in enumerate(answers)))
    scores = mmsu.main(["--meta", str(tmp_path / "mmsu.jsonl"), "--score-only", str(tmp_path / "p.jsonl"),
                        "--output-dir", str(tmp_path / "out")])
    status = [o["status"] for o in scores["items"]]
    assert status == ["correct"] * 4 + ["wrong"] * 3 + ["correct"]  # letters and texts read; ambiguity is wrong
    assert {k: (c["correct"], c["total"]) for k, c in scores["by_category"].items()} == {
        "perception": (2, 4), "reasoning": (3, 4)}
    assert {k: c["total"] for k, c in scores["by_sub_category"].items()} == {
        "perception / linguistics": 2, "perception / paralinguistics": 2, "reasoning / linguistics": 2,
        "reasoning / paralinguistics": 2}
    assert sum(c["total"] for c in scores["by_task"].values()) == 8


def test_mmsu_generation_and_bad_rows(tiny_dir, tmp_path):
    (tmp_path / "audio").mkdir()
    records = [mmsu_record(i) for i in range(3)]
    (tmp_path / "mmsu.json").write_text(json.dumps(records))
    for i in range(2):
        soundfile.write(tmp_path / "audio" / f"m{i}.wav", tone(0.5, 16000, 300.0), 16000)
    scores = mmsu.main(["--model", str(tiny_dir), "--meta", str(tmp_path / "mmsu.json"), "--output-dir",
                        str(tmp_path / "out"), "--max-new-tokens", "3"])
    assert scores["n_items"] == 3 and scores["n_errors"] == 1  # m2's audio is missing
    assert "missing audio file" in json.loads((tmp_path / "out" / "predictions.jsonl").read_text()
                                              .splitlines()[2])["error"]
    (tmp_path / "bad.json").write_text(json.dumps([mmsu_record(0, answer="E"), {"id": "x", "question": "q"}]))
    with pytest.raises(ValueError, match=r"(?s)answer 'E' is not the letter.*item x: no 'audio_path'"):
        mmsu.load_meta(tmp_path / "bad.json")
