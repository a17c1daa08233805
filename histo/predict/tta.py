"""Test-time augmentation: the views of a square batch that a prediction averages over.

``none`` is the image itself; ``flips`` the four images of the training augmentation's flips (none,
horizontal, vertical, both); ``d4`` all eight symmetries of the square (the four rotations by 90
degrees, each also mirrored). Views are exact pixel permutations of the model input (no resampling),
made on the uint8 batch after stain normalization and resizing, so they cost only the forward passes.

The average is over **probabilities**: each view's softmax, then the mean. That is what the soft
ensemble does with its members, it keeps every view's vote bounded (one view with an extreme logit
cannot dominate, as it can in a mean of logits), and it makes the TTA output an ordinary probability.
"""

from __future__ import annotations

import torch

TTA = {"none": 1, "flips": 4, "d4": 8}  # name -> number of views


def views(images: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The views of a (N, 3, S, S) batch, identity first."""
    if tta not in TTA:
        raise ValueError(f"tta={tta!r} is not valid; use one of {', '.join(TTA)}.")
    if tta == "none":
        return [images]
    if tta == "flips":
        return [images, images.flip(3), images.flip(2), images.flip((2, 3))]
    mirrored = images.flip(3)
    return [torch.rot90(images, k, (2, 3)) for k in range(4)] + [torch.rot90(mirrored, k, (2, 3)) for k in range(4)]
