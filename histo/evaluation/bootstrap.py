"""Bootstrap confidence intervals that resample patients, not images.

The images of one patient are not independent (same tissue, often the same field at four
magnifications), so a resample draws whole patients with replacement and keeps all their images.
Patients are drawn within each label stratum (as many benign and malignant patients as the test set
has), so every resample has both classes and metrics such as specificity stay defined; this
treats the class make-up of the test set as fixed by design, as a stratified test split does.
The interval is the percentile interval of the resampled metric; the seed fixes the draws.
"""

from __future__ import annotations

import warnings

import numpy as np


def patient_weights(strata: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """How often each of P patients is drawn in each resample: (resamples, P) integers.

    Each row draws, within every stratum, as many patients as the stratum has, with replacement.

    >>> w = patient_weights(np.array([0, 0, 1, 1, 1]), resamples=4, seed=0)
    >>> w.shape, w[:, :2].sum(axis=1).tolist(), w[:, 2:].sum(axis=1).tolist()
    ((4, 5), [2, 2, 2, 2], [3, 3, 3, 3])
    """
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    out = np.zeros((resamples, len(strata)), dtype=np.int64)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        out[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=resamples)
    return out


def percentile_intervals(values: dict[str, np.ndarray], level: float) -> dict[str, list[float | None]]:
    """``[low, high]`` percentile interval of each resampled metric (resamples where it is undefined are skipped).

    >>> percentile_intervals({"m": np.arange(101.0)}, 0.5)
    {'m': [25.0, 75.0]}
    """
    if not 0 < level < 1:
        raise ValueError(f"The confidence level must be between 0 and 1, got {level}.")
    tails = [50 * (1 - level), 50 * (1 + level)]
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: the metric is undefined in every resample
        for name, samples in values.items():
            low, high = np.nanpercentile(np.asarray(samples, dtype=np.float64), tails)
            out[name] = [_finite(low), _finite(high)]
    return out


def describe(resamples: int, seed: int, level: float) -> dict:
    """How the intervals were made, for the record next to them."""
    return {
        "unit": "patient",
        "stratified_by": "patient label",
        "interval": "percentile",
        "resamples": int(resamples),
        "level": float(level),
        "seed": int(seed),
    }


def _finite(value) -> float | None:
    return float(value) if np.isfinite(value) else None
