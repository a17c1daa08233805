"""Reinhard et al. 2001 colour transfer, as staintools does it, batched in torch.

Per image: L*a*b* in OpenCV's 8-bit convention (:mod:`histo.stain.lab`), in staintools' units
(L / 2.55, a - 128, b - 128); each channel's mean and standard deviation over the whole image mapped
to the target's; back to 8-bit L*a*b* (clipped, truncated as ``astype(np.uint8)``) and to RGB.
An image with too little tissue (which Reinhard would stretch into pink noise) or a flat channel
passes through unchanged.

Every channel holds whole 8-bit levels, so the statistics come exactly from a 256-bin histogram and
the mapping is a 256-entry table per channel, computed in float64 in staintools' order of
operations: the output equals staintools'.
"""

from __future__ import annotations

import torch

from histo.stain.lab import lab_to_rgb, rgb_to_lab
from histo.stain.normalizer import Measurement, StainNormalizer, register

_SCALE = torch.tensor([2.55, 1.0, 1.0])  # staintools' L*a*b* units from OpenCV's 8-bit ones
_OFFSET = torch.tensor([0.0, 128.0, 128.0])
MIN_STD = 1e-3  # a channel flatter than this (in L*a*b* units) cannot be rescaled


def levels(device: torch.device) -> torch.Tensor:
    """(3, 256) float64: staintools' value of each 8-bit level of L, a and b (computed in float32, as it does)."""
    k = torch.arange(256, dtype=torch.float32, device=device)[None]
    return ((k - _OFFSET.to(device)[:, None]) / _SCALE.to(device)[:, None]).double()


@register
class Reinhard(StainNormalizer):
    method = "reinhard"
    target_keys = ("means", "stds")
    target_dtype = torch.float64  # staintools maps in float64 (cv2.meanStdDev's statistics)

    def _measure(self, pixels: torch.Tensor) -> Measurement:
        little = self.tissue(pixels)[2]
        lab = rgb_to_lab(pixels)  # (N, 3, P) uint8
        n, _, p = lab.shape
        bins = torch.arange(3 * n, device=lab.device).view(n, 3, 1) * 256
        counts = torch.bincount((lab.int() + bins).flatten(), minlength=3 * n * 256).view(n, 3, 256).double()
        values = levels(lab.device)
        means = (counts * values).sum(2) / p
        stds = ((counts * (values - means[:, :, None]) ** 2).sum(2) / p).sqrt()  # population std, as cv2
        flat = (stds < MIN_STD).any(1)
        failed = ["little_tissue" if lt else "single_colour" if fl else None
                  for lt, fl in zip(little.tolist(), flat.tolist(), strict=True)]
        return Measurement({"means": means, "stds": stds, "lab": lab}, failed)

    def _map(self, pixels: torch.Tensor, source: Measurement, target: dict[str, torch.Tensor]) -> torch.Tensor:
        ratio = target["stds"] / source.values["stds"].clamp(min=MIN_STD)
        lab = source.values["lab"]
        # Each level's new value, in staintools' order of operations (the same float64 roundings).
        table = (levels(lab.device) - source.values["means"][:, :, None]) * ratio[:, :, None]
        table = (table + target["means"][:, :, None]) * _SCALE.to(lab.device, torch.float64)[:, None]
        table = (table + _OFFSET.to(lab.device, torch.float64)[:, None]).clamp_(0, 255).to(torch.uint8)
        return lab_to_rgb(table.gather(2, lab.long()))
