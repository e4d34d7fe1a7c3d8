"""TinyGiant CPU performance as ratios measured in one run: the machine's limits, the naive path against the best
path, and a peer side by side, all with random full-size weights (nothing is downloaded).

    python benchmarks/benchmark_tinygiant.py           # full run: runs/benchmarks/cpu.json + cpu.md (its time: wall_s)
    python benchmarks/benchmark_tinygiant.py --quick   # smoke run of every step on tiny models
    python benchmarks/benchmark_tinygiant.py --update-results   # a run that replaces the committed results/cpu.json
    python benchmarks/benchmark_tinygiant.py --train   # also a training step: live encoders vs the feature cache

Steps, each in a process of its own so that its peak memory is its own:
1. limits (`limits.py`, which the serving benchmark uses too): bf16 GEMM TFLOP/s and int8 `torch._int_mm` TOP/s on
   Whisper's FFN shape, memory read GB/s over arrays larger than the caches, each the median of repeated passes with
   its spread, with the benchmark's threads; also the GB/s that PyTorch's one-row matmuls (decoding's) reach on
   Qwen3's shapes (best of 20), which is what keeps PyTorch's decoding below the ceiling;
2. a random full-size checkpoint is written to a temporary folder (the processor included), so that every path
   loads it as a user would, with its language model as GGUF (bf16 and Q8_0) for llama.cpp;
3. naive: `from_pretrained(dtype=bf16)` and the plain `model.generate` on the processor's output, as a user first
   calls it; then the bf16 decoding candidates, and the agreement of the lossy steps with bf16 (W8A8, padding);
4. int8: `load_int8(..., activations="int8")` (W8A8 encoders and prompt pass, quantised while loading) with
   `whisper_trim_padding` on and the LLM in PyTorch; its load's peak memory, and each int8 decoding candidate;
5. best: the int8 path with the fastest acceptable int8 decoding (`acceptable`: the plain greedy tokens, or for
   llama.cpp close teacher-forced agreement), end to end: time to first token, decoding, a follow-up question
   about the same clip through the per-clip audio cache (`measure.followup_ttft`, as `followup_ttft.py` runs it), peak
   memory;
6. peer: Qwen2.5-Omni-3B's thinker (`measure.measure_peer`, as `peer_qwen_omni.py` runs it) on the same 30 s clip and
   100-token question;
7. ONNX Runtime: `tinygiant export onnx` of the checkpoint (fp32, int8 `_quantized`, `_q4`; the download size of each
   variant), then fp32 and int8 run by `onnx_paths.py` in the torch-free environment (`.venv-onnx/`, as an app would):
   time to first token, decoding, peak RSS, agreement with bf16; and that environment's size on disk against this one.

The best path follows the measured winner: its encoders are W8A8 where the int8 step's Whisper beat bf16's on the 30 s
clip (not on CPUs with AMX, `int8_tinygiant.w8a8_encoders_pay_off`), else bf16, with that model's fastest acceptable
decoding; the fastest path overall, ONNX ones included, is named in the ratios.

Time to first token is from the waveform (feature extraction, encoders, projector, prompt pass). The ratios are
named as in `ratios()` below.
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
from limits import measure_limits, passes, ratio_spread
from measure import (
    ASSISTANT,
    NEWLINE,
    QWEN3_IM_END,
    QWEN3_IM_START,
    USER,
    StepClock,
    add_output_arguments,
    build_random_model,
    decode_rate,
    followup_ttft,
    make_audio,
    make_processor,
    measure_peer,
    memory_mb,
    output_folder,
    write_results,
)

from configuration_tinygiant import TinyGiantConfig
from int8_tinygiant import Int8Linear, load_int8, quantize_int8
from modeling_tinygiant import AUDIO_INPUTS, ENCODED_AUDIO_INPUTS, TinyGiantForConditionalGeneration

# ----------------------------------------------------------------------------- helpers


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def load_snapshot():
    """Machine load, to tell whether other processes competed for the CPU during a measurement."""
    return {"loadavg_1m": round(os.getloadavg()[0], 2)}


def make_prompt(config, batch=1, question_tokens=100, answer_tokens=0, seed=0):
    """Random ids laid out like the chat prompt: `<|im_start|>user\\n` + N placeholders + question + `<|im_end|>\\n
    <|im_start|>assistant\\n` (+ an answer for training). Returns input_ids, attention_mask, instruction_mask(, labels).

    Random weights give the ids no meaning, so a small vocabulary (the tiny model's) just takes them modulo its size.
    """
    vocab = min(config.text_config.vocab_size, config.audio_token_id)
    g = torch.Generator().manual_seed(seed)
    rows, masks = [], []
    for _ in range(batch):
        question = torch.randint(1000, 100000, (question_tokens,), generator=g)
        answer = torch.randint(1000, 100000, (answer_tokens,), generator=g)
        parts = [torch.tensor([QWEN3_IM_START, USER, NEWLINE]) % vocab,
                 torch.full((config.num_audio_tokens,), config.audio_token_id), question % vocab,
                 torch.tensor([QWEN3_IM_END, NEWLINE, QWEN3_IM_START, ASSISTANT, NEWLINE]) % vocab, answer % vocab]
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


def timed_generate(model, inputs, new_tokens, decoding="generate", start=None, checkpoint=None):
    """Greedy generation of exactly `new_tokens` with one of `DECODING`; returns (new tokens, seconds from `start`
    (default: now) to the first token, decoding tokens/s)."""
    from transformers import LogitsProcessorList

    clock = StepClock()
    start = time.perf_counter() if start is None else start
    with torch.no_grad():
        out = generate_with(model, decoding, checkpoint)(
            **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            logits_processor=LogitsProcessorList([clock]))
    return out[:, inputs["input_ids"].shape[1]:], clock.times[0] - start, decode_rate(clock.times)


# The decoding paths tried: the plain one users call, the static KV cache, the static cache with a compiled step,
# and the language model on llama.cpp (`llamacpp_tinygiant`), from GGUFs the checkpoint step writes: bf16 weights
# next to the bf16 model, Q8_0 next to the int8 one. llama.cpp's arithmetic differs from PyTorch's, so its tokens are
# judged by agreement (`acceptable`), not equality.
TORCH_DECODING = ("generate", "static_cache", "static_cache_compiled")
GGUF_FILES = {"llama_cpp_bf16": "qwen3-bf16.gguf", "llama_cpp_q8_0": "qwen3-q8_0.gguf"}
DECODING = (*TORCH_DECODING, *GGUF_FILES)
FLOAT_DECODING, INT8_DECODING = (*TORCH_DECODING, "llama_cpp_bf16"), (*TORCH_DECODING, "llama_cpp_q8_0")
LLAMA_DECODERS = {}  # decoding name -> LlamaCppDecoder, one per process


def generate_with(model, name, checkpoint=None):
    """The `generate`-like callable of decoding path `name` for `model`."""
    if name == "generate":
        return model.generate
    if name == "static_cache":
        return model.generate_with_static_cache
    if name == "static_cache_compiled":
        return lambda **kw: model.generate_with_static_cache(compile=True, **kw)
    if name not in LLAMA_DECODERS:
        from llamacpp_tinygiant import LlamaCppDecoder

        LLAMA_DECODERS[name] = LlamaCppDecoder(Path(checkpoint) / GGUF_FILES[name])
    return lambda **kw: LLAMA_DECODERS[name].generate(model, **kw)


def gguf_bytes(path):
    """Bytes of the tensors in a GGUF: what llama.cpp reads per decoding step (the tied table is the LM head)."""
    from gguf import GGUFReader

    return int(sum(tensor.n_bytes for tensor in GGUFReader(path).tensors))


def teacher_forced_agreement(model, decoder, inputs, tokens):
    """llama.cpp against PyTorch on the same prompt and the plain path's greedy `tokens`, position by position: the
    share of positions whose top-1 token agrees, and the lowest Pearson r of the logits."""
    audio = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    full = torch.cat([inputs["input_ids"], tokens], dim=1)
    with torch.no_grad():
        reference = model(input_ids=full, attention_mask=torch.ones_like(full), **audio).logits[0]
    reference = reference[inputs["input_ids"].shape[1] - 1:].float()
    ours = decoder.teacher_forced_logits(model, tokens[0], inputs["input_ids"], **audio)
    return {"teacher_forced_top1_agreement": round(float((ours.argmax(-1) == reference.argmax(-1)).float().mean()), 4),
            "teacher_forced_min_pearson_r": min(pearson(a, b) for a, b in zip(ours, reference))}


def acceptable(result):
    """A decoding path counts if it keeps the plain greedy tokens, or (lossy paths) agrees with the plain path's
    logits at 95 % of the positions with r >= 0.99 everywhere."""
    return result["tokens_equal_plain"] or (result.get("teacher_forced_top1_agreement", 0) >= 0.95
                                            and result.get("teacher_forced_min_pearson_r", 0) >= 0.99)


def tensors(batch):
    return {k: torch.as_tensor(v) for k, v in batch.items()}


class WhisperClock:
    """Times `TinyGiantModel.encode_whisper` (the Whisper encoder, trimmed or padded) inside whatever calls it."""

    def __init__(self, inner):
        self.seconds, self.inner, encode = [], inner, inner.encode_whisper

        def timed_encode(*args, **kwargs):
            out, seconds = timed(lambda: encode(*args, **kwargs))
            self.seconds.append(seconds)
            return out

        inner.encode_whisper = timed_encode


def first_token_from_waveform(model, processor, whisper_clock, seconds, args, decoding="generate"):
    """One clip, batch 1, through the processor and generation: time to first token from the waveform, Whisper
    seconds inside it, decoding tok/s, the new tokens."""
    audio, text = make_audio(seconds, seed=int(seconds)), make_prompt(model.config, 1, args.question_tokens)
    start = time.perf_counter()
    inputs = {**tensors(processor.extract_audio_features([audio], 16000)), **text}
    tokens, ttft, decode = timed_generate(model, inputs, args.new_tokens, decoding, start=start,
                                          checkpoint=args.checkpoint)
    return {"ttft_s": round(ttft, 3), "whisper_s": round(whisper_clock.seconds[-1], 3),
            "decode_tokens_per_s": round(decode, 2), "tokens": tokens}


def decoding_candidates(model, processor, args, names):
    """Each decoding path on the same 30 s prompt: decode tok/s (a second call, after any compilation), the first
    call's seconds (compilation included), the weight bytes one step reads, whether its greedy tokens equal the
    plain path's and, for llama.cpp, its teacher-forced agreement with the plain path."""
    audio = make_audio(30, seed=30)
    inputs = {**tensors(processor.extract_audio_features([audio], 16000)), **make_prompt(model.config, 1,
                                                                                          args.question_tokens)}
    with torch.no_grad():  # the encoders once: candidates differ only in the LLM's decoding
        encoded = encode(model, {k: inputs.pop(k) for k in AUDIO_INPUTS})
    inputs.update(zip(ENCODED_AUDIO_INPUTS, encoded))
    plain, results = None, {}
    for name in names:
        print(f"   decoding: {name}", flush=True)

        def run(name=name):
            return timed_generate(model, inputs, args.new_tokens, name, checkpoint=args.checkpoint)

        (tokens, _, _), first_call_s = timed(run)
        tokens, prefill, decode = run()
        plain = tokens if plain is None else plain
        results[name] = {"decode_tokens_per_s": round(decode, 2), "prefill_s": round(prefill, 3),
                         "first_call_s": round(first_call_s, 1), "tokens_equal_plain": bool(torch.equal(tokens, plain))}
        if name in GGUF_FILES:
            results[name]["bytes_per_token"] = gguf_bytes(Path(args.checkpoint) / GGUF_FILES[name])
            results[name].update(teacher_forced_agreement(model, LLAMA_DECODERS[name], inputs, plain))
        else:
            results[name]["bytes_per_token"] = decode_bytes_per_token(model)
    return results


def encode(model, mels):
    """The frozen encoders' pooled outputs for processor mels (cast to the encoders' dtype, as the model does)."""
    mels = {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in mels.items()}
    return model.model.encode_audio(**{k: mels[k] for k in AUDIO_INPUTS})


def decode_bytes_per_token(model):
    """Bytes of weights one decoding step reads: every LLM layer, the final norm and the whole LM head (the embedding
    table gives one row per token, so it does not count unless it is the head)."""
    lm = model.model.language_model
    modules = [lm.layers, lm.norm, model.lm_head]
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


def whisper_flops(config, frames):
    """FLOPs of the Whisper encoder on `frames` encoder frames: `(matmul FLOPs of its linear layers and convolutions,
    attention FLOPs)` (QK^T and PV, which run in the float dtype whatever the linears use)."""
    d, ffn, layers, mels = config.d_model, config.encoder_ffn_dim, config.encoder_layers, config.num_mel_bins
    linear = layers * (2 * frames * d * 4 * d + 2 * frames * d * ffn * 2)
    convs = 2 * (2 * frames) * mels * 3 * d + 2 * frames * d * 3 * d
    return linear, convs + layers * 4 * frames * frames * d


def encoder_floor_s(config, frames, limits, int8_linears):
    linear, other = whisper_flops(config, frames)
    linear_rate = (limits["int8_tops"] if int8_linears else limits["bf16_tflops"]) * 1e12
    return linear / linear_rate + other / (limits["bf16_tflops"] * 1e12)


def pearson(a, b):
    return round(float(torch.corrcoef(torch.stack([a.flatten().float(), b.flatten().float()]))[0, 1]), 5)


def agreement(model, probe, reference_logits, reference_tokens, args):
    with torch.no_grad():
        logits = model(**probe).logits[0, -(args.question_tokens + 1):].float()
    tokens, _, _ = timed_generate(model, probe, args.agreement_tokens)
    differ = (tokens[0] != reference_tokens[0]).nonzero()
    return {"logits_pearson_r": pearson(reference_logits, logits),
            "top1_agreement": round(float((logits.argmax(-1) == reference_logits.argmax(-1)).float().mean()), 4),
            "greedy_tokens_identical_prefix": int(differ[0, 0]) if len(differ) else len(tokens[0]),
            "greedy_tokens_compared": len(tokens[0])}


# ----------------------------------------------------------------------------- workers (one process each)


def worker_limits(args):
    """The machine's limits (`limits.measure_limits`: medians of repeated passes, with spreads), and what PyTorch's
    one-row matmuls reach on Qwen3's shapes, with this process's threads."""
    result = measure_limits(quick=args.quick)

    def best_of(fn, repeats):
        return min(passes(fn, repeats))

    # What batch-1 decoding's matmuls reach: one row through Qwen3's MLP and LM-head shapes, bf16 and int8 weights.
    for name, (k, n) in {"mlp": (1024, 3072), "lm_head": (1024, 151936)}.items():
        if args.quick:
            k, n = k // 4, n // 64
        x, w = torch.randn(1, k, dtype=torch.bfloat16), torch.randn(n, k, dtype=torch.bfloat16)
        qw, scales = torch.randint(-127, 128, (n, k), dtype=torch.int8), torch.rand(n, dtype=torch.bfloat16)
        bf16_s = best_of(lambda x=x, w=w: torch.nn.functional.linear(x, w), 20)
        int8_s = best_of(lambda x=x, qw=qw, scales=scales: torch._weight_int8pack_mm(x, qw, scales), 20)
        result[f"gemv_{name}_bf16_gb_per_s"] = w.nbytes / bf16_s / 1e9
        result[f"gemv_{name}_int8_gb_per_s"] = qw.nbytes / int8_s / 1e9
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


def worker_checkpoint(args):
    """A random full-size (or, with --quick, tiny) checkpoint with its processor, saved as the project saves one."""
    from llamacpp_tinygiant import export_gguf
    from tinygiant.hub.publish import save_checkpoint

    if args.quick:
        from tinygiant.hub.tiny_checkpoint import write_tiny_checkpoint

        write_tiny_checkpoint(args.checkpoint)
        model = TinyGiantForConditionalGeneration.from_pretrained(args.checkpoint, dtype=torch.bfloat16)
    else:
        model = build_random_model(TinyGiantConfig())
        save_checkpoint(model, make_processor(), args.checkpoint, training_summary="Random weights, for benchmarks.")
    # The language model as GGUF for llama.cpp, written once from the bf16 weights, as a publisher would.
    result = {}
    for name, file in GGUF_FILES.items():
        weights = name.removeprefix("llama_cpp_")
        _, seconds = timed(lambda file=file, weights=weights: export_gguf(model, Path(args.checkpoint) / file, weights))
        result[f"{name}_export_s"] = round(seconds, 1)
    return result


def load_processor(args):
    from processing_tinygiant import TinyGiantProcessor

    return TinyGiantProcessor.from_pretrained(args.checkpoint, trust_remote_code=True)  # its own code is ours


def worker_naive(args):
    """The plain path a user first calls (bf16, `model.generate`), bf16 decoding candidates, and agreements."""
    result = {"load_start": load_snapshot()}
    model, result["load_s"] = timed(lambda: TinyGiantForConditionalGeneration.from_pretrained(
        args.checkpoint, dtype=torch.bfloat16).eval())
    model.generation_config.eos_token_id = None
    processor, clock = load_processor(args), WhisperClock(model.model)
    result["rss_ready_mb"] = round(memory_mb()[0])
    result["decode_bytes_per_token"] = decode_bytes_per_token(model)
    first_token_from_waveform(model, processor, clock, 10, args)  # warm-up: kernels for these shapes
    for seconds in (30, 10):
        run = first_token_from_waveform(model, processor, clock, seconds, args)
        run.pop("tokens")
        result[f"clip{seconds}"] = run
        print(f"   naive {seconds} s clip: {run}", flush=True)
    result["peak_rss_mb"] = round(memory_mb()[1])
    result["decoding"] = decoding_candidates(model, processor, args, [d for d in FLOAT_DECODING if d in args.decoding])

    # Lossy steps against bf16 on one 10 s probe: logits over the question and answer start, greedy tokens.
    audio = make_audio(10, seed=99)
    probe = {**tensors(processor.extract_audio_features([audio], 16000)),
             **make_prompt(model.config, 1, args.question_tokens, seed=99)}
    with torch.no_grad():
        reference = model(**probe).logits[0, -(args.question_tokens + 1):].float()
        padded = encode(model, probe)[0]
    reference_tokens, _, _ = timed_generate(model, probe, args.agreement_tokens)
    np.savez(probe_file(args), logits=reference.numpy(), tokens=reference_tokens[0].numpy())  # for the ONNX paths
    model.config.whisper_trim_padding = True
    with torch.no_grad():
        trimmed = encode(model, probe)[0]
    result["agreement"] = {"whisper_trim_padding": {"pooled_whisper_frames_pearson_r": pearson(padded, trimmed),
                                                    **agreement(model, probe, reference, reference_tokens, args)}}
    model.config.whisper_trim_padding = False
    quantize_int8(model, activations="int8")
    result["agreement"]["w8a8"] = agreement(model, probe, reference, reference_tokens, args)
    quantize_int8(model, activations="float")
    result["agreement"]["int8_weight_only"] = agreement(model, probe, reference, reference_tokens, args)
    result["load_end"] = load_snapshot()
    return result


def worker_int8(args):
    """int8 weights with int8 activations, quantised while loading, Whisper on real frames only, the LLM in PyTorch:
    the load's peak memory, time to first token, and the int8 decoding candidates (llama.cpp's Q8_0 among them)."""
    result = {"load_start": load_snapshot()}
    model, result["load_s"] = timed(lambda: load_int8(TinyGiantForConditionalGeneration, args.checkpoint,
                                                      torch.bfloat16, activations="int8"))
    model.generation_config.eos_token_id = None
    model.config.whisper_trim_padding = True
    processor, clock = load_processor(args), WhisperClock(model.model)
    gc.collect()
    result["rss_ready_mb"] = round(memory_mb()[0])
    result["peak_rss_load_mb"] = round(memory_mb()[1])
    result["int8_linears"] = sum(isinstance(m, Int8Linear) for m in model.modules())
    first_token_from_waveform(model, processor, clock, 10, args)  # warm-up
    for seconds in (30, 10):
        run = first_token_from_waveform(model, processor, clock, seconds, args)
        run.pop("tokens")
        result[f"clip{seconds}"] = run
        print(f"   int8, PyTorch LLM, {seconds} s clip: {run}", flush=True)
    result["peak_rss_mb"] = round(memory_mb()[1])  # before the decoding candidates load llama.cpp beside it
    result["decoding"] = decoding_candidates(model, processor, args, [d for d in INT8_DECODING if d in args.decoding])
    result["load_end"] = load_snapshot()
    return result


def worker_best(args):
    """The best path end to end, in a process of its own: the measured winner's encoders (`load_int8` W8A8, or bf16)
    with Whisper on real frames, and that model's best decoding; for llama.cpp the PyTorch decoder layers are freed
    first (`LlamaCppDecoder.from_model`). Time to first token, decoding, a follow-up question about the same clip (the
    audio cache), peak memory."""
    result = {"load_start": load_snapshot(), "decoding_name": args.best_decoding, "encoders": args.best_encoders}
    if args.best_encoders == "w8a8":
        model, result["load_s"] = timed(lambda: load_int8(TinyGiantForConditionalGeneration, args.checkpoint,
                                                          torch.bfloat16, activations="int8"))
    else:
        model, result["load_s"] = timed(lambda: TinyGiantForConditionalGeneration.from_pretrained(
            args.checkpoint, dtype=torch.bfloat16).eval())
    if args.best_decoding in GGUF_FILES:
        from llamacpp_tinygiant import LlamaCppDecoder

        LLAMA_DECODERS[args.best_decoding], seconds = timed(lambda: LlamaCppDecoder.from_model(
            model, gguf=Path(args.checkpoint) / GGUF_FILES[args.best_decoding]))
        result["load_s"] = round(result["load_s"] + seconds, 2)
    model.generation_config.eos_token_id = None
    model.config.whisper_trim_padding = True
    processor, clock = load_processor(args), WhisperClock(model.model)
    gc.collect()
    result["rss_ready_mb"] = round(memory_mb()[0])
    first_token_from_waveform(model, processor, clock, 10, args, args.best_decoding)  # warm-up
    for seconds in (30, 10):
        run = first_token_from_waveform(model, processor, clock, seconds, args, args.best_decoding)
        run.pop("tokens")
        result[f"clip{seconds}"] = run
        print(f"   best ({args.best_decoding}) {seconds} s clip: {run}", flush=True)
    generate = generate_with(model, args.best_decoding, args.checkpoint)
    followup = followup_ttft(model, processor, make_audio(30, seed=31), generate=generate,
                             question_tokens=(args.question_tokens, 30), compare_without_cache=False)
    result["followup"] = {"first_ttft_s": round(followup["first_s"], 3),
                          "followup_ttft_s": round(followup["followup_s"], 3),
                          "prompt_tokens": followup["prompt_tokens"]}
    result["peak_rss_mb"] = round(memory_mb()[1])
    result["load_end"] = load_snapshot()
    return result


def worker_peer(args):
    return measure_peer(make_audio(30, seed=30), args.question_tokens, min(args.new_tokens, 8), small=args.quick)


def worker_training(args):
    """Seconds per training step (forward, backward, AdamW) at batch 1: live encoders vs the feature cache, the latter
    through train_sft's collator, as `train_sft.py --feature_cache_dir` runs it."""
    from tinygiant.training.data import TinyGiantCollator
    from tinygiant.training.feature_cache import AudioFeatureCache

    result = {"load_start": load_snapshot(), "clip_s": args.train_seconds}
    model = TinyGiantForConditionalGeneration.from_pretrained(args.checkpoint, dtype=torch.bfloat16)
    processor, config = load_processor(args), model.config
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    audio = {"array": make_audio(args.train_seconds, seed=5), "sampling_rate": 16000}
    mels = tensors(processor.extract_audio_features([audio], None))
    text = make_prompt(config, 1, args.question_tokens, answer_tokens=args.answer_tokens)
    live = {**mels, **text}
    result["sequence_tokens"] = text["input_ids"].shape[1]

    with tempfile.TemporaryDirectory() as cache_dir:
        collator = TinyGiantCollator(processor, feature_cache=AudioFeatureCache(cache_dir, model, processor))
        key, row = collator.feature_cache.key(audio), mels  # what the collator holds for a processed row
        # The first look-up misses: the collator runs the encoders on the row's mels and stores the features.
        _, result["cache_fill_s_per_clip"] = timed(lambda: collator.cached_features([row], [key]))

        def step(cached):
            batch = {**text, **collator.cached_features([row], [key])[0]} if cached else live
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step(cached=False)  # warm-up: builds every kernel both kinds of step use, and AdamW's state
        times = {False: [], True: []}
        for _ in range(args.train_steps):
            for cached in (False, True):  # interleaved, so that load changes hit both alike
                times[cached].append(timed(lambda cached=cached: step(cached))[1])
    result["step_s_live_encoders"] = round(float(np.median(times[False])), 3)
    result["step_s_feature_cache"] = round(float(np.median(times[True])), 3)
    result["speedup"] = round(result["step_s_live_encoders"] / result["step_s_feature_cache"], 2)
    result["load_end"] = load_snapshot()
    return result


def worker_onnx_export(args):
    """`tinygiant export onnx` of the checkpoint: its seconds, and the download of each variant (its four graphs and
    the folder's other files but the PyTorch and llama.cpp weights: config, processor, tokenizer, chat template,
    code)."""
    from onnx_tinygiant import ONNX_PARTS, onnx_path
    from tinygiant.export.onnx import export_onnx

    folder = onnx_folder(args)
    _, seconds = timed(lambda: export_onnx(args.checkpoint, folder, ONNX_EXPORTED))
    weights = (".safetensors", ".gguf")  # the checkpoint's PyTorch and llama.cpp weights, which ONNX does not need
    common = sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.suffix not in weights)
    sizes = {}
    for dtype in ONNX_EXPORTED:
        graphs = [f for part in ONNX_PARTS for f in folder.glob(f"onnx/{onnx_path(folder, part, dtype).name}*")]
        sizes[dtype] = round((common + sum(f.stat().st_size for f in graphs)) / 1e6, 1)
    return {"export_s": round(seconds, 1), "download_mb": sizes, "peak_rss_mb": round(memory_mb()[1])}


WORKERS = {"limits": worker_limits, "checkpoint": worker_checkpoint, "naive": worker_naive, "int8": worker_int8,
           "best": worker_best, "peer": worker_peer, "training": worker_training, "onnx_export": worker_onnx_export}
# ONNX variants written (for their download sizes) and run (in the torch-free environment, by `onnx_paths.py`).
ONNX_EXPORTED, ONNX_MEASURED = ("fp32", "q8", "q4"), ("fp32", "q8")
TORCH_FREE_PYTHON = Path(__file__).resolve().parents[1] / ".venv-onnx" / "bin" / "python"


def onnx_folder(args):
    return Path(args.checkpoint).parent / "onnx-export"


def probe_file(args):
    return Path(args.checkpoint).parent / "bf16-probe.npz"


def write_onnx_workload(args, path):
    """The clips and prompts of the other paths (`first_token_from_waveform`, the naive worker's probe) and the bf16
    probe's logits and tokens, for `onnx_paths.py`, which has no torch to make them."""
    config = TinyGiantConfig.from_pretrained(args.checkpoint)
    arrays = {}
    for name, seconds, seed in (("clip30", 30, 30), ("clip10", 10, 10), ("probe", 10, 99)):
        arrays[f"{name}_audio"] = make_audio(seconds, seed=seed)
        text = make_prompt(config, 1, args.question_tokens, seed=99 if name == "probe" else 0)
        arrays.update({f"{name}_{k}": v.numpy() for k, v in text.items()})
    reference = np.load(probe_file(args))
    arrays["probe_reference_logits"], arrays["probe_reference_tokens"] = reference["logits"], reference["tokens"]
    np.savez(path, **arrays)


def run_onnx_path(args, dtype):
    """`onnx_paths.py` for one variant in the torch-free environment (this Python if there is none)."""
    python = TORCH_FREE_PYTHON if TORCH_FREE_PYTHON.is_file() else Path(sys.executable)
    workload, out = Path(args.checkpoint).parent / "onnx-workload.npz", Path(args.checkpoint).parent / "onnx.json"
    if not workload.is_file():
        write_onnx_workload(args, workload)
    print(f"== onnx {dtype} ({python})", flush=True)
    subprocess.run([str(python), str(Path(__file__).with_name("onnx_paths.py")), str(onnx_folder(args)), str(workload),
                    str(out), "--dtype", dtype, "--threads", str(args.threads), "--new-tokens", str(args.new_tokens)],
                   check=True)
    return json.loads(out.read_text())


def disk_mb(folder):
    return round(sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file() and not f.is_symlink()) / 1e6)


# ----------------------------------------------------------------------------- ratios and report


def best_decoding(decoding):
    """The fastest `acceptable` decoding path: `(name, tok/s, weight bytes read per token)`."""
    name = max((n for n, r in decoding.items() if acceptable(r)), key=lambda n: decoding[n]["decode_tokens_per_s"])
    return name, decoding[name]["decode_tokens_per_s"], decoding[name]["bytes_per_token"]


def ratios(limits, naive, int8, best, peer, whisper_config, onnx=None, onnx_env=None):
    """The issue's ratios. Decode ceilings: read bandwidth / weight bytes the decoding path reads per token. Encoder
    floor: the int8 path's Whisper time on a 30 s clip / its FLOPs at the measured rate of each part's precision
    (1.0 = at the floor). The best path is the int8 one with its best decoding, end to end in its own process."""

    def vs_ceiling(tok_s, bytes_per_token):
        return tok_s / (limits["read_gb_per_s"] * 1e9 / bytes_per_token)

    bf16_name, bf16_decode, bf16_bytes = best_decoding(naive["decoding"])
    int8_name, int8_decode, int8_bytes = best_decoding(int8["decoding"])
    frames = whisper_config.max_source_positions
    out = {
        "decode_vs_ceiling_bf16": vs_ceiling(bf16_decode, bf16_bytes),
        "decode_vs_ceiling_int8": vs_ceiling(int8_decode, int8_bytes),
        "encoder_vs_floor_best": int8["clip30"]["whisper_s"] / encoder_floor_s(whisper_config, frames, limits, True),
        "encoder_vs_floor_naive": naive["clip30"]["whisper_s"] / encoder_floor_s(whisper_config, frames, limits, False),
        "ttft30_speedup_vs_naive": naive["clip30"]["ttft_s"] / best["clip30"]["ttft_s"],
        "ttft10_speedup_vs_naive": naive["clip10"]["ttft_s"] / best["clip10"]["ttft_s"],
        # Same for the int8 path with the LLM left in PyTorch (its prompt pass is faster than llama.cpp's).
        "ttft30_speedup_vs_naive_pytorch_llm": naive["clip30"]["ttft_s"] / int8["clip30"]["ttft_s"],
        "ttft10_speedup_vs_naive_pytorch_llm": naive["clip10"]["ttft_s"] / int8["clip10"]["ttft_s"],
        # The plain path's own decoding candidate: a second call, like every candidate it is compared with.
        "decode_speedup_vs_naive": int8_decode / naive["decoding"]["generate"]["decode_tokens_per_s"],
        "followup_ttft_vs_first": best["followup"]["followup_ttft_s"] / best["followup"]["first_ttft_s"],
        "int8_peak_rss_vs_resident": int8["peak_rss_load_mb"] / int8["rss_ready_mb"],
    }
    out = {k: round(v, 3) for k, v in out.items()}
    # Each ratio against a limit, over that limit's spread (`limits.ratio_spread`).
    out["spread"] = {"decode_vs_ceiling_bf16": ratio_spread(out["decode_vs_ceiling_bf16"], limits, "read_gb_per_s"),
                     "decode_vs_ceiling_int8": ratio_spread(out["decode_vs_ceiling_int8"], limits, "read_gb_per_s"),
                     # The floor is mostly int8 (best) or bf16 (naive) GEMM time.
                     "encoder_vs_floor_best": ratio_spread(out["encoder_vs_floor_best"], limits, "int8_tops", True),
                     "encoder_vs_floor_naive": ratio_spread(out["encoder_vs_floor_naive"], limits, "bf16_tflops",
                                                            True)}
    out["best_decoding"] = {"bf16": bf16_name, "int8": int8_name}
    if onnx:
        out.update(onnx_ratios(naive, int8, best, onnx, onnx_env))
    if peer:
        out["peer"] = {"name": peer["name"], "ttft30_ratio": round(best["clip30"]["ttft_s"] / peer["ttft_s"], 3),
                       "decode_ratio": round(int8_decode / peer["decode_tokens_per_s"], 3),
                       "peak_rss_ratio": round(best["peak_rss_mb"] / peer["peak_rss_mb"], 3)}
    else:
        out["peer"] = None
    return out


def onnx_ratios(naive, int8, best, onnx, onnx_env):
    """The ONNX Runtime paths against the same run's PyTorch paths: time to first token against naive and against the
    fastest PyTorch path, decoding against naive, peak RSS against the int8 PyTorch pipeline, the torch-free
    environment's size against the PyTorch one; and the fastest path on the 30 s clip, ONNX ones included."""
    pytorch = {"naive": naive, "int8": int8, "best": best}
    best_pytorch_ttft30 = min(path["clip30"]["ttft_s"] for path in pytorch.values())
    out = {}
    for dtype, run in onnx.items():
        out[f"onnx_{dtype}_ttft30_vs_best_pytorch"] = run["clip30"]["ttft_s"] / best_pytorch_ttft30
        out[f"onnx_{dtype}_ttft30_speedup_vs_naive"] = naive["clip30"]["ttft_s"] / run["clip30"]["ttft_s"]
        out[f"onnx_{dtype}_ttft10_speedup_vs_naive"] = naive["clip10"]["ttft_s"] / run["clip10"]["ttft_s"]
        out[f"onnx_{dtype}_decode_speedup_vs_naive"] = (run["clip30"]["decode_tokens_per_s"]
                                                        / naive["decoding"]["generate"]["decode_tokens_per_s"])
        out[f"onnx_{dtype}_peak_rss_vs_int8_pytorch"] = run["peak_rss_mb"] / int8["peak_rss_mb"]
    if onnx_env and onnx_env.get("torch_free_env_mb"):
        out["onnx_env_disk_vs_torch_env"] = onnx_env["torch_free_env_mb"] / onnx_env["torch_env_mb"]
    out = {k: round(v, 3) for k, v in out.items()}
    paths = {**{name: path["clip30"]["ttft_s"] for name, path in pytorch.items()},
             **{f"onnx_{dtype}": run["clip30"]["ttft_s"] for dtype, run in onnx.items()}}
    out["fastest_ttft30_path"] = min(paths, key=paths.get)
    return out


TARGETS = {"decode_vs_ceiling_bf16": ">= 0.6", "decode_vs_ceiling_int8": ">= 0.6", "ttft30_speedup_vs_naive": ">= 1.8",
           "ttft10_speedup_vs_naive": ">= 3", "int8_peak_rss_vs_resident": "<= 1.15", "peer.decode_ratio": ">= 6",
           "peer.peak_rss_ratio": "<= 0.3", "peer.ttft30_ratio": "<= 0.35", "onnx_q8_ttft30_vs_best_pytorch": "<= 0.9",
           "onnx_q8_peak_rss_vs_int8_pytorch": "<= 0.7", "onnx_env_disk_vs_torch_env": "<= 0.25"}


def markdown(report):
    r, lim = report["ratios"], report["limits"]
    flat = {**{k: v for k, v in r.items() if not isinstance(v, dict)},
            **{f"peer.{k}": v for k, v in (r["peer"] or {}).items() if k != "name"}}
    lines = [f"# TinyGiant CPU benchmark ({report['name']})", "",
             f"{report['machine']}; torch {report['torch']}, {report['threads']} threads; {report['wall_s']} s. "
             "Random weights; batch 1; 100-token question; greedy.", "",
             "| ratio | value | over the limits' spread | target |", "|---|---:|---|---|"]
    spread = r.get("spread") or {}
    lines += [f"| {k} | {v} | {spread.get(k) or ''} | {TARGETS.get(k, '')} |" for k, v in flat.items()]
    lines += ["", f"Limits: bf16 GEMM {lim['bf16_tflops']} TFLOP/s, int8 GEMM {lim['int8_tops']} TOP/s, memory read "
              f"{lim['read_gb_per_s']} GB/s (medians; spreads {lim.get('bf16_tflops_spread')}, "
              f"{lim.get('int8_tops_spread')}, {lim.get('read_gb_per_s_spread')}); one-row matmuls (decoding) reach "
              + ", ".join(f"{k[5:-9].replace('_', ' ')} {v}" for k, v in lim.items() if k.startswith("gemv_"))
              + f" GB/s. Best decoding: {r['best_decoding']}. Peer: "
              f"{r['peer']['name'] if r['peer'] else 'not run'}.", "",
              "| path | TTFT 30 s clip | Whisper 30 s | TTFT 10 s clip | Whisper 10 s | decode tok/s | peak RSS MB |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    best_encoders = "int8 W8A8" if report["best"].get("encoders", "w8a8") == "w8a8" else "bf16"
    paths = {"naive (bf16, generate)": report["naive"], "int8 W8A8, PyTorch LLM": report["int8"],
             f"best ({best_encoders} encoders, {report['best']['decoding_name']})": report["best"],
             **{f"ONNX Runtime {dtype} (no torch)": run for dtype, run in (report.get("onnx") or {}).items()}}
    for label, res in paths.items():
        peak = res.get("peak_rss_mb", res.get("peak_rss_load_mb"))
        lines.append(f"| {label} | {res['clip30']['ttft_s']} | {res['clip30'].get('whisper_s', '')} | "
                     f"{res['clip10']['ttft_s']} | {res['clip10'].get('whisper_s', '')} | "
                     f"{res['clip30']['decode_tokens_per_s']} | {peak} |")
    if report.get("peer"):
        p = report["peer"]
        lines.append(f"| peer | {p['ttft_s']:.3f} | | | | {p['decode_tokens_per_s']:.2f} | {p['peak_rss_mb']} |")
    lines += ["", "| model | decoding | tok/s | GB read per token | vs ceiling | prompt pass s "
              "| same tokens as plain | teacher-forced top-1 agreement |", "|---|---|---:|---:|---:|---:|---|---:|"]
    for model_name in ("naive", "int8"):
        for name, d in report[model_name]["decoding"].items():
            ceiling = lim["read_gb_per_s"] * 1e9 / d["bytes_per_token"]
            lines.append(f"| {model_name} | {name} | {d['decode_tokens_per_s']} | {d['bytes_per_token'] / 1e9:.3f} | "
                         f"{d['decode_tokens_per_s'] / ceiling:.2f} | {d['prefill_s']} | {d['tokens_equal_plain']} | "
                         f"{d.get('teacher_forced_top1_agreement', '')} |")
    lines += ["", "Agreement with bf16 (10 s probe): "]
    lines += [f"- {k}: " + ", ".join(f"{m} = {v}" for m, v in a.items())
              for k, a in report["naive"]["agreement"].items()]
    lines += [f"- ONNX {dtype}: " + ", ".join(f"{m} = {v}" for m, v in run["agreement_with_bf16"].items())
              for dtype, run in (report.get("onnx") or {}).items()]
    if report.get("onnx_error"):
        lines += ["", f"ONNX Runtime paths: failed ({report['onnx_error']})."]
    if report.get("onnx_export"):
        e, env = report["onnx_export"], report["onnx_env"]
        lines += ["", f"ONNX export: {e['export_s']} s; download per variant (graphs + config, processor, tokenizer, "
                  "code; MB): " + ", ".join(f"{k} {v}" for k, v in e["download_mb"].items())
                  + f". Torch-free environment {env['torch_free_env_mb']} MB on disk, the PyTorch one "
                  f"{env['torch_env_mb']} MB."]
    if report.get("training"):
        t = report["training"]
        lines += ["", f"Training step (batch 1, {t['clip_s']} s clip): live encoders {t['step_s_live_encoders']} s, "
                  f"feature cache {t['step_s_feature_cache']} s ({t['speedup']}x)."]
    lines += ["", f"Load (1-min average) at start / end: {report['load']['start']['loadavg_1m']} / "
              f"{report['load']['end']['loadavg_1m']}", ""]
    return "\n".join(lines)


def run_worker(args, kind):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    command = [sys.executable, __file__, *args.passthrough, "--worker", kind, "--worker-out", out,
               "--checkpoint", args.checkpoint, "--best-decoding", getattr(args, "best_decoding", None) or "generate",
               "--best-encoders", getattr(args, "best_encoders", None) or "w8a8"]
    print(f"== {kind}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    result = json.loads(Path(out).read_text())
    os.unlink(out)
    print(f"   {kind} took {time.perf_counter() - started:.0f} s", flush=True)
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run of every step on tiny models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--question-tokens", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=None, help="greedy tokens per generation (default 24)")
    parser.add_argument("--agreement-tokens", type=int, default=16)
    parser.add_argument("--decoding", nargs="+", default=list(DECODING), choices=list(DECODING),
                        help="decoding paths to try (generate, the plain one, always runs first)")
    parser.add_argument("--no-peer", action="store_true", help="skip the peer")
    parser.add_argument("--train", action="store_true", help="also time a training step with and without the cache")
    parser.add_argument("--train-seconds", type=float, default=10)
    parser.add_argument("--train-steps", type=int, default=1, help="measured steps each way, after a warm-up step")
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument("--name", default=None, help="results file name (default cpu or cpu-quick)")
    add_output_arguments(parser, "cpu")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--best-decoding", choices=DECODING, help=argparse.SUPPRESS)
    parser.add_argument("--best-encoders", choices=("w8a8", "bf16"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.decoding = ["generate", *[d for d in args.decoding if d != "generate"]]  # the plain path is the reference
    args.new_tokens = args.new_tokens or (6 if args.quick else 24)
    args.agreement_tokens = min(args.agreement_tokens, args.new_tokens) if args.quick else args.agreement_tokens
    args.name = args.name or ("cpu-quick" if args.quick else "cpu")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(WORKERS[args.worker](args), indent=1))
        return
    args.passthrough = argv
    started = time.time()
    report = {"name": args.name, "threads": args.threads, "torch": torch.__version__,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "args": {k: v for k, v in vars(args).items() if k not in ("passthrough", "worker", "worker_out",
                                                                       "checkpoint", "best_decoding", "best_encoders",
                                                                       "output_dir", "update_results")},
              "load": {"start": load_snapshot()}}
    with tempfile.TemporaryDirectory() as tmp:
        args.checkpoint = str(Path(tmp) / "checkpoint")
        report["limits"] = run_worker(args, "limits")
        run_worker(args, "checkpoint")
        report["naive"] = run_worker(args, "naive")
        report["int8"] = run_worker(args, "int8")
        # The measured winner's encoders (the 30 s clip: a full Whisper window either way) and their decoding.
        int8_wins = report["int8"]["clip30"]["whisper_s"] < report["naive"]["clip30"]["whisper_s"]
        args.best_encoders = "w8a8" if int8_wins else "bf16"
        args.best_decoding = best_decoding(report["int8" if int8_wins else "naive"]["decoding"])[0]
        report["best"] = run_worker(args, "best")
        try:  # a failed export or ONNX run is reported; the other paths' results are still written
            report["onnx_export"] = run_worker(args, "onnx_export")
            report["onnx"] = {dtype: run_onnx_path(args, dtype) for dtype in ONNX_MEASURED}
        except subprocess.CalledProcessError as error:
            report["onnx_export"] = report["onnx"] = None
            report["onnx_error"] = str(error)
        report["onnx_env"] = {"torch_free_env_mb": disk_mb(TORCH_FREE_PYTHON.parents[1]) if TORCH_FREE_PYTHON.is_file()
                              else None, "torch_env_mb": disk_mb(sys.prefix)}
        report["peer"] = None if args.no_peer else run_worker(args, "peer")
        if args.train:
            report["training"] = run_worker(args, "training")
        whisper_config = TinyGiantConfig.from_pretrained(args.checkpoint).whisper_config
    report["ratios"] = ratios(report["limits"], report["naive"], report["int8"], report["best"], report["peer"],
                              whisper_config, onnx=report["onnx"], onnx_env=report["onnx_env"])
    report["load"]["end"] = load_snapshot()
    report["wall_s"] = round(time.time() - started, 1)
    write_results(args.name, report, markdown(report), folder=output_folder(args))


if __name__ == "__main__":
    main()
