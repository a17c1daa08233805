"""Stain augmentation: random perturbation of an image's haematoxylin and eosin concentrations.

As staintools' ``StainAugmentor`` (after Tellez et al. 2018): separate the image's own stains
(Vahadane: its stain matrix and each pixel's concentrations), multiply each stain's concentrations
by a factor drawn from ``[1 - scale, 1 + scale]`` and add a shift drawn from ``[-shift, shift]``.
Unlike staintools, the change is added to the pixel's optical density rather than replacing it by
the recomposed stains, so what the two stains do not explain is kept and factor 1, shift 0 give
back the image. An image whose stains cannot be separated (too little tissue, one colour) is left
unchanged. An albumentations transform: its random draws come from its seeded random state.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field

from histo.stain.linalg import mix
from histo.stain.normalizer import cpu_threads
from histo.stain.optical_density import to_od
from histo.stain.vahadane import Vahadane


class StainJitter(A.ImageOnlyTransform):
    """Jitter the H and E concentrations of a uint8 RGB (H, W, 3) image (``augment.stain_jitter``)."""

    class InitSchema(BaseTransformInitSchema):
        scale: float = Field(ge=0, lt=1)
        shift: float = Field(ge=0)

    def __init__(self, scale: float = 0.2, shift: float = 0.05, p: float = 0.5):
        super().__init__(p=p)
        self.scale = scale
        self.shift = shift
        self._separator = Vahadane()

    def get_params(self) -> dict[str, Any]:
        factors = [self.py_random.uniform(1 - self.scale, 1 + self.scale) for _ in range(2)]
        shifts = [self.py_random.uniform(-self.shift, self.shift) for _ in range(2)]
        return {"factors": factors, "shifts": shifts}

    def apply(self, img: np.ndarray, factors: list[float], shifts: list[float], **params: Any) -> np.ndarray:
        return jitter(img, self._separator, factors, shifts)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "shift")


def jitter(image: np.ndarray, separator: Vahadane, factors: list[float], shifts: list[float]) -> np.ndarray:
    """``image`` (uint8 (H, W, 3)) with each stain's concentrations ``c`` moved to
    ``max(c * factor + shift, 0)``; unchanged when its stains cannot be separated."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).reshape(1, 3, -1)
    with torch.no_grad(), cpu_threads(separator.threads, pixels.device):
        matrix, failed = separator.stain_matrix(pixels)
        if failed[0] or not torch.isfinite(matrix).all():
            return image
        od = to_od(pixels)
        conc = separator.concentrations(od, matrix)
        factor = torch.tensor(factors, dtype=od.dtype)[None, :, None]
        shift = torch.tensor(shifts, dtype=od.dtype)[None, :, None]
        change = (conc * factor + shift).clamp_(min=0) - conc
        od = (od + mix(matrix.transpose(1, 2), change)).clamp_(min=0)
        out = od.neg_().exp_().mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(out.reshape(3, *image.shape[:2]).permute(1, 2, 0).numpy())
