"""MMAR-Rubrics against a real HTTP judge on loopback (tests/judge_server.py): grading, grouping, retries, errors,
the dry run and resuming a killed run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from judge_server import ScriptedJudge

from tinygiant.eval import mmar
from tinygiant.eval.rubrics import (
    JUDGEMENTS_FILE,
    Judge,
    JudgeReplyError,
    check_rubric,
    middle_mean,
    parse_grade,
    read_judgements,
)


def criteria(names, choices=(0, 1)):
    return [{"name": n, "scoring_point": f"the reasoning mentions {n}", "note": "", "choices": list(choices)}
            for n in names]


FIVE = criteria(["source", "timing", "pitch", "count", "conclusion"])


def item(name, question, modality, layer, sub, rubric=FIVE):
    return {"id": name, "audio_path": f"./audio/{name}.wav", "question": question, "choices": ["a dog", "a cat"],
            "answer": "a dog", "modality": modality, "category": layer, "sub-category": sub,
            "thinking": "A dog barks twice.", "cue": ["barking"], "rubric": rubric}


# A: right, graded 1.0, 0.8, 0.4, 0.0, 0.6 (middle three: 0.4, 0.6, 0.8 -> 0.6), after a 429 and a timeout.
# B: right, two criteria with maxima 2 and 1: grades 3/3, 2/3, 1/3, 0/3, 2/3 -> middle (1/3 + 2/3 + 2/3) / 3 = 5/9,
#    after a malformed reply and a score outside the choices (both asked again).
# C: wrong answer -> 0, no call.   D: right, but every reply malformed -> 5 errors, no grade, left out.
# E: no prediction -> 0, no call.
META = [
    item("A", "What barks in A?", "sound", "Signal Layer", "Acoustic Quality Analysis"),
    item("B", "What barks in B?", "music", "Perception Layer", "Music Theory",
         rubric=criteria(["melody"], (0, 1, 2)) + criteria(["rhythm"])),
    item("C", "What barks in C?", "speech", "Semantic Layer", "Content Analysis"),
    item("D", "What barks in D?", "sound", "Perception Layer", "Counting and Statistics"),
    item("E", "What barks in E?", "music", "Signal Layer", "Anomaly Detection"),
]
PREDICTIONS = [
    {"id": "A", "thinking_prediction": "I hear a dog barking.", "answer_prediction": "a dog"},
    {"id": "B", "thinking_prediction": "Barking, so a dog.", "answer_prediction": "The answer is a dog."},
    {"id": "C", "thinking_prediction": "Meowing.", "answer_prediction": "a cat"},
    {"id": "D", "thinking_prediction": "A dog.", "answer_prediction": "A dog."},
]
SCRIPT = {
    "What barks in A?": ["429", [1, 1, 1, 1, 1], "timeout", [1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0],
                         [1, 1, 1, 0, 0]],
    "What barks in B?": [[2, 1], "malformed", [1, 1], [3, 1], [1, 0], [0, 0], [2, 0]],
    "What barks in D?": ["malformed"] * 15,
}
JUDGE_OPTIONS = ["--judge-concurrency", "3", "--judge-qps", "50", "--judge-timeout", "1"]


def write_inputs(tmp_path, meta=META, predictions=PREDICTIONS):
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(x) + "\n" for x in meta))
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(x) + "\n" for x in predictions))
    return ["--meta", str(tmp_path / "meta.jsonl"), "--score-only", str(tmp_path / "pred.jsonl")]


def test_middle_mean_and_grade_parsing():
    assert middle_mean([1.0, 0.8, 0.4, 0.0, 0.6]) == pytest.approx(0.6)
    assert middle_mean([0.2, 0.2, 1.0, 1.0, 0.2]) == pytest.approx(0.4666666)
    assert middle_mean([0.5, 1.0]) == pytest.approx(0.75) and middle_mean([]) is None
    reply = '```json\n[{"name": "melody", "score": 2}, {"name": "rhythm", "score": "0"}]\n```'
    grade, scores = parse_grade(reply, META[1]["rubric"])
    assert grade == pytest.approx(2 / 3) and scores == {"melody": 2, "rhythm": 0.0}
    thinking = ('<think>Criteria [1] and [2]...</think>\n'
                '[{"name": "melody", "score": 1}, {"name": "rhythm", "score": 1}]')
    assert parse_grade(thinking, META[1]["rubric"])[0] == pytest.approx(2 / 3)
    for bad, problem in [
        ("fine", "no JSON list"),
        ('[{"name": "melody", "score": 2}]', "no score for criterion 'rhythm'"),
        ('[{"name": "melody", "score": 3}, {"name": "rhythm", "score": 1}]', "not one of [0, 1, 2]"),
        ('[{"name": "melody", "score": 1}, {"name": "rhythm", "score": 1}, {"name": "tempo", "score": 1}]', "tempo"),
        ('[{"name": "melody", "score": true}, {"name": "rhythm", "score": 1}]', "True"),
    ]:
        with pytest.raises(JudgeReplyError, match=problem.replace("[", r"\[")):
            parse_grade(bad, META[1]["rubric"])


def test_bad_rubric_named():
    with pytest.raises(ValueError, match="item X: no 'rubric'"):
        check_rubric({"id": "X"})
    with pytest.raises(ValueError, match=r"item X: rubric criterion #0 \('a'\): 'choices'"):
        check_rubric({"id": "X", "rubric": [{"name": "a", "scoring_point": "p", "choices": ["yes"]}]})


def test_hand_computed_scores_every_grouping_retries_and_errors(tmp_path, capsys):
    with ScriptedJudge(SCRIPT, timeout_sleep=1.5) as judge:
        scores = mmar.main([*write_inputs(tmp_path), "--output-dir", str(tmp_path / "out"), "--rubrics",
                            "--judge-base-url", judge.base_url, *JUDGE_OPTIONS])
    # Every call used the protocol's settings; retries reached the server (429 and timeout on A, bad replies on B,
    # three attempts per grader on D); the wrong and missing answers cost nothing.
    assert {(r["model"], r["temperature"], r["seed"]) for r in judge.requests} == {("gpt-4o-2024-11-20", 0.0, 42)}
    assert dict(judge.calls) == {"What barks in A?": 7, "What barks in B?": 7, "What barks in D?": 15}

    r = scores["rubrics"]
    assert r["items"] == pytest.approx({"A": 0.6, "B": 5 / 9, "C": 0.0, "D": None, "E": 0.0})
    assert (r["n_judged"], r["n_unjudged"], r["n_judge_errors"]) == (2, 1, 5)
    assert r["overall"]["n"] == 4 and r["overall"]["score"] == pytest.approx(100 * (0.6 + 5 / 9) / 4)
    lo, hi = r["overall"]["ci95"]
    assert 0 <= lo < r["overall"]["score"] < hi <= 60
    expected = {
        "by_modality": {"sound": (60.0, 1), "music": (100 * 5 / 18, 2), "speech": (0.0, 1),
                        "mix-sound-music": (None, 0)},
        "by_layer": {"Signal Layer": (30.0, 2), "Perception Layer": (100 * 5 / 9, 1), "Semantic Layer": (0.0, 1),
                     "Cultural Layer": (None, 0)},
        "by_sub_category": {"Acoustic Quality Analysis": (60.0, 1), "Music Theory": (100 * 5 / 9, 1),
                            "Content Analysis": (0.0, 1), "Anomaly Detection": (0.0, 1),
                            "Counting and Statistics": (None, 0)},
    }
    for group, cells in expected.items():
        for name, (value, n) in cells.items():
            cell = r[group][name]
            assert cell["n"] == n, (group, name)
            assert cell["score"] == (None if value is None else pytest.approx(value)), (group, name)
    assert r["by_modality"]["sound"]["ci95"] == [pytest.approx(60.0), pytest.approx(60.0)]  # one item: no spread

    judgements = read_judgements(tmp_path / "out" / JUDGEMENTS_FILE)
    assert sorted(judgements) == [(name, k) for name in "ABD" for k in range(5)]
    assert all("invalid reply after 3 attempts" in judgements[("D", k)]["error"] for k in range(5))
    # The score is in scores.json, the report (beside the leaderboard's 23.77) and the printed summary.
    written = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert written["rubrics"]["overall"]["score"] == pytest.approx(28.888, abs=1e-2)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## MMAR-Rubrics" in report and "| all | 28.89 | 4 |" in report and "23.77" in report
    assert "MMAR-Rubrics: 28.89" in capsys.readouterr().out
    assert (tmp_path / "out" / "accuracy_by_modality.png").stat().st_size > 0

    # A rerun judges nothing: every reply is on disk.
    with ScriptedJudge({}) as judge:
        again = mmar.main([*write_inputs(tmp_path), "--output-dir", str(tmp_path / "out"), "--rubrics",
                           "--judge-base-url", judge.base_url, *JUDGE_OPTIONS])
    assert sum(judge.calls.values()) == 0 and again["rubrics"]["items"] == r["items"]


def test_concurrency_and_qps_are_bounded(tmp_path):
    meta = [item(f"Q{i}", f"What barks in Q{i}?", "sound", "Signal Layer", "Anomaly Detection") for i in range(2)]
    predictions = [{"id": x["id"], "thinking_prediction": "bark", "answer_prediction": "a dog"} for x in meta]
    args = write_inputs(tmp_path, meta, predictions)
    with ScriptedJudge(default=[1, 1, 0, 0, 0], delay=0.3) as judge:
        scores = mmar.main([*args, "--output-dir", str(tmp_path / "a"), "--rubrics", "--judge-base-url", judge.base_url,
                            "--judge-concurrency", "3"])
    assert judge.most_in_flight == 3 and scores["rubrics"]["overall"]["score"] == pytest.approx(40.0)
    with ScriptedJudge(default=[1, 1, 0, 0, 0]) as judge:
        mmar.main([*args, "--output-dir", str(tmp_path / "b"), "--rubrics", "--judge-base-url", judge.base_url,
                   "--judge-concurrency", "4", "--judge-qps", "20"])
    starts = sorted(judge.arrivals)
    # 20 per second: started 50 ms apart by the client; arrivals at the server jitter by a few ms either way.
    assert len(starts) == 10 and starts[-1] - starts[0] > 9 * 0.045
    assert min(b - a for a, b in zip(starts, starts[1:])) > 0.025


def test_dry_run_estimates_without_calling(tmp_path, capsys):
    with ScriptedJudge({}) as judge:
        result = mmar.main([*write_inputs(tmp_path), "--output-dir", str(tmp_path / "out"), "--rubrics",
                            "--dry-run", "--judge-base-url", judge.base_url])
    out = capsys.readouterr().out
    assert sum(judge.calls.values()) == 0 and "rubrics" not in result
    assert "5 items, 2 score 0 without a call" in out and "3 to judge by 5 graders: 15 calls" in out
    prompt_tokens = int(out.split("about ")[1].split(" prompt")[0].replace(",", ""))
    assert 15 * 150 < prompt_tokens < 15 * 1000
    assert not (tmp_path / "out" / "scores.json").exists()


def test_old_meta_without_rubrics_is_refused_before_anything_runs(tmp_path):
    meta = [{k: v for k, v in x.items() if k != "rubric"} for x in META]
    with pytest.raises(ValueError, match="item A: no 'rubric' field"):
        mmar.main([*write_inputs(tmp_path, meta), "--output-dir", str(tmp_path / "out"), "--rubrics",
                   "--judge-base-url", "http://127.0.0.1:9/v1"])


def test_unreachable_judge_stops_with_a_clear_error_and_keeps_what_was_judged(tmp_path):
    with ScriptedJudge({"What barks in A?": [[1] * 5] * 5, "What barks in B?": ["500"] * 10}) as judge:
        with pytest.raises(RuntimeError, match="the judge at .* failed after retries"):
            mmar.main([*write_inputs(tmp_path, META[:2], PREDICTIONS[:2]), "--output-dir", str(tmp_path / "out"),
                       "--rubrics", "--judge-base-url", judge.base_url, "--judge-concurrency", "1"])
    # A's five graded, then B's first call and the client's 6 retries (a call already in flight may add a few)
    assert judge.calls["What barks in A?"] == 5 and judge.calls["What barks in B?"] >= 7
    assert sorted(read_judgements(tmp_path / "out" / JUDGEMENTS_FILE)) == [("A", k) for k in range(5)]


def test_openai_key_needed_only_for_openai(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="set OPENAI_API_KEY"):
        Judge()
    assert Judge(base_url="http://127.0.0.1:9/v1").model == "gpt-4o-2024-11-20"


def test_killed_run_resumes_without_judging_anything_twice(tmp_path):
    meta = [item(f"K{i}", f"What barks in K{i}?", "sound", "Signal Layer", "Anomaly Detection") for i in range(4)]
    predictions = [{"id": x["id"], "thinking_prediction": "bark", "answer_prediction": "a dog"} for x in meta]
    args = [*write_inputs(tmp_path, meta, predictions), "--output-dir", str(tmp_path / "out"), "--rubrics",
            "--judge-concurrency", "1"]
    log = tmp_path / "out" / JUDGEMENTS_FILE
    with ScriptedJudge(default=[1, 1, 1, 0, 0], delay=0.2) as judge:
        command = [sys.executable, "-m", "tinygiant.eval.mmar", *args, "--judge-base-url", judge.base_url]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
        deadline = time.monotonic() + 120
        while not (log.is_file() and len(log.read_text().splitlines()) >= 6):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
    recorded = len(read_judgements(log))
    assert 6 <= recorded < 20
    with ScriptedJudge(default=[1, 1, 1, 0, 0]) as judge:
        scores = mmar.main([*args, "--judge-base-url", judge.base_url])
    assert sum(judge.calls.values()) == 20 - recorded  # only what the log did not hold yet
    assert sorted(read_judgements(log)) == [(x["id"], k) for x in meta for k in range(5)]
    assert len(log.read_text().splitlines()) == 20
    assert scores["rubrics"]["overall"]["score"] == pytest.approx(60.0)
