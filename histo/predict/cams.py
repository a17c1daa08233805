"""Grad-CAM for predictions: each member's map of its predicted class, drawn on the input it saw.

The maps come from the explain stage's code (:func:`histo.explain.cam.compute_cams`, the same layer
default, methods and flat-map handling) and its overlay (:func:`histo.explain.montage.overlay`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histo.explain.cam import DEFAULT_LAYER, compute_cams, target_layer
from histo.explain.montage import IMAGE_WEIGHT, overlay, save_png


def member_cams(member, images, method: str = "gradcam", layer: str = DEFAULT_LAYER,
                image_weight: float = IMAGE_WEIGHT) -> tuple[np.ndarray, np.ndarray]:
    """Overlays (N, S, S, 3) uint8 of ``member``'s CAMs on its uint8 (N, 3, S, S) ``images``, and which maps were flat."""
    x = member.model.preprocess(images.to(member.device))
    result = compute_cams(member.model, x, None, method, layer)
    pictures = images.permute(0, 2, 3, 1).cpu().numpy()
    return np.stack([overlay(p, m, image_weight) for p, m in zip(pictures, result.maps, strict=True)]), result.flat


class CamWriter:
    """Writes ``<out>/<member>/<n>_<image stem>.png`` per predicted image; ``paths[(row, member)]`` is relative to out."""

    def __init__(self, out: str | Path, members, method: str = "gradcam", layer: str = DEFAULT_LAYER,
                 image_weight: float = IMAGE_WEIGHT):
        self.out, self.method, self.layer, self.image_weight = Path(out), method, layer, image_weight
        for member in members:
            target_layer(member.model.net, layer)  # fail before predicting, naming the valid layers
        self.paths: list[dict[str, str]] = []

    def __call__(self, members, sources, inputs) -> None:
        batch = [{} for _ in sources]
        for member in members:
            overlays, _ = member_cams(member, inputs[member.input.key], self.method, self.layer, self.image_weight)
            for k, (source, picture) in enumerate(zip(sources, overlays, strict=True)):
                n = len(self.paths) + k
                path = save_png(picture, self.out / member.name / f"{n:05d}_{Path(source.name).stem}.png")
                batch[k][member.name] = str(path.relative_to(self.out.parent))
        self.paths += batch
