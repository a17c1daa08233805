"""The paper's flips, rotation and translation on a batch, on whatever device the batch is on.

``augment.run_on=device`` moves these augmentations from the loader workers (albumentations, one image
at a time on a CPU core) to the batch after it reaches the accelerator: one ``grid_sample`` per
batch. :class:`BatchAugment` draws its parameters per image exactly as
:func:`histo.data.transforms.augmentations` does (flip probabilities, a uniform angle, a uniform
share of each side truncated to whole pixels as albumentations' ``Affine`` does) and maps pixels
with the same geometry as albumentations + OpenCV: pixel centres at integer coordinates, rotation
about ``(W/2 - 0.5, H/2 - 0.5)``, flips before the affine map, and the same border conventions
(``reflect`` = OpenCV's BORDER_REFLECT, the edge pixel repeated, is ``grid_sample``'s reflection
with ``align_corners=False``; ``reflect_101`` is reflection with ``align_corners=True``). The
output is rounded to whole levels, as OpenCV's uint8 output is, so the network sees the same kind
of input either way. Stain jitter is not geometric and stays in the loader.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

PLACES = ("loader", "device")
# augment.border -> (grid_sample padding_mode, align_corners)
BORDERS = {
    "reflect": ("reflection", False),
    "reflect_101": ("reflection", True),
    "constant": ("zeros", False),
    "replicate": ("border", False),
}
MODES = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic"}


@dataclass(frozen=True)
class AffineParams:
    """Per image (leading dimension N): flips (bool), angle (degrees) and shift (whole pixels)."""

    hflip: torch.Tensor
    vflip: torch.Tensor
    angle: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor


@dataclass(frozen=True)
class BatchAugment:
    """Random flips (probabilities ``hflip``, ``vflip``), rotation (uniform in ``[-rotate, rotate]``
    degrees) and translation (uniform in ``[-translate, translate]`` of each side, x and y drawn
    independently) of a uint8 (N, 3, H, W) batch; the keys of ``conf/augment/*.yaml``."""

    hflip: float = 0.0
    vflip: float = 0.0
    rotate: float = 0.0
    translate: float = 0.0
    border: str = "reflect"
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.border not in BORDERS:
            raise ValueError(f"augment.border={self.border!r} is not available with augment.run_on=device; use one of "
                             f"{', '.join(BORDERS)}, or augment.run_on=loader.")
        if self.interpolation not in MODES:
            raise ValueError(f"augment.interpolation={self.interpolation!r} is not available with augment.run_on=device; "
                             f"use one of {', '.join(MODES)}, or augment.run_on=loader.")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def active(self) -> bool:
        return bool(self.hflip or self.vflip or self.rotate or self.translate)

    def draw(self, n: int, height: int, width: int, device: torch.device | str = "cpu",
             generator: torch.Generator | None = None) -> AffineParams:
        """Parameters for ``n`` images of ``height`` x ``width``, from ``generator`` (default: torch's
        global generator of ``device``, which ``seed_everything`` seeds)."""

        def uniform(bound: float) -> torch.Tensor:
            return (torch.rand(n, device=device, generator=generator) * 2 - 1) * bound

        return AffineParams(
            hflip=torch.rand(n, device=device, generator=generator) < self.hflip,
            vflip=torch.rand(n, device=device, generator=generator) < self.vflip,
            angle=uniform(self.rotate),
            tx=torch.trunc(uniform(self.translate) * width),  # albumentations: int(share * width)
            ty=torch.trunc(uniform(self.translate) * height),
        )

    def apply(self, images: torch.Tensor, params: AffineParams) -> torch.Tensor:
        """uint8 or float (N, C, H, W) in 0-255 to float (N, C, H, W) whole levels in 0-255."""
        n, _, h, w = images.shape
        grid = _sampling_grid(params, h, w, self.border, images.device)
        padding, align = BORDERS[self.border]
        out = F.grid_sample(images.float(), grid, mode=MODES[self.interpolation], padding_mode=padding,
                            align_corners=align)
        return out.round_().clamp_(0, 255)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random draw per image of the batch (float output, see :meth:`apply`)."""
        if not self.active:
            return images.float()
        n, _, h, w = images.shape
        return self.apply(images, self.draw(n, h, w, images.device, generator))


def from_config(augment: dict | None) -> BatchAugment | None:
    """The batch augmentation of an ``augment`` config when ``augment.run_on`` is ``device``, else None."""
    augment = dict(augment or {})
    run_on = augment.get("run_on", "loader")
    if run_on not in PLACES:
        raise ValueError(f"augment.run_on={run_on!r} is not valid; use loader (albumentations in the loader workers) or "
                         "device (on the batch after it reaches the accelerator).")
    if run_on != "device":
        return None
    keys = BatchAugment.__dataclass_fields__
    return BatchAugment(**{k: v for k, v in augment.items() if k in keys})


def _sampling_grid(params: AffineParams, h: int, w: int, border: str, device) -> torch.Tensor:
    """For each output pixel, where to read in the input, as ``grid_sample`` wants it (N, H, W, 2).

    albumentations' Affine maps an input point p to ``c + t + R (p - c)``, with ``c`` the centre
    ``(W/2 - 0.5, H/2 - 0.5)`` and ``R = [[cos, sin], [-sin, cos]]``; an output pixel q therefore
    reads ``c + R^T (q - c - t)``, and a flip done before that reads the mirrored point.
    """
    dtype = torch.float32
    ys = torch.arange(h, device=device, dtype=dtype).view(1, h, 1)
    xs = torch.arange(w, device=device, dtype=dtype).view(1, 1, w)
    cx, cy = w / 2 - 0.5, h / 2 - 0.5
    theta = params.angle.to(dtype) * (math.pi / 180)
    cos, sin = theta.cos().view(-1, 1, 1), theta.sin().view(-1, 1, 1)
    dx = xs - cx - params.tx.to(dtype).view(-1, 1, 1)
    dy = ys - cy - params.ty.to(dtype).view(-1, 1, 1)
    sx = cx + cos * dx - sin * dy
    sy = cy + sin * dx + cos * dy
    sx = torch.where(params.hflip.view(-1, 1, 1), (w - 1) - sx, sx)
    sy = torch.where(params.vflip.view(-1, 1, 1), (h - 1) - sy, sy)
    if BORDERS[border][1]:  # align_corners=True: -1 and 1 are the centres of the corner pixels
        gx, gy = sx * (2 / (w - 1)) - 1, sy * (2 / (h - 1)) - 1
    else:  # align_corners=False: -1 and 1 are the outer edges of the corner pixels
        gx, gy = (2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1
    return torch.stack([gx, gy], dim=-1)
