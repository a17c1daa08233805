"""Vahadane et al. 2016 stain normalization, as staintools does it, batched in torch.

Per image: optical density; tissue = pixels darker than the luminosity threshold; the 2x3 stain
matrix learned by sparse non-negative dictionary learning (:mod:`histo.stain.dictionary`) on a
fixed-size sample of tissue pixels, rows ordered haematoxylin first (the larger red optical
density, staintools' rule) and normalised; every pixel's concentrations by the non-negative Lasso
(:mod:`histo.stain.lasso`); each stain's concentrations scaled so that its 99th percentile over the
image equals the target's; back to RGB with the target's stain matrix.

Where staintools differs: spams learns the dictionary online for one wall-clock second from random
pixels, so its result changes run to run; here it is learned from ``samples`` tissue pixels spread
evenly over the image, starting from a Macenko estimate of the same pixels, for ``iterations``
full steps. Same pixels, same bytes, and many times faster (``scripts/bench_stain.py``).
"""

from __future__ import annotations

import torch

from histo.stain.dictionary import initial_dictionary, learn_dictionary
from histo.stain.lasso import nonneg_lasso
from histo.stain.linalg import mix
from histo.stain.normalizer import (
    MIN_MAX_CONCENTRATION,
    SINGLE_COLOUR_OD,
    Measurement,
    StainNormalizer,
    register,
)
from histo.stain.optical_density import from_od, to_od
from histo.stain.percentile import percentile


@register
class Vahadane(StainNormalizer):
    method = "vahadane"
    target_keys = ("stain_matrix", "max_concentrations")

    def __init__(self, samples: int = 8192, iterations: int = 15, regularizer: float = 0.1, lasso: float = 0.01,
                 **common):
        super().__init__(**common)
        if samples < 16 or iterations < 1:
            raise ValueError("stain.samples must be >= 16 and stain.iterations >= 1.")
        self.samples = int(samples)
        self.iterations = int(iterations)
        self.regularizer = float(regularizer)
        self.lasso = float(lasso)

    def stain_matrix(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list]:
        """(N, 2, 3) stain matrices (rows H, E: unit optical-density vectors) of uint8 (N, 3, P)
        pixels, and per image why it has none (or None)."""
        grid, tissue, little = self.tissue(pixels)
        x = to_od(_even_sample(grid, tissue, self.samples))  # (N, 3, n)
        single = x.std(dim=2).amax(dim=1) < SINGLE_COLOUR_OD
        d = learn_dictionary(x, initial_dictionary(x), self.iterations, self.regularizer)
        swap = d[:, 0, 0] < d[:, 0, 1]  # haematoxylin first: the larger red optical density
        d = torch.where(swap[:, None, None], d.flip(2), d)
        d = d / d.norm(dim=1, keepdim=True).clamp(min=1e-12)
        matrix = d.transpose(1, 2).contiguous()
        failed = ["little_tissue" if lt else "single_colour" if sc else None
                  for lt, sc in zip(little.tolist(), single.tolist(), strict=True)]
        return matrix, failed

    def concentrations(self, od: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """Concentrations (N, 2, P) (H, E) of optical densities (N, 3, P) for stain matrices (N, 2, 3)."""
        b = mix(matrix, od)
        return torch.stack(nonneg_lasso(b[:, 0], b[:, 1], mix(matrix, matrix.transpose(1, 2)), self.lasso), 1)

    def _measure(self, pixels: torch.Tensor) -> Measurement:
        matrix, failed = self.stain_matrix(pixels)
        conc = self.concentrations(to_od(pixels), matrix)
        max_conc = percentile(conc, 99)  # (N, 2)
        finite = torch.isfinite(matrix).flatten(1).all(1) & torch.isfinite(max_conc).all(1)
        absent = ~finite | (max_conc < MIN_MAX_CONCENTRATION).any(1)
        failed = [f or ("no_separation" if a else None) for f, a in zip(failed, absent.tolist(), strict=True)]
        return Measurement({"stain_matrix": matrix, "max_concentrations": max_conc, "concentrations": conc}, failed)

    def _map(self, pixels: torch.Tensor, source: Measurement, target: dict[str, torch.Tensor]) -> torch.Tensor:
        scale = target["max_concentrations"] / source.values["max_concentrations"].clamp(min=MIN_MAX_CONCENTRATION)
        return compose(source.values["concentrations"], target["stain_matrix"], scale)


def compose(conc: torch.Tensor, matrix: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, P) from concentrations (N, 2, P) times ``scale`` (N, 2) and stain matrices (N, 2, 3)."""
    k = (matrix * scale[:, :, None]).transpose(1, 2)  # (N, 3, 2): each stain's vector times its scale
    return from_od(mix(k, conc))


def _even_sample(grid: torch.Tensor, tissue: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` tissue pixels per image of ``grid`` (N, 3, M), evenly spaced in raster order among the
    tissue pixels (repeated when there are fewer): (N, 3, n) uint8, no randomness."""
    count = tissue.sum(1, keepdim=True).clamp(min=1)  # (N, 1)
    rank = torch.arange(n, device=grid.device)[None] * count // n  # (N, n): the k-th tissue pixel wanted
    cum = tissue.cumsum(1)  # (N, M): tissue pixels up to and including each position
    pos = torch.searchsorted(cum, rank + 1).clamp(max=grid.shape[2] - 1)
    return grid.gather(2, pos[:, None].expand(-1, 3, -1))
