"""Offline learning demo: TinyGiant learns to answer questions about synthetic sounds, on a CPU, in a few minutes.

    tinygiant demo [--output-dir runs/demo]        # or: python -m tinygiant.demo.sft

1. writes the synthetic CoTA-format dataset (`tinygiant.demo.synthetic`: beeps, tones, chords, noise, speech);
2. writes a tiny, randomly initialised TinyGiant (`tinygiant.hub.tiny_checkpoint`; 32 audio tokens instead of 300);
3. trains it twice with `train_sft.py` (TRL SFTTrainer), printing progress: once on the real audio, once as a
   CONTROL on silence;
4. scores both through the synthetic benchmark (`tinygiant.eval.synthetic`, on the evaluation runner) on the
   held-out multiple-choice questions, the control asked about silence too: per task, with chance beside it; writes
   `metrics.json`, each run's report (`<run>/eval/`) and `loss_curve.png`; `tinygiant eval compare runs/demo/model/eval
   runs/demo/control/eval` tests the gap item by item (the demo prints it, and writes `compare/`);
5. asks the trained model about a freshly generated clip through `pipeline("audio-reasoning")`.

The frozen encoders are random here, so whatever the model learns about a clip has to come through the projector
from random-feature projections of it. The control run sees the same questions and answers but no audio: it can only
learn the answer priors, so it should stay near chance, and the gap between the two runs is what the audio path carries.

    tinygiant demo --ablation --seeds 3 [--output-dir runs/ablation]

trains the paper's four Table 3 variants with each seed on the scene benchmark instead (`tinygiant.demo.ablation`).

    tinygiant demo --grpo --seeds 3 [--output-dir runs/grpo]

runs GRPO after this demo's SFT and compares the two on the held-out split (`tinygiant.demo.grpo`).
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tinygiant.demo.toy_training import GENERATE, PRESET, evaluate, train_in_parallel

# `--ablation`: scene clips (n_train / n_heldout count clips, five questions each) under a tight audio-token budget,
# so that what the projector passes on has to depend on the question. Four epochs (2,000 steps) because reading the
# audio comes late, as in the main demo; at one epoch (500 steps) every variant sat at chance. 12 runs: ~40 minutes.
ABLATION_PRESET = dict(PRESET, n_train=800, n_heldout=40, num_audio_tokens=8, epochs=4)


def per_task(scores: dict, chance: dict[str, float]) -> dict[str, dict]:
    """The benchmark's task cells that hold items, each with its chance accuracy in % (`chance`: the dataset summary's
    per-task fractions)."""
    return {task: {**cell, "chance": 100 * chance[task]} for task, cell in scores["by_task"].items() if cell["total"]}


def compare_with_control(out: Path) -> dict:
    """The trained model against its silent control on the same items (`tinygiant eval compare`): writes
    `compare.md` and `compare.json` into `out / "compare"`, prints the overall line and returns the overall cell."""
    from tinygiant.eval.compare import compare_runs, markdown
    from tinygiant.files import write_json_atomic, write_text_atomic

    result = compare_runs(out / "model" / "eval", out / "control" / "eval")
    (out / "compare").mkdir(exist_ok=True)
    write_json_atomic(out / "compare" / "compare.json", result)
    write_text_atomic(out / "compare" / "compare.md", markdown(result))
    c = result["overall"]
    print(f"model - control: {c['difference']:+.1f} points (95 % paired bootstrap {c['bootstrap_ci95'][0]:+.1f} to "
          f"{c['bootstrap_ci95'][1]:+.1f}), McNemar exact p = {c['mcnemar_p']:.3g} "
          f"({c['only_a_right']} items only the model got right, {c['only_b_right']} only the control)")
    return c


def plot_losses(histories: dict[str, list[dict]], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, history in histories.items():
        points = [(h["step"], h["loss"]) for h in history if "loss" in h]
        ax.plot(*zip(*points), label=name)
    ax.set(xlabel="optimizer step", ylabel="training loss (assistant tokens)", title="TinyGiant demo", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ask_pipeline(model_dir: str | Path, seed: int) -> dict:
    """One fresh clip through `pipeline("audio-reasoning")`."""
    from pipeline_tinygiant import load_pipeline
    from tinygiant.demo.synthetic import generate_clip

    clip = generate_clip(task="higher_tone", seed=seed)
    pipe = load_pipeline(str(model_dir))
    out = pipe({"array": clip.waveform, "sampling_rate": clip.sampling_rate}, question=clip.question,
               choices=clip.choices, **GENERATE)
    print(f"\nQ: {clip.question} {clip.choices}   (true answer: {clip.answer})")
    print(f"reasoning: {out['thinking']}\nanswer:    {out['answer']}   -> choice: {out['choice']}")
    return {"question": clip.question, "choices": clip.choices, "true_answer": clip.answer, **out}


def main(argv: Sequence[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--grpo" in argv:  # its own protocol and options
        from tinygiant.demo.grpo import main as grpo_main

        return grpo_main([arg for arg in argv if arg != "--grpo"])
    parser = argparse.ArgumentParser(prog="tinygiant demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-control", action="store_true", help="skip the zeroed-audio control run")
    parser.add_argument("--ablation", action="store_true",
                        help="instead: train the paper's four Table 3 variants on the scene benchmark, --seeds times "
                             "each, and compare them on the synthetic benchmark (tinygiant.demo.ablation)")
    parser.add_argument("--seeds", type=int, default=3, help="with --ablation: training seeds per variant")
    for key, value in PRESET.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None,
                            help=f"default {value}, with --ablation {ABLATION_PRESET[key]}")
    args = parser.parse_args(argv)
    defaults = ABLATION_PRESET if args.ablation else PRESET
    preset = {k: defaults[k] if getattr(args, k) is None else getattr(args, k) for k in PRESET}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    from tinygiant.demo.synthetic import make_synthetic_dataset
    from tinygiant.hub.tiny_checkpoint import write_tiny_checkpoint

    t0 = time.time()
    out = Path(args.output_dir).resolve()
    data_dir, tiny_dir = out / "data", out / "tiny"
    if args.ablation:
        from tinygiant.demo.ablation import run_protocol
        from tinygiant.demo.synthetic import make_scene_dataset

        summary = make_scene_dataset(data_dir, n_train=preset["n_train"], n_heldout=preset["n_heldout"],
                                     seed=args.seed)
        paths = run_protocol(out, data_dir, summary, preset, seeds=range(args.seed, args.seed + args.seeds),
                             parts_seed=args.seed)
        print(f"wrote {', '.join(map(str, paths.values()))} in {time.time() - t0:.0f} s")
        return paths
    summary = make_synthetic_dataset(data_dir, n_train=preset["n_train"], n_heldout=preset["n_heldout"], seed=args.seed)
    # Fewer audio tokens per clip than the paper's 300: a faster demo.
    write_tiny_checkpoint(tiny_dir, seed=args.seed, num_audio_tokens=preset["num_audio_tokens"])
    runs = {"model": False} if args.no_control else {"model": False, "control": True}
    steps = preset["epochs"] * -(-preset["n_train"] // preset["batch_size"])
    print(f"data and tiny model ready ({time.time() - t0:.0f} s); training {' and '.join(runs)} for {steps} steps "
          f"each on {preset['n_train']} rows ...", flush=True)
    histories = train_in_parallel({name: dict(run_dir=out / name, model_dir=tiny_dir,
                                              data_file=data_dir / "train.jsonl", preset=preset,
                                              zero_audio=zero_audio, seed=args.seed)
                                   for name, zero_audio in runs.items()})

    metrics = {"preset": preset, "chance": summary["heldout_chance_accuracy"]}
    for name, zero_audio in runs.items():
        scores = evaluate(out / name, data_dir, out / name / "eval", zero_audio=zero_audio)
        with open(out / name / "eval" / "predictions.jsonl") as f:
            example = json.loads(f.readline())
        chance = 100 * summary["heldout_chance_accuracy"]["overall"]
        metrics[name] = {"overall": {**scores["overall"], "chance": chance},
                         "per_task": per_task(scores, summary["heldout_chance_accuracy"]["per_task"]),
                         "final_loss": [h["loss"] for h in histories[name] if "loss" in h][-1], "example": example}
        m = metrics[name]["overall"]
        label = "trained on audio" if not zero_audio else "control, trained and asked on silence"
        print(f"{name} ({label}): held-out accuracy {m['accuracy']:.1f} % (chance {chance:.1f} %, n={m['total']})")
        for task, cell in metrics[name]["per_task"].items():
            print(f"    {task:50s} {cell['accuracy']:5.1f} %   chance {cell['chance']:.1f} %   n={cell['total']}")
    if "control" in runs:
        metrics["model_vs_control"] = compare_with_control(out)
    plot_losses(histories, out / "loss_curve.png")
    metrics["pipeline_example"] = ask_pipeline(out / "model", seed=args.seed + 1000)
    metrics["total_seconds"] = round(time.time() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    print(f"\nwrote {out / 'metrics.json'} and {out / 'loss_curve.png'} in {metrics['total_seconds']:.0f} s")
    return metrics


if __name__ == "__main__":
    main()
