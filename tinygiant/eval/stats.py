"""The statistics the reports share: intervals for one run, and tests for two runs on the same items."""

import math
from collections.abc import Sequence

import numpy as np

Z_95 = 1.959963984540054  # the two-sided 95 % quantile of the standard normal


def wilson_interval(correct: int, total: int, z: float = Z_95) -> list[float] | None:
    """95 % Wilson score interval for `correct / total`, in %, or None when `total` is 0."""
    if total == 0:
        return None
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return [100 * max(0.0, centre - half), 100 * min(1.0, centre + half)]


def bootstrap_interval(values: Sequence[float], samples: int,
                       rng: np.random.Generator | int = 0) -> list[float] | None:
    """Percentile 95 % interval of the mean of `values` (in their units) from `samples` resamples drawn with `rng`
    (a `numpy.random.Generator`, used as it stands, or a seed); None if `values` is empty."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return None
    rng = np.random.default_rng(rng)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (A right and B wrong, and the reverse)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_difference(a: Sequence[bool], b: Sequence[bool], samples: int = 10_000, seed: int = 0) -> dict:
    """Run A against run B on the same items (`a[i]`, `b[i]`: item i right): the accuracy difference A - B in points,
    its paired bootstrap 95 % interval (items resampled, both runs together), the discordant counts and McNemar's
    exact p-value."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same items: {a.shape} against {b.shape}")
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    interval = bootstrap_interval(100 * (a - b), samples, seed)
    return {"n": len(a), "accuracy_a": 100 * float(a.mean()) if len(a) else None,
            "accuracy_b": 100 * float(b.mean()) if len(b) else None,
            "difference": 100 * float((a - b).mean()) if len(a) else None, "bootstrap_ci95": interval,
            "only_a_right": only_a, "only_b_right": only_b, "mcnemar_p": mcnemar_exact(only_a, only_b)}
