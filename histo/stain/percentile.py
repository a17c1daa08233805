"""Exact percentiles along the last dimension, without sorting everything.

A 99th percentile needs only the top 1 % of the values: :func:`top_values` finds them from a
threshold taken on a strided sample, then selects among the few values above it. Two conventions:
:func:`percentile` interpolates linearly (``np.percentile``, staintools), :func:`nearest_rank` does
not (torchstain).
"""

from __future__ import annotations

import numpy as np
import torch


def percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-th percentile along the last dimension with linear interpolation (``np.percentile``'s
    default), exactly, from the top-k values rather than a full sort: :func:`top_values`."""
    n = values.shape[-1]
    rank = q / 100.0 * (n - 1)
    low = int(np.floor(rank))
    frac = rank - low
    k = n - low  # the k largest values hold sorted positions low and low + 1
    top = top_values(values, k)
    lo = top[..., k - 1]
    hi = top[..., k - 2] if k >= 2 else lo
    return lo + frac * (hi - lo)


def top_values(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest values along the last dimension, descending; exact, like ``topk(k).values``.

    For a large last dimension and a small k, a threshold from a strided sample of the values first
    narrows each row to the few values above it; when a row keeps fewer than k (the sample misled),
    that row falls back to ``topk`` on everything.
    """
    n = values.shape[-1]
    step = n // 16384
    if step < 4 or k * 8 > n:
        return values.topk(k, dim=-1).values
    rows = values.reshape(-1, n)
    sample = rows[:, ::step]
    keep = min(sample.shape[1], (2 * k) // step + 32)  # about twice the values needed pass the threshold
    threshold = sample.topk(keep, dim=-1).values[:, -1:]
    above = rows >= threshold
    counts = above.sum(1).tolist()
    out = [rows[i][above[i]].topk(k).values if counts[i] >= k else rows[i].topk(k).values for i in range(len(rows))]
    return torch.stack(out).reshape(*values.shape[:-1], k)


def nearest_rank(values: torch.Tensor, q: float) -> torch.Tensor:
    """torchstain's percentile along the last dimension: the value of 1-based rank
    ``1 + round(q / 100 * (n - 1))``, no interpolation."""
    n = values.shape[-1]
    k = 1 + round(0.01 * float(q) * (n - 1))
    if k > n // 2:
        return top_values(values, n - k + 1)[..., -1]
    return -top_values(-values, k)[..., -1]
