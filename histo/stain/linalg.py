"""Products of the small matrices of two-stain models (2 or 3 rows) with many pixels, as explicit sums.

Over a whole image these are as fast as a BLAS call, need no BLAS thread pool (waking one can cost
milliseconds on a busy machine), and give an image the same bits whatever else is in its batch.
"""

from __future__ import annotations

import torch


def mix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``m @ x`` for small ``m`` (N, r, k) and ``x`` (N, k, P): (N, r, P)."""
    out = m[:, :, 0, None] * x[:, None, 0]
    for j in range(1, m.shape[2]):
        out.addcmul_(m[:, :, j, None], x[:, None, j])
    return out


def outer_sum(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x @ y^T`` for (N, r, n) and (N, k, n), summed over the n pixels: (N, r, k)."""
    return torch.stack([torch.stack([(x[:, i] * y[:, j]).sum(-1) for j in range(y.shape[1])], 1)
                        for i in range(x.shape[1])], 1)
