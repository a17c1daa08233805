"""Macenko et al. 2009 stain normalization in torchstain's convention, batched in torch.

Conventions differ between libraries (staintools and torchstain outputs differ by about 6 levels);
this follows torchstain's ``TorchMacenkoNormalizer`` (itself a port of the reference MATLAB code):
optical density ``-log((I + 1) / io)`` with ``io = 240``; tissue = pixels whose optical density is at
least ``beta = 0.15`` in every channel; the plane of the two largest eigenvectors of their
covariance; the stain vectors at the ``alpha``-th and ``100 - alpha``-th percentiles of the angle
in that plane (nearest rank), the one with the larger red component first (haematoxylin);
concentrations by least squares (so they can be negative); the 99th percentile (nearest rank) of
each stain's concentrations scaled to the target's; ``min(io * exp(-OD), 255)`` truncated to uint8.
One difference, for speed: the stain vectors are estimated on a grid of about 32,768 of the image's
pixels (all of a smaller image, and all of an image with few pixels above beta) rather than on
every pixel, which moves the output by about a quarter of a level on BreaKHis images
(``scripts/bench_stain.py``).
"""

from __future__ import annotations

import math

import torch

from histo.stain.linalg import mix
from histo.stain.normalizer import (
    GRID_PIXELS,
    MIN_MAX_CONCENTRATION,
    MIN_TISSUE_PIXELS,
    SINGLE_COLOUR_OD,
    Measurement,
    StainNormalizer,
    register,
)
from histo.stain.optical_density import lookup
from histo.stain.percentile import nearest_rank


@register
class Macenko(StainNormalizer):
    method = "macenko"
    target_keys = ("stain_matrix", "max_concentrations")

    def __init__(self, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15, **common):
        super().__init__(**common)
        if not 0 <= alpha < 50:
            raise ValueError(f"stain.alpha={alpha} must be a percentile in [0, 50).")
        self.io = float(io)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def od_table(self, device: torch.device) -> torch.Tensor:
        """Each 8-bit level's ``-log((I + 1) / io)``, float32, computed as torchstain computes it."""
        return -torch.log((torch.arange(256, dtype=torch.float32, device=device) + 1) / self.io)

    def optical_density(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 to float32 ``-log((I + 1) / io)``, same shape."""
        return lookup(self.od_table(pixels.device), pixels)

    def stain_matrix(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list]:
        """(N, 2, 3) stain matrices (rows H, E) of uint8 pixels (N, 3, P), and per image why it has
        none (or None). Estimated on the tissue grid (every s-th pixel, about 32,768 of them), or on
        every pixel when fewer than a quarter of the grid's are above ``beta``; one image at a time,
        as each has its own number of pixels above ``beta``."""
        grid, _, little = self.tissue(pixels)
        # torchstain's pixels: optical density >= beta in every channel, i.e. every channel at most
        # the brightest level whose (float32) optical density is >= beta.
        dark = (self.od_table(pixels.device) >= self.beta).nonzero()
        brightest = int(dark.max()) if len(dark) else -1
        chosen = grid.amax(dim=1) <= brightest  # (N, M)
        little = little | (chosen.sum(1) < MIN_TISSUE_PIXELS)
        counts = chosen.sum(1).tolist()
        matrices, failed = [], []
        for i in range(grid.shape[0]):
            if little[i]:
                matrix, reason = None, "little_tissue"
            elif counts[i] < GRID_PIXELS // 4:  # few dark pixels: use all of the image's, as torchstain
                matrix, reason = self._one_matrix(self.optical_density(pixels[i][:, pixels[i].amax(0) <= brightest]))
            else:
                matrix, reason = self._one_matrix(self.optical_density(grid[i][:, chosen[i]]))
            matrices.append(matrix if matrix is not None else torch.zeros(2, 3, device=pixels.device))
            failed.append(reason)
        return torch.stack(matrices), failed

    def _one_matrix(self, od: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
        """The stain matrix of one image's tissue optical densities (3, n)."""
        centred = od - od.mean(dim=1, keepdim=True)
        cov = centred @ centred.T / (od.shape[1] - 1)
        if not torch.isfinite(cov).all():
            return None, "no_separation"
        if cov.diagonal().amax() < SINGLE_COLOUR_OD**2:
            return None, "single_colour"
        plane = torch.linalg.eigh(cov)[1][:, [1, 2]]  # the two largest, ascending as eigh returns them
        projected = plane.T @ od  # (2, n)
        phi = torch.atan2(projected[1], projected[0])
        low, high = nearest_rank(phi, self.alpha), nearest_rank(phi, 100 - self.alpha)
        v_min = plane @ torch.stack([torch.cos(low), torch.sin(low)])
        v_max = plane @ torch.stack([torch.cos(high), torch.sin(high)])
        matrix = torch.stack([v_min, v_max]) if v_min[0] > v_max[0] else torch.stack([v_max, v_min])
        return matrix, None

    def concentrations(self, od: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """Least-squares concentrations (N, 2, P) of optical densities (N, 3, P): ``(M M^T)^-1 M od``."""
        gram = mix(matrix, matrix.transpose(1, 2))  # (N, 2, 2)
        g11, g12, g22 = gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 1]
        det = g11 * g22 - g12 * g12
        inverse = torch.stack([torch.stack([g22, -g12], 1), torch.stack([-g12, g11], 1)], 1)
        inverse = inverse / torch.where(det.abs() > 1e-12, det, torch.ones_like(det))[:, None, None]
        return mix(mix(inverse, matrix), od)

    def _measure(self, pixels: torch.Tensor) -> Measurement:
        matrix, failed = self.stain_matrix(pixels)
        od = self.optical_density(pixels)
        conc = self.concentrations(od, matrix)
        max_conc = nearest_rank(conc, 99)  # (N, 2)
        gram = mix(matrix, matrix.transpose(1, 2))
        gram_det = gram[:, 0, 0] * gram[:, 1, 1] - gram[:, 0, 1] * gram[:, 1, 0]
        good = torch.isfinite(max_conc).all(1) & (max_conc >= MIN_MAX_CONCENTRATION).all(1) & (gram_det > 1e-6)
        failed = [f or (None if g else "no_separation") for f, g in zip(failed, good.tolist(), strict=True)]
        return Measurement({"stain_matrix": matrix, "max_concentrations": max_conc, "concentrations": conc}, failed)

    def _map(self, pixels: torch.Tensor, source: Measurement, target: dict[str, torch.Tensor]) -> torch.Tensor:
        scale = target["max_concentrations"] / source.values["max_concentrations"].clamp(min=MIN_MAX_CONCENTRATION)
        k = (target["stain_matrix"] * -scale[:, :, None]).transpose(1, 2)  # (N, 3, 2), negated
        log_out = mix(k, source.values["concentrations"]).add_(math.log(self.io))  # log(io * exp(-OD))
        return log_out.exp_().clamp_(0.0, 255.0).to(torch.uint8)
