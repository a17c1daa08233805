"""Image transforms (albumentations): the paper's squash resize and augmentation.

Everything stays uint8; normalisation to the model's mean/std happens on the device
(:meth:`histo.models.Classifier.preprocess`). With ``augment.run_on=device`` the flips, rotation and
translation run there too (:mod:`histo.data.device_augment`) and only stain jitter stays here. When
the images come from the image cache (:mod:`histo.data.cache`) they are already at the model's size
and ``resized=True`` leaves the resize out.
"""

from __future__ import annotations

import albumentations as A
import cv2

from histo.data.device_augment import PLACES
from histo.stain.jitter import StainJitter

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}
BORDERS = {"reflect": cv2.BORDER_REFLECT, "reflect_101": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT,
           "replicate": cv2.BORDER_REPLICATE, "wrap": cv2.BORDER_WRAP}


def resize(size: int, interpolation: str = "bilinear") -> A.Resize:
    """Squash the whole image to size x size (aspect ratio not kept, no crop), as the paper."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"data.interpolation={interpolation!r} is not valid; use one of {', '.join(INTERPOLATIONS)}.")
    return A.Resize(size, size, interpolation=INTERPOLATIONS[interpolation])


def eval_transform(size: int, interpolation: str = "bilinear", resized: bool = False) -> A.Compose:
    """The resize alone (nothing when the images are already ``resized``, e.g. from the image cache)."""
    return A.Compose(_resizes(size, interpolation, resized))


def train_transform(size: int, interpolation: str = "bilinear", augment: dict | None = None,
                    resized: bool = False) -> A.Compose:
    """Resize (unless ``resized``), then the loader's augmentations of ``augment`` (a ``conf/augment`` option)."""
    return A.Compose([*_resizes(size, interpolation, resized), *augmentations(**(augment or {}))])


def _resizes(size: int, interpolation: str, resized: bool) -> list[A.BasicTransform]:
    return [] if resized else [resize(size, interpolation)]


def augmentations(
    name: str = "custom",
    hflip: float = 0.0,
    vflip: float = 0.0,
    rotate: float = 0.0,
    translate: float = 0.0,
    border: str = "reflect",
    interpolation: str = "bilinear",
    stain_jitter: dict | None = None,
    run_on: str = "loader",
    **unused,
) -> list[A.BasicTransform]:
    """The training augmentations of ``conf/augment/*.yaml`` that run in the loader.

    ``rotate`` is the largest angle in degrees (uniform in [-rotate, rotate]) and ``translate`` the
    largest shift as a share of each side, drawn independently for x and y, as Keras'
    RandomRotation(0.1) (= 36 degrees) and RandomTranslation(0.3, 0.3) in the paper.
    ``stain_jitter`` (``{p, scale, shift}``) adds :class:`histo.stain.jitter.StainJitter` first.
    ``run_on="device"`` leaves the flips, rotation and translation to
    :class:`histo.data.device_augment.BatchAugment` (the batch on the accelerator); stain jitter stays.
    """
    if border not in BORDERS:
        raise ValueError(f"augment.border={border!r} is not valid; use one of {', '.join(BORDERS)}.")
    if run_on not in PLACES:
        raise ValueError(f"augment.run_on={run_on!r} is not valid; use one of {', '.join(PLACES)}.")
    out: list[A.BasicTransform] = []
    if stain_jitter:
        out.append(StainJitter(**stain_jitter))
    if run_on == "device":
        return out
    if hflip:
        out.append(A.HorizontalFlip(p=hflip))
    if vflip:
        out.append(A.VerticalFlip(p=vflip))
    if rotate or translate:
        out.append(
            A.Affine(
                rotate=(-rotate, rotate),
                translate_percent={"x": (-translate, translate), "y": (-translate, translate)},
                interpolation=INTERPOLATIONS[interpolation],
                border_mode=BORDERS[border],
                p=1.0,
            )
        )
    return out
