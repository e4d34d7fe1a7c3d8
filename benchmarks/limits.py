"""The machine's limits, measured robustly, for every benchmark that states a figure as a fraction of them.

    from limits import measure_limits, ratio_spread
    limits = measure_limits()   # {"bf16_tflops": median, "bf16_tflops_spread": [min, max], ...}

- `bf16_tflops`: bf16 GEMM on Whisper's FFN shape (1500 x 1280 by 5120 x 1280), the shape the encoders run;
- `int8_tops`: `torch._int_mm` on the same shape (the int8 path's linears);
- `read_gb_per_s`: a `sum` over arrays of several sizes, each at least twice the last-level cache (so that no pass
  is served from it), float32 and bfloat16; the better dtype's figure.

Each figure is the median of repeated passes (`repeats` per size, after a warm-up), and `<name>_spread` is the
[min, max] of those passes: a single best-of pass swings with what else the machine does (on one kind of machine the
read bandwidth came out at 53 and at 33 GB/s in two runs), the median of many does much less, and the spread says how
far a ratio against it may be trusted. `ratio_spread` turns a ratio against a limit into the range it spans over
that spread. All run with the calling process's torch threads, on the CPU, or with `device="cuda"` on a GPU (where
the cache is its L2, and the arrays are at least 1 GB all the same).
"""

import statistics
import time
from pathlib import Path

import torch


def last_level_cache_bytes():
    """The largest CPU cache's size from sysfs (Linux), else 64 MB."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * unit)
    return max(sizes, default=64 * 2**20)


def passes(fn, repeats, device="cpu"):
    """Seconds of each of `repeats` calls of `fn`, after one warm-up call (on a GPU, each waits for its kernels)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def summary(name, rates):
    return {name: round(statistics.median(rates), 3), f"{name}_spread": [round(min(rates), 3), round(max(rates), 3)]}


def measure_limits(quick=False, repeats=9, device="cpu"):
    """The three limits above with their spreads; `quick` uses small shapes and arrays (a smoke run, not a figure)."""
    m, k, n = (256, 512, 1024) if quick else (1500, 1280, 5120)
    flops = 2 * m * k * n
    a, b = (torch.randn(rows, k, dtype=torch.bfloat16, device=device) for rows in (m, n))
    qa, qb = (torch.randint(-127, 128, (rows, k), dtype=torch.int8, device=device) for rows in (m, n))
    result = {**summary("bf16_tflops", [flops / t / 1e12 for t in passes(lambda: a @ b.T, repeats, device)]),
              **summary("int8_tops", [flops / t / 1e12 for t in passes(lambda: torch._int_mm(qa, qb.T), repeats,
                                                                        device)])}

    on_cpu = torch.device(device).type == "cpu"
    smallest = 2**25 if quick else max(2**30, 2 * last_level_cache_bytes() if on_cpu else 0)
    by_dtype = {}
    for dtype in (torch.float32, torch.bfloat16):
        rates = []
        for scale in (1.0, 1.5, 2.0):
            size = int(smallest * scale) // 64 * 64
            x = torch.ones(size // (torch.finfo(dtype).bits // 8), dtype=dtype, device=device)
            rates += [size / t / 1e9 for t in passes(x.sum, repeats, device)]
            del x
        by_dtype[dtype] = rates
    best = max(by_dtype.values(), key=statistics.median)  # bf16's sum can be compute-bound on older CPUs
    result.update(summary("read_gb_per_s", best))
    result["read_bytes_per_pass"] = [int(smallest * s) for s in (1.0, 1.5, 2.0)]
    result["repeats"] = repeats
    return result


def ratio_spread(ratio, limits, name, time_over_floor=False):
    """The range [low, high] of `ratio` over the spread of the limit `name`. `ratio` is a rate over a ceiling made of
    that limit (inversely proportional to it), or with `time_over_floor` a time over a floor computed at that rate
    (proportional to it). None when the limits carry no spread."""
    spread = limits.get(f"{name}_spread")
    if not spread or ratio is None:
        return None
    scale = [low / limits[name] for low in spread] if time_over_floor else [limits[name] / s for s in spread[::-1]]
    return [round(ratio * scale[0], 3), round(ratio * scale[1], 3)]
