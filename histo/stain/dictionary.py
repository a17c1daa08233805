"""Sparse non-negative dictionary learning of a two-stain matrix (Vahadane et al. 2016).

Minimises, over the optical densities ``x_i`` (3-vectors) of a sample of tissue pixels,

    sum_i 0.5 * ||x_i - D a_i||^2 + lam * |a_i|_1     with D >= 0, a_i >= 0, ||d_j|| <= 1,

the objective staintools hands to ``spams.trainDL(K=2, mode=2, modeD=0, posD=True, posAlpha=True)``.
spams runs an online algorithm for a wall-clock second from random pixels; here the whole sample
is used at every step, from a data-driven start (:func:`initial_dictionary`), for a fixed number of
steps, so the result depends on the pixels only. Each step solves every ``a_i`` exactly
(:func:`histo.stain.lasso.nonneg_lasso`) and then updates the two atoms by block coordinate
descent, the dictionary update of Mairal et al. 2009 that spams uses, with momentum.

Batched over images: ``x`` is (N, 3, n), the dictionary (N, 3, 2), one column per stain.
"""

from __future__ import annotations

import torch

from histo.stain.lasso import nonneg_lasso
from histo.stain.linalg import mix, outer_sum

MOMENTUM = 0.6  # each step starts from the last dictionary pushed on by this share of its last change


def learn_dictionary(x: torch.Tensor, init: torch.Tensor, iterations: int, lam: float) -> torch.Tensor:
    """Learn the (N, 3, 2) dictionary for samples ``x`` (N, 3, n), starting from ``init`` (N, 3, 2).

    Each step starts from the previous result extrapolated along its last change (``MOMENTUM``,
    projected back on the constraints): the same fixed point, usually in far fewer steps.
    """
    previous = start = init.contiguous()
    for _ in range(iterations):
        d = _step(x, start, lam)
        start = _project(d + MOMENTUM * (d - previous))
        previous = d
    return previous


def _step(x: torch.Tensor, d: torch.Tensor, lam: float) -> torch.Tensor:
    """Every pixel's concentrations for dictionary ``d``, then both atoms updated in turn."""
    dt = d.transpose(1, 2)  # batched matrix products: a step is dominated by the number of calls
    b = torch.bmm(dt, x)  # (N, 2, n): each atom . each pixel
    a = torch.stack(nonneg_lasso(b[:, 0], b[:, 1], torch.bmm(dt, d), lam), 1)  # (N, 2, n)
    at = a.transpose(1, 2)
    stats_a, stats_b = torch.bmm(a, at), torch.bmm(x, at)  # A = sum a a^T (N, 2, 2), B = sum x a^T (N, 3, 2)
    a11, a12, a22 = stats_a[:, 0, 0, None], stats_a[:, 0, 1, None], stats_a[:, 1, 1, None]
    d1 = _update_atom(d[:, :, 0], stats_b[:, :, 0] - d[:, :, 1] * a12, a11)
    d2 = _update_atom(d[:, :, 1], stats_b[:, :, 1] - d1 * a12, a22)
    return torch.stack([d1, d2], dim=2)


def _project(d: torch.Tensor) -> torch.Tensor:
    """Onto the constraints: non-negative atoms of length at most 1."""
    d = d.clamp(min=0)
    return d / d.norm(dim=1, keepdim=True).clamp_(min=1.0)


def _update_atom(d: torch.Tensor, residual: torch.Tensor, ajj: torch.Tensor) -> torch.Tensor:
    """One atom's exact minimiser with the other fixed, projected on {d >= 0, ||d|| <= 1}.

    ``residual`` is ``B_j - sum_{k != j} d_k A_kj``; an unused atom (``A_jj = 0``) stays as it is.
    """
    return _project(torch.where(ajj > 0, residual / ajj.clamp(min=1e-12), d))


def initial_dictionary(x: torch.Tensor, percentile: float = 5.0) -> torch.Tensor:
    """A starting dictionary (N, 3, 2) near the solution, for fewer steps: Macenko's estimate of the
    samples (the directions at the ``percentile``-th and ``100 - percentile``-th angle in the plane
    of their two main axes), made non-negative and of unit length."""
    n = x.shape[2]
    centred = x - x.mean(dim=2, keepdim=True)
    axes = torch.linalg.eigh(outer_sum(centred, centred) / max(n - 1, 1))[1][:, :, [2, 1]]  # (N, 3, 2)
    axes = axes * torch.where(axes.sum(1, keepdim=True) < 0, -1.0, 1.0)  # point into the positive octant
    projected = mix(axes.transpose(1, 2), x)  # (N, 2, n)
    angle = torch.atan2(projected[:, 1], projected[:, 0])
    k_low = max(1, round(percentile / 100 * n))
    low = angle.kthvalue(k_low, dim=1).values
    high = angle.kthvalue(max(1, n + 1 - k_low), dim=1).values
    ends = torch.stack([torch.stack([low.cos(), high.cos()], 1), torch.stack([low.sin(), high.sin()], 1)], 1)
    d = mix(axes, ends).clamp_(min=1e-3)  # (N, 3, 2)
    return d / d.norm(dim=1, keepdim=True)
