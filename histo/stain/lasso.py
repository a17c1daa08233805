"""The non-negative Lasso for two stains, solved exactly per pixel.

For a pixel's optical density ``x`` and a stain dictionary ``D`` (3 x 2), the concentrations are

    argmin_{a >= 0}  0.5 * ||x - D a||^2 + lam * (a_1 + a_2)

which is what spams' ``lasso(..., mode=2, pos=True)`` computes (staintools' concentrations). With two
unknowns it is a 2x2 problem: the solution is the unconstrained one when both entries are
non-negative, else the best one-stain solution, else zero. Closed form, vectorised, no iterations.
"""

from __future__ import annotations

import torch


def nonneg_lasso(b1: torch.Tensor, b2: torch.Tensor, gram: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Concentrations ``(a1, a2)``, each (N, P), from the correlations ``b_j = d_j . x`` (N, P) and
    the Gram matrices ``G = D^T D`` (N, 2, 2)."""
    g11, g12, g22 = gram[:, 0, 0, None], gram[:, 0, 1, None], gram[:, 1, 1, None]  # (N, 1)
    det = (g11 * g22 - g12 * g12).clamp(min=1e-12)
    c1, c2 = b1 - lam, b2 - lam
    full1 = torch.addcmul((-g12 / det) * c2, g22 / det, c1)  # the unconstrained solution, G^-1 c
    full2 = torch.addcmul((-g12 / det) * c1, g11 / det, c2)
    single1 = c1.clamp(min=0) / g11.clamp(min=1e-12)  # haematoxylin alone, eosin 0
    single2 = c2.clamp(min=0) / g22.clamp(min=1e-12)
    first = g12 * single1 >= c2  # eosin 0 is optimal when its gradient is non-negative there
    both = (full1 >= 0) & (full2 >= 0)
    return torch.where(both, full1, single1 * first), torch.where(both, full2, single2 * ~first)
