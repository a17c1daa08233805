"""A Dataset that decodes each source once and prepares it for every distinct model input.

Members of different sizes or stain targets each get their own input (their :class:`ModelInput`);
members that share one share the prepared image. An image that cannot be used (unreadable, empty,
too large, blank, or rejected by a stain normalizer set to raise) becomes an item with a reason, never
an exception, so one bad file does not stop a folder.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from histo.data.breakhis import DataError
from histo.data.image_file import MAX_PIXELS, ImageReadError, read_rgb, to_rgb
from histo.evaluation.model_input import ModelInput
from histo.predict.sources import Source
from histo.stain.normalizer import StainError


class PreparedImages(Dataset):
    """Item i: ``{"i": i, "inputs": {key: uint8 (3, S, S)}, "stain": {key: reason or None}}`` or
    ``{"i": i, "error": reason}``."""

    def __init__(self, sources: list[Source], inputs: dict[tuple, ModelInput], max_pixels: int = MAX_PIXELS):
        self.sources, self.inputs, self.max_pixels = sources, inputs, max_pixels

    def __len__(self) -> int:
        return len(self.sources)

    def image(self, i: int) -> np.ndarray:
        """Source i as RGB uint8 (H, W, 3); raises :class:`ImageReadError` with the reason it cannot be used."""
        source = self.sources[i]
        image = read_rgb(source.path, self.max_pixels) if source.path is not None else to_rgb(source.array, source.name)
        if image.shape[0] * image.shape[1] > self.max_pixels:
            raise ImageReadError(source.name, f"it is too large ({image.shape[1]} x {image.shape[0]} pixels)")
        if (image[::16, ::16] == image[:1, :1]).all() and (image == image[:1, :1]).all():  # subsample first: fast
            raise ImageReadError(source.name, f"it is blank (every pixel is RGB {tuple(int(v) for v in image[0, 0])})")
        return image

    def __getitem__(self, i: int) -> dict:
        try:
            image = self.image(i)
            prepared = {key: model_input(image) for key, model_input in self.inputs.items()}
        except (DataError, StainError) as error:
            return {"i": i, "error": getattr(error, "reason", None) or str(error)}
        return {"i": i,
                "inputs": {key: torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))) for key, (x, _) in prepared.items()},
                "stain": {key: reason for key, (_, reason) in prepared.items()}}


def collate(items: list[dict]) -> dict:
    """A batch of the usable items (``rows``, ``inputs`` per key, ``stain`` reasons per key) and ``errors``."""
    good = [item for item in items if "error" not in item]
    keys = good[0]["inputs"].keys() if good else ()
    return {
        "rows": [item["i"] for item in good],
        "inputs": {key: torch.stack([item["inputs"][key] for item in good]) for key in keys},
        "stain": {key: [item["stain"][key] for item in good] for key in keys},
        "errors": [(item["i"], item["error"]) for item in items if "error" in item],
    }
