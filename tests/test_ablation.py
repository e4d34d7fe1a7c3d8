"""The ablation protocol's statistics, report and resuming (tinygiant.demo.ablation); training itself is covered by
test_demo.py, so here `train` and `evaluate` are replaced by functions that record calls and write MMAR scores."""

import json
import math

import numpy as np
import pytest

import tinygiant.demo.synthetic as syn
from tinygiant.demo import ablation, sft
from tinygiant.eval.stats import mcnemar_exact


def test_t_interval_and_mcnemar():
    mean, (lo, hi) = ablation.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and hi - mean == pytest.approx(4.303 / math.sqrt(3)) and mean - lo == pytest.approx(hi - mean)
    assert ablation.t_interval([5.0]) == (5.0, [5.0, 5.0])
    # Exact two-sided binomial tail on the discordant pairs.
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    # Binomial upper tail: 3 or more right of 3 at chance 1/2, and at least 0 right, which is certain.
    assert ablation.above_chance_p(3, 3, 0.5) == pytest.approx(1 / 8)
    assert ablation.above_chance_p(2, 3, 0.5) == pytest.approx(4 / 8)
    assert ablation.above_chance_p(0, 200, 0.45) == pytest.approx(1.0)


def test_run_level_test_and_accuracy_intervals_stay_in_range():
    # A bimodal variant: one seed reads the audio (every item right), two answer from the prior (half right).
    tasks = {f"clip{i}-{t}": t for i in range(40) for t in ("scene_speech", "scene_background")}
    prior = {item: i % 2 == 0 for i, item in enumerate(sorted(tasks))}
    correct = {"Full": {0: dict.fromkeys(tasks, True), 1: prior, 2: dict(prior)}}
    full = ablation.summarise(correct, tasks, chance=0.5)["variants"]["Full"]
    assert full["seeds"]["0"]["above_chance_p"] < 1e-20 and full["seeds"]["1"]["above_chance_p"] > 0.4
    assert full["ci95"][1] == 100.0 and full["ci95"][0] >= 0.0  # the raw t-interval runs past 100
    assert "above_chance_p" not in ablation.summarise(correct, tasks)["variants"]["Full"]["seeds"]["0"]


def outcomes(rng, tasks, accuracy):
    """One run's {item: correct} with a given accuracy per task."""
    return {item: bool(rng.random() < accuracy[task]) for item, task in tasks.items()}


def test_summarise_finds_a_real_difference_and_not_a_fake_one():
    rng = np.random.default_rng(0)
    tasks = {f"clip{i}-{t}": t for i in range(60) for t in ("scene_count", "scene_background")}
    good = {"scene_count": 0.9, "scene_background": 0.5}  # background: overwritten below
    bad = {"scene_count": 0.3, "scene_background": 0.5}
    correct = {"Vanilla": {s: outcomes(rng, tasks, bad) for s in range(3)},
               "Full": {s: outcomes(rng, tasks, good) for s in range(3)}}
    for s in range(3):  # on the background task Full's seeds are Vanilla's, in another order: no paired difference
        for item, task in tasks.items():
            if task == "scene_background":
                correct["Full"][s][item] = correct["Vanilla"][(s + 1) % 3][item]
    summary = ablation.summarise(correct, tasks)
    full = summary["variants"]["Full"]
    assert set(full["seeds"]) == {"0", "1", "2"}
    seed0 = np.mean(list(correct["Full"][0].values())) * 100
    assert full["seeds"]["0"]["accuracy"] == pytest.approx(seed0)
    assert full["mean"] == pytest.approx(np.mean([s["accuracy"] for s in full["seeds"].values()]))
    for key in ("ci95", "item_ci95"):
        assert full[key][0] <= full["mean"] <= full[key][1]
    assert 80 < full["per_task"]["scene_count"]["mean"] < 100
    paired = summary["paired"]["Full - Vanilla"]  # only the pairs whose variants were run
    assert list(summary["paired"]) == ["Full - Vanilla"]
    assert paired["scene_count"]["bootstrap_ci95"][0] > 30 and paired["scene_count"]["mcnemar_p"] < 1e-6
    same = paired["scene_background"]
    assert same["difference"] == 0 and same["bootstrap_ci95"] == [0, 0] and same["mcnemar_p"] == 1.0
    assert same["only_first_right"] == same["only_second_right"] > 0


def test_protocol_resumes_and_writes_the_report(tmp_path, monkeypatch):
    out = tmp_path / "abl"
    data_dir = out / "data"
    summary = syn.make_scene_dataset(data_dir, n_train=4, n_heldout=4, seed=0)
    trained = []

    def fake_train(run_dir, model_dir, data_file, preset, seed=0, name=None, **kwargs):
        assert json.loads((model_dir / "config.json").read_text())["num_audio_tokens"] == preset["num_audio_tokens"]
        trained.append(name)

    def fake_evaluate(run_dir, data_dir, out_dir):
        meta = [json.loads(line) for line in open(data_dir / "eval-meta.jsonl")]
        right = run_dir.name.startswith("full")  # Full answers everything, the others nothing
        out_dir.mkdir(parents=True, exist_ok=True)
        items = [{"id": m["id"], "status": "correct" if right else "wrong"} for m in meta]
        (out_dir / "scores.json").write_text(json.dumps({"items": items}))  # as the evaluation runner writes it
        return {"overall": {"accuracy": 100.0 * right}}

    monkeypatch.setattr(ablation, "train", fake_train)
    monkeypatch.setattr(ablation, "evaluate", fake_evaluate)
    preset = dict(sft.ABLATION_PRESET, num_audio_tokens=4)
    paths = ablation.run_protocol(out, data_dir, summary, preset, seeds=[0, 1])
    assert sorted(trained) == sorted(ablation.slug(v, s) for v in ablation.VARIANTS for s in (0, 1))
    # The variants differ only in their switches; the seeds share the encoders (so the feature cache), not the
    # projector.
    configs = {name: json.loads((out / f"tiny-{name}" / "config.json").read_text()) for name in trained}
    assert not configs["vanilla-seed0"]["use_intent_query"] and configs["full-seed0"]["use_clap_gate"]

    saved = json.loads(paths["ablation.json"].read_text())
    assert list(saved["variants"]) == list(ablation.VARIANTS)
    full, vanilla = saved["variants"]["Full"], saved["variants"]["Vanilla"]
    assert full["mean"] == 100.0 and vanilla["mean"] == 0.0 and full["ci95"] == [100.0, 100.0]
    assert set(full["seeds"]["1"]["per_task"]) == set(summary["tasks"])
    n_items = len(summary["tasks"]) * 4
    assert saved["paired"]["Full - Vanilla"]["overall"]["only_first_right"] == 2 * n_items
    assert saved["protocol"]["runs_trained"] == 8
    assert "| **overall** |" in paths["ablation.md"].read_text()
    assert "| Full | 100.0 * | 100.0 * | 2 of 2 |" in paths["ablation.md"].read_text()
    assert paths["ablation.png"].read_bytes()[:4] == b"\x89PNG"

    # Run again: everything is scored already, so nothing is retrained; an unfinished run is retrained, alone.
    trained.clear()
    ablation.run_protocol(out, data_dir, summary, preset, seeds=[0, 1])
    assert trained == []
    (out / "ablation" / ablation.slug("w/o IQ", 1) / "run.json").unlink()
    # Stopped early, the report covers the runs that finished, and says so.
    partial = ablation.write_protocol_report(out, data_dir, summary, preset,
                                             [(v, s) for s in (0, 1) for v in ablation.VARIANTS])
    saved = json.loads(partial["ablation.json"].read_text())
    assert list(saved["variants"]["w/o IQ"]["seeds"]) == ["0"] and saved["protocol"]["runs_scored"] == 7
    assert saved["paired"]["Full - w/o IQ"]["seeds"] == ["0"]
    assert saved["paired"]["Full - Vanilla"]["seeds"] == ["0", "1"]
    assert "7 of 8 runs scored (a partial protocol" in partial["ablation.md"].read_text()
    ablation.run_protocol(out, data_dir, summary, preset, seeds=[0, 1])
    assert trained == [ablation.slug("w/o IQ", 1)]
