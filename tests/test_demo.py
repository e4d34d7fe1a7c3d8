"""The README's main command, `tinygiant demo`, end to end on a few rows: it must keep working, not learn."""

import json

from tinygiant import demo


def test_demo_trains_with_progress_scores_through_the_synthetic_benchmark_and_answers(tmp_path, capsys):
    out = tmp_path / "demo"
    metrics = demo.main(["--output-dir", str(out), "--n-train", "10", "--n-heldout", "10", "--epochs", "1"])
    printed = capsys.readouterr().out

    saved = json.loads((out / "metrics.json").read_text())
    assert (out / "loss_curve.png").stat().st_size > 0
    n_questions = saved["chance"]["n_multiple_choice"]
    for run in ("model", "control"):
        overall = saved[run]["overall"]
        assert overall["total"] == n_questions > 0 and 0.0 <= overall["accuracy"] <= 100.0
        assert saved[run]["final_loss"] > 0
        # Scored through the synthetic benchmark (tinygiant.eval.synthetic): predictions, scores and report, per task.
        predictions = (out / run / "eval" / "predictions.jsonl").read_text().splitlines()
        assert len(predictions) == n_questions and {"id", "answer_prediction"} <= set(json.loads(predictions[0]))
        assert json.loads((out / run / "eval" / "scores.json").read_text())["overall"]["correct"] == overall["correct"]
        assert sum(cell["total"] for cell in saved[run]["per_task"].values()) == n_questions
        # Progress while training: a line per run with the step count and an ETA.
        assert f"[{run}] step 1/2 (50%) | loss " in printed and f"[{run}] step 2/2 (100%) | done in" in printed
    assert saved["control"]["overall"]["chance"] == 100 * saved["chance"]["overall"]
    # The model against its silent control, item by item (tinygiant eval compare).
    paired = saved["model_vs_control"]
    assert paired["n"] == n_questions and 0.0 <= paired["mcnemar_p"] <= 1.0 and "model - control: " in printed
    assert (out / "compare" / "compare.md").is_file()
    example = metrics["pipeline_example"]
    assert example["true_answer"] in example["choices"] and "answer" in example
