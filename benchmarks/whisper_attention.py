"""Why Whisper's attention stays slow on CPU: one layer's self-attention over a 30 s window, timed by its parts.

    python benchmarks/whisper_attention.py [--threads 2]

Whisper-large-v3-turbo's encoder attends over all 1500 frames with 20 heads of 64 dims, in each of its 32 layers.
Prints, for one layer in bf16: PyTorch's fused SDPA (the model's path), the same computed as matmul-softmax-matmul and
in query blocks of 256 rows, each as ms, TFLOP/s and the largest error against float32; then the three parts of the
unfused path. The inner dimension of QK^T is only 64, so it is bound by writing the 45 M scores rather than by
arithmetic, and the softmax over them costs about as much again: attention runs at a fraction of the GEMM rate
whatever the kernel.
"""

import argparse
import time

import torch
import torch.nn.functional as F

HEADS, FRAMES, HEAD_DIM, LAYERS = 20, 1500, 64, 32


def best_ms(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, FRAMES, HEAD_DIM, dtype=torch.bfloat16) for _ in range(3))
    scale = HEAD_DIM ** -0.5
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())

    def unfused():
        return torch.matmul(torch.softmax(torch.matmul(q * scale, k.transpose(-1, -2)), -1), v)

    def blocked(rows=256):
        out = torch.empty_like(q)
        for i in range(0, FRAMES, rows):
            out[:, :, i:i + rows] = torch.matmul(torch.softmax(torch.matmul(q[:, :, i:i + rows] * scale,
                                                                            k.transpose(-1, -2)), -1), v)
        return out

    flops = 4 * HEADS * FRAMES * FRAMES * HEAD_DIM
    print(f"one layer, {HEADS} heads x {FRAMES} frames x {HEAD_DIM} dims, bf16, {args.threads} threads")
    for name, fn in (("sdpa (the model's path)", lambda: F.scaled_dot_product_attention(q, k, v)),
                     ("matmul-softmax-matmul", unfused), ("query blocks of 256", blocked)):
        ms = best_ms(fn)
        error = (fn().float() - reference).abs().max().item()
        print(f"  {name:26s} {ms:7.1f} ms  {flops / ms / 1e9:.3f} TFLOP/s  max error {error:.2g}  "
              f"x {LAYERS} layers: {LAYERS * ms / 1e3:.2f} s")
    scores = torch.matmul(q, k.transpose(-1, -2))
    for name, fn in (("QK^T", lambda: torch.matmul(q, k.transpose(-1, -2))),
                     ("softmax", lambda: torch.softmax(scores, -1)),
                     ("PV", lambda: torch.matmul(scores, v))):
        print(f"  part {name:21s} {best_ms(fn):7.1f} ms")


if __name__ == "__main__":
    main()
