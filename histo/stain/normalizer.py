"""The stain normalizer interface: fit on one or more target images, then map uint8 RGB batches
(N, 3, H, W) to the target's stain appearance on whatever device they are on.

An image that cannot be normalized (too little tissue, a single colour, stains that cannot be
separated) passes through unchanged and is counted by reason, never an exception or a NaN, unless
``on_failure="raise"``. A method implements two steps: :meth:`StainNormalizer._measure` (per image:
the stain description and whether it failed) and :meth:`StainNormalizer._map` (source to target),
and is registered with :func:`register` under its ``method`` name (its ``conf/stain/<method>.yaml``).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from histo.command import UserError
from histo.stain.lab import luminosity
from histo.stain.target import StainTarget

log = logging.getLogger(__name__)

ON_FAILURE = ("pass", "raise")
# Why an image passed through unchanged (the keys are what the counts and logs show).
REASONS = {
    "little_tissue": "too little tissue (darker than stain.luminosity_threshold) for stain.min_tissue",
    "single_colour": "the tissue has a single colour, so there are no two stains to separate",
    "no_separation": "the stains could not be separated (a stain is absent or the estimate is degenerate)",
}
MIN_TISSUE_PIXELS = 64  # fewer tissue pixels than this never make a stain estimate
SINGLE_COLOUR_OD = 0.02  # tissue whose optical density varies less than this (std) is a single colour
MIN_MAX_CONCENTRATION = 1e-3  # a stain whose 99th-percentile concentration is below this is absent
GRID_PIXELS = 32768  # tissue is judged and sampled on a grid of about this many pixels
METHODS: dict[str, type[StainNormalizer]] = {}  # method name -> class, filled by @register


class StainError(UserError, RuntimeError):
    """An image or target that cannot be normalized, when the configuration says that is an error."""


@dataclass
class Measurement:
    """Per image (leading dimension N): the named stain values, and the reason each image cannot be
    normalized (a key of :data:`REASONS`) or None."""

    values: dict[str, torch.Tensor]
    failed: list[str | None]


class StainNormalizer(ABC):
    """Fit with :meth:`fit` (or :meth:`set_target` with a saved :class:`StainTarget`), then
    :meth:`transform` uint8 (N, 3, H, W) batches or call it on one uint8 (H, W, 3) numpy image.

    ``counts`` tallies, since construction, the images normalized and those passed through by reason.
    """

    method: ClassVar[str]
    target_keys: ClassVar[tuple[str, ...]] = ()
    target_dtype: ClassVar[torch.dtype] = torch.float32

    def __init__(self, on_failure: str = "pass", luminosity_threshold: float = 0.8, min_tissue: float = 0.05,
                 threads: int | None = 1):
        if on_failure not in ON_FAILURE:
            raise ValueError(f"stain.on_failure={on_failure!r} is not valid; use one of {', '.join(ON_FAILURE)}.")
        if not 0 < luminosity_threshold <= 1 or not 0 <= min_tissue <= 1:
            raise ValueError("stain.luminosity_threshold must be in (0, 1] and stain.min_tissue in [0, 1].")
        self.on_failure = on_failure
        self.luminosity_threshold = float(luminosity_threshold)
        self.min_tissue = float(min_tissue)
        self.target: StainTarget | None = None
        self.counts: Counter = Counter()
        self.threads = threads
        self._target_cache: dict[torch.device, dict[str, torch.Tensor]] = {}

    @property
    def options(self) -> dict:
        """The settings this normalizer was built with (recorded with a fitted target)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in ("target", "counts", "threads")}

    # ----- target -----

    def fit(self, images, source: Sequence[str] = ()) -> StainNormalizer:
        """Fit the target on one or more uint8 RGB images (numpy (H, W, 3) or torch (3, H, W) /
        (N, 3, H, W)), pooled as one. ``source`` names them for the record. Raises :class:`StainError`
        when the target itself cannot be measured (pick another target image)."""
        pixels = _pool(images)
        with torch.no_grad(), cpu_threads(self.threads, pixels.device):
            measured = self._measure(pixels)
        if measured.failed[0]:
            names = ", ".join(source) or "the given image(s)"
            raise StainError(
                f"Cannot fit the {self.method} stain target on {names}: {REASONS[measured.failed[0]]}. "
                "Choose another target image (stain.target)."
            )
        values = {k: measured.values[k][0].double().cpu().tolist() for k in self.target_keys}
        return self.set_target(StainTarget(self.method, values, self.options, [str(s) for s in source]))

    def set_target(self, target: StainTarget) -> StainNormalizer:
        if target.method != self.method:
            raise ValueError(f"The stain target is for {target.method!r}, this normalizer is {self.method!r}.")
        missing = set(self.target_keys) - set(target.values)
        if missing:
            raise ValueError(f"The {self.method} stain target lacks {sorted(missing)}.")
        self.target = target
        self._target_cache = {}
        return self

    def _target_values(self, device: torch.device) -> dict[str, torch.Tensor]:
        if self.target is None:
            raise StainError(f"The {self.method} normalizer has no target: call fit() or set_target() first.")
        if device not in self._target_cache:
            self._target_cache[device] = {k: self.target.tensor(k, device, self.target_dtype)[None] for k in self.target_keys}
        return self._target_cache[device]

    # ----- transform -----

    def normalize(self, images: torch.Tensor, names: Sequence[str] | None = None) -> tuple[torch.Tensor, list]:
        """uint8 (N, 3, H, W) to uint8 (N, 3, H, W) on the same device, and per image the reason it
        passed through unchanged (a key of :data:`REASONS`) or None. Same input, same bytes."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected a uint8 (N, 3, H, W) RGB batch, got {tuple(images.shape)} {images.dtype}.")
        target = self._target_values(images.device)
        n = images.shape[0]
        if n == 0:
            return images.clone(), []
        pixels = images.reshape(n, 3, -1)
        with torch.no_grad(), cpu_threads(self.threads, images.device):
            measured = Measurement({}, ["little_tissue"] * n) if pixels.shape[2] == 0 else self._measure(pixels)
            failed = measured.failed
            self._account(failed, names)
            if all(failed):
                return images.clone(), failed
            out = self._map(pixels, measured, target)
        if any(failed):
            ok = torch.tensor([f is None for f in failed], device=images.device)
            out = torch.where(ok[:, None, None], out, pixels)
        return out.reshape(images.shape), failed

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) to uint8 (N, 3, H, W): :meth:`normalize` without the reasons."""
        return self.normalize(images)[0]

    def normalize_image(self, image: np.ndarray, name: str | None = None) -> tuple[np.ndarray, str | None]:
        """One uint8 RGB (H, W, 3) numpy image to the same, on the CPU, and why it was left unchanged
        (a key of ``REASONS``) or None."""
        batch = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        out, failed = self.normalize(batch, names=[name] if name else None)
        return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy()), failed[0]

    def __call__(self, image: np.ndarray, name: str | None = None) -> np.ndarray:
        """:meth:`normalize_image` for the dataset: an image passed through unchanged is logged with ``name``."""
        out, reason = self.normalize_image(image, name)
        if reason:
            log.warning("Stain normalization (%s) left %s unchanged: %s.", self.method, name or "an image",
                        REASONS[reason])
        return out

    def _account(self, failed: list, names: Sequence[str] | None) -> None:
        self.counts["normalized"] += sum(f is None for f in failed)
        self.counts.update(f for f in failed if f)
        if self.on_failure == "raise" and any(failed):
            i = next(i for i, f in enumerate(failed) if f)
            name = names[i] if names else f"image {i} of the batch"
            raise StainError(
                f"Stain normalization ({self.method}) cannot normalize {name}: {REASONS[failed[i]]}. "
                "stain.on_failure=raise makes this an error; stain.on_failure=pass leaves such images unchanged."
            )

    # ----- what a method implements -----

    @abstractmethod
    def _measure(self, pixels: torch.Tensor) -> Measurement:
        """Per image of uint8 ``pixels`` (N, 3, P): the values named in ``target_keys`` (plus any
        intermediate :meth:`_map` needs) and whether it can be normalized."""

    @abstractmethod
    def _map(self, pixels: torch.Tensor, source: Measurement, target: dict[str, torch.Tensor]) -> torch.Tensor:
        """uint8 (N, 3, P) with their measurement to uint8 (N, 3, P) in the target's appearance."""

    # ----- shared helpers -----

    def tissue(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tissue on a grid of every s-th pixel of uint8 (N, 3, P) (about ``GRID_PIXELS`` of them: enough
        to judge and to sample, for a fraction of the cost): the grid (N, 3, M), its tissue mask
        (N, M) (darker than ``luminosity_threshold``, staintools' rule) and (N,) whether an image has
        too little (fewer than ``MIN_TISSUE_PIXELS`` or a share below ``min_tissue``)."""
        step = max(1, pixels.shape[2] // GRID_PIXELS)
        grid = pixels[:, :, ::step]
        mask = luminosity(grid) < self.luminosity_threshold
        count = mask.sum(1)
        little = (count * step < MIN_TISSUE_PIXELS) | (count < self.min_tissue * mask.shape[1])
        return grid, mask, little


def register(cls: type[StainNormalizer]) -> type[StainNormalizer]:
    """Class decorator: the stain method ``cls.method`` is ``cls`` (in :data:`METHODS`), so a method is
    declared once, by its class; importing :mod:`histo.stain` imports every module of the package."""
    if METHODS.get(cls.method, cls) is not cls:
        raise TypeError(f"Stain method {cls.method!r} is registered twice: {METHODS[cls.method].__name__} "
                        f"and {cls.__name__}; give one another method name.")
    METHODS[cls.method] = cls
    return cls


@contextmanager
def cpu_threads(threads: int | None, device: torch.device):
    """Run torch's CPU operations on ``threads`` intra-op threads (None: as they are), then restore.

    A normalizer makes many operations on tensors of a few hundred kilobytes. With a second
    thread each becomes a parallel region, and on a machine whose other cores are busy (another
    process, DataLoader workers) every region waits for a descheduled peer: measured on two cores,
    an image took 1 s instead of 20 ms. One thread avoids that; DataLoader workers use one anyway.
    """
    if threads is None or device.type != "cpu" or torch.get_num_threads() == threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pool(images) -> torch.Tensor:
    """One or more uint8 RGB images, any sizes, as one (1, 3, P) batch of all their pixels."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        images = [images] if images.ndim == 3 else list(images)
    parts = []
    for image in images:
        if isinstance(image, np.ndarray):  # numpy images are (H, W, 3), as decoded
            ok = image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1) if ok else None
        else:  # tensors are (3, H, W), as batches
            ok = image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
            t = image
        if not ok:
            raise ValueError(f"A stain target must be uint8 RGB, numpy (H, W, 3) or torch (3, H, W); got "
                             f"{type(image).__name__} {tuple(image.shape)} {image.dtype}.")
        parts.append(t.reshape(3, -1).cpu())
    if not parts:
        raise ValueError("No target images to fit the stain normalizer on.")
    return torch.cat(parts, dim=1)[None]
