"""The README's main command, `tinygiant demo`, end to end on a few rows: it must keep working, not learn."""

import json

from tinygiant.demo import sft


def test_demo_trains_with_progress_scores_through_the_synthetic_benchmark_and_answers(tmp_path, capsys):
    out = tmp_path / "demo"
    metrics = sft.main(["--output-dir", str(out), "--n-train", "10", "--n-heldout", "10", "--epochs", "1"])
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

    # The README's path: `tinygiant ask` on the demo's model with no prompt flags answers as the harness did. The demo
    # trains with no system turn, and its checkpoint's chat template carries that, so both ask the same way.
    from tinygiant import cli
    from tinygiant.eval.synthetic import BENCHMARK

    loaded = BENCHMARK.load_folder(out / "data")
    model_predictions = (out / "model" / "eval" / "predictions.jsonl").read_text().splitlines()
    harness = {record["id"]: record for record in map(json.loads, model_predictions)}
    item = next(item for item in loaded.items if item["id"] in harness)
    assert "<|im_start|>system" not in cli_prompt(out / "model", loaded.audio_dir / item["audio_path"], item)
    code = cli.main(["ask", str(loaded.audio_dir / item["audio_path"]), item["question"], "--choices", *item["choices"],
                     "--model", str(out / "model"), "--json", "--greedy", "--max-new-tokens", "256"])
    asked = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and (asked.get("choice") or asked.get("answer") or "") == harness[item["id"]]["answer_prediction"]
    assert (asked["thinking"] or "").startswith(harness[item["id"]]["thinking_prediction"][:200])
    # The evaluation command reproduces the demo's held-out figure: the same prompt, so the same score.
    meta = out / "data" / "eval-meta.jsonl"
    code = cli.main(["eval", "synthetic", "--model", str(out / "model"), "--meta", str(meta), "--max-new-tokens", "256",
                     "--output-dir", str(tmp_path / "cli-eval")])
    scores = json.loads((tmp_path / "cli-eval" / "scores.json").read_text())
    assert code == 0 and scores["overall"]["correct"] == saved["model"]["overall"]["correct"]


def cli_prompt(model_dir, audio_path, item):
    """The prompt `tinygiant ask` renders for `item` (the pipeline's, with no system prompt given)."""
    from pipeline_tinygiant import load_pipeline

    pipe = load_pipeline(str(model_dir))
    inputs = pipe.preprocess(str(audio_path), question=item["question"], choices=item["choices"])
    return pipe.tokenizer.decode(inputs["input_ids"][0])
