"""Image transforms (albumentations): the paper's squash resize and augmentation.

Everything stays uint8; normalisation to the model's mean/std happens on the device
(:meth:`histo.models.Classifier.preprocess`).
"""

from __future__ import annotations

import albumentations as A
import cv2

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


def eval_transform(size: int, interpolation: str = "bilinear") -> A.Compose:
    return A.Compose([resize(size, interpolation)])


def train_transform(size: int, interpolation: str = "bilinear", augment: dict | None = None) -> A.Compose:
    """Resize, then the augmentations of ``augment`` (a ``conf/augment`` option)."""
    return A.Compose([resize(size, interpolation), *augmentations(**(augment or {}))])


def augmentations(
    name: str = "custom",
    hflip: float = 0.0,
    vflip: float = 0.0,
    rotate: float = 0.0,
    translate: float = 0.0,
    border: str = "reflect",
    interpolation: str = "bilinear",
    stain_jitter: dict | None = None,
    **unused,
) -> list[A.BasicTransform]:
    """The training augmentations of ``conf/augment/*.yaml``.

    ``rotate`` is the largest angle in degrees (uniform in [-rotate, rotate]) and ``translate`` the
    largest shift as a share of each side, drawn independently for x and y, as Keras'
    RandomRotation(0.1) (= 36 degrees) and RandomTranslation(0.3, 0.3) in the paper.
    ``stain_jitter`` (``{p, scale, shift}``) adds :class:`histo.stain.jitter.StainJitter` first.
    """
    if border not in BORDERS:
        raise ValueError(f"augment.border={border!r} is not valid; use one of {', '.join(BORDERS)}.")
    out: list[A.BasicTransform] = []
    if stain_jitter:
        out.append(StainJitter(**stain_jitter))
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
