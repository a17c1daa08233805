"""Greedy forward selection with replacement (Caruana et al., ICML 2004), on val.

Start from the empty ensemble; in each round add the member (possibly one already in) whose
addition gives the lowest val log loss of the averaged probabilities; after ``rounds`` rounds keep
the best ensemble seen along the way. A member chosen k times gets weight k / (total picks), so the
result is a weighted average with rational weights, and a member that never helps gets 0.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-15


def select(probs: np.ndarray, labels: np.ndarray, rounds: int) -> np.ndarray:
    """How often each member is picked in the best ensemble found: (members,) integers.

    Member C alone is best; adding it again does not help; after A and B join, the log loss drops:

    >>> p1 = np.array([[0.1, 0.9], [0.8, 0.2]]); p2 = np.array([[0.8, 0.2], [0.1, 0.9]]); p3 = np.full((2, 2), 0.5)
    >>> probs, labels = np.stack([p1, p2, p3]), np.array([1, 1])
    >>> select(probs, labels, rounds=1).tolist(), select(probs, labels, rounds=2).tolist(), select(probs, labels, 4).tolist()
    ([0, 0, 1], [0, 0, 1], [1, 1, 2])
    """
    if rounds < 1:
        raise ValueError(f"greedy.rounds must be at least 1, got {rounds}.")
    probs = np.asarray(probs, dtype=np.float64)
    true = probs[:, np.arange(probs.shape[1]), np.asarray(labels)]  # (M, N)
    counts = np.zeros(len(probs), dtype=np.int64)
    running = np.zeros(probs.shape[1])
    best_loss, best_counts = np.inf, counts
    for picked in range(1, rounds + 1):
        losses = -np.log(np.clip((running + true) / picked, EPS, None)).mean(axis=1)
        choice = int(np.argmin(losses))  # ties: the first member
        running += true[choice]
        counts = counts.copy()
        counts[choice] += 1
        if losses[choice] < best_loss - 1e-12:
            best_loss, best_counts = losses[choice], counts
    return best_counts
