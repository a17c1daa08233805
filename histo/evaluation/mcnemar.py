"""McNemar's exact test: do two classifiers err on the same images at different rates?

Only the discordant images count: ``b`` where the first is right and the second wrong, ``c`` the
reverse. Under the null hypothesis each discordant image is a fair coin, so the two-sided p-value
is the exact binomial test of ``b`` successes in ``b + c`` trials at 0.5 (no continuity correction
needed). The paper's ensemble gains of 0-3 images give p-values near 1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from histo.evaluation import predictions


def mcnemar(correct_a, correct_b) -> dict:
    """Exact McNemar test between two per-image correctness vectors of the same images.

    >>> mcnemar([1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 1])
    {'n_images': 6, 'a_only_correct': 4, 'b_only_correct': 0, 'p_value': 0.125}
    """
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs the same images: {a.shape[0]} against {b.shape[0]} predictions.")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"n_images": int(a.size), "a_only_correct": a_only, "b_only_correct": b_only, "p_value": float(p)}


def mcnemar_frames(frame_a: pd.DataFrame, frame_b: pd.DataFrame) -> dict:
    """McNemar's test between two prediction frames, which must list the same images with the same labels."""
    if not np.array_equal(frame_a["image"].to_numpy(), frame_b["image"].to_numpy()):
        raise ValueError("McNemar needs two prediction files of the same images, in the same order.")
    if not np.array_equal(frame_a["label"].to_numpy(), frame_b["label"].to_numpy()):
        raise ValueError("McNemar needs two prediction files with the same labels.")
    label = frame_a["label"].to_numpy()
    return mcnemar(
        predictions.probabilities(frame_a).argmax(axis=1) == label,
        predictions.probabilities(frame_b).argmax(axis=1) == label,
    )
