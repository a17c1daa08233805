"""``none``: the normalizer that changes nothing (the interface's neutral element, e.g. for
``histo-stain method=none`` or code that always calls a normalizer)."""

from __future__ import annotations

import torch

from histo.stain.normalizer import Measurement, StainNormalizer, register
from histo.stain.target import StainTarget


@register
class Identity(StainNormalizer):
    method = "none"

    def __init__(self, **common):
        super().__init__(**common)
        self.set_target(StainTarget(self.method, {}))

    def _measure(self, pixels: torch.Tensor) -> Measurement:
        return Measurement({}, [None] * pixels.shape[0])

    def _map(self, pixels: torch.Tensor, source: Measurement, target: dict[str, torch.Tensor]) -> torch.Tensor:
        return pixels.clone()
