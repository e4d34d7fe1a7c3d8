"""The toy training loop of the demo and the ablation: one `train_sft.py` run in a subprocess, runs two at a time,
and a trained run scored through the synthetic benchmark (`tinygiant.eval.synthetic`) on the held-out multiple-choice
questions.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = ROOT / "train_sft.py"
PROGRESS_EVERY_S = 20  # a progress line per run at most this often (train_sft prints one per logging step)
# Asked as the runs were trained: no system turn, and room for the short synthetic chains of thought.
GENERATE = {"max_new_tokens": 256, "system_prompt": None}
# The demo's training preset (`tinygiant demo`, and the SFT before the GRPO demo): a tiny model needs far larger
# learning rates than the paper's 1e-4 / 5e-5. It needs about 2000 optimizer steps: the chain-of-thought template is
# learnt within a few hundred, reading the audio through the projector only later (the loss keeps falling slowly while
# the held-out accuracy rises).
PRESET = dict(n_train=1600, n_heldout=100, num_audio_tokens=32, epochs=10, batch_size=8, llm_lr=1e-3, projector_lr=3e-3)


def train(run_dir: Path, model_dir: str | Path, data_file: str | Path, preset: dict[str, Any],
          zero_audio: bool = False, seed: int = 0, name: str | None = None) -> list[dict]:
    """One `train_sft.py` run in a subprocess (one torch thread: faster than two for a model this small); returns its
    log history. Its output goes to `<run_dir>.log`, and a progress line (step, loss, ETA) to stdout now and then.
    The runs of one demo share a feature cache, so each clip goes through the frozen encoders once."""
    if not TRAIN_SCRIPT.is_file():
        raise FileNotFoundError(f"the demo runs {TRAIN_SCRIPT}, which is not there: run it from a clone of the repo")
    cmd = [
        sys.executable, str(TRAIN_SCRIPT),
        "--model_name_or_path", str(model_dir), "--dataset_files", str(data_file),
        "--output_dir", str(run_dir), "--use_cpu", "--bf16", "false", "--activation_checkpointing", "false",
        "--num_train_epochs", str(preset["epochs"]), "--per_device_train_batch_size", str(preset["batch_size"]),
        "--effective_batch_size", str(preset["batch_size"]), "--learning_rate", str(preset["llm_lr"]),
        "--projector_learning_rate", str(preset["projector_lr"]), "--lr_scheduler_type", "cosine",
        "--warmup_steps", "10", "--weight_decay", "0.0", "--logging_steps", "5", "--logging_first_step", "true",
        "--save_strategy", "no",
        "--disable_tqdm", "true", "--seed", str(seed), "--zero_audio", str(zero_audio),
        "--feature_cache_dir", str(run_dir.parent / "feature_cache"),
        "--system_prompt", "",  # no system turn: shorter sequences, and the pipeline is asked the same way
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    name = name or run_dir.name
    with open(run_dir.with_suffix(".log"), "w") as log:
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        last_shown = 0.0
        for line in process.stdout:
            log.write(line)
            if line.startswith("step ") and (time.monotonic() - last_shown > PROGRESS_EVERY_S or "(100%)" in line):
                print(f"  [{name}] {line.rstrip()}", flush=True)
                last_shown = time.monotonic()
        if process.wait():
            raise RuntimeError(f"training {name} failed (exit code {process.returncode}); see {log.name}")
    with open(run_dir / "log_history.jsonl") as f:
        return [json.loads(line) for line in f]


def train_in_parallel(jobs: dict[str, dict[str, Any]]) -> dict[str, list[dict]]:
    """Run `train(**job)` for each named job, two at a time (one per core); returns `{name: log history}`."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(train, name=name, **job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def evaluate(run_dir: str | Path, data_dir: str | Path, out_dir: str | Path, zero_audio: bool = False) -> dict:
    """Score the model in `run_dir` on the held-out multiple-choice questions through the synthetic benchmark
    (`tinygiant.eval.synthetic`); writes its predictions, scores and report into `out_dir` and returns the scores."""
    from tinygiant.eval.runner import describe_run, predict
    from tinygiant.eval.synthetic import BENCHMARK
    from tinygiant.files import write_json_atomic

    loaded = BENCHMARK.load_folder(data_dir)
    predictions = Path(out_dir) / "predictions.jsonl"
    predict(loaded.items, loaded.audio_dir, str(run_dir), predictions, batch_size=25, generate_kwargs=GENERATE,
            zero_audio=zero_audio)
    run = describe_run({"model": str(run_dir)}, {**GENERATE, "decoding": "greedy", "asked_about_silence": zero_audio})
    write_json_atomic(Path(out_dir) / "run.json", run)
    scored = BENCHMARK.score(loaded.items, BENCHMARK.read_predictions(predictions, loaded.items))
    scores = {"benchmark": BENCHMARK.name, **scored, "run": run}
    BENCHMARK.write_report(scores, out_dir, run, loaded)
    return scores
