"""Offline learning demo: TinyGiant learns to answer questions about synthetic sounds, on a CPU, in a few minutes.

    python demo_tinygiant.py [--output-dir runs/demo]        # also: tinygiant demo

1. writes the synthetic CoTA-format dataset (`synthetic_tinygiant.py`: beeps, tones, chords, noise, speech);
2. writes a tiny, randomly initialised TinyGiant (`tiny_checkpoint.py`; 32 audio tokens instead of 300 to keep it fast);
3. trains it twice with `train_sft.py` (TRL SFTTrainer): once on the real audio, once as a CONTROL on silence;
4. scores both on the held-out multiple-choice questions (greedy generation, `parse_response`, MMAR's `string_match`)
   and writes `metrics.json` (accuracy per task, chance level beside it) and `loss_curve.png`;
5. asks the trained model about a freshly generated clip through `pipeline("audio-reasoning")`.

The frozen encoders are random here, so whatever the model learns about a clip has to come through the projector
from random-feature projections of it. The control run sees the same questions and answers but no audio: it can only
learn the answer priors, so it should stay near chance, and the gap between the two runs is what the audio path carries.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# The demo's training preset: a tiny model needs far larger learning rates than the paper's 1e-4 / 5e-5.
# It needs about 2000 optimizer steps: the chain-of-thought template is learnt within a few hundred, reading the
# audio through the projector only later (the loss keeps falling slowly while the held-out accuracy rises).
PRESET = dict(n_train=1600, n_heldout=100, num_audio_tokens=32, epochs=10, batch_size=8, llm_lr=1e-3, projector_lr=3e-3)


def train(run_dir, model_dir, data_file, preset, zero_audio=False, seed=0):
    """One `train_sft.py` run in a subprocess (one torch thread: faster than two for a model this small); returns its
    log history. The runs of one demo share a feature cache, so each clip goes through the frozen encoders once."""
    cmd = [
        sys.executable, str(ROOT / "train_sft.py"),
        "--model_name_or_path", str(model_dir), "--dataset_files", str(data_file),
        "--output_dir", str(run_dir), "--use_cpu", "--bf16", "false", "--gradient_checkpointing", "false",
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
    with open(run_dir.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, check=True, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return [json.loads(line) for line in open(run_dir / "log_history.jsonl")]


def answer_heldout(model_dir, data_dir, zero_audio=False, batch_size=25, max_new_tokens=256):
    """Greedy answers of the model in `model_dir` to every held-out multiple-choice row."""
    import numpy as np
    import torch

    from modeling_tinygiant import TinyGiantForConditionalGeneration
    from parsing_tinygiant import parse_response
    from processing_tinygiant import TinyGiantProcessor, load_audio
    from train_sft import cota_to_messages

    model = TinyGiantForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = TinyGiantProcessor.from_pretrained(model_dir, trust_remote_code=True)
    rows = [json.loads(line) for line in open(data_dir / "heldout.jsonl")]
    rows = [r for r in rows if r["choices"]]
    results = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        texts, audios = [], []
        for row in chunk:
            messages = cota_to_messages(row["user"], "", system_prompt=None)[:-1]
            texts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            waveform, rate = load_audio(str(data_dir / row["audio"]))
            audios.append({"array": np.zeros_like(waveform) if zero_audio else waveform, "sampling_rate": rate})
        inputs = processor(text=texts, audio=audios, padding_side="left")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        for row, ids in zip(chunk, out[:, inputs["input_ids"].shape[1]:]):
            parsed = parse_response(processor.tokenizer.decode(ids, skip_special_tokens=True), row["choices"])
            results.append({"row": row, **parsed})
    return results


def accuracy(results, chance):
    """Accuracy per task and overall by MMAR's official rule on what the harness would submit (the chosen option's
    text), with each task's chance level beside it."""
    from evaluate_mmar import prediction_record, string_match

    by_task = defaultdict(list)
    for r in results:
        submitted = prediction_record(r["row"], r)["answer_prediction"]
        by_task[r["row"]["task"]].append(string_match(r["row"]["answer"], submitted, r["row"]["choices"]))
    per_task = {t: {"accuracy": sum(v) / len(v), "chance": chance["per_task"][t], "n": len(v)}
                for t, v in sorted(by_task.items())}
    hits = [h for v in by_task.values() for h in v]
    return {"overall": {"accuracy": sum(hits) / len(hits), "chance": chance["overall"], "n": len(hits)},
            "per_task": per_task}


def plot_losses(histories, path):
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


def ask_pipeline(model_dir, seed):
    """One fresh clip through `pipeline("audio-reasoning")`; None (with a note) if the pipeline is not there."""
    try:
        import pipeline_tinygiant  # noqa: F401  (registers the task)
    except ImportError:
        print("pipeline_tinygiant.py is missing: skipping the final question")
        return None
    from transformers import pipeline

    from synthetic_tinygiant import generate_clip

    clip = generate_clip(task="higher_tone", seed=seed)
    pipe = pipeline("audio-reasoning", model=str(model_dir), trust_remote_code=True)
    out = pipe({"array": clip.waveform, "sampling_rate": clip.sampling_rate}, question=clip.question,
               choices=clip.choices, system_prompt=None, max_new_tokens=256)
    print(f"\nQ: {clip.question} {clip.choices}   (true answer: {clip.answer})")
    print(f"reasoning: {out['thinking']}\nanswer:    {out['answer']}   -> choice: {out['choice']}")
    return {"question": clip.question, "choices": clip.choices, "true_answer": clip.answer, **out}


# The paper's Table 3 variants.
ABLATIONS = {
    "Vanilla": dict(use_intent_query=False, use_clap_gate=False),
    "w/o IQ": dict(use_intent_query=False),
    "w/o CLAP": dict(use_clap_gate=False),
    "Full": {},
}


def run_ablation(out, data_dir, preset, seed):
    """Train the four Table 3 variants with the preset and score each through the MMAR harness on the held-out
    multiple-choice rows (`mmar-meta.jsonl`); writes `ablation/ablation.md` and its chart."""
    from concurrent.futures import ThreadPoolExecutor

    from evaluate_mmar import load_meta, load_predictions, predict, score, write_ablation_report, write_report
    from tiny_checkpoint import write_tiny_checkpoint

    slugs = {name: name.lower().replace("/", "").replace(" ", "-") for name in ABLATIONS}
    for name, switches in ABLATIONS.items():  # one at a time: model loading is not thread-safe
        write_tiny_checkpoint(out / f"tiny-{slugs[name]}", seed=seed, num_audio_tokens=preset["num_audio_tokens"],
                              **switches)

    def variant(name):
        train(out / slugs[name], out / f"tiny-{slugs[name]}", data_dir / "train.jsonl", preset, seed=seed)
        return out / slugs[name]

    with ThreadPoolExecutor(max_workers=2) as pool:  # two 1-thread trainings at a time: one per core
        run_dirs = dict(zip(ABLATIONS, pool.map(variant, ABLATIONS)))
    meta, results = load_meta(data_dir / "mmar-meta.jsonl"), {}
    for name, run_dir in run_dirs.items():
        predictions = out / "ablation" / slugs[name] / "predictions.jsonl"
        predict(meta, data_dir, str(run_dir), predictions, batch_size=25,
                generate_kwargs={"max_new_tokens": 256, "system_prompt": None})  # trained without a system turn
        results[name] = score(meta, load_predictions(predictions, meta))
        write_report(results[name], predictions.parent)
        print(f"{name}: {results[name]['overall']['accuracy']:.1f} % on {results[name]['overall']['total']} items")
    return write_ablation_report(results, out / "ablation")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-control", action="store_true", help="skip the zeroed-audio control run")
    parser.add_argument("--ablation", action="store_true",
                        help="instead: train the paper's four Table 3 variants and compare them through the MMAR harness")
    for key, value in PRESET.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    preset = {k: getattr(args, k) for k in PRESET}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)
    from concurrent.futures import ThreadPoolExecutor

    from synthetic_tinygiant import make_synthetic_dataset
    from tiny_checkpoint import write_tiny_checkpoint

    t0 = time.time()
    out = Path(args.output_dir).resolve()
    data_dir, tiny_dir = out / "data", out / "tiny"
    summary = make_synthetic_dataset(data_dir, n_train=preset["n_train"], n_heldout=preset["n_heldout"], seed=args.seed)
    if args.ablation:
        paths = run_ablation(out, data_dir, preset, args.seed)
        print(f"wrote {', '.join(map(str, paths.values()))} in {time.time() - t0:.0f} s")
        return paths
    # Fewer audio tokens per clip than the paper's 300: a faster demo.
    write_tiny_checkpoint(tiny_dir, seed=args.seed, num_audio_tokens=preset["num_audio_tokens"])
    print(f"data and tiny model ready ({time.time() - t0:.0f} s); training on {preset['n_train']} rows ...")

    runs = {"model": False} if args.no_control else {"model": False, "control": True}
    with ThreadPoolExecutor(max_workers=2) as pool:  # the control trains on the other core meanwhile
        histories = dict(zip(runs, pool.map(
            lambda run: train(out / run[0], tiny_dir, data_dir / "train.jsonl", preset, run[1], args.seed),
            runs.items())))
    metrics = {"preset": preset, "chance": summary["heldout_chance_accuracy"]}
    for name, zero_audio in runs.items():
        run_dir = out / name
        results = answer_heldout(run_dir, data_dir, zero_audio=zero_audio)
        metrics[name] = {**accuracy(results, summary["heldout_chance_accuracy"]),
                         "final_loss": [h["loss"] for h in histories[name] if "loss" in h][-1],
                         "example": {k: results[0][k] for k in ("text", "answer", "choice")}}
        with open(run_dir / "heldout_predictions.jsonl", "w") as f:
            for r in results:
                f.write(json.dumps({"id": r["row"]["id"], "answer": r["answer"], "choice": r["choice"],
                                    "gold": r["row"]["answer"], "text": r["text"]}) + "\n")
        m = metrics[name]["overall"]
        label = "trained on audio" if not zero_audio else "control, trained and asked on silence"
        print(f"{name} ({label}): held-out accuracy {m['accuracy']:.1%} (chance {m['chance']:.1%}, n={m['n']})")
        for task, cell in metrics[name]["per_task"].items():
            print(f"    {task:18s} {cell['accuracy']:6.1%}   chance {cell['chance']:.1%}   n={cell['n']}")
    plot_losses(histories, out / "loss_curve.png")
    metrics["pipeline_example"] = ask_pipeline(out / "model", seed=args.seed + 1000)
    metrics["total_seconds"] = round(time.time() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    print(f"\nwrote {out / 'metrics.json'} and {out / 'loss_curve.png'} in {metrics['total_seconds']:.0f} s")
    return metrics


if __name__ == "__main__":
    main()
