"""MMAU scoring equals the authors' `evaluation.py` on 1,000 test-mini-shaped items, in both input formats; the
loader names what a wrong file lacks; test (no answers) writes the submission file."""

import json
import random
import re

import pytest

from tinygiant.eval import mmau

N_ITEMS = 1000


def authors_evaluation(samples):
    """An independent copy of the behaviour of MMAU's `evaluation.py` (Sakshi113/MMAU): returns the counts it prints,
    `{"task": {name: [correct, total]}, "difficulty": {...}, "sub-category": {...}, "total": [correct, total]}`.

    Items without `model_output` are skipped. Prediction and answer are lower-cased `\\b\\w+\\b` token sets; right
    iff the prediction has every answer token and none of the tokens the other choices have beyond the answer's (a
    choice with the answer's very token set adds none); an empty prediction is wrong. The task and difficulty tables
    start with sound/music/speech and easy/hard/medium; sub-categories appear as met."""

    def tokens(text):
        return set(re.findall(r"\b\w+\b", text.lower()))

    def right(answer, prediction, choices):
        said, wanted = tokens(prediction), tokens(answer)
        if not said:
            return False
        others = set()
        for choice in choices:
            if tokens(choice) != wanted:
                others.update(tokens(choice) - wanted)
        return wanted.issubset(said) and said.isdisjoint(others)

    counts = {"task": {"sound": [0, 0], "music": [0, 0], "speech": [0, 0]},
              "difficulty": {"easy": [0, 0], "hard": [0, 0], "medium": [0, 0]}, "sub-category": {}, "total": [0, 0]}
    for sample in samples:
        if "model_output" not in sample:
            continue
        ok = right(sample["answer"], sample["model_output"], sample["choices"])
        cells = [counts["task"][sample["task"]], counts["difficulty"][sample["difficulty"]], counts["total"]]
        if sample.get("sub-category") is not None:
            cells.append(counts["sub-category"].setdefault(sample["sub-category"], [0, 0]))
        for c in cells:
            c[0] += ok
            c[1] += 1
    return counts


def synthetic_test_mini(rng):
    """1,000 items with MMAU's field names and values: tasks in thirds, 27 sub-categories, three difficulties, 4
    choices mostly (also 2, 5 and 8), some choices listed twice, some `category` values lists, as published."""
    items = []
    for i in range(N_ITEMS):
        task = mmau.TASKS[i % 3]
        n = rng.choice([4] * 30 + [2, 5, 8])
        words = rng.sample(["dog", "cat", "bird", "rain", "piano", "guitar", "violin", "man", "woman", "child",
                            "car horn", "a loud bang", "two", "three", "four", "first speaker", "second speaker",
                            "happy", "sad", "angry tone"], n)
        if rng.random() < 0.03:
            words[-1] = words[0]  # a choice listed twice
        items.append({"id": f"{i:04d}-mmau", "audio_id": f"./test-mini-audios/{i:04d}-mmau.wav",
                      "question": f"What is heard in clip {i}?", "choices": words, "answer": rng.choice(words),
                      "dataset": rng.choice(["AudioSet", "musicbench", "meld"]), "task": task, "split": "test-mini",
                      "category": ["Reasoning"] if i % 97 == 0 else rng.choice(["Reasoning", "Information Extraction"]),
                      "sub-category": rng.choice(mmau.SUB_CATEGORIES[task]),
                      "difficulty": rng.choice(mmau.DIFFICULTIES)})
    return items


def varied_prediction(item, rng):
    """A prediction of one of many kinds, or None for an item the model did not answer."""
    answer, choices = item["answer"], item["choices"]
    other = rng.choice([c for c in choices if c != answer] or [answer])
    kind = rng.randrange(10)
    return [answer, f"The answer is {answer}.", answer.upper(), f"(b) {answer}", "B", "",
            f"{answer}, not {other}", other, f"I think it is {answer} rather than anything else", None][kind]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("mmau")
    items = synthetic_test_mini(rng)
    (folder / "mmau-test-mini.json").write_text(json.dumps(items))
    outputs = {item["id"]: varied_prediction(item, rng) for item in items}
    # MMAU's own format: the list with `model_output` where there is a prediction.
    submission = [{**item, "model_output": outputs[item["id"]]} if outputs[item["id"]] is not None else item
                  for item in items]
    (folder / "submission.json").write_text(json.dumps(submission))
    # The project's format: one line per predicted item.
    (folder / "predictions.jsonl").write_text("".join(
        json.dumps({"id": i, "thinking_prediction": "", "answer_prediction": o}) + "\n"
        for i, o in outputs.items() if o is not None))
    runs = {name: mmau.main(["--meta", str(folder / "mmau-test-mini.json"), "--score-only", str(folder / name),
                             "--output-dir", str(folder / f"out-{name}")])
            for name in ("submission.json", "predictions.jsonl")}
    return folder, submission, runs


@pytest.mark.parametrize("name", ["submission.json", "predictions.jsonl"])
def test_scores_equal_the_authors_evaluation(scored, name):
    folder, submission, runs = scored
    expected = authors_evaluation(submission)
    scores = runs[name]
    assert [scores["official"]["correct"], scores["official"]["total"]] == expected["total"]
    assert 600 < expected["total"][1] < 1000  # some items unanswered, so skipped by the authors' script
    assert 0 < expected["total"][0] < expected["total"][1]  # varied: some right, some wrong
    for group, key in (("by_task", "task"), ("by_difficulty", "difficulty"), ("by_sub_category", "sub-category")):
        ours = {k: [c["correct"], c["total"]] for k, c in scores["official_by"][group].items() if c["total"]}
        assert ours == expected[key], group
        for k, (right, total) in expected[key].items():
            assert scores["official_by"][group][k]["accuracy"] == pytest.approx(100 * right / total)
    assert len(expected["sub-category"]) == 27
    # Ours counts the unanswered items as wrong, over all 1,000, and keys the breakdowns by MMAU's own names.
    assert scores["overall"]["total"] == N_ITEMS and scores["overall"]["correct"] == expected["total"][0]
    assert list(scores["by_task"]) == list(mmau.TASKS) and list(scores["by_difficulty"]) == list(mmau.DIFFICULTIES)
    assert all(set(c) == {"correct", "total", "accuracy", "ci95"} for c in scores["by_sub_category"].values())
    report = (folder / f"out-{name}" / "report.md").read_text()
    assert "mmau-test-mini.json" in report and mmau.VERSION in report and "| Ke-Omni-R-3B | 67.4 |" in report


def test_a_meta_of_another_benchmark_names_what_is_missing(tmp_path):
    mmar_item = {"id": "x", "audio_path": "./audio/x.wav", "question": "q?", "choices": ["a", "b"], "answer": "a",
                 "modality": "sound", "category": "Signal Layer", "sub-category": "Anomaly Detection"}
    (tmp_path / "meta.json").write_text(json.dumps([mmar_item]))
    with pytest.raises(ValueError, match=r"missing \['audio_id', 'task', 'difficulty'\]"):
        mmau.load_meta(tmp_path / "meta.json")


def test_unknown_prediction_ids_are_listed(scored, tmp_path):
    folder, _, _ = scored
    (tmp_path / "p.jsonl").write_text('{"id": "nope-1", "answer_prediction": "dog"}\n'
                                      '{"id": "nope-2", "answer_prediction": "cat"}\n')
    with pytest.raises(ValueError, match=r"2 prediction id\(s\) not in the MMAU meta: \['nope-1', 'nope-2'\]"):
        mmau.main(["--meta", str(folder / "mmau-test-mini.json"), "--score-only", str(tmp_path / "p.jsonl"),
                   "--output-dir", str(tmp_path / "out")])


def test_test_split_writes_the_submission_file(scored, tmp_path):
    folder, submission, _ = scored
    test = [{k: v for k, v in item.items() if k not in ("answer", "model_output")} for item in submission[:20]]
    (tmp_path / "mmau-test.json").write_text(json.dumps(test))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": item["id"], "answer_prediction": f"x{i}"}) + "\n"
                                              for i, item in enumerate(test[:15])))
    scores = mmau.main(["--meta", str(tmp_path / "mmau-test.json"), "--score-only", str(tmp_path / "p.jsonl"),
                        "--output-dir", str(tmp_path / "out")])
    assert scores["no_answers"] and scores["n_predicted"] == 15
    written = json.loads((tmp_path / "out" / mmau.SUBMISSION_FILE).read_text())
    assert [w["id"] for w in written] == [t["id"] for t in test]
    assert [w["model_output"] for w in written] == [f"x{i}" for i in range(15)] + [""] * 5
    assert [w["choices"] for w in written] == [t["choices"] for t in test]  # as published, repeats and all
