"""TinyGiant on one CUDA GPU: a training step, a GRPO step's split and the pipeline, on the full-size model with
random weights (nothing is downloaded), each figure beside the card's own limits and the paper's claims.

    python benchmarks/gpu.py                   # on a CUDA machine: runs/benchmarks/gpu.json and gpu.md
    python benchmarks/gpu.py --update-results  # the same, written to benchmarks/results/gpu.json and gpu.md
    python benchmarks/gpu.py --quick           # the same code on the CPU with the tiny random parts (a smoke run)

It needs torch, transformers and the repository's files, plus soundfile and soxr, which the checkpoint's processor
imports; the GRPO step also needs TRL and datasets (and runs where they are); nothing needs PEFT or vLLM. What is
missing is named before anything runs. A machine without soundfile and soxr can take them as wheels: `pip download
soundfile soxr -d wheels` beside the repository, then `pip install --no-index --find-links wheels soundfile soxr` on
the machine.

Steps, in one process, in this order (each with the device's peak-memory counter reset):
1. limits (`limits.measure_limits` on the device): bf16 GEMM TFLOP/s on Whisper's FFN shape and the memory read GB/s,
   medians of repeated passes with their spreads;
2. checkpoint: the random full-size model (`measure.build_random_model`, bf16, on the device; with `--quick` at the
   tiny test checkpoint's sizes) saved with the benchmarks' processor (`measure.make_processor`) as the project saves
   a checkpoint (`tinygiant.hub.publish.save_checkpoint`);
3. sft: steps as `train_sft.py` takes them, at its per-device batch (4 rows; the paper's effective batch of 32 is 8
   of them accumulated, or 8 GPUs) in bf16 with the LLM's activations checkpointed: forward with labels, backward,
   AdamW (fused on a GPU, as transformers' default) with the projector's and the LLM's learning rates. Seconds per
   step (median), rows/s, the model FLOPs of one step (counted by `torch.utils.flop_counter` on a step without
   checkpointing: recomputation is not useful work), MFU against the measured bf16 GEMM rate and against the card's
   datasheet peak, and peak memory;
4. grpo: a GRPO step through `train_grpo.py` from the saved checkpoint, at its defaults (8 completions of 512
   tokens per prompt; one prompt per step, about 10 s clips, bf16): its time split into encoders, generation,
   log-prob passes without gradient, the policy's forward, backward and optimizer, as the GRPO trainer
   (`tinygiant.training.grpo`) logs it, and peak memory (a reference model is loaded beside the policy). It needs
   TRL and datasets; where they or the trainer cannot be imported the report says that it was not run, and why;
5. pipeline: `pipeline("audio-reasoning")` loaded from the saved folder in bf16 on the device, as a user loads it;
   greedy answers of exactly `--new-tokens` tokens to a question about a 30 s and a 10 s clip, after a warm-up: time
   to first token from the waveform (feature extraction included), decoding tok/s at batch 1 against the ceiling
   that the memory read rate puts on it, and the peak memory from loading to the last token against the paper's
   "about 5 GB".

Memory on a GPU is PyTorch's allocator's peak (`max_memory_reserved`, what the process holds without the CUDA
context; `max_memory_allocated` beside it); on the CPU it is the process's peak resident memory, reset per step.
"""

import argparse
import gc
import importlib.util
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from transformers import ProcessorMixin

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]  # the repository's modules, also where the project is not pip-installed

from limits import measure_limits, ratio_spread  # noqa: E402
from measure import (  # noqa: E402
    QWEN3_IM_END,
    StepClock,
    add_output_arguments,
    build_random_model,
    conversation_ids,
    decode_rate,
    make_audio,
    make_processor,
    output_folder,
    write_results,
)

from configuration_tinygiant import TinyGiantConfig  # noqa: E402
from modeling_tinygiant import TinyGiantForConditionalGeneration  # noqa: E402

PAPER_INFERENCE_GB = 5.0  # "the model requires only 5GB VRAM" at inference (section 4.2)
PER_DEVICE_BATCH = 4  # train_sft.py's per_device_train_batch_size (effective batch 32 by accumulation)
LEARNING_RATES = {"projector": 1e-4, "llm": 5e-5}  # the paper's, as train_sft.py sets them
# Dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOP/s, without sparsity), by a piece of the name
# `torch.cuda.get_device_name` gives; the first piece found in the name wins.
DATASHEET_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "GH200": 989.0, "H200": 989.0,
                         "B200": 2250.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0}
GRPO_MODULE = "tinygiant.training.grpo"
T = TypeVar("T")
GRPO_NEEDS = ("trl", "datasets", GRPO_MODULE)
NEEDED_MODULES = ("transformers", "soundfile", "soxr")
MIN_TRANSFORMERS = "5.24"  # pyproject's lower bound: the model's code uses transformers 5's API


# ----------------------------------------------------------------------------- the device


class Device:
    """Where the benchmark runs: synchronising, and the peak memory since the last `reset_peak`."""

    def __init__(self, name: str):
        self.torch = torch.device(name)
        self.is_cuda = self.torch.type == "cuda"

    def describe(self) -> dict:
        if not self.is_cuda:
            return {"type": "cpu", "name": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads()}
        properties = torch.cuda.get_device_properties(self.torch)
        return {"type": "cuda", "name": properties.name, "memory_gb": round(properties.total_memory / 1e9, 1),
                "capability": f"{properties.major}.{properties.minor}", "cuda": torch.version.cuda,
                "datasheet_bf16_tflops": datasheet_bf16_tflops(properties.name)}

    def sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.torch)

    def reset_peak(self) -> None:
        gc.collect()
        if self.is_cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.torch)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak resident size starts again from now

    def peak_gb(self) -> dict:
        if self.is_cuda:
            return {"peak_reserved_gb": round(torch.cuda.max_memory_reserved(self.torch) / 1e9, 3),
                    "peak_allocated_gb": round(torch.cuda.max_memory_allocated(self.torch) / 1e9, 3)}
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {"peak_rss_gb": round(int(status["VmHWM"].split()[0]) * 1024 / 1e9, 3)}


def datasheet_bf16_tflops(card: str) -> float | None:
    return next((peak for piece, peak in DATASHEET_BF16_TFLOPS.items() if piece in card), None)


def peak_memory(peak: dict) -> float:
    """The one peak figure of `Device.peak_gb` that stands for what the process holds."""
    return peak.get("peak_reserved_gb", peak.get("peak_rss_gb"))


def missing_modules() -> list[str]:
    """What the benchmark needs and this Python lacks, or has too old (the project's lower bounds)."""
    from importlib.metadata import version

    from packaging.version import Version

    missing = [name for name in NEEDED_MODULES if importlib.util.find_spec(name) is None]
    if "transformers" not in missing and Version(version("transformers")) < Version(MIN_TRANSFORMERS):
        missing.append(f"transformers>={MIN_TRANSFORMERS}")
    return missing


# ----------------------------------------------------------------------------- the model


def write_checkpoint(folder: Path, quick: bool,
                     device: Device) -> tuple[TinyGiantForConditionalGeneration, ProcessorMixin]:
    """The random model in bf16 on the device, full size (with `quick`, the tiny parts' sizes), and the benchmark's
    processor, whose small tokenizer's `<audio>` id the config takes; saved to `folder`. Returns `(model,
    processor)`."""
    from tinygiant.hub.publish import save_checkpoint

    config = tiny_config() if quick else TinyGiantConfig()
    processor = make_processor()
    config.audio_token_id = processor.audio_token_id
    model = build_random_model(config, dtype=torch.bfloat16, device=device.torch)
    save_checkpoint(model, processor, folder, training_summary="Random weights, for the GPU benchmark.")
    return model, processor


def tiny_config() -> TinyGiantConfig:
    """The config of the tiny random checkpoint the tests use."""
    from tinygiant.hub.tiny_checkpoint import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        return write_tiny_checkpoint(Path(tmp) / "tiny")[0].config


def sft_batch(model: TinyGiantForConditionalGeneration, processor: ProcessorMixin, rows: int, question_tokens: int,
              answer_tokens: int, clip_seconds: float, device: Device) -> dict:
    """A batch shaped like the training collator's: `rows` clips' encoder inputs, and chat rows of random ids (one
    clip, the question, then the answer and its end-of-turn token, which alone carry labels)."""
    features = processor.extract_audio_features([make_audio(clip_seconds, seed=row) for row in range(rows)], 16000)
    vocab = min(model.config.text_config.vocab_size, model.config.audio_token_id)
    ids, masks, labels = [], [], []
    for row in range(rows):
        prompt = conversation_ids(model.config, [question_tokens], seed=row)
        answer = torch.randint(1000, 100000, (answer_tokens,), generator=torch.Generator().manual_seed(row)) % vocab
        answer = torch.cat([answer, torch.tensor([QWEN3_IM_END % vocab])])[None]
        ids.append(torch.cat([prompt["input_ids"], answer], dim=1))
        masks.append(torch.cat([prompt["instruction_mask"], torch.zeros_like(answer)], dim=1))
        labels.append(torch.cat([torch.full_like(prompt["input_ids"], -100), answer], dim=1))
    batch = {"input_ids": torch.cat(ids), "instruction_mask": torch.cat(masks), "labels": torch.cat(labels),
             **{k: torch.as_tensor(v) for k, v in features.items()}}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    return {k: v.to(device.torch) for k, v in batch.items()}


def optimizer_for(model: torch.nn.Module, device: Device) -> torch.optim.AdamW:
    """AdamW with the projector's and the LLM's learning rates (what `TinyGiantSFTTrainer` builds, without TRL)."""
    groups = {"projector": [], "llm": []}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups["projector" if ".projector." in f".{name}" else "llm"].append(parameter)
    return torch.optim.AdamW([{"params": groups[g], "lr": lr} for g, lr in LEARNING_RATES.items()],
                             fused=device.is_cuda)


# ----------------------------------------------------------------------------- steps


def step_limits(device: Device, args: argparse.Namespace) -> dict:
    return measure_limits(quick=args.quick, repeats=3 if args.quick else 9, device=device.torch)


def step_sft(model: TinyGiantForConditionalGeneration, processor: ProcessorMixin, device: Device,
             args: argparse.Namespace) -> dict:
    """Seconds, rows/s, model FLOPs, MFU and peak memory of training steps at the per-device batch."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = sft_batch(model, processor, args.batch, args.question_tokens, args.answer_tokens, args.clip_seconds,
                      device)
    optimizer = optimizer_for(model, device)
    if device.is_cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as train_sft.py (paper: TF32)
    model.train()

    def step() -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    counter = FlopCounterMode(display=False)
    with counter:  # without checkpointing: its recomputation is work done twice, not the model's FLOPs
        step()
    model.activation_checkpointing_enable()
    device.reset_peak()
    step()  # warm-up with checkpointing on: its kernels, and AdamW's state (already there)
    times = []
    for _ in range(args.sft_steps):
        device.sync()
        start = time.perf_counter()
        step()
        device.sync()
        times.append(time.perf_counter() - start)
    model.activation_checkpointing_disable()
    model.eval()
    seconds = statistics.median(times)
    flops = counter.get_total_flops()
    return {"rows": args.batch, "sequence_tokens": batch["input_ids"].shape[1], "clip_s": args.clip_seconds,
            "activation_checkpointing": True, "step_s": round(seconds, 4),
            "step_s_spread": [round(min(times), 4), round(max(times), 4)], "rows_per_s": round(args.batch / seconds, 2),
            "model_flops_per_step": flops, "achieved_tflops": significant(flops / seconds / 1e12),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            **device.peak_gb()}


def step_grpo(folder: Path, device: Device, args: argparse.Namespace) -> dict:
    """A GRPO step's split, timed by the GRPO trainer itself (`time/<part>` in its logs), through `train_grpo.py`
    from the saved checkpoint; or, where the GRPO trainer or TRL cannot be imported, why it was not run."""
    missing = [name for name in GRPO_NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        return {"run": False, "why": f"{', '.join(missing)} not importable here: the GRPO step runs "
                                     f"{GRPO_MODULE} through train_grpo.py, on TRL and datasets"}
    from transformers import TrainerCallback

    import train_grpo
    from tinygiant.training.grpo import STEP_PARTS

    class StepLogs(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and f"time/{STEP_PARTS[0]}" in logs:
                self.steps.append({part: logs[f"time/{part}"] for part in STEP_PARTS})

    steps, logs = args.grpo_steps + 1, StepLogs()  # the first step warms up and is left out
    with tempfile.TemporaryDirectory() as tmp:
        rows = write_multiple_choice_rows(Path(tmp) / "data", steps * args.grpo_prompts)
        argv = ["--model_name_or_path", str(folder), "--dataset_files", str(rows), "--output_dir", f"{tmp}/out",
                "--max_steps", str(steps), "--num_generations", str(args.grpo_generations),
                "--per_device_train_batch_size", str(args.grpo_prompts * args.grpo_generations),
                "--max_completion_length", str(args.grpo_completion_tokens), "--dtype", "bfloat16", "--bf16", "true",
                "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
                *([] if device.is_cuda else ["--use_cpu"])]
        device.reset_peak()
        train_grpo.main(*train_grpo.parse_args(argv), callbacks=[logs])
    timed = logs.steps[1:]
    seconds = {part: statistics.median(step[part] for step in timed) for part in STEP_PARTS}
    total = sum(seconds.values())
    return {"run": True, "steps_timed": len(timed), "prompts_per_step": args.grpo_prompts,
            "generations_per_prompt": args.grpo_generations, "completion_tokens": args.grpo_completion_tokens,
            "step_s": round(total, 4), "seconds": {part: round(s, 4) for part, s in seconds.items()},
            "share": {part: round(s / total, 4) for part, s in seconds.items()}, **device.peak_gb()}


def write_multiple_choice_rows(folder: Path, n: int) -> Path:
    """`n` multiple-choice rows about 10 s clips, in the JSONL format `train_grpo.py --dataset_files` reads."""
    import soundfile

    from tinygiant.files import write_text_atomic

    folder.mkdir(parents=True)
    choices, rows = ["a dog", "a violin", "rain", "a car horn"], []
    for i in range(n):
        soundfile.write(folder / f"clip{i}.wav", make_audio(10, seed=100 + i), 16000)
        rows.append({"audio": f"clip{i}.wav", "question": "What makes this sound?", "choices": choices,
                     "answer": choices[i % len(choices)]})
    write_text_atomic(folder / "rows.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    return folder / "rows.jsonl"


def step_pipeline(folder: Path, device: Device, args: argparse.Namespace) -> dict:
    """Time to first token, decoding tok/s and peak memory of the pipeline, loaded from `folder` as a user loads it."""
    from transformers import LogitsProcessorList

    from pipeline_tinygiant import load_pipeline

    device.reset_peak()
    start = time.perf_counter()
    pipe = load_pipeline(str(folder), device=device.torch, dtype=torch.bfloat16)
    device.sync()
    result = {"load_s": round(time.perf_counter() - start, 2),
              "decode_bytes_per_token": decode_bytes_per_token(pipe.model)}
    choices = ["a dog", "a violin", "rain", "a car horn"]

    def answer(seconds: float, seed: int) -> dict:
        clock = SyncedStepClock(device)
        audio = make_audio(seconds, seed=seed)
        start = time.perf_counter()
        pipe(audio, sampling_rate=16000, question="What makes this sound?", choices=choices,
             max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
             logits_processor=LogitsProcessorList([clock]))
        return {"clip_s": seconds, "ttft_s": round(clock.times[0] - start, 4),
                "decode_tokens_per_s": round(decode_rate(clock.times), 2),
                "new_tokens": len(clock.times)}

    long, short = args.clips
    answer(short, seed=0)  # warm-up: kernels and allocator pools for these shapes
    result["long_clip"], result["short_clip"] = answer(long, seed=1), answer(short, seed=2)
    result.update(device.peak_gb())
    return result


class SyncedStepClock(StepClock):
    """`measure.StepClock` that waits for the device first: on a GPU the logits are ready only when its queue is."""

    def __init__(self, device: Device):
        super().__init__()
        self.device = device

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.device.sync()
        return super().__call__(input_ids, scores)


def decode_bytes_per_token(model: TinyGiantForConditionalGeneration) -> int:
    """Weight bytes one decoding step reads: the LLM's layers, its final norm and the LM head."""
    lm = model.model.language_model
    return sum(t.numel() * t.element_size() for m in (lm.layers, lm.norm, model.lm_head) for t in m.parameters())


# ----------------------------------------------------------------------------- ratios and report


def ratios(report: dict) -> dict:
    """Each figure against the device's limits and the paper; `None` where a figure is missing."""
    limits, sft, pipeline = report["limits"], report["sft"], report["pipeline"]
    datasheet = report["device"].get("datasheet_bf16_tflops")
    ceiling = limits["read_gb_per_s"] * 1e9 / pipeline["decode_bytes_per_token"]  # tok/s if weights stream at that rate
    out = {
        "sft_mfu_vs_measured_gemm": sft["achieved_tflops"] / limits["bf16_tflops"],
        "sft_mfu_vs_datasheet": sft["achieved_tflops"] / datasheet if datasheet else None,
        "decode_vs_ceiling": pipeline["long_clip"]["decode_tokens_per_s"] / ceiling,
        "ttft_long_vs_short_clip": pipeline["long_clip"]["ttft_s"] / pipeline["short_clip"]["ttft_s"],
        "inference_peak_vs_paper_5gb": peak_memory(pipeline) / PAPER_INFERENCE_GB,
        "training_peak_vs_device_memory": (peak_memory(sft) / report["device"]["memory_gb"]
                                           if "memory_gb" in report["device"] else None),
    }
    out = {k: None if v is None else significant(v) for k, v in out.items()}
    out["spread"] = {"sft_mfu_vs_measured_gemm": ratio_spread(out["sft_mfu_vs_measured_gemm"], limits, "bf16_tflops"),
                     "decode_vs_ceiling": ratio_spread(out["decode_vs_ceiling"], limits, "read_gb_per_s")}
    return out


def markdown(report: dict) -> str:
    device, r, sft, pipe, grpo = (report[k] for k in ("device", "ratios", "sft", "pipeline", "grpo"))
    lines = [f"# TinyGiant GPU benchmark ({report['name']})", "",
             f"{device['name']} ({device['type']}); torch {report['torch']}, transformers {report['transformers']}; "
             f"{report['wall_s']} s. Random weights, bf16.", "",
             "| ratio | value | over the limit's spread |", "|---|---:|---|"]
    lines += [f"| {k} | {v} | {r['spread'].get(k) or ''} |" for k, v in r.items() if k != "spread"]
    lim = report["limits"]
    lines += ["", f"Limits: bf16 GEMM {lim['bf16_tflops']} TFLOP/s {lim['bf16_tflops_spread']}, memory read "
              f"{lim['read_gb_per_s']} GB/s {lim['read_gb_per_s_spread']}; datasheet bf16 "
              f"{device.get('datasheet_bf16_tflops')} TFLOP/s.", "",
              f"SFT step ({sft['rows']} rows of {sft['sequence_tokens']} tokens, {sft['clip_s']} s clips, activation "
              f"checkpointing): {sft['step_s']} s {sft['step_s_spread']}, {sft['rows_per_s']} rows/s, "
              f"{significant(sft['model_flops_per_step'] / 1e12)} model TFLOP per step ({sft['achieved_tflops']} "
              f"TFLOP/s), peak "
              f"{peak_memory(sft)} GB.", "",
              f"Pipeline (loaded in {pipe['load_s']} s), batch 1, greedy: "
              + "; ".join(f"{c['clip_s']} s clip: TTFT {c['ttft_s']} s, {c['decode_tokens_per_s']} tok/s"
                          for c in (pipe["long_clip"], pipe["short_clip"]))
              + f"; peak {peak_memory(pipe)} GB (paper: about {PAPER_INFERENCE_GB} GB).", "",
              grpo_line(grpo), ""]
    return "\n".join(lines)


def significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def timed_step(name: str, run: Callable[[], T]) -> T:
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    result = run()
    print(f"   {name} took {time.perf_counter() - start:.1f} s", flush=True)
    return result


def grpo_line(grpo: dict) -> str:
    if not grpo["run"]:
        return f"GRPO step: not run ({grpo['why']})."
    return (f"GRPO step ({grpo['prompts_per_step']} prompt x {grpo['generations_per_prompt']} completions of "
            f"{grpo['completion_tokens']} tokens, median of {grpo['steps_timed']}): {grpo['step_s']} s; share "
            + ", ".join(f"{part} {share}" for part, share in grpo["share"].items()) + f"; peak {peak_memory(grpo)} GB.")


def grpo_or_why_not(folder: Path, device: Device, args: argparse.Namespace) -> dict:
    """`step_grpo`; on a GPU, a failure is reported and the run goes on (a lent GPU's minutes must not lose the other
    figures to a trainer still being built); `--quick` lets it raise, so that the test sees it."""
    try:
        return step_grpo(folder, device, args)
    except Exception as error:
        if args.quick:
            raise
        traceback.print_exc()
        return {"run": False, "why": f"failed: {error!r}"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same steps on the CPU with the tiny random parts")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --quick)")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"rows per SFT step (default {PER_DEVICE_BATCH}, train_sft.py's; 2 with --quick)")
    parser.add_argument("--question-tokens", type=int, default=100)
    parser.add_argument("--answer-tokens", type=int, default=None, help="default 400 (16 with --quick)")
    parser.add_argument("--clip-seconds", type=float, default=None,
                        help="length of each training row's clip (default 10 s, 2 s with --quick)")
    parser.add_argument("--clips", type=float, nargs=2, default=None, metavar=("LONG", "SHORT"),
                        help="the pipeline's two clips in seconds (default 30 10, 2 1 with --quick)")
    parser.add_argument("--sft-steps", type=int, default=None, help="timed SFT steps (default 10, 1 with --quick)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per answer (default 64, 4 with --quick)")
    parser.add_argument("--grpo-steps", type=int, default=None, help="timed GRPO steps (default 2, 1 with --quick)")
    parser.add_argument("--grpo-prompts", type=int, default=1, help="prompts per GRPO step")
    parser.add_argument("--grpo-generations", type=int, default=None,
                        help="completions per prompt (default 8, train_grpo.py's; 2 with --quick)")
    parser.add_argument("--grpo-completion-tokens", type=int, default=None,
                        help="completion length (default 512, train_grpo.py's; 8 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add_output_arguments(parser, "gpu")  # the report names the card
    args = parser.parse_args(argv)
    args.device = args.device or ("cpu" if args.quick else "cuda")
    args.answer_tokens = args.answer_tokens or (16 if args.quick else 400)
    args.clip_seconds = args.clip_seconds or (2.0 if args.quick else 10.0)
    args.clips = args.clips or ((2.0, 1.0) if args.quick else (30.0, 10.0))
    args.question_tokens = min(args.question_tokens, 16) if args.quick else args.question_tokens
    args.sft_steps = args.sft_steps or (1 if args.quick else 10)
    args.batch = args.batch or (2 if args.quick else PER_DEVICE_BATCH)
    args.new_tokens = args.new_tokens or (4 if args.quick else 64)
    args.grpo_steps = args.grpo_steps or (1 if args.quick else 2)
    args.grpo_generations = args.grpo_generations or (2 if args.quick else 8)
    args.grpo_completion_tokens = args.grpo_completion_tokens or (8 if args.quick else 512)
    if args.update_results and args.quick:
        parser.error("--update-results records a real run: not with --quick")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    missing = missing_modules()
    if missing:
        install = " ".join(map(shlex.quote, missing))
        raise SystemExit(f"benchmarks/gpu.py needs {', '.join(missing)} (pip install {install})")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --quick for the CPU smoke run")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: nothing comes from the Hub
    import transformers

    device = Device(args.device)
    started = time.time()
    report = {"name": "gpu-quick" if args.quick else "gpu", "quick": args.quick, "torch": torch.__version__,
              "transformers": transformers.__version__, "device": device.describe(),
              "args": {k: v for k, v in vars(args).items() if k not in ("update_results", "output_dir")}}
    print(f"== {report['device']['name']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "checkpoint"
        report["limits"] = timed_step("limits", lambda: step_limits(device, args))
        # The trained model is freed when the SFT step returns; the pipeline loads the saved folder.
        report["sft"] = timed_step("checkpoint and sft", lambda: step_sft(*write_checkpoint(folder, args.quick, device),
                                                                          device, args))
        report["grpo"] = timed_step("grpo", lambda: grpo_or_why_not(folder, device, args))
        report["pipeline"] = timed_step("pipeline", lambda: step_pipeline(folder, device, args))
    report["ratios"] = ratios(report)
    report["wall_s"] = round(time.time() - started, 1)
    write_results(report["name"], report, markdown(report), folder=output_folder(args))
    return report


if __name__ == "__main__":
    main()
