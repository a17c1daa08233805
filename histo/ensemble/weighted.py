"""Weighted averaging: non-negative member weights summing to 1, fitted on val by minimising log loss.

The ensemble probability is ``sum_m w_m p_m``; the weights minimise the mean negative log
probability of the true class on the fitting rows, on the simplex (SLSQP with the analytic
gradient, starting from equal weights).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

EPS = 1e-15


def fit_weights(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Weights (members,) on the simplex minimising the log loss of the weighted mean of ``probs`` (M, N, C).

    Two members that are each right on one image with the same confidence share the weight equally:

    >>> p = np.array([[[0.1, 0.9], [0.9, 0.1]], [[0.9, 0.1], [0.1, 0.9]]])
    >>> fit_weights(p, np.array([1, 1])).round(3).tolist()
    [0.5, 0.5]
    """
    probs = np.asarray(probs, dtype=np.float64)
    n_members, n_images, _ = probs.shape
    true = probs[:, np.arange(n_images), np.asarray(labels)]  # (M, N) probability of the true class

    def loss(w):
        return -np.log(np.clip(w @ true, EPS, None)).mean()

    def grad(w):
        return -(true / np.clip(w @ true, EPS, None)).mean(axis=1)

    result = minimize(
        loss, np.full(n_members, 1 / n_members), jac=grad, method="SLSQP",
        bounds=[(0.0, 1.0)] * n_members,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones_like(w)}],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    weights = np.where(result.x > 1e-9, result.x, 0.0)  # the optimiser's round-off below 1e-9 is 0
    return weights / weights.sum()


def mix(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted mean of the members' probabilities (M, N, C) -> (N, C)."""
    return np.tensordot(np.asarray(weights, dtype=np.float64), np.asarray(probs, dtype=np.float64), axes=1)
