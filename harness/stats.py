"""Statistics for performance-regression decisions: spread of timing samples and a bootstrap confidence
interval of the ratio of two medians.

A timing case is judged by ``ratio = median(current) / median(baseline)``. Its uncertainty comes from a
percentile bootstrap: both samples are resampled with replacement (independently, ``resamples`` times,
fixed seed) and the ratio of the resampled medians is recomputed; the central ``confidence`` share of those
ratios is the interval. Everything is vectorised with numpy and accepts leading batch dimensions, so many
synthetic trials (tests) run in one call.

Spread is measured two ways: the plain coefficient of variation (std / mean) and a robust one,
1.4826 * MAD / median, which equals the plain one for normally distributed samples but is not inflated by
the odd outlier (a GPU sample that caught a context switch), so one stray sample does not make a case
unjudgeable. The decision logic (``deltalab.harness.regress``) uses the robust one.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

# MAD of a normal distribution times this constant estimates its standard deviation
MAD_TO_STD = 1.4826
# largest resample index tensor built at once (elements); larger batches are processed in slices
MAX_RESAMPLED_ELEMENTS = 1 << 23


def as_samples(samples, name: str = "samples") -> np.ndarray:
    """``samples`` as a float64 array [..., n] of positive finite timings; ValueError naming ``name``."""
    array = np.asarray(samples, dtype=np.float64)
    if array.ndim == 0 or array.shape[-1] == 0:
        raise ValueError(f"{name}: need at least one timing sample, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: timing samples must be finite (found NaN or Inf)")
    if (array <= 0).any():
        raise ValueError(f"{name}: timing samples must be positive (found {array.min()})")
    return array


def coefficient_of_variation(samples) -> np.ndarray | float:
    """std / mean (sample std, ddof=1; 0 for a single sample) over the last axis."""
    array = as_samples(samples)
    if array.shape[-1] < 2:
        return np.zeros(array.shape[:-1]) if array.ndim > 1 else 0.0
    cv = array.std(axis=-1, ddof=1) / array.mean(axis=-1)
    return cv if array.ndim > 1 else float(cv)


def robust_cv(samples) -> np.ndarray | float:
    """1.4826 * median(|x - median(x)|) / median(x) over the last axis: a CV that ignores outliers."""
    array = as_samples(samples)
    median = np.median(array, axis=-1, keepdims=True)
    mad = np.median(np.abs(array - median), axis=-1)
    cv = MAD_TO_STD * mad / median[..., 0]
    return cv if array.ndim > 1 else float(cv)


def median_ratio(current, baseline) -> np.ndarray | float:
    """median(current) / median(baseline) over the last axis."""
    cur = as_samples(current, "current")
    base = as_samples(baseline, "baseline")
    ratio = np.median(cur, axis=-1) / np.median(base, axis=-1)
    return ratio if np.ndim(ratio) else float(ratio)


def _bootstrap_medians(samples: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of ``resamples`` resamples (with replacement) of each row: [..., n] -> [..., resamples]."""
    n = samples.shape[-1]
    index = rng.integers(0, n, size=(*samples.shape[:-1], resamples, n), dtype=np.int32)
    # samples[..., None, :] broadcasts against index [..., resamples, n] along the batch dimensions
    drawn = np.sort(np.take_along_axis(samples[..., None, :], index, axis=-1), axis=-1)
    # the median from the sorted rows (a full sort beats np.median's partition for these short rows)
    if n % 2:
        return drawn[..., n // 2]
    return 0.5 * (drawn[..., n // 2 - 1] + drawn[..., n // 2])


def bootstrap_ratio_ci(
    current,
    baseline,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: Optional[int] = 0,
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Percentile-bootstrap interval (low, high) of median(current) / median(baseline).

    ``current`` [..., n] and ``baseline`` [..., m] (same leading batch shape, or 1-D for one case). The
    two samples are resampled independently -- they come from separate runs -- ``resamples`` times with a
    generator seeded by ``seed`` (a fixed seed makes the decision reproducible for given samples).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must lie strictly between 0 and 1, got {confidence}")
    if not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"resamples: need an int >= 100 for a percentile interval, got {resamples!r}")
    cur = as_samples(current, "current")
    base = as_samples(baseline, "baseline")
    if cur.shape[:-1] != base.shape[:-1]:
        raise ValueError(
            f"current, baseline: leading (batch) shapes differ: {cur.shape[:-1]} vs {base.shape[:-1]}"
        )
    rng = np.random.default_rng(seed)
    batch_shape = cur.shape[:-1]
    cur_rows = cur.reshape(-1, cur.shape[-1])
    base_rows = base.reshape(-1, base.shape[-1])
    # bound the resample tensors to about MAX_RESAMPLED_ELEMENTS each: batches of cases go in slices
    rows_per_slice = max(1, MAX_RESAMPLED_ELEMENTS // (resamples * max(cur.shape[-1], base.shape[-1])))
    tail = (1.0 - confidence) / 2.0
    lows, highs = [], []
    for start in range(0, cur_rows.shape[0], rows_per_slice):
        stop = start + rows_per_slice
        ratios = _bootstrap_medians(cur_rows[start:stop], resamples, rng) / _bootstrap_medians(
            base_rows[start:stop], resamples, rng
        )
        low, high = np.quantile(ratios, [tail, 1.0 - tail], axis=-1)
        lows.append(low)
        highs.append(high)
    low = np.concatenate(lows).reshape(batch_shape)
    high = np.concatenate(highs).reshape(batch_shape)
    if cur.ndim == 1:
        return float(low), float(high)
    return low, high
