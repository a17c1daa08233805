"""Bootstrap confidence intervals that resample patients, not images, chosen by measured coverage.

The images of one patient are not independent (same tissue, often the same field at four
magnifications), so a resample draws whole patients with replacement and keeps all their images.
A :class:`Scheme` says how the patients are drawn and how the interval is read off the resamples:

- ``stratify``: ``label`` draws within each patient-label stratum (the class make-up of the test set
  stays fixed), ``none`` draws from all patients, ``label_if_possible`` stratifies only when every
  stratum has at least two patients (a stratum of one patient adds no variance at all).
- ``interval``: ``percentile``, or ``bca`` (bias-corrected and accelerated, Efron 1987; the
  acceleration from the leave-one-patient-out jackknife).
- ``expand``: widen the tails for few patients (Hesterberg 2015's "expanded percentile": the normal
  quantile replaced by sqrt(n/(n-1)) t_(n-1), n the patients of the smallest class), because a bootstrap
  of n patients has too little spread, and images of one patient are strongly alike.
- ``min_patients_per_class``: with fewer test patients in some class, no bootstrap reaches its
  nominal coverage (``scripts/ci_coverage.py`` measures this), so no interval is given (``None``)
  and the reason is recorded, instead of printing an interval that is far too narrow.

:data:`DEFAULT` is the scheme histo uses; :data:`SCHEMES` are the candidates the coverage script
compares, including :data:`PREVIOUS` (stratified percentile, always an interval), histo's method
before its coverage was measured. The seed fixes the draws.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy.stats import norm, t

STRATIFY = ("label", "none", "label_if_possible")
INTERVALS = ("percentile", "bca")


@dataclass(frozen=True)
class Scheme:
    """How patients are resampled and how an interval is read off the resamples."""

    stratify: str
    interval: str
    expand: bool = False  # widen the tails for small n (Hesterberg 2015), n = patients of the smallest class
    min_patients_per_class: int = 0  # fewer test patients in a class: no interval

    def __post_init__(self):
        if self.stratify not in STRATIFY or self.interval not in INTERVALS:
            raise ValueError(f"Unknown bootstrap scheme {self}; stratify in {STRATIFY}, interval in {INTERVALS}.")

    @property
    def name(self) -> str:
        return "/".join([self.stratify, self.interval, *(["expanded"] if self.expand else []),
                         *([f"min{self.min_patients_per_class}"] if self.min_patients_per_class else [])])

    def without_minimum(self) -> Scheme:
        """The same resampling and interval, given at every size (what the coverage script measures)."""
        return replace(self, min_patients_per_class=0)


PREVIOUS = Scheme("label", "percentile")
SCHEMES = {s.name: s for s in (
    PREVIOUS,
    Scheme("none", "percentile"),
    Scheme("label_if_possible", "percentile"),
    Scheme("label", "bca"),
    Scheme("none", "bca"),
    Scheme("label_if_possible", "bca"),
    Scheme("none", "percentile", expand=True),
    Scheme("label_if_possible", "percentile", expand=True),
    Scheme("none", "bca", expand=True),
)}
# Chosen by coverage (scripts/ci_coverage.py): the candidate closest to 95 % where any comes near it.
DEFAULT = Scheme("none", "bca", expand=True, min_patients_per_class=5)


def patient_weights(strata: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """How often each of P patients is drawn in each resample: (resamples, P) integers.

    Each row draws, within every stratum, as many patients as the stratum has, with replacement
    (one stratum for all patients: the unstratified bootstrap).

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


def strata(patient_label: np.ndarray, stratify: str) -> np.ndarray:
    """The stratum of each patient under ``stratify`` (see :class:`Scheme`).

    >>> strata(np.array([0, 1, 1]), "label_if_possible").tolist(), strata(np.array([0, 0, 1, 1]), "label_if_possible").tolist()
    ([0, 0, 0], [0, 0, 1, 1])
    """
    labels = np.asarray(patient_label)
    if stratify == "none" or (stratify == "label_if_possible" and np.unique(labels, return_counts=True)[1].min() < 2):
        return np.zeros(len(labels), dtype=np.int64)
    return labels


def too_few_patients(patient_label: np.ndarray, minimum: int, class_names=None) -> str | None:
    """Why no interval is given (fewer than ``minimum`` patients in a class present), else None.

    >>> too_few_patients(np.array([0, 1, 1]), 4, ["benign", "malignant"])
    '1 benign and 2 malignant test patients: an interval needs at least 4 per class'
    """
    classes, counts = np.unique(np.asarray(patient_label), return_counts=True)
    if counts.min() >= minimum:
        return None
    names = [str(class_names[c]) if class_names is not None else f"class {c}" for c in classes]
    listed = " and ".join(f"{n} {name}" for n, name in zip(counts, names, strict=True))
    return f"{listed} test patients: an interval needs at least {minimum} per class"


def intervals(
    statistic: Callable[[np.ndarray], dict[str, np.ndarray]],
    patient_label: np.ndarray,
    resamples: int,
    seed: int,
    level: float,
    scheme: Scheme = DEFAULT,
    class_names=None,
) -> tuple[dict[str, list[float | None] | None], str | None]:
    """``[low, high]`` of every metric ``statistic`` returns, from patient resamples, and None.

    ``statistic(weights)`` maps patient weights (B, P) to metrics of shape (B,) each (see
    :func:`histo.evaluation.metrics.scores`); ``patient_label`` (P,) gives the strata. With fewer than
    ``scheme.min_patients_per_class`` patients in a class: every interval None, and the reason. A metric
    whose resamples are all equal (every patient right, say) gets None too: a zero-width interval would
    claim a certainty the bootstrap cannot measure. ``[None, None]``: undefined in every resample.
    """
    _check_level(level)
    patient_label = np.asarray(patient_label)
    n = len(patient_label)
    why = too_few_patients(patient_label, scheme.min_patients_per_class, class_names)
    if why:
        return {name: None for name in statistic(np.ones((1, n)))}, why
    weights = patient_weights(strata(patient_label, scheme.stratify), resamples, seed)
    samples = statistic(weights)
    z = tail_z(level, patient_label, scheme.expand)
    if scheme.interval == "percentile":
        found = {name: _quantiles(v, norm.cdf(z)) for name, v in samples.items()}
    else:
        point = statistic(np.ones((1, n)))
        jackknife = statistic(np.ones((n, n)) - np.eye(n)) if n > 1 else {k: np.full(1, np.nan) for k in samples}
        found = {name: bca_interval(samples[name], float(point[name][0]), jackknife[name], z) for name in samples}
    # every resample alike (e.g. every patient right): the bootstrap sees no uncertainty, which is not none
    return {name: None if low is not None and low == high else [low, high] for name, (low, high) in found.items()}, None


def bca_interval(samples: np.ndarray, point: float, jackknife: np.ndarray, z) -> list[float | None]:
    """The BCa interval of one metric: its resamples, its point estimate and its leave-one-patient-out values.

    ``z``: the tails' standard-normal quantiles (:func:`tail_z`). Without bias or skew (bias-correction
    and acceleration 0) it is the percentile interval:

    >>> bca_interval(np.arange(101.0), 50.0, np.array([1.0, -1.0]), norm.ppf([0.25, 0.75]))
    [25.0, 75.0]
    """
    samples = np.asarray(samples, dtype=np.float64)
    finite = samples[np.isfinite(samples)]
    if not np.isfinite(point) or len(finite) == 0:
        return [None, None]
    below = (np.sum(finite < point) + 0.5 * np.sum(finite == point)) / len(finite)
    z0 = norm.ppf(np.clip(below, 0.5 / len(finite), 1 - 0.5 / len(finite)))
    jack = np.asarray(jackknife, dtype=np.float64)
    jack = jack[np.isfinite(jack)]
    d = jack.mean() - jack if len(jack) > 1 else np.zeros(1)
    spread = np.sum(d**2)
    accel = np.sum(d**3) / (6 * spread**1.5) if spread > 0 else 0.0
    z = np.asarray(z, dtype=np.float64)
    shares = norm.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z))) if np.isfinite(z).all() else norm.cdf(z)
    return _quantiles(finite, np.sort(shares))


def describe(resamples: int, seed: int, level: float, scheme: Scheme = DEFAULT) -> dict:
    """How the intervals were made, for the record next to them."""
    return {
        "unit": "patient",
        "stratified_by": {"label": "patient label", "none": "nothing",
                          "label_if_possible": "patient label when every class has 2+ patients"}[scheme.stratify],
        "interval": scheme.interval,
        "expanded": scheme.expand,
        "min_patients_per_class": scheme.min_patients_per_class,
        "resamples": int(resamples),
        "level": float(level),
        "seed": int(seed),
    }


def summary(describe_record: dict) -> str:
    """One sentence for tables and pages: how the intervals in them were made.

    >>> summary(describe(1000, 0, 0.95))
    '95% CI: expanded BCa bootstrap over patients (unstratified), 1000 resamples, seed 0; none with fewer than 5 test patients in a class'
    """
    d = describe_record
    kind = ("expanded " if d.get("expanded") else "") + ("BCa" if d["interval"] == "bca" else d["interval"])
    strata = "unstratified" if d["stratified_by"] == "nothing" else f"stratified by {d['stratified_by']}"
    text = f"{d['level']:.0%} CI: {kind} bootstrap over patients ({strata}), {d['resamples']} resamples, seed {d['seed']}"
    if d.get("min_patients_per_class"):
        text += f"; none with fewer than {d['min_patients_per_class']} test patients in a class"
    return text


NO_CI = ("No CI: too few test patients of a class for a trustworthy interval, or every resample gives the "
         "same value (all patients right, say), so the bootstrap cannot measure the uncertainty.")


def withheld_note(reason: str) -> str:
    """The sentence that explains intervals withheld for a whole test set to a reader of a table."""
    return (f"No CI: {reason}; with fewer, no bootstrap interval comes near its nominal coverage "
            "(measured by scripts/ci_coverage.py).")


def any_missing(ci: dict | None) -> bool:
    """Whether an ``evaluate(...)["ci"]`` block (overall and per magnification) has a metric without interval."""
    if not ci:
        return False
    blocks = [ci.get("overall") or {}, *(ci.get("per_magnification") or {}).values()]
    return any(interval is None for block in blocks for interval in (block or {}).values())


def _quantiles(samples: np.ndarray, shares) -> list[float | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: the metric is undefined in every resample
        low, high = np.nanquantile(np.asarray(samples, dtype=np.float64), np.asarray(shares, dtype=np.float64))
    return [_finite(low), _finite(high)]


def tail_z(level: float, patient_label: np.ndarray, expand: bool) -> np.ndarray:
    """The standard-normal quantiles (low, high) whose percentiles bound the interval.

    Unexpanded: +-1.96 for 95 %. Expanded (Hesterberg 2015, "expanded percentile"): +-sqrt(n / (n - 1))
    t_{n-1}, with n the patients of the smallest class, which undoes the bootstrap's too-small spread for
    few patients; it tends to the unexpanded value as n grows.

    >>> tail_z(0.95, np.zeros(5), False).round(3).tolist(), tail_z(0.95, np.array([0] * 5 + [1] * 30), True).round(3).tolist()
    ([-1.96, 1.96], [-3.104, 3.104])
    """
    if not expand:
        return np.array([-1.0, 1.0]) * norm.ppf((1 + level) / 2)
    n = np.unique(np.asarray(patient_label), return_counts=True)[1].min()
    if n < 2:
        return np.array([-np.inf, np.inf])
    return np.array([-1.0, 1.0]) * np.sqrt(n / (n - 1)) * t.ppf((1 + level) / 2, n - 1)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"The confidence level must be between 0 and 1, got {level}.")


def _finite(value) -> float | None:
    return float(value) if np.isfinite(value) else None
