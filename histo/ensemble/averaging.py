"""Unfitted combinations: the soft mean and the hard majority vote (the paper's "softhardvoting").

Both take the members' probabilities as one (members, images, classes) array and return
(images, classes) probabilities; neither uses any labels.
"""

from __future__ import annotations

import numpy as np


def soft(probs: np.ndarray) -> np.ndarray:
    """The mean of the members' probabilities.

    >>> soft(np.array([[[0.2, 0.8]], [[0.6, 0.4]]])).round(3).tolist()
    [[0.4, 0.6]]
    """
    return np.asarray(probs, dtype=np.float64).mean(axis=0)


def hard(probs: np.ndarray) -> np.ndarray:
    """The majority of the members' argmax; a tie goes to the tied class with the higher soft mean.

    As probabilities: ``(votes + soft mean) / (members + 1)``. Vote counts differ by whole numbers
    and the soft mean adds less than one, so the argmax is the majority class and the soft mean only
    breaks ties; AUROC then ranks images by vote share first, soft mean second.

    Two members, one image where they disagree (a tie): the soft mean decides.

    >>> hard(np.array([[[0.4, 0.6]], [[0.9, 0.1]]])).round(3).tolist()   # votes 1-1, soft mean (0.65, 0.35)
    [[0.55, 0.45]]

    Three members: the majority wins even against the soft mean.

    >>> hard(np.array([[[0.4, 0.6]], [[0.4, 0.6]], [[1.0, 0.0]]])).round(3).tolist()
    [[0.4, 0.6]]
    """
    probs = np.asarray(probs, dtype=np.float64)
    n_members, _, n_classes = probs.shape
    votes = np.eye(n_classes)[probs.argmax(axis=2)].sum(axis=0)  # (images, classes)
    return (votes + soft(probs)) / (n_members + 1)
