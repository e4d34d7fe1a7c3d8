"""Time to first token of a follow-up question about the same clip, next to the first question's.

    python benchmarks/followup_ttft.py                 # full-size model, random weights, bf16, a 10 s clip
    python benchmarks/followup_ttft.py --int8 --seconds 30

The first question runs the three frozen encoders; the follow-up finds their outputs in the model's audio cache
(`model.enable_audio_cache`) and runs only the projector and the LLM, over a longer prompt (the first turn, its
answer and the new question). Both times include feature extraction (the follow-up still computes the mels, which
are the cache key). Also reported: the follow-up without the cache, and whether greedy tokens are identical with
and without it. The measurement is `measure.followup_ttft`, which `benchmark_tinygiant.py` runs on its best path.
"""

import argparse
import platform

import torch
from measure import build_random_model, followup_ttft, make_audio, make_processor

from configuration_tinygiant import TinyGiantConfig
from int8_tinygiant import quantize_int8


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
