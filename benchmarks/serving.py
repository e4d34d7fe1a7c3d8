"""TinyGiant served: the in-process pipeline one request at a time against vLLM at concurrency 1, 4 and 16, on the
full-size model with random weights (nothing is downloaded), as ratios measured in one run.

    python benchmarks/serving.py           # runs/benchmarks/serving.json and .md (the committed run took 689 s)
    python benchmarks/serving.py --quick   # a smoke run of every step on the tiny checkpoint (serving-quick)
    python benchmarks/serving.py --update-results   # the committed benchmarks/results/serving.json and .md instead

The workload: `--requests` requests (16), each a 10 s clip (its own, so that no cache serves it), a 100-token
question under the default system prompt and a fixed 128-token greedy answer (`min_new_tokens` / vLLM's
`ignore_eos`); and a follow-up workload: one clip, 8 different questions one after another, the first of which
meets cold caches. The same prompts go to both, built by `parsing_tinygiant` (vLLM's as `openai_messages`).

Steps, each in a process of its own:
1. limits (`limits.py`, as `benchmark_tinygiant.py` measures them): bf16 GEMM, int8 GEMM, memory read, medians of
   repeated passes with their spreads;
2. checkpoint: a random full-size TinyGiant saved as the project saves one, with `whisper_trim_padding` on (as the
   CPU benchmark's best path runs); and the workload's cost, counted by torch's `FlopCounterMode` on one request:
   encoder + projector FLOPs, the prompt pass's FLOPs, and one decoding step's weight bytes and FLOPs;
3. pipeline: today's best CPU path, `pipeline("audio-reasoning", int8="w8a8", llama_cpp=True)` (W8A8 encoders and
   projector, where `int8_tinygiant.w8a8_encoders_pay_off`, else bf16; the language model on llama.cpp Q8_0), each
   request after the last; time to first token from the file, by a streamer;
4. vLLM: `tinygiant.serving.vllm_server.VllmServer` (bf16, the encoders W8A8 by the same rule, as `tinygiant serve
   --engine vllm` runs them) at concurrency 1, 4 and 16 through the `openai` client, streamed: time to first token is
   the first chunk's arrival, time per output token the rest over 127.

The machine's limit for the workload (requests/s at concurrency 16): each request's encoder, projector and prefill
FLOPs at the measured bf16 GEMM peak, plus its share of 128 decoding steps at batch 16, each step bound by the larger
of its weight bytes over the measured read bandwidth and its 16 rows' FLOPs over the peak. Ratios (`ratios()`):
`c16_vs_limit` (target >= 0.6), `throughput_ratio_c16` (vLLM c16 requests/s over the pipeline's), `ttft_p50_c1_ratio`
(vLLM's single-request time to first token over the pipeline's, target <= 1.1) and `followup_ttft_ratio` (on vLLM, a
follow-up's time to first token over the first question's, target <= 0.25), each with its range over the limits'
spread where it depends on them.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile
import torch
from limits import measure_limits, ratio_spread
from measure import add_output_arguments, build_random_model, make_audio, make_processor, output_folder, write_results

from int8_tinygiant import w8a8_encoders_pay_off
from parsing_tinygiant import SYSTEM_PROMPT, conversation, openai_messages
from tinygiant.files import write_json_atomic

CONCURRENCY = (1, 4, 16)
FOLLOWUP_QUESTIONS = 8
WORDS = ("sound", "voice", "music", "rhythm", "noise", "speaker", "tempo", "pitch", "beat", "instrument", "loud",
         "quiet", "background", "melody", "chord", "engine", "bird", "crowd", "room", "echo")


# ----------------------------------------------------------------------------- the workload


def question(tokenizer, tokens, seed):
    """Random words that make `tokens` tokens (+- a few at the cut) with this tokenizer, ending in a question mark."""
    rng = np.random.default_rng(seed)
    text = ""
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < tokens:
        text += " ".join(rng.choice(WORDS, 8)) + " "
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: tokens - 1]
    return "What is " + tokenizer.decode(ids).strip() + "?"


def workload(folder, tokenizer, first_seed, n, seconds, question_tokens):
    """`n` requests `(wav path, question)`, each clip and question its own (seeds from `first_seed`)."""
    folder.mkdir(parents=True, exist_ok=True)
    requests = []
    for seed in range(first_seed, first_seed + n):
        path = folder / f"clip{seed}.wav"
        soundfile.write(path, make_audio(seconds, seed), 16000, subtype="PCM_16")
        requests.append((path, question(tokenizer, question_tokens, seed)))
    return requests


def messages(path, text):
    return conversation(text, system_prompt=SYSTEM_PROMPT, audio=str(path))


def percentile(values, q):
    return round(float(np.percentile(values, q)), 3) if values else None


def summarize(results, wall_s):
    """requests/s, output tokens/s, time to first token p50/p95 and time per output token (median) of one run."""
    ttft = [r["ttft_s"] for r in results]
    tpot = [(r["done_s"] - r["ttft_s"]) / (r["tokens"] - 1) for r in results if r["tokens"] > 1]
    return {"requests": len(results), "wall_s": round(wall_s, 2), "requests_per_s": round(len(results) / wall_s, 4),
            "output_tokens_per_s": round(sum(r["tokens"] for r in results) / wall_s, 2),
            "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
            "tpot_s": round(statistics.median(tpot), 4) if tpot else None,
            "prompt_tokens": results[0].get("prompt_tokens")}


# ----------------------------------------------------------------------------- workers (one process each)


def worker_limits(args):
    return measure_limits(quick=args.quick, device="cuda" if torch.cuda.is_available() else "cpu")


def worker_checkpoint(args):
    """The random checkpoint (the tiny one with --quick) and the FLOPs and bytes of one request."""
    from torch.utils.flop_counter import FlopCounterMode

    from configuration_tinygiant import TinyGiantConfig
    from modeling_tinygiant import TinyGiantForConditionalGeneration
    from processing_tinygiant import TinyGiantProcessor
    from tinygiant.hub.publish import save_checkpoint

    if args.quick:
        from tinygiant.hub.tiny_checkpoint import write_tiny_checkpoint

        write_tiny_checkpoint(args.checkpoint, whisper_trim_padding=True)
    else:
        processor = make_processor()  # a small tokenizer: its `<audio>` is the placeholder the server looks for
        config = TinyGiantConfig(whisper_trim_padding=True, audio_token_id=processor.tokenizer.convert_tokens_to_ids(
            "<audio>"))
        model = build_random_model(config)
        save_checkpoint(model, processor, args.checkpoint, training_summary="Random weights, for benchmarks.")
        del model
    model = TinyGiantForConditionalGeneration.from_pretrained(args.checkpoint, dtype=torch.bfloat16).eval()
    processor = TinyGiantProcessor.from_pretrained(args.checkpoint, trust_remote_code=True)
    clips = Path(args.work) / "flops"
    (path, text), = workload(clips, processor.tokenizer, 10_000, 1, args.seconds, args.question_tokens)
    inputs = processor.apply_chat_template(messages(path, text), tokenize=True, add_generation_prompt=True,
                                           return_dict=True)

    def embed():
        return model.model.embed_inputs(inputs["input_ids"], None, inputs["whisper_input_features"],
                                        inputs["clap_input_features"], inputs["whisper_lengths"],
                                        inputs["htsat_lengths"], inputs["instruction_mask"])

    model.model.enable_audio_cache()
    with torch.no_grad(), FlopCounterMode(display=False) as audio:
        embed()
    with torch.no_grad(), FlopCounterMode(display=False) as projector:  # the encoders' outputs come from the cache
        embed()
    with torch.no_grad(), FlopCounterMode(display=False) as whole:
        model(**inputs, logits_to_keep=1)
    lm = model.model.language_model
    decode_modules = [lm.layers, lm.norm, model.lm_head]
    decode_bytes = sum(t.numel() * t.element_size() for m in decode_modules for t in [*m.parameters(), *m.buffers()])
    decode_flops = 2 * sum(p.numel() for m in (lm.layers, model.lm_head) for p in m.parameters() if p.dim() == 2)
    return {"audio_flops": audio.get_total_flops(), "projector_flops": projector.get_total_flops(),
            "prefill_flops": whole.get_total_flops() - projector.get_total_flops(),
            "prompt_tokens": int(inputs["input_ids"].shape[1]), "decode_weight_bytes": decode_bytes,
            "decode_flops_per_token": decode_flops}


class TokenClock:
    """A streamer that records when each generated token arrives (generation's first `put` is the prompt)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def worker_pipeline(args):
    """The in-process pipeline (int8 and llama.cpp on CPU), one request at a time, then the follow-up workload."""
    from transformers import pipeline

    cpu = not torch.cuda.is_available()
    pipe = pipeline("audio-reasoning", model=args.checkpoint, trust_remote_code=True,
                    int8="w8a8" if w8a8_encoders_pay_off() else False, llama_cpp=cpu, device=None if cpu else 0)
    tokenizer = pipe.tokenizer
    clips = Path(args.work) / "pipeline"
    fixed = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}

    def ask(path, text, **generation):
        clock = TokenClock()
        start = time.perf_counter()
        pipe(messages(path, text), streamer=clock, **generation)
        return {"ttft_s": clock.times[1] - start, "done_s": clock.times[-1] - start, "tokens": len(clock.times) - 1}

    ask(*workload(clips, tokenizer, 9_000, 1, args.seconds, args.question_tokens)[0], **fixed)  # warm-up
    results, started = [], time.perf_counter()
    for i, (path, text) in enumerate(workload(clips, tokenizer, 0, args.requests, args.seconds, args.question_tokens)):
        results.append(ask(path, text, **fixed))
        print(f"   pipeline request {i + 1}/{args.requests}: TTFT {results[-1]['ttft_s']:.2f} s", flush=True)
    report = {"path": f"{'W8A8' if w8a8_encoders_pay_off() else 'bf16'} encoders, llama.cpp Q8_0" if cpu else "bf16",
              "sequential": summarize(results, time.perf_counter() - started)}
    report["followup"] = followup(lambda path, text: ask(path, text, max_new_tokens=1, do_sample=False)["ttft_s"],
                                  clips, tokenizer, args)
    return report


def followup(time_to_first_token, folder, tokenizer, args):
    """One clip, `FOLLOWUP_QUESTIONS` different questions in turn: the first's time to first token, the others'."""
    (path, _), = workload(folder / "followup", tokenizer, 5_000, 1, args.seconds, args.question_tokens)
    times = [time_to_first_token(path, question(tokenizer, args.question_tokens, 5_000 + i))
             for i in range(FOLLOWUP_QUESTIONS)]
    return {"first_ttft_s": round(times[0], 3), "followup_ttft_s": [round(t, 3) for t in times[1:]],
            "followup_ttft_p50_s": round(statistics.median(times[1:]), 3)}


WORKERS = {"limits": worker_limits, "checkpoint": worker_checkpoint, "pipeline": worker_pipeline}


# ----------------------------------------------------------------------------- vLLM: a server, this process its client


def run_vllm(args, tokenizer):
    import openai

    from tinygiant.serving.vllm_server import VllmServer

    flags = ["--dtype", "bfloat16" if not args.quick else "float32", "--max-model-len", "2048",
             "--max-num-seqs", str(max(CONCURRENCY))]
    log = Path(args.work) / "vllm.log"
    # As `tinygiant serve --engine vllm` runs: the frozen encoders W8A8 where that is faster than bf16.
    server = VllmServer(args.checkpoint, port=args.port, extra_args=flags, log_path=log, audio_limit=1, timeout=1200,
                        int8_encoders=w8a8_encoders_pay_off())
    started = time.perf_counter()
    server.start()
    report = {"start_s": round(time.perf_counter() - started, 1)}
    print(f"   vLLM up in {report['start_s']} s (log: {log})", flush=True)
    client = openai.OpenAI(base_url=server.url, api_key="none", timeout=1800, max_retries=0)
    model = client.models.list().data[0].id

    def ask(path, text, max_tokens=args.new_tokens):
        start = time.perf_counter()
        stream = client.chat.completions.create(
            model=model, messages=openai_messages(messages(path, text)), max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        first, usage = None, None
        for chunk in stream:
            first = first or time.perf_counter() - start
            usage = chunk.usage or usage
        return {"ttft_s": first, "done_s": time.perf_counter() - start, "tokens": usage.completion_tokens,
                "prompt_tokens": usage.prompt_tokens}

    clips = Path(args.work) / "vllm"
    try:
        for r in workload(clips, tokenizer, 8_000, 2, args.seconds, args.question_tokens):  # warm-up, own clips
            ask(*r)
        for c in CONCURRENCY:
            requests = workload(clips, tokenizer, 1_000 * c, args.requests, args.seconds, args.question_tokens)
            start = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:
                results = list(pool.map(lambda r: ask(*r), requests))
            report[f"c{c}"] = summarize(results, time.perf_counter() - start)
            print(f"   vLLM concurrency {c}: {report[f'c{c}']}", flush=True)
        report["followup"] = followup(lambda path, text: ask(path, text, max_tokens=1)["ttft_s"], clips, tokenizer,
                                      args)
    finally:
        server.stop()
    return report


# ----------------------------------------------------------------------------- the limit and the ratios


def workload_limit(cost, limits, batch=16, new_tokens=128):
    """Requests/s the machine allows for the workload at concurrency `batch` (see the module docstring)."""
    peak, bandwidth = limits["bf16_tflops"] * 1e12, limits["read_gb_per_s"] * 1e9
    per_request = (cost["audio_flops"] + cost["prefill_flops"]) / peak
    step = max(cost["decode_weight_bytes"] / bandwidth, batch * cost["decode_flops_per_token"] / peak)
    seconds = per_request + new_tokens * step / batch
    return {"requests_per_s": round(1 / seconds, 4), "encoder_projector_s": round(cost["audio_flops"] / peak, 3),
            "prefill_s": round(cost["prefill_flops"] / peak, 3), "decode_step_s": round(step, 4),
            "decode_bound": "memory" if cost["decode_weight_bytes"] / bandwidth >= batch * cost[
                "decode_flops_per_token"] / peak else "compute"}


# One H100 SXM as NVIDIA's datasheet gives it: the dense bf16 tensor-core peak and the HBM3 bandwidth.
H100 = {"name": "H100 SXM, nominal", "bf16_tflops": 989.0, "read_gb_per_s": 3350.0}


def on_paper(cost, device=H100, batch=16, new_tokens=128):
    """The workload's figures on `device` from the counted FLOPs and bytes: its limit at concurrency `batch` and a
    single request's time to first token (encoders, projector and prefill at the peak, then one decoding step).
    Upper bounds: the frozen encoders are small eager kernels there, and a 0.6 B decoder's step is launch-bound."""
    limit = workload_limit(cost, device, batch, new_tokens)
    single = workload_limit(cost, device, 1, new_tokens)
    ttft = limit["encoder_projector_s"] + limit["prefill_s"] + single["decode_step_s"]
    return {"device": device["name"], "limit_requests_per_s": limit["requests_per_s"],
            "limit_output_tokens_per_s": round(limit["requests_per_s"] * new_tokens, 1),
            "ttft_s": round(ttft, 4), "decode_step_s_batch16": limit["decode_step_s"],
            "decode_bound": limit["decode_bound"],
            "command": "pip install vllm ./vllm_plugin && python benchmarks/serving.py   # on the GPU machine"}


def ratios(pipeline, vllm, limit, limits, cost):
    out = {"c16_vs_limit": vllm["c16"]["requests_per_s"] / limit["requests_per_s"],
           "throughput_ratio_c16": vllm["c16"]["requests_per_s"] / pipeline["sequential"]["requests_per_s"],
           "ttft_p50_c1_ratio": vllm["c1"]["ttft_p50_s"] / pipeline["sequential"]["ttft_p50_s"],
           "followup_ttft_ratio": vllm["followup"]["followup_ttft_p50_s"] / vllm["followup"]["first_ttft_s"],
           "pipeline_followup_ttft_ratio": (pipeline["followup"]["followup_ttft_p50_s"]
                                            / pipeline["followup"]["first_ttft_s"]),
           # A follow-up skips only the encoders: the projector and the prompt pass over the 300 audio tokens, which
           # depend on the question (eq. 12-13), run again. At equal efficiency its share is this.
           "followup_ttft_floor": ((cost["projector_flops"] + cost["prefill_flops"])
                                   / (cost["audio_flops"] + cost["prefill_flops"]))}
    out = {k: round(v, 3) for k, v in out.items()}
    # The limit is mostly GEMM time (encoders, prefill); its decoding part is bandwidth-bound at batch 16.
    out["spread"] = {"c16_vs_limit": ratio_spread(out["c16_vs_limit"], limits, "bf16_tflops")}
    return out


TARGETS = {"c16_vs_limit": ">= 0.6", "ttft_p50_c1_ratio": "<= 1.1", "followup_ttft_ratio": "<= 0.25"}


def markdown(report):
    r, lim, p, v = report["ratios"], report["limits"], report["pipeline"], report["vllm"]
    lines = [f"# TinyGiant serving benchmark ({report['name']})", "",
             f"{report['machine']}; torch {report['torch']}; {report['wall_s']} s. Random full-size weights; "
             f"{report['args']['requests']} requests of a {report['args']['seconds']:g} s clip, a "
             f"{report['args']['question_tokens']}-token question and {report['args']['new_tokens']} greedy tokens.",
             "", "| ratio | value | over the limits' spread | target |", "|---|---:|---|---|"]
    lines += [f"| {k} | {val} | {r['spread'].get(k) or ''} | {TARGETS.get(k, '')} |" for k, val in r.items()
              if k != "spread"]
    lines += ["", "| path | requests/s | output tok/s | TTFT p50 s | TTFT p95 s | TPOT s |",
              "|---|---:|---:|---:|---:|---:|"]
    rows = {f"pipeline ({p['path']}), one at a time": p["sequential"],
            **{f"vLLM, concurrency {c}": v[f"c{c}"] for c in CONCURRENCY}}
    for label, s in rows.items():
        lines.append(f"| {label} | {s['requests_per_s']} | {s['output_tokens_per_s']} | {s['ttft_p50_s']} | "
                     f"{s['ttft_p95_s']} | {s['tpot_s']} |")
    limit, cost = report["limit"], report["cost"]
    lines += ["", f"Limit at concurrency 16: {limit['requests_per_s']} requests/s (per request: encoders and projector "
              f"{limit['encoder_projector_s']} s and prefill {limit['prefill_s']} s at {lim['bf16_tflops']} TFLOP/s; "
              f"a batch-16 decoding step {limit['decode_step_s']} s, {limit['decode_bound']}-bound at "
              f"{lim['read_gb_per_s']} GB/s). Counted per request: {cost['audio_flops'] / 1e12:.3f} TFLOP audio, "
              f"(projector {cost['projector_flops'] / 1e12:.3f}), {cost['prefill_flops'] / 1e12:.3f} TFLOP prefill "
              f"({cost['prompt_tokens']} tokens), "
              f"{cost['decode_weight_bytes'] / 1e9:.2f} GB read per decoding step.",
              f"Limits (medians; [min, max]): bf16 GEMM {lim['bf16_tflops']} {lim['bf16_tflops_spread']} TFLOP/s, "
              f"int8 GEMM {lim['int8_tops']} {lim['int8_tops_spread']} TOP/s, read {lim['read_gb_per_s']} "
              f"{lim['read_gb_per_s_spread']} GB/s.",
              f"Follow-up time to first token: pipeline {p['followup']['first_ttft_s']} s then "
              f"{p['followup']['followup_ttft_p50_s']} s; vLLM {v['followup']['first_ttft_s']} s then "
              f"{v['followup']['followup_ttft_p50_s']} s (median of {FOLLOWUP_QUESTIONS - 1}). vLLM started in "
              f"{v['start_s']} s."]
    g = report["gpu_on_paper"]
    lines += [f"On paper, {g['device']}: at most {g['limit_requests_per_s']} requests/s "
              f"({g['limit_output_tokens_per_s']} output tok/s) at concurrency 16, time to first token at least "
              f"{g['ttft_s'] * 1000:.1f} ms; measure there with `{g['command'].split('   #')[0]}`.", ""]
    return "\n".join(lines)


def run_worker(args, kind):
    out = Path(args.work) / f"{kind}.json"
    command = [sys.executable, __file__, *args.passthrough, "--worker", kind, "--work", args.work]
    print(f"== {kind}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"   {kind} took {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(out.read_text())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run on the tiny checkpoint")
    parser.add_argument("--requests", type=int, default=None, help="requests per run (default 16; 4 with --quick)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--question-tokens", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=None, help="greedy tokens per answer (default 128)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the pipeline and the limits")
    parser.add_argument("--port", type=int, default=8471, help="the vLLM server's port on 127.0.0.1")
    parser.add_argument("--name", default=None, help="results file name (default serving or serving-quick)")
    add_output_arguments(parser, "serving")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.requests = args.requests or (4 if args.quick else 16)
    args.new_tokens = args.new_tokens or (8 if args.quick else 128)
    args.name = args.name or ("serving-quick" if args.quick else "serving")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        args.checkpoint = str(Path(args.work) / "checkpoint")
        write_json_atomic(Path(args.work) / f"{args.worker}.json", WORKERS[args.worker](args), indent=1)
        return
    args.passthrough = argv
    started = time.time()
    report = {"name": args.name, "torch": torch.__version__,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "args": {k: getattr(args, k) for k in ("requests", "seconds", "question_tokens", "new_tokens", "threads",
                                                      "quick")}}
    with tempfile.TemporaryDirectory() as work:
        args.work, args.checkpoint = work, str(Path(work) / "checkpoint")
        report["limits"] = run_worker(args, "limits")
        report["cost"] = run_worker(args, "checkpoint")
        report["pipeline"] = run_worker(args, "pipeline")
        print("== vllm", flush=True)
        from transformers import AutoTokenizer

        report["vllm"] = run_vllm(args, AutoTokenizer.from_pretrained(args.checkpoint, trust_remote_code=True))
    report["limit"] = workload_limit(report["cost"], report["limits"], max(CONCURRENCY), args.new_tokens)
    report["ratios"] = ratios(report["pipeline"], report["vllm"], report["limit"], report["limits"], report["cost"])
    report["gpu_on_paper"] = on_paper(report["cost"], H100, max(CONCURRENCY), args.new_tokens)
    report["wall_s"] = round(time.time() - started, 1)
    write_results(args.name, report, markdown(report), folder=output_folder(args))


if __name__ == "__main__":
    main()
