"""Unfitted combinations: the soft mean and the hard majority vote (the paper's "softhardvoting").

Both take the members' probabilities as one (members, images, classes) array and return
(images, classes) scores that sum to one per image: probabilities (soft) or vote shares (hard);
neither uses any labels.
"""

from __future__ import annotations

import numpy as np

from histo.evaluation.metrics import VOTE_TIE_BREAK


def soft(probs: np.ndarray) -> np.ndarray:
    """The mean of the members' probabilities.

    >>> soft(np.array([[[0.2, 0.8]], [[0.6, 0.4]]])).round(3).tolist()
    [[0.4, 0.6]]
    """
    return np.asarray(probs, dtype=np.float64).mean(axis=0)


def hard(probs: np.ndarray) -> np.ndarray:
    """The share of members voting for each class; a tie goes to the tied class with the higher soft mean.

    The shares are nudged by at most :data:`~histo.evaluation.metrics.VOTE_TIE_BREAK` toward the soft
    mean, ``(votes + e * soft mean) / (members + e)``, only so that the argmax breaks a tie the same way;
    they are vote shares, not probabilities (metrics treat them as such: ``score="vote_share"``).

    Two members, one image where they disagree (a tie): the soft mean (0.65, 0.35) decides.

    >>> tie = hard(np.array([[[0.4, 0.6]], [[0.9, 0.1]]]))
    >>> tie.round(4).tolist(), int(tie.argmax())
    ([[0.5, 0.5]], 0)

    Three members: the majority wins even against the soft mean.

    >>> hard(np.array([[[0.4, 0.6]], [[0.4, 0.6]], [[1.0, 0.0]]])).round(4).tolist()
    [[0.3333, 0.6667]]
    """
    probs = np.asarray(probs, dtype=np.float64)
    n_members, _, n_classes = probs.shape
    votes = np.eye(n_classes)[probs.argmax(axis=2)].sum(axis=0)  # (images, classes)
    return (votes + VOTE_TIE_BREAK * soft(probs)) / (n_members + VOTE_TIE_BREAK)
