"""Tests for tinygiant.eval.mmar: the official MMAR matching rule, input validation, scoring and reports."""

import json
import os
import subprocess
import sys

import pytest

import tinygiant.eval.mmar as ev
from tinygiant.eval.runner import load_predictions, string_match
from tinygiant.eval.stats import wilson_interval

# --- string_match ---------------------------------------------------------------------------------
#
# The official rule (MMAR code/evaluation.py): lower-case each text and take its set of \b\w+\b
# tokens. An empty prediction set is wrong. The "incorrect tokens" are the union, over every choice
# whose token set differs from the answer's, of (choice tokens - answer tokens). Correct iff all
# answer tokens are in the prediction AND the prediction holds no incorrect token.
# Every expected value below is worked out by hand from that rule.

BIRDS = ["Dog", "Cat", "Parrot", "Owl"]
PLACES = ["On a plane", "In a car", "On a boat", "In a train"]  # incorrect for "On a plane": in car boat train
PIANOS = ["Piano", "Electric piano", "Violin"]
COUNTS = ["One", "Two", "Three", "Four", "Five", "Six"]


@pytest.mark.parametrize(
    "answer, prediction, choices, expected",
    [
        ("Parrot", "Parrot", BIRDS, True),
        ("Parrot", "C", BIRDS, False),  # bare letter: the answer token "parrot" is missing
        ("Parrot", "C. Parrot", BIRDS, True),  # "c" is not a token of any choice
        ("Parrot", "The answer is Parrot.", BIRDS, True),
        ("Parrot", "PARROT!!!", BIRDS, True),  # case and punctuation do not matter
        ("Parrot", "Parrot, not an owl", BIRDS, False),  # names a distractor's token
        ("Parrot", "", BIRDS, False),  # empty prediction
        ("Parrot", " ... !? ", BIRDS, False),  # punctuation only: empty token set
        ("Parrot", None, BIRDS, False),  # no prediction at all
        ("Parrot", "parrots", BIRDS, False),  # whole tokens only
        ("On a plane", "on a plane", PLACES, True),
        ("On a plane", "It is on a plane.", PLACES, True),  # extra words that no choice uses are fine
        ("On a plane", "In a plane", PLACES, False),  # "in" belongs to distractors, "on" missing
        ("On a plane", "plane", PLACES, False),  # "on" and "a" missing
        ("On a boat", "On a boat", PLACES, True),  # "on"/"a" shared with the answer are not incorrect
        ("Piano", "piano", PIANOS, True),
        ("Piano", "Electric piano", PIANOS, False),  # answer tokens are a subset of a distractor's
        ("Electric piano", "piano", PIANOS, False),  # "electric" missing
        ("Electric piano", "Piano and electric piano", PIANOS, True),  # "piano" is no incorrect token
        ("Female", "female", ["Male", "Female"], True),  # 2 options
        ("Male", "Female", ["Male", "Female"], False),  # "male" is not a token of "female"
        ("Female", "The speaker is female, not male", ["Male", "Female"], False),
        ("No", "No.", ["Yes", "No"], True),
        ("Four", "four", COUNTS, True),  # 6 options
        ("Four", "four or five", COUNTS, False),
        ("Four", "4", COUNTS, False),  # digits are not number words
        ("Dog barking", "barking dog", ["Dog barking", "Barking dog", "Cat"], True),  # same token set
        ("120 BPM", "120 bpm", ["120 BPM", "90 BPM"], True),
        ("120 BPM", "120BPM", ["120 BPM", "90 BPM"], False),  # one token "120bpm"
        ("High-pitched", "high pitched", ["High-pitched", "Low-pitched"], True),  # hyphen splits tokens
    ],
)
def test_string_match_follows_the_official_rule(answer, prediction, choices, expected):
    assert string_match(answer, prediction, choices) is expected


def test_wilson_interval():
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(23.66, abs=0.01) and high == pytest.approx(76.34, abs=0.01)
    low, high = wilson_interval(0, 11)
    assert low == 0 and high == pytest.approx(25.88, abs=0.01)
    low, high = wilson_interval(464, 1000)
    assert low == pytest.approx(43.33, abs=0.01) and high == pytest.approx(49.49, abs=0.01)


# --- the paper's numbers ------------------------------------------------------------------------

MODALITY_COUNTS = {
    "speech": 294, "mix-sound-speech": 218, "music": 206, "sound": 165,
    "mix-music-speech": 82, "mix-sound-music-speech": 24, "mix-sound-music": 11,
}
SUB_CATEGORY_COUNTS = {
    "Acoustic Quality Analysis": 18, "Anomaly Detection": 17, "Audio Difference Analysis": 8,
    "Environmental Perception and Reasoning": 149, "Counting and Statistics": 99, "Music Theory": 63,
    "Correlation Analysis": 50, "Temporal Analysis": 28, "Spatial Analysis": 15,
    "Content Analysis": 304, "Emotion and Intention": 60, "Speaker Analysis": 48,
    "Professional Knowledge and Reasoning": 71, "Culture of Speaker": 52, "Imagination": 10,
    "Aesthetic Evaluation": 8,
}


def _count(percent, n, digits):
    """The number of correct items k with round(100 k / n) == percent, or fail."""
    found = [k for k in range(n + 1) if abs(100 * k / n - percent) <= 0.5 * 10**-digits + 1e-9]
    assert len(found) == 1, (percent, n, found)
    return found[0]


def test_paper_numbers_are_whole_item_counts_that_add_up():
    # Catches typos and wrong name mappings: every published percentage must be k/n of MMAR's real
    # counts, and the cells of each ablation column must add up to its overall accuracy (x 10 items).
    # The paper's own "w/o IQ" column does not add up (394 and 373 correct, not 397); pinned as published.
    paper = ev.PAPER_MMAR
    assert set(paper["by_modality"]) == set(ev.MODALITIES) == set(MODALITY_COUNTS)
    assert set(paper["by_sub_category"]) == set(ev.SUB_CATEGORIES) == set(SUB_CATEGORY_COUNTS)
    assert list(paper["ablation"]) == ["Vanilla", "w/o IQ", "w/o CLAP", "Full"]
    for variant, table in paper["ablation"].items():
        overall = round(table["overall"] * 10)
        for group, counts in (("by_modality", MODALITY_COUNTS), ("by_sub_category", SUB_CATEGORY_COUNTS)):
            total = sum(_count(table[group][k], n, 2) for k, n in counts.items())
            if variant == "w/o IQ":
                assert (overall, total) == (397, {"by_modality": 394, "by_sub_category": 373}[group])
            else:
                assert total == overall, (variant, group)
    full = paper["ablation"]["Full"]
    for m, n in MODALITY_COUNTS.items():  # Table 1 is Table 3's full model rounded to 1 decimal
        assert _count(paper["by_modality"][m], n, 1) == _count(full["by_modality"][m], n, 2)
    assert paper["by_sub_category"] == full["by_sub_category"]
    assert paper["overall"] == 46.4


# --- load_meta ------------------------------------------------------------------------------------


def _item(id, modality="sound", category="Signal Layer", sub="Anomaly Detection",
          choices=("Dog", "Cat", "Parrot", "Owl"), answer="Parrot"):
    return {
        "id": id, "audio_path": f"./audio/{id}.wav", "question": "Which animal is heard",
        "choices": list(choices), "answer": answer, "modality": modality, "category": category,
        "sub-category": sub, "language": "en", "source": "youtube",
    }


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_load_meta_reads_jsonl_and_json_array(tmp_path):
    items = [_item("a"), _item("b", modality="mix-sound-music-speech", category="Cultural Layer", sub="Imagination")]
    assert ev.load_meta(_write_jsonl(tmp_path / "m.jsonl", items)) == items
    (tmp_path / "m.json").write_text(json.dumps(items), encoding="utf-8")
    assert ev.load_meta(tmp_path / "m.json") == items


@pytest.mark.parametrize(
    "change, message",
    [
        ({"answer": None}, "missing keys \\['answer'\\]"),
        ({"modality": "Sound"}, "unknown modality 'Sound'"),
        ({"modality": "mix-speech-sound"}, "unknown modality"),
        ({"category": "Signal"}, "unknown layer"),
        ({"sub-category": "Counting"}, "sub-category unknown 'Counting'"),
        ({"sub-category": "Music Theory"}, "not in Signal Layer"),
        ({"choices": ["Parrot"]}, "2 to 6 choices"),
        ({"choices": ["Parrot", "a", "b", "c", "d", "e", "f"]}, "2 to 6 choices"),
        ({"answer": "parrot"}, "not one of the choices"),
    ],
)
def test_load_meta_rejects_invalid_items(tmp_path, change, message):
    bad = _item("bad_item_7")
    bad.update(change)
    if change == {"answer": None}:
        del bad["answer"]
    path = _write_jsonl(tmp_path / "m.jsonl", [_item("good"), bad])
    with pytest.raises(ValueError, match="item bad_item_7: .*" + message):
        ev.load_meta(path)


def test_load_meta_rejects_duplicate_ids(tmp_path):
    path = _write_jsonl(tmp_path / "m.jsonl", [_item("x1"), _item("x2"), _item("x1")])
    with pytest.raises(ValueError, match="item x1: duplicate id"):
        ev.load_meta(path)


# --- load_predictions -----------------------------------------------------------------------------


def _prediction(id, answer, thinking="I listened."):
    return {"id": id, "thinking_prediction": thinking, "answer_prediction": answer}


def test_load_predictions(tmp_path):
    meta = [_item("a"), _item("b")]
    path = _write_jsonl(tmp_path / "p.jsonl", [_prediction("a", "Parrot"), {"id": "b", "error": "audio missing"}])
    assert load_predictions(path, meta) == {
        "a": _prediction("a", "Parrot"),
        "b": {"id": "b", "error": "audio missing"},
    }


def test_load_predictions_rejects_unknown_ids(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [_prediction("a", "Dog"), _prediction("zz_unknown", "Dog")])
    with pytest.raises(ValueError, match="zz_unknown"):
        load_predictions(path, [_item("a")])
    assert set(load_predictions(path)) == {"a", "zz_unknown"}  # without meta nothing to check against


def test_load_predictions_rejects_duplicate_ids(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl",
                        [_prediction("a", "Dog"), _prediction("b", "Dog"), _prediction("a", "Cat")])
    with pytest.raises(ValueError, match="duplicate prediction ids: \\['a'\\]"):
        load_predictions(path, [_item("a"), _item("b")])


def test_load_predictions_needs_an_answer_or_an_error(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "thinking_prediction": "hmm"}])
    with pytest.raises(ValueError, match="prediction a has no string 'answer_prediction'"):
        load_predictions(path)


# --- end to end -----------------------------------------------------------------------------------

FOUR = ["Dog", "Cat", "Parrot", "Owl"]
# id, modality, layer, sub-category, choices, answer, prediction record (None = no line) -> outcome
FIXTURE = [
    ("i01", "sound", "Signal Layer", "Anomaly Detection", FOUR, "Parrot", _prediction("i01", "Parrot")),  # right
    ("i02", "music", "Perception Layer", "Music Theory", FOUR, "Owl", _prediction("i02", "D")),  # wrong: letter
    ("i03", "speech", "Semantic Layer", "Emotion and Intention", ["Happy", "Sad", "Angry", "Calm"], "Happy",
     _prediction("i03", "Happy")),  # right
    ("i04", "mix-sound-music", "Perception Layer", "Counting and Statistics", COUNTS[:4], "Two", None),  # missing
    ("i05", "mix-sound-speech", "Perception Layer", "Environmental Perception and Reasoning", PLACES, "On a plane",
     _prediction("i05", "On a plane")),  # right
    ("i06", "mix-music-speech", "Cultural Layer", "Culture of Speaker", ["Chinese", "Japanese", "Korean", "Thai"],
     "Korean", _prediction("i06", "Korean, not Japanese")),  # wrong: distractor named
    ("i07", "mix-sound-music-speech", "Semantic Layer", "Content Analysis", FOUR, "Dog",
     {"id": "i07", "thinking_prediction": "", "answer_prediction": "", "error": "audio not found"}),  # error
    ("i08", "speech", "Semantic Layer", "Content Analysis", ["Male", "Female"], "Female",
     _prediction("i08", "Female")),  # right, 2 options
    ("i09", "speech", "Cultural Layer", "Imagination", FOUR, "Cat", None),  # missing
    ("i10", "sound", "Signal Layer", "Anomaly Detection", FOUR, "Cat", _prediction("i10", "")),  # wrong: empty
    ("i11", "music", "Perception Layer", "Music Theory", COUNTS, "Six", _prediction("i11", "F. Six")),  # right, 6
    ("i12", "mix-sound-speech", "Perception Layer", "Environmental Perception and Reasoning", FOUR, "Owl",
     {"id": "i12", "error": "audio not found"}),  # error, no answer_prediction key
]


@pytest.fixture
def mmar_files(tmp_path):
    meta = [_item(i, m, c, s, ch, a) for i, m, c, s, ch, a, _ in FIXTURE]
    predictions = [p for *_, p in FIXTURE if p is not None]
    return _write_jsonl(tmp_path / "MMAR-meta.jsonl", meta), _write_jsonl(tmp_path / "predictions.jsonl", predictions)


def _cell(scores, group, key):
    c = scores[group][key]
    return c["correct"], c["total"]


def test_score_counts_missing_and_errors_as_wrong(mmar_files):
    meta_path, predictions_path = mmar_files
    meta = ev.load_meta(meta_path)
    scores = ev.score(meta, load_predictions(predictions_path, meta))

    assert (scores["overall"]["correct"], scores["overall"]["total"]) == (5, 12)
    assert scores["overall"]["accuracy"] == pytest.approx(100 * 5 / 12)
    assert scores["overall"]["ci95"] == pytest.approx(wilson_interval(5, 12))
    assert (scores["n_items"], scores["n_predicted"], scores["n_missing"], scores["n_errors"]) == (12, 10, 2, 2)
    # The official script skips i04, i09 (no line) and i12 (no answer_prediction key): 5 of 9.
    assert (scores["official"]["correct"], scores["official"]["total"]) == (5, 9)

    assert {m: _cell(scores, "by_modality", m) for m in ev.MODALITIES} == {
        "sound": (1, 2), "music": (1, 2), "speech": (2, 3), "mix-sound-music": (0, 1),
        "mix-sound-speech": (1, 2), "mix-music-speech": (0, 1), "mix-sound-music-speech": (0, 1),
    }
    assert {layer: _cell(scores, "by_layer", layer) for layer in ev.LAYERS} == {
        "Signal Layer": (1, 2), "Perception Layer": (2, 5), "Semantic Layer": (2, 3), "Cultural Layer": (0, 2),
    }
    subs = {s: _cell(scores, "by_sub_category", s) for s in ev.SUB_CATEGORIES}
    assert subs["Anomaly Detection"] == (1, 2)
    assert subs["Music Theory"] == (1, 2)
    assert subs["Counting and Statistics"] == (0, 1)
    assert subs["Environmental Perception and Reasoning"] == (1, 2)
    assert subs["Content Analysis"] == (1, 2)
    assert subs["Imagination"] == (0, 1)
    assert subs["Spatial Analysis"] == (0, 0)
    assert scores["by_sub_category"]["Spatial Analysis"]["accuracy"] is None
    assert sum(t for _, t in subs.values()) == 12

    status = {o["id"]: o["status"] for o in scores["items"]}
    assert status == {
        "i01": "correct", "i02": "wrong", "i03": "correct", "i04": "missing", "i05": "correct", "i06": "wrong",
        "i07": "error", "i08": "correct", "i09": "missing", "i10": "wrong", "i11": "correct", "i12": "error",
    }


def test_error_flag_wins_over_a_matching_answer():
    meta = [_item("a")]
    scores = ev.score(meta, [{"id": "a", "answer_prediction": "Parrot", "error": "audio not found"}])
    assert scores["overall"]["correct"] == 0 and scores["n_errors"] == 1
    assert scores["official"]["correct"] == 1  # the official script knows nothing of "error"


def test_score_only_cli_writes_the_same_numbers(mmar_files, tmp_path):
    meta_path, predictions_path = mmar_files
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "tinygiant.eval.mmar", "--meta", str(meta_path),
         "--score-only", str(predictions_path), "--output-dir", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"},
    )
    assert run.returncode == 0, run.stderr
    assert "MMAR accuracy: 41.67 % (5/12" in run.stdout
    assert "official-script accuracy over predicted items: 55.56 % (5/9)" in run.stdout

    meta = ev.load_meta(meta_path)
    expected = ev.score(meta, load_predictions(predictions_path, meta))
    written = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert written == {"benchmark": "mmar", **json.loads(json.dumps(expected))}

    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| all | 41.7 | 5/12 |" in report
    assert "| 46.4 |" in report  # the paper's overall number beside ours
    assert "| mix-music-speech (M-Sp) | 0.0 | 0/1 |" in report and "| 58.5 |" in report
    assert "| Perception Layer | 40.0 | 2/5 |" in report
    assert "| Cultural Layer / Imagination | 0.0 | 0/1 |" in report and "| 30.00 |" in report
    assert "count as wrong here" in report and "drops items" in report
    assert (out / "accuracy_by_modality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_requires_a_mode(mmar_files):
    meta_path, _ = mmar_files
    with pytest.raises(SystemExit):
        ev.main(["--meta", str(meta_path)])
