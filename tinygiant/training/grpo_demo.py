"""The offline GRPO proof: after the demo's SFT, GRPO on the synthetic training split, scored on the held-out split
against SFT alone from the same start, for several seeds, item by item.

    tinygiant demo --grpo [--seeds 3] [--output-dir runs/grpo]      # or: python -m tinygiant.training.grpo_demo

1. the demo's data and tiny model, and its SFT run (`tinygiant.demo.PRESET`, `train_sft.py`), once;
2. `train_grpo.py` from that SFT checkpoint, once per seed, two runs at a time (one per core);
3. the SFT model and every GRPO model scored on the held-out questions by the synthetic benchmark
   (`tinygiant.toy_training.evaluate`), each GRPO run compared with SFT item by item (`tinygiant.eval.compare`:
   paired bootstrap interval and McNemar's exact test), per task too;
4. writes `grpo.json` (`{"seeds": {"0": {"sft": acc, "grpo": acc}, ...}, ...}`, accuracies in %), the reward and
   accuracy curves (`grpo_curves.png`) and each run's step-time split into the output folder.

Choices the issue leaves open: GRPO trains on the training split's rows of the one task SFT left at chance
(`count_beeps`); on the four tasks SFT answers right every time, every completion of a group earns the same reward,
GRPO's advantage is zero and those rows would cost generation time without moving the model. All five tasks are
scored, so a loss on them would show. Every stage is skipped when its output is already there, so a killed demo
resumes.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tinygiant.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[2]
GRPO_SCRIPT = ROOT / "train_grpo.py"
# The held-out split is twice the SFT demo's, for a paired test with more items per task.
N_HELDOUT = 200
# GRPO's toy preset: groups of 8 completions of 4 prompts per step, a short think block, rewards 2:1.
GRPO_PRESET = dict(
    tasks=["count_beeps"], max_steps=80, num_generations=8, per_device_train_batch_size=32,
    max_completion_length=160, learning_rate=1e-4, projector_learning_rate=3e-4, beta=0.01, temperature=1.0,
    mask_truncated_completions=False,
)
STEP_PARTS = ("encoders", "generation", "logps_no_grad", "policy_forward", "backward", "optimizer")


def grpo_rows(data_dir: Path, tasks: list[str]) -> Path:
    """The training split's multiple-choice rows of `tasks`, as GRPO's JSONL (audio relative to the data folder)."""
    path = data_dir / f"grpo-train-{'-'.join(tasks)}.jsonl"
    if not path.is_file():
        rows = [json.loads(line) for line in (data_dir / "train.jsonl").read_text().splitlines()]
        keep = [{k: row[k] for k in ("id", "audio", "question", "choices", "answer", "task")}
                for row in rows if row["choices"] and row["task"] in tasks]
        path.write_text("".join(json.dumps(row) + "\n" for row in keep))
    return path


def train_grpo(run_dir: Path, sft_dir: Path, rows: Path, preset: dict, seed: int, cache_dir: Path) -> None:
    """One `train_grpo.py` run in a subprocess on one core; its output in `<run_dir>.log`, a line now and then."""
    if (run_dir / "model.safetensors").is_file():
        return
    cmd = [sys.executable, str(GRPO_SCRIPT), "--model_name_or_path", str(sft_dir), "--dataset_files", str(rows),
           "--output_dir", str(run_dir), "--use_cpu", "--bf16", "false", "--seed", str(seed), "--report_to", "none",
           "--logging_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true", "--system_prompt", "",
           "--lr_scheduler_type", "constant", "--feature_cache_dir", str(cache_dir)]
    for key in ("max_steps", "num_generations", "per_device_train_batch_size", "max_completion_length",
                "learning_rate", "projector_learning_rate", "beta", "temperature", "mask_truncated_completions"):
        cmd += [f"--{key}", str(preset[key])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(run_dir.with_suffix(".log"), "w") as log:
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        for line in process.stdout:
            log.write(line)
            if line.startswith("step ") and ("(100%)" in line or int(line.split()[1].split("/")[0]) % 10 == 0):
                print(f"  [{run_dir.name}] {line.rstrip()}", flush=True)
        if process.wait():
            raise RuntimeError(f"GRPO run {run_dir.name} failed (exit code {process.returncode}); see {log.name}")


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log_history.jsonl").read_text().splitlines()]


def step_split(logs: list[dict]) -> dict:
    """Each part's share of the summed step time, and the encoders' work against the completions'."""
    totals = {part: sum(log.get(f"time/{part}", 0.0) for log in logs) for part in STEP_PARTS}
    whole = sum(totals.values())
    return {"share": {part: round(value / whole, 4) for part, value in totals.items()},
            "seconds_per_step": round(whole / max(1, sum(1 for log in logs if "time/generation" in log)), 3)}


def plot_curves(histories: dict, sft_accuracy: float, grpo_accuracy: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, logs in histories.items():
        points = [(log["step"], log["rewards/accuracy_reward/mean"]) for log in logs
                  if "rewards/accuracy_reward/mean" in log]
        steps, accuracy = zip(*points)
        window = 5  # a running mean over 5 steps: each step scores only 32 completions
        smooth = [sum(accuracy[max(0, i - window + 1): i + 1]) / len(accuracy[max(0, i - window + 1): i + 1])
                  for i in range(len(accuracy))]
        left.plot(steps, smooth, label=f"{name}: accuracy reward")
        rewards = [log["reward"] for log in logs if "reward" in log]
        left.plot(steps, [sum(rewards[max(0, i - window + 1): i + 1]) / len(rewards[max(0, i - window + 1): i + 1])
                          for i in range(len(rewards))], linestyle=":", label=f"{name}: total reward (2:1)")
    left.set(xlabel="GRPO step", ylabel="mean over the step's completions (running mean of 5)",
             title="training rewards (count_beeps rows)")
    left.legend(fontsize=7)
    names = ["SFT", *grpo_accuracy]
    right.bar(names, [sft_accuracy, *grpo_accuracy.values()], color=["grey"] + ["tab:blue"] * len(grpo_accuracy))
    right.set(ylabel="held-out accuracy (%)", title="held-out accuracy, all tasks")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="tinygiant demo --grpo", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/grpo")
    parser.add_argument("--seed", type=int, default=0, help="data, tiny model and SFT seed")
    parser.add_argument("--seeds", type=int, default=3, help="GRPO seeds")
    parser.add_argument("--parallel", type=int, default=2, help="GRPO runs at a time (one core each)")
    parser.add_argument("--tasks", nargs="+", default=GRPO_PRESET["tasks"], help="the tasks whose rows GRPO trains on")
    for key, value in GRPO_PRESET.items():
        if isinstance(value, bool):
            parser.add_argument(f"--{key.replace('_', '-')}", action="store_true")
        elif key != "tasks":
            parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    preset = {**GRPO_PRESET, **{k: getattr(args, k) for k in GRPO_PRESET}}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    from tinygiant.demo.synthetic import make_synthetic_dataset
    from tinygiant.demo.toy_training import PRESET, evaluate, train
    from tinygiant.eval.compare import compare_runs
    from tinygiant.hub.tiny_checkpoint import write_tiny_checkpoint

    t0 = time.time()
    out = Path(args.output_dir).resolve()
    data_dir, tiny_dir, sft_dir = out / "data", out / "tiny", out / "sft"
    if not (data_dir / "summary.json").is_file():
        make_synthetic_dataset(data_dir, n_train=PRESET["n_train"], n_heldout=N_HELDOUT, seed=args.seed)
    if not (tiny_dir / "config.json").is_file():
        write_tiny_checkpoint(tiny_dir, seed=args.seed, num_audio_tokens=PRESET["num_audio_tokens"])
    if not (sft_dir / "model.safetensors").is_file():
        print(f"SFT as the demo does ({PRESET['epochs']} epochs of {PRESET['n_train']} rows) ...", flush=True)
        train(sft_dir, tiny_dir, data_dir / "train.jsonl", PRESET, seed=args.seed, name="sft")
    rows = grpo_rows(data_dir, preset["tasks"])
    seeds = list(range(args.seed, args.seed + args.seeds))
    print(f"GRPO from the SFT model, {len(seeds)} seeds x {preset['max_steps']} steps on {rows.name} ...", flush=True)
    from concurrent.futures import ThreadPoolExecutor

    def scored(run_dir: Path) -> dict:
        if not (run_dir / "eval" / "scores.json").is_file():
            evaluate(run_dir, data_dir, run_dir / "eval")
        return json.loads((run_dir / "eval" / "scores.json").read_text())

    # Two GRPO runs at a time, one per core; each model is scored as soon as it is there, on this thread.
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        jobs = {seed: pool.submit(train_grpo, out / f"grpo-seed{seed}", sft_dir, rows, preset, seed,
                                  out / "feature_cache") for seed in seeds}
        scores = {"sft": scored(sft_dir)}
        for seed, job in jobs.items():
            job.result()
            scores[f"grpo-seed{seed}"] = scored(out / f"grpo-seed{seed}")
    accuracy = {name: scores[name]["overall"]["accuracy"] for name in scores}

    result = {"seeds": {}, "preset": preset, "sft_preset": PRESET, "n_heldout_items": scores["sft"]["overall"]["total"]}
    pooled_a, pooled_b = [], []
    for seed in seeds:
        comparison = compare_runs(out / f"grpo-seed{seed}" / "eval", sft_dir / "eval")
        write_json_atomic(out / f"grpo-seed{seed}" / "compare_with_sft.json", comparison)
        by_task = comparison["breakdowns"].get("task", {})
        result["seeds"][str(seed)] = {
            "sft": accuracy["sft"], "grpo": accuracy[f"grpo-seed{seed}"],
            "difference_points": comparison["overall"], "by_task": by_task,
            "step_time": step_split(history(out / f"grpo-seed{seed}")),
        }
        outcomes = {o["id"]: o["status"] == "correct" for o in json.loads(
            (out / f"grpo-seed{seed}" / "eval" / "scores.json").read_text())["items"]}
        sft_outcomes = {o["id"]: o["status"] == "correct" for o in scores["sft"]["items"]}
        pooled_a += [outcomes[i] for i in sft_outcomes]
        pooled_b += list(sft_outcomes.values())
    from tinygiant.eval.stats import paired_difference

    mean_grpo = sum(v["grpo"] for v in result["seeds"].values()) / len(seeds)
    result["mean"] = {"sft": accuracy["sft"], "grpo": round(mean_grpo, 2)}
    # Every (seed, item) pair against SFT's answer to that item: the seeds' runs share SFT's answers, so this pooled
    # test asks whether GRPO, as a procedure, beats SFT on these items; each seed's own test is in its entry.
    result["pooled_over_seeds"] = paired_difference(pooled_a, pooled_b, 10_000, 0)
    result["encoders_per_step"] = {
        "prompts_per_step": preset["per_device_train_batch_size"] // preset["num_generations"],
        "completions_per_step": preset["per_device_train_batch_size"],
        "clips_encoded": {str(seed): [log["encoded_clips"] for log in history(out / f"grpo-seed{seed}")
                                      if "encoded_clips" in log][-1] for seed in seeds},
    }
    result["seconds"] = round(time.time() - t0, 1)
    write_json_atomic(out / "grpo.json", result)
    plot_curves({f"seed {seed}": history(out / f"grpo-seed{seed}") for seed in seeds}, accuracy["sft"],
                {f"GRPO seed {seed}": accuracy[f"grpo-seed{seed}"] for seed in seeds}, out / "grpo_curves.png")
    print(f"\nheld-out accuracy: SFT {accuracy['sft']:.1f} %, GRPO {mean_grpo:.1f} % (mean of {len(seeds)} seeds)")
    for seed, entry in result["seeds"].items():
        diff = entry["difference_points"]
        print(f"  seed {seed}: GRPO {entry['grpo']:.1f} % vs SFT {entry['sft']:.1f} %, McNemar p = "
              f"{diff.get('mcnemar_p', diff.get('p_value'))}; step time shares {entry['step_time']['share']}")
    print(f"wrote {out / 'grpo.json'} and {out / 'grpo_curves.png'} in {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
