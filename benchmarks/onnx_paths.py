"""One ONNX Runtime path of `benchmark_tinygiant.py`, measured in a Python without torch (`.venv-onnx/`), as an app
that ships the exported folder would run it: `TinyGiantOnnx` from the folder's own `onnx_tinygiant.py`.

    .venv-onnx/bin/python benchmarks/onnx_paths.py FOLDER WORKLOAD.npz OUT.json --dtype q8 --threads 2

The workload (written by the benchmark, which has torch) holds the clips, the prompts laid out as its other paths
lay them out, and the bf16 path's logits and greedy tokens on its probe. Measured: time to first token from the
waveform for the 30 s and 10 s clips (after a 10 s warm-up), decoding tok/s, peak RSS, and agreement with bf16
(teacher-forced logits over the question and the answer's first position, and the greedy tokens). Imports neither
torch nor the project: it runs where only onnxruntime, numpy, soundfile, soxr, transformers and jinja2 are.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def memory_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB (Linux)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def decode_rate(times: list[float]) -> float | None:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None


def prompt(workload, name: str) -> dict[str, np.ndarray]:
    return {key: workload[f"{name}_{key}"] for key in ("input_ids", "attention_mask", "instruction_mask")}


def first_token(runtime, workload, name: str, settings: dict) -> dict:
    """Time to first token from the waveform (features, audio encoder, projector, prompt pass) and decoding tok/s."""
    start = time.perf_counter()
    inputs = {**runtime.processor.extract_audio_features([workload[f"{name}_audio"]], 16000), **prompt(workload, name)}
    times = []
    for _ in runtime.generate(inputs, settings, np.random.default_rng(0)):
        times.append(time.perf_counter())
    return {"ttft_s": round(times[0] - start, 3), "decode_tokens_per_s": round(decode_rate(times), 2)}


def teacher_forced_logits(runtime, inputs: dict, positions: int) -> np.ndarray:
    """The logits at the prompt's last `positions` positions: a prompt pass up to the first of them, then one token
    at a time (the decoder graph gives the last position's logits)."""
    decoder = runtime.sessions["decoder_model_merged"]
    embeds = runtime.prompt_embeddings(inputs).astype(runtime.embeds_dtype)
    length = embeds.shape[1]
    past = {name: np.zeros((1, runtime.past_shape[0], 0, runtime.past_shape[1]), runtime.past_dtype)
            for name in runtime.past_names}
    rows, done = [], 0
    for end in range(length - positions + 1, length + 1):
        logits, *presents = decoder.run(None, {
            "inputs_embeds": embeds[:, done:end], "attention_mask": np.ones((1, end), np.int64),
            "position_ids": np.arange(done, end, dtype=np.int64)[None], **past})
        past, done = dict(zip(runtime.past_names, presents)), end
        rows.append(logits[0].astype(np.float32))
    return np.stack(rows)


def agreement(runtime, workload, settings: dict) -> dict:
    reference, reference_tokens = workload["probe_reference_logits"], workload["probe_reference_tokens"]
    inputs = {**runtime.processor.extract_audio_features([workload["probe_audio"]], 16000), **prompt(workload, "probe")}
    logits = teacher_forced_logits(runtime, inputs, len(reference))
    tokens = list(runtime.generate(inputs, {**settings, "max_new_tokens": len(reference_tokens)},
                                   np.random.default_rng(0)))
    differ = np.nonzero(np.array(tokens) != reference_tokens)[0]
    return {"logits_pearson_r": round(float(np.corrcoef(logits.ravel(), reference.ravel())[0, 1]), 5),
            "top1_agreement": round(float((logits.argmax(-1) == reference.argmax(-1)).mean()), 4),
            "greedy_tokens_identical_prefix": int(differ[0]) if len(differ) else len(tokens),
            "greedy_tokens_compared": len(tokens)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("workload")
    parser.add_argument("out")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=24)
    args = parser.parse_args(argv)
    sys.path.insert(0, args.folder)  # the folder's own runtime, as its users import it
    import onnxruntime

    from onnx_tinygiant import TinyGiantOnnx

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    result = {"dtype": args.dtype, "torch_imported": False, "loadavg_start": round(os.getloadavg()[0], 2)}
    start = time.perf_counter()
    runtime = TinyGiantOnnx.from_pretrained(args.folder, dtype=args.dtype, session_options=options, audio_cache=0)
    result["load_s"] = round(time.perf_counter() - start, 2)
    result["rss_ready_mb"] = round(memory_mb()[0])
    workload = np.load(args.workload)  # read an array at a time, when used
    # Exactly `new_tokens` greedy tokens, as the other paths' `min_new_tokens`.
    settings = runtime.generation_settings({"do_sample": False, "max_new_tokens": args.new_tokens, "eos_token_id": []})
    first_token(runtime, workload, "clip10", settings)  # warm-up
    for seconds in (30, 10):
        result[f"clip{seconds}"] = first_token(runtime, workload, f"clip{seconds}", settings)
        print(f"   onnx {args.dtype} {seconds} s clip: {result[f'clip{seconds}']}", flush=True)
    result["peak_rss_mb"] = round(memory_mb()[1])
    result["agreement_with_bf16"] = agreement(runtime, workload, settings)
    result["torch_imported"] = "torch" in sys.modules
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
