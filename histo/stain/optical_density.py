"""Optical density (Beer-Lambert): ``OD = -log(I / 255)``, where stains add up linearly.

The conventions are staintools': a zero pixel counts as 1 and OD is at least 1e-6; back from OD,
``255 * exp(-OD)`` is truncated to uint8 (``astype(np.uint8)``). Float32 throughout.
"""

from __future__ import annotations

import functools

import torch


def to_od(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB of any shape to float32 optical density of the same shape (a 256-entry table)."""
    return lookup(od_table(images.device), images)


@functools.cache
def od_table(device: torch.device) -> torch.Tensor:
    """The optical density of each 8-bit level, float32 on ``device``."""
    level = torch.arange(256, dtype=torch.float64).clamp(min=1.0)
    return (-torch.log(level / 255.0)).clamp(min=1e-6).float().to(device)


def lookup(table: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``table[images]`` for uint8 images of any shape (``index_select``: the fastest gather)."""
    return table.index_select(0, images.reshape(-1).int()).view(images.shape)


def from_od(od: torch.Tensor) -> torch.Tensor:
    """Float optical density (>= 0) to uint8 RGB, in place on ``od``: ``uint8(255 * exp(-od))``."""
    return od.neg_().exp_().mul_(255.0).clamp_(0.0, 255.0).to(torch.uint8)
