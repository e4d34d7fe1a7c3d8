"""Time to first token of a follow-up question about the same clip, next to the first question's.

    python benchmarks/followup_ttft.py                 # full-size model, random weights, bf16, a 10 s clip
    python benchmarks/followup_ttft.py --int8 --seconds 30

The first question runs the three frozen encoders; the follow-up finds their outputs in the model's audio cache
(`model.enable_audio_cache`) and runs only the projector and the LLM, over a longer prompt (the first turn, its
answer and the new question). Both times include feature extraction (the follow-up still computes the mels, which
are the cache key). Also reported: the follow-up without the cache, and whether greedy tokens are identical with
and without it. `followup_ttft` is the function a larger benchmark can call.
"""

import argparse
import platform
import time

import torch

from benchmark_tinygiant import QWEN3_IM_END, QWEN3_IM_START, build_random_model, make_audio, make_processor
from configuration_tinygiant import TinyGiantConfig
from int8_tinygiant import quantize_int8

USER, ASSISTANT, NEWLINE = 872, 77091, 198  # Qwen3's ids of "user", "assistant" and "\n"


def conversation_ids(config, turns, answer_tokens=60, seed=0):
    """Random ids laid out like a chat with one clip: user (audio + question), then for each later question the
    previous answer and the new user turn; ends with the generation prompt. `turns` is the question token counts."""
    g = torch.Generator().manual_seed(seed)
    ids, instruction = [QWEN3_IM_START, USER, NEWLINE] + [config.audio_token_id] * config.num_audio_tokens, []
    for i, question_tokens in enumerate(turns):
        if i:
            ids += torch.randint(1000, 100000, (answer_tokens,), generator=g).tolist()
            ids += [QWEN3_IM_END, NEWLINE, QWEN3_IM_START, USER, NEWLINE]
        instruction.append((len(ids), len(ids) + question_tokens))
        ids += torch.randint(1000, 100000, (question_tokens,), generator=g).tolist()
        ids += [QWEN3_IM_END, NEWLINE, QWEN3_IM_START, ASSISTANT, NEWLINE]
    # Random weights give the ids no meaning: a small vocabulary (the tiny model's) takes them modulo its size.
    vocab = min(config.text_config.vocab_size, config.audio_token_id)
    input_ids = torch.tensor([[i if i == config.audio_token_id else i % vocab for i in ids]])
    mask = torch.zeros_like(input_ids)
    for start, end in instruction:
        mask[0, start:end] = 1
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "instruction_mask": mask}


def followup_ttft(model, processor, audio, sampling_rate=16000, question_tokens=(100, 30), new_tokens=8,
                  generate=None, compare_without_cache=True):
    """Seconds to the first token of the first question and of a follow-up about `audio`, with the audio cache.

    `generate` is the generation callable (default `model.generate`; e.g. a llama.cpp decoder's). Returns a dict:
    `first_s`, `followup_s` (cache hit), `ratio` (follow-up / first), `prompt_tokens`, and with
    `compare_without_cache` also `followup_without_cache_s` and `greedy_identical` (the follow-up's `new_tokens`
    greedy tokens with and without the cache). Without that comparison, run it on a warmed-up model.
    """
    config = model.config
    first = conversation_ids(config, question_tokens[:1])
    follow_up = conversation_ids(config, question_tokens)
    generate = generate or model.generate

    def run(prompt, tokens=1):
        start = time.perf_counter()
        features = processor.extract_audio_features([audio], sampling_rate)
        inputs = {**prompt, **{k: torch.as_tensor(v) for k, v in features.items()}}
        with torch.no_grad():
            out = generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        return time.perf_counter() - start, out[:, prompt["input_ids"].shape[1]:]

    result = {"prompt_tokens": (first["input_ids"].shape[1], follow_up["input_ids"].shape[1])}
    model.disable_audio_cache()
    if compare_without_cache:
        _, tokens_without = run(follow_up, new_tokens)  # also warms up every kernel once
        result["followup_without_cache_s"], _ = run(follow_up)
    cache = model.enable_audio_cache(max_items=32)
    result["first_s"], _ = run(first)
    result["followup_s"], _ = run(follow_up)
    if compare_without_cache:
        _, tokens_with = run(follow_up, new_tokens)
        result["greedy_identical"] = bool(torch.equal(tokens_with, tokens_without))
    assert cache.misses == 1 and cache.hits >= 1, (cache.misses, cache.hits)
    model.disable_audio_cache()
    result["ratio"] = result["followup_s"] / result["first_s"]
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--int8", action="store_true", help="int8 linear layers (quantize_int8) instead of bf16")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads; building the full-size model "
          "with random weights ...", flush=True)
    model = build_random_model(TinyGiantConfig())
    if args.int8:
        quantize_int8(model)
    result = followup_ttft(model, make_processor(), make_audio(args.seconds, seed=0))
    precision = "int8" if args.int8 else "bf16"
    print(f"{precision}, {args.seconds:g} s clip, prompts of {result['prompt_tokens'][0]} / "
          f"{result['prompt_tokens'][1]} tokens")
    print(f"time to first token, first question:              {result['first_s']:.2f} s")
    print(f"time to first token, follow-up (audio cache):     {result['followup_s']:.2f} s "
          f"= {100 * result['ratio']:.0f} % of the first")
    print(f"time to first token, follow-up without the cache: {result['followup_without_cache_s']:.2f} s")
    print(f"greedy tokens identical with and without the cache: {result['greedy_identical']}")


if __name__ == "__main__":
    main()
