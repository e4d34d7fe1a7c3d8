"""The README's main command, `tinygiant demo`, end to end on a few rows: it must keep working, not learn."""

import json

import demo_tinygiant


def test_demo_writes_metrics_curve_and_answers(tmp_path):
    out = tmp_path / "demo"
    metrics = demo_tinygiant.main(["--output-dir", str(out), "--n-train", "10", "--n-heldout", "10", "--epochs", "1"])

    saved = json.loads((out / "metrics.json").read_text())
    assert (out / "loss_curve.png").stat().st_size > 0
    for run in ("model", "control"):
        overall = saved[run]["overall"]
        assert overall["n"] == saved["chance"]["n_multiple_choice"] > 0
        assert 0.0 <= overall["accuracy"] <= 1.0 and saved[run]["final_loss"] > 0
        assert (out / run / "heldout_predictions.jsonl").read_text().count("\n") == overall["n"]
    assert saved["control"]["overall"]["chance"] == saved["chance"]["overall"]
    example = metrics["pipeline_example"]
    assert example["true_answer"] in example["choices"] and "answer" in example
