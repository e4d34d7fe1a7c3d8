"""Full-size TinyGiant benchmarks with random weights: parameters, memory, per-stage latency, decoding speed, training.

    python benchmarks/benchmark_tinygiant.py                 # CPU: 10 s and 30 s clips, batch 1 and 4, bf16 and int8
    python benchmarks/benchmark_tinygiant.py --quick         # smoke run: 10 s clip, batch 1, few tokens
    python benchmarks/benchmark_tinygiant.py --device cuda   # on a GPU (int8 there uses the dequantising fallback)

The model is built on the meta device and materialised with random weights (nothing is downloaded), so the numbers
are about speed and memory only. No tokenizer is needed: prompts are random token ids around 300 `<audio>`
placeholders, shaped like the real chat prompt (a ~100-token question). Each precision runs in its own process so that
its peak memory is its own. Writes `results/<name>.json` and `results/<name>.md` next to this file.

Each stage runs once per configuration: one pass through the encoders (timed one by one inside it), then generation
from their outputs. The training step (batch 1, bf16) compares live encoders with the feature cache as
`train_sft.py --feature_cache_dir` uses it. From the stage timings of the recorded quick run, the default run should
take 10 to 15 minutes on 2 cores (an estimate: bf16 at batch 4 dominates).
"""

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from configuration_tinygiant import TinyGiantConfig
from int8_tinygiant import quantize_int8
from modeling_tinygiant import ENCODED_AUDIO_INPUTS, TinyGiantForConditionalGeneration

QWEN3_IM_START, QWEN3_IM_END, QWEN3_PAD = 151644, 151645, 151643


# ----------------------------------------------------------------------------- helpers


def build_random_model(config, dtype=torch.bfloat16, device="cpu", seed=0):
    """Build on the meta device (no memory, no init), then allocate on `device` and initialise randomly.

    The default dtype is switched while building so that parameters are created in `dtype` while the buffers that
    transformers computes in float32 (rotary frequencies) stay float32, as with `from_pretrained(dtype=...)`.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = TinyGiantForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.to_empty(device=device)
    torch.manual_seed(seed)
    model.init_weights()  # each sub-model's own `_init_weights` (also rebuilds buffers), then re-ties the LM head
    model.model.freeze_audio_encoders()
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = QWEN3_IM_END, QWEN3_PAD
    return model.eval()


def count_parameters(model):
    count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0
    inner = model.model
    return {
        "whisper_encoder": count(inner.whisper_encoder),
        "htsat_tiny": count(inner.htsat_encoder),
        "htsat_base_clap": count(inner.clap_encoder),
        "projector": count(inner.projector),
        "qwen3_incl_embeddings": count(inner.language_model),
        "total_lm_head_tied": count(model),
    }


def memory_mb():
    """(current RSS, peak RSS) of this process in MB, from /proc (Linux) or resource (peak only)."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return None, peak


def reset_peak_memory(device):
    """Restart peak tracking so that inference peaks exclude the build (Linux: writing 5 to clear_refs resets VmHWM)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return memory_mb()[1]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def load_snapshot():
    """Machine load, to tell whether other processes competed for the CPU during a measurement."""
    top = ""
    try:
        lines = subprocess.run(["top", "-bn1"], capture_output=True, text=True, timeout=10).stdout.splitlines()
        busy = [l for l in lines[7:] if l.split() and l.split()[8].replace(".", "", 1).isdigit()
                and float(l.split()[8]) > 20]
        top = "; ".join(" ".join(l.split()[i] for i in (0, 8, 11)) for l in busy[:6])
    except Exception:  # top missing or in another format
        pass
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "busy_processes_pid_cpu_cmd": top}


def make_processor():
    """The real feature-extraction path (TinyGiantProcessor) with a small local tokenizer; text is not tokenized."""
    from transformers import ClapFeatureExtractor, WhisperFeatureExtractor

    from processing_tinygiant import TinyGiantProcessor
    from tinygiant.tiny_checkpoint import train_tokenizer

    tokenizer = train_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<audio>"]})
    return TinyGiantProcessor(ClapFeatureExtractor(truncation="rand_trunc"), WhisperFeatureExtractor(feature_size=128),
                              tokenizer)


def make_audio(seconds, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def make_prompt(config, batch, question_tokens=100, answer_tokens=0, seed=0):
    """Random ids laid out like the chat prompt: `<|im_start|>user\\n` + N placeholders + question + `<|im_end|>\\n
    <|im_start|>assistant\\n` (+ an answer for training). Returns input_ids, attention_mask, instruction_mask(, labels)."""
    g = torch.Generator().manual_seed(seed)
    rows, masks = [], []
    for _ in range(batch):
        question = torch.randint(1000, 100000, (question_tokens,), generator=g)
        answer = torch.randint(1000, 100000, (answer_tokens,), generator=g)
        parts = [torch.tensor([QWEN3_IM_START, 872, 198]), torch.full((config.num_audio_tokens,), config.audio_token_id),
                 question, torch.tensor([QWEN3_IM_END, 198, QWEN3_IM_START, 77091, 198]), answer]
        rows.append(torch.cat(parts))
        mask = torch.zeros(len(rows[-1]), dtype=torch.long)
        mask[3 + config.num_audio_tokens : 3 + config.num_audio_tokens + question_tokens] = 1
        masks.append(mask)
    input_ids = torch.stack(rows)
    out = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "instruction_mask": torch.stack(masks)}
    if answer_tokens:
        labels = torch.full_like(input_ids, -100)
        labels[:, -answer_tokens:] = input_ids[:, -answer_tokens:]
        out["labels"] = labels
    return out


class StepClock:
    """A logits processor that only records when each generated token's logits are ready (prefill, then each step)."""

    def __init__(self, device):
        self.device, self.times = device, []

    def __call__(self, input_ids, scores):
        sync(self.device)
        self.times.append(time.perf_counter())
        return scores


def timed_generate(model, inputs, new_tokens, device, fast=False, **generate_kwargs):
    """Greedy generation of exactly `new_tokens`; returns (tokens, seconds to first token, decoding tokens/s/seq).

    `fast=True` uses `generate_fast` (static KV cache; pass `compile=True` to compile the decoding step too)."""
    from transformers import LogitsProcessorList

    clock = StepClock(device)
    generate = model.generate_fast if fast else model.generate
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             logits_processor=LogitsProcessorList([clock]), **generate_kwargs)
    ttft = clock.times[0] - start
    decode = (len(clock.times) - 1) / (clock.times[-1] - clock.times[0]) if len(clock.times) > 1 else None
    return out[:, inputs["input_ids"].shape[1]:], ttft, decode


def to_device(batch, device, dtype=None):
    return {k: (v.to(device=device, dtype=dtype) if dtype is not None and v.is_floating_point() else v.to(device))
            for k, v in batch.items()}


def time_encoders(inner, mels, device, run):
    """One `encode_audio` pass over the mels, as generation makes it; hooks time each encoder inside it.

    Adds `whisper_encoder_s`, `htsat_tiny_s`, `htsat_base_clap_s` and `encoders_s` (all three and the pooling) to
    `run`; returns the pooled features (`whisper_frames`, `htsat_frames`, `clap_vector`).
    """
    starts, hooks = {}, []
    for name, encoder in (("whisper_encoder_s", inner.whisper_encoder), ("htsat_tiny_s", inner.htsat_encoder),
                          ("htsat_base_clap_s", inner.clap_encoder)):
        def start(module, args, name=name):
            sync(device)
            starts[name] = time.perf_counter()

        def stop(module, args, output, name=name):
            sync(device)
            run[name] = time.perf_counter() - starts[name]

        hooks += [encoder.register_forward_pre_hook(start), encoder.register_forward_hook(stop)]
    try:
        encoded, run["encoders_s"] = timed(lambda: inner.encode_audio(
            mels["whisper_input_features"].to(inner.whisper_encoder.dtype),
            mels["clap_input_features"].to(inner.htsat_encoder.dtype), mels["whisper_lengths"], mels["htsat_lengths"],
        ), device)
    finally:
        for hook in hooks:
            hook.remove()
    return encoded


# ----------------------------------------------------------------------------- workers (one process each)


def worker_inference(args, precision):
    device, result = args.device, {"precision": precision, "load_start": load_snapshot()}
    model, result["build_s"] = timed(lambda: build_random_model(TinyGiantConfig(), torch.bfloat16, device), device)
    result["parameters"] = count_parameters(model)
    result["rss_after_build_mb"] = memory_mb()[0]
    processor, config = make_processor(), model.config

    if precision == "int8":
        # Agreement with bf16 on the same random weights: logits on one prompt and greedy tokens.
        probe = {**processor.extract_audio_features([make_audio(10, seed=99)], 16000), **make_prompt(config, 1, seed=99)}
        probe = to_device({k: torch.as_tensor(v) for k, v in probe.items()}, device)
        with torch.no_grad():
            reference = model(**probe).logits[0, -101:].float()
        ref_tokens, _, _ = timed_generate(model, probe, args.agreement_tokens, device)
        _, result["quantize_s"] = timed(lambda: quantize_int8(model), device)
        gc.collect()
        result["rss_after_quantize_mb"] = memory_mb()[0]
        with torch.no_grad():
            logits = model(**probe).logits[0, -101:].float()
        tokens, _, _ = timed_generate(model, probe, args.agreement_tokens, device)
        first_diff = (ref_tokens[0] != tokens[0]).nonzero()
        result["agreement_with_bf16"] = {
            "logits_pearson_r": round(float(torch.corrcoef(torch.stack([reference.flatten(), logits.flatten()]))[0, 1]), 5),
            "top1_agreement_over_101_positions": round(float((reference.argmax(-1) == logits.argmax(-1)).float().mean()), 4),
            "greedy_tokens_identical_prefix": int(first_diff[0, 0]) if len(first_diff) else len(tokens[0]),
            "greedy_tokens_compared": len(tokens[0]),
        }
        del reference, logits, probe
    gc.collect()
    result["rss_ready_mb"] = memory_mb()[0]
    reset_peak_memory(device)

    # Warm-up: oneDNN builds its kernels for each new shape on first use; keep that out of the timings.
    warm = {**processor.extract_audio_features([make_audio(10, seed=1)], 16000), **make_prompt(config, 1)}
    timed_generate(model, to_device({k: torch.as_tensor(v) for k, v in warm.items()}, device), 3, device)

    runs, llm_timings = [], {}
    for batch in args.batches:
        for seconds in args.seconds:
            run = {"batch": batch, "clip_s": seconds, "question_tokens": args.question_tokens}
            audios = [make_audio(seconds, seed=i) for i in range(batch)]
            mels, run["feature_extraction_s"] = timed(lambda: processor.extract_audio_features(audios, 16000), "cpu")
            mels = to_device({k: torch.as_tensor(v) for k, v in mels.items()}, device)
            text = to_device(make_prompt(config, batch, args.question_tokens), device)
            run["prompt_tokens"] = text["input_ids"].shape[1]
            encoded = time_encoders(model.model, mels, device, run)
            query = torch.zeros(batch, config.text_config.hidden_size, dtype=model.dtype, device=device)
            with torch.no_grad():
                _, run["projector_s"] = timed(lambda: model.model.projector(*encoded[:2], query, encoded[2]), device)
            # The LLM's prompt is the same whatever the clip length (N placeholders), so prefill and decoding are
            # measured once per batch size, on the first clip length, and reused for the others.
            if batch not in llm_timings:
                inputs = {**text, **dict(zip(ENCODED_AUDIO_INPUTS, encoded))}
                _, prefill, decode = timed_generate(model, inputs, args.new_tokens, device)
                llm_timings[batch] = {"prefill_s": prefill, "decode_tokens_per_s_per_sequence": round(decode, 2),
                                      "decode_tokens_per_s_total": round(decode * batch, 2)}
                if args.fast and batch == 1:
                    llm_timings[batch].update(measure_fast_path(model, inputs, args, device))
            run.update(llm_timings[batch])
            run["ttft_from_waveform_s"] = run["feature_extraction_s"] + run["encoders_s"] + run["prefill_s"]
            run = {k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()}
            runs.append(run)
            print(json.dumps(run), flush=True)
    result["runs"] = runs
    result["peak_memory_inference_mb"] = round(peak_memory_mb(device))
    result["peak_memory_process_mb"] = round(memory_mb()[1]) if device == "cpu" else None
    result["load_end"] = load_snapshot()
    return result


def measure_fast_path(model, inputs, args, device):
    """Greedy decoding with `TinyGiantForConditionalGeneration.generate_fast` (static KV cache; compiled step with
    `--compile`, whose first call includes compilation)."""
    out = {}
    plain, _, _ = timed_generate(model, inputs, args.new_tokens, device)
    start = time.perf_counter()
    fast, _, _ = timed_generate(model, inputs, args.new_tokens, device, fast=True, compile=args.compile)
    out["fast_first_call_s"] = round(time.perf_counter() - start, 2)
    _, ttft, decode = timed_generate(model, inputs, args.new_tokens, device, fast=True, compile=args.compile)
    out["fast_prefill_s"] = round(ttft, 3)
    out["fast_decode_tokens_per_s"] = round(decode, 2)
    out["fast_tokens_equal_plain"] = bool(torch.equal(plain, fast))
    return out


def worker_training(args):
    """Seconds per training step (forward, backward, AdamW) at batch 1: live encoders vs the feature cache, the latter
    through train_sft's collator, as `train_sft.py --feature_cache_dir` runs it."""
    from tinygiant.data import TinyGiantCollator
    from tinygiant.feature_cache import AudioFeatureCache

    device, result = args.device, {"load_start": load_snapshot(), "clip_s": args.train_seconds}
    model = build_random_model(TinyGiantConfig(), torch.bfloat16, device)
    processor, config = make_processor(), model.config
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    audio = {"array": make_audio(args.train_seconds, seed=5), "sampling_rate": 16000}
    mels = {k: torch.as_tensor(v) for k, v in processor.extract_audio_features([audio], None).items()}
    text = make_prompt(config, 1, args.question_tokens, answer_tokens=args.answer_tokens)
    live = to_device({**mels, **text}, device)
    result["sequence_tokens"] = text["input_ids"].shape[1]

    with tempfile.TemporaryDirectory() as cache_dir:
        collator = TinyGiantCollator(processor, feature_cache=AudioFeatureCache(cache_dir, model, processor))
        key, row = collator.feature_cache.key(audio), mels  # what the collator holds for a processed row
        # The first look-up misses: the collator runs the encoders on the row's mels and stores the features.
        _, result["cache_fill_s_per_clip"] = timed(lambda: collator.cached_features([row], [key]), device)

        def step(cached):
            batch = to_device({**text, **collator.cached_features([row], [key])[0]}, device) if cached else live
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step(cached=False)  # warm-up: builds every kernel both kinds of step use, and AdamW's state
        times = {False: [], True: []}
        for _ in range(args.train_steps):
            for cached in (False, True):  # interleaved, so that load changes hit both alike
                times[cached].append(timed(lambda: step(cached), device)[1])
        result["cache_hits"], result["cache_misses"] = collator.feature_cache.hits, collator.feature_cache.misses
    result["step_s_live_encoders"] = round(float(np.median(times[False])), 3)
    result["step_s_feature_cache"] = round(float(np.median(times[True])), 3)
    result["speedup"] = round(result["step_s_live_encoders"] / result["step_s_feature_cache"], 2)
    result["steps_each"] = args.train_steps
    result["peak_memory_process_mb"] = round(peak_memory_mb(device))
    result["load_end"] = load_snapshot()
    return result


# ----------------------------------------------------------------------------- report


def markdown(report):
    lines = [f"# TinyGiant full-size benchmark ({report['name']})", "",
             f"{report['machine']}; torch {report['torch']}, {report['threads']} threads, device {report['device']}. "
             "Random weights; prompts of random ids with 300 audio placeholders and a "
             f"{report['args']['question_tokens']}-token question; greedy decoding of {report['args']['new_tokens']} "
             "tokens.", ""]
    first = next(iter(report["inference"].values()))
    lines += ["## Parameters", "", "| component | parameters |", "|---|---:|"]
    lines += [f"| {k} | {v / 1e6:.1f} M |" for k, v in first["parameters"].items()] + [""]
    lines += ["## Inference", "",
              "| precision | batch | clip | prompt tok | feat. extr. s | Whisper s | HTS-AT tiny s | HTS-AT base s | "
              "projector s | prefill s | TTFT s (from waveform) | decode tok/s (per seq) | fast decode tok/s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for precision, res in report["inference"].items():
        for r in res["runs"]:
            lines.append(
                f"| {precision} | {r['batch']} | {r['clip_s']} s | {r['prompt_tokens']} | {r['feature_extraction_s']:.2f} | "
                f"{r['whisper_encoder_s']:.2f} | {r['htsat_tiny_s']:.2f} | {r['htsat_base_clap_s']:.2f} | "
                f"{r['projector_s']:.2f} | {r['prefill_s']:.2f} | {r['ttft_from_waveform_s']:.2f} | "
                f"{r['decode_tokens_per_s_per_sequence']:.1f} | {r.get('fast_decode_tokens_per_s', '-')} |")
    lines += ["", "Prefill: from the encoders' outputs to the first token (projector and the LLM's prompt pass). It and "
              "decoding do not depend on the clip length (the prompt always holds the same placeholders), so they are "
              "measured at the first clip length of each batch size. TTFT from waveform = feature extraction + encoders "
              "(with pooling) + prefill.", ""]
    lines += ["| precision | build s | quantize s | RSS after quantize MB | RSS ready MB | peak RSS during inference MB | "
              "peak RSS whole process MB | load avg start / end |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for precision, res in report["inference"].items():
        lines.append(f"| {precision} | {res['build_s']:.1f} | {res.get('quantize_s', 0):.1f} | "
                     f"{res.get('rss_after_quantize_mb', 0):.0f} | {res['rss_ready_mb']:.0f} | "
                     f"{res['peak_memory_inference_mb']} | {res['peak_memory_process_mb']} | "
                     f"{res['load_start']['loadavg_1m']} / {res['load_end']['loadavg_1m']} |")
    agreement = report["inference"].get("int8", {}).get("agreement_with_bf16")
    if agreement:
        lines += ["", "int8 vs bf16 (same random weights): " + ", ".join(f"{k} = {v}" for k, v in agreement.items())]
    train = report.get("training")
    if train:
        lines += ["", "## Training step (batch 1, bf16, forward + backward + AdamW)", "",
                  "| clip | tokens | live encoders s/step | feature cache s/step | speed-up | cache fill s/clip "
                  "(encoders + write) | load avg |",
                  "|---:|---:|---:|---:|---:|---:|---|",
                  f"| {train['clip_s']} s | {train['sequence_tokens']} | {train['step_s_live_encoders']} | "
                  f"{train['step_s_feature_cache']} | {train['speedup']}x | {train['cache_fill_s_per_clip']:.2f} | "
                  f"{train['load_start']['loadavg_1m']} / {train['load_end']['loadavg_1m']} |"]
    lines += ["", f"Load during the run (1-min load average; {report['threads']} threads used): "
              + "; ".join(f"{k}: {v}" for k, v in report["load"].items()), ""]
    return "\n".join(lines)


def run_worker(args, kind, precision=None):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    command = [sys.executable, __file__, *args.passthrough, "--worker", kind, "--worker-out", out]
    if precision:
        command += ["--precision", precision]
    print(f"== {kind} {precision or ''}", flush=True)
    subprocess.run(command, check=True)
    result = json.loads(Path(out).read_text())
    os.unlink(out)
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 s clip, batch 1, 8 tokens")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["bf16", "int8"], choices=["bf16", "int8"])
    parser.add_argument("--seconds", nargs="+", type=float, default=None, help="clip lengths (default 10 30)")
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="batch sizes (default 1 4)")
    parser.add_argument("--question-tokens", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=None, help="greedy tokens per generation (default 16)")
    parser.add_argument("--agreement-tokens", type=int, default=16)
    parser.add_argument("--fast", action="store_true", help="also time `generate_fast` (static KV cache) at batch 1")
    parser.add_argument("--compile", action="store_true", help="with --fast: torch.compile the decoding step too")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step comparison")
    parser.add_argument("--train-seconds", type=float, default=10)
    parser.add_argument("--train-steps", type=int, default=1, help="measured steps each way, after a warm-up step")
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument("--name", default=None, help="results file name (default cpu, cpu-quick or cuda)")
    parser.add_argument("--worker", choices=["inference", "training"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.seconds = args.seconds or ([10] if args.quick else [10, 30])
    args.batches = args.batches or ([1] if args.quick else [1, 4])
    args.new_tokens = args.new_tokens or (8 if args.quick else 16)
    args.name = args.name or (args.device + ("-quick" if args.quick else ""))
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        result = worker_training(args) if args.worker == "training" else worker_inference(args, args.precision)
        Path(args.worker_out).write_text(json.dumps(result, indent=1))
        return
    args.passthrough = [a for a in argv if a not in ("--worker",)]
    started = time.time()
    report = {"name": args.name, "device": args.device, "threads": args.threads, "torch": torch.__version__,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "args": {k: v for k, v in vars(args).items() if k not in ("passthrough", "worker", "worker_out")},
              "load": {"start": load_snapshot()}, "inference": {}}
    for precision in args.precisions:
        report["inference"][precision] = run_worker(args, "inference", precision)
    if not args.no_train:
        report["training"] = run_worker(args, "training")
    report["load"]["end"] = load_snapshot()
    report["wall_s"] = round(time.time() - started, 1)
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{args.name}.json").write_text(json.dumps(report, indent=1))
    (out_dir / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out_dir / args.name}.json and .md in {report['wall_s']} s")


if __name__ == "__main__":
    main()
