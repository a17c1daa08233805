"""Calibration: expected calibration error, log loss, and temperature scaling fitted on val.

Temperature scaling (Guo et al. 2017) divides the logits by one scalar T > 0 chosen to minimise
the log loss on the validation split; it never changes the predicted class (so accuracy, and for
the binary task AUROC, are unchanged) and only makes the probabilities more or less confident.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

BINS = 15
EPS = 1e-15


def expected_calibration_error(labels, probs, bins: int = BINS) -> float:
    """Top-label ECE: the image-weighted mean |accuracy - confidence| over equal-width confidence bins.

    >>> probs = np.array([[0.15, 0.85], [0.15, 0.85], [0.25, 0.75], [0.35, 0.65]])
    >>> round(expected_calibration_error([1, 0, 1, 1], probs, bins=10), 4)   # (|1 - 1.7| + 0.25 + 0.35) / 4
    0.325
    """
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # bin k holds (k/bins, (k+1)/bins]
    count = np.bincount(which, minlength=bins)
    gap = np.bincount(which, correct - confidence, minlength=bins)  # sum of (correct - confidence) per bin
    return float(np.abs(gap).sum() / max(count.sum(), 1))


def log_loss(labels, probs) -> float:
    """Mean negative log probability of the true class (probabilities clipped at 1e-15).

    >>> round(log_loss([0, 1], np.array([[0.5, 0.5], [0.2, 0.8]])), 4)
    0.4581
    """
    probs = np.asarray(probs, dtype=np.float64)
    true = probs[np.arange(len(probs)), np.asarray(labels)]
    return float(-np.log(np.clip(true, EPS, 1.0)).mean())


def fit_temperature(logits, labels) -> float:
    """The temperature T in [0.02, 50] that minimises the log loss of softmax(logits / T).

    >>> z = np.array([[0.0, 4.0], [0.0, 4.0], [0.0, 4.0], [4.0, 0.0]])
    >>> fit_temperature(z, [1, 1, 0, 0]) > 1   # one confident mistake in four: soften
    True
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[rows, labels].mean())

    result = minimize_scalar(loss, bounds=(np.log(0.02), np.log(50.0)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def scale(logits, temperature: float) -> np.ndarray:
    """Probabilities of temperature-scaled logits."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))
