"""The peer of the benchmark: Qwen2.5-Omni-3B's thinker (audio encoder + 3B LLM), built from its published sizes with
random weights (meta device, then materialised; nothing is downloaded), run on its best transformers CPU path.

    python benchmarks/peer_qwen_omni.py            # prints its time to first token, decode tok/s and peak RSS
    python benchmarks/peer_qwen_omni.py --small    # a miniature with the same structure, to check the code path

The measurement is `measure.measure_peer`, which `benchmark_tinygiant.py` also runs, in a process of its own so that
the peak memory is the peer's. The vision tower is dropped before the weights are allocated: an audio question never
runs it.
"""

import argparse
import json

import torch
from measure import measure_peer


def main(argv=None):
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    t = np.arange(int(args.seconds * 16000)) / 16000
    print(json.dumps(measure_peer((0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), small=args.small)))


if __name__ == "__main__":
    main()
