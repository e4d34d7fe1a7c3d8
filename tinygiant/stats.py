"""Statistics the reports share."""

import numpy as np


def bootstrap_interval(values, samples, rng=0):
    """Percentile 95 % interval of the mean of `values` (in their units) from `samples` resamples drawn with `rng`
    (a `numpy.random.Generator`, used as it stands, or a seed); None if `values` is empty."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return None
    rng = np.random.default_rng(rng)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
