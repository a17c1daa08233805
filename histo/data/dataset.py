"""A torch Dataset over the images of one split."""

from __future__ import annotations

import random
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from histo.data.image_file import read_rgb

__all__ = ["ImageDataset"]


class ImageDataset(Dataset):
    """Rows of ``table`` (columns ``image`` relative to ``root`` and ``label``): each item is
    ``{"image": uint8 (3, H, W), "label": int, "index": row}``. ``stain``, a fitted
    :class:`histo.stain.StainNormalizer`, normalizes each image at full resolution before ``transform``.

    With ``cache`` (a :class:`histo.data.cache.ImageCache`) the images come from it, already read,
    normalized and resized: ``stain`` must then be None and ``transform`` must not resize."""

    def __init__(self, root: str | Path, table: pd.DataFrame, transform: A.Compose, stain=None, cache=None):
        if cache is not None and stain is not None:
            raise ValueError("ImageDataset: the image cache holds normalized images already; pass stain=None.")
        self.root = Path(root)
        self.table = table.reset_index(drop=True)
        self.transform = transform
        self.stain = stain
        self.cache = cache
        self._paths = [self.root / p for p in self.table["image"]]
        self._labels = self.table["label"].to_numpy()
        self._rows = cache.rows(list(self.table["image"])) if cache is not None else None
        self._py_random = random.Random()

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        """``item``: a row, or (row, seed) from :class:`AugmentationOrder`, which then seeds the random transforms."""
        i, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:  # one generator pair for all transforms: 4x cheaper than Compose.set_random_seed
            self._py_random.seed(seed)
            self.transform.set_random_state(np.random.default_rng(seed), self._py_random)
        if self.cache is not None:
            image = self.cache.read(self._rows[i])
        else:
            image = read_rgb(self._paths[i])
            if self.stain is not None:
                image = self.stain(image, name=str(self._paths[i]))
        image = self.transform(image=image)["image"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": int(self._labels[i]),
            "index": i,
        }


class AugmentationOrder(Sampler):
    """The training order of ``n`` rows: a new permutation each epoch, each row paired with the seed of its
    augmentations (``(row, seed)`` items for :class:`ImageDataset`).

    Both come from ``seed`` (one draw of torch's global generator when the sampler is made, right after
    seeding) and the epoch Lightning sets (:meth:`set_epoch`), never from the global generator's state when
    an epoch starts. albumentations' ``Compose`` ignores the global seeds (it seeds itself from the operating
    system), so without this a seeded run would not repeat; with it, a run augments alike with any number of
    loader workers, persistent or not, and a resumed run exactly as if it had never been interrupted.
    """

    def __init__(self, n: int, seed: int | None = None):
        self.n, self.epoch = n, 0
        self.seed = int(torch.randint(2**62, (1,)).item()) if seed is None else seed

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each training epoch (also the first one after a resume)."""
        self.epoch = epoch

    def __iter__(self):
        # where nobody sets the epoch (DDP wraps this sampler in its own), each pass counts as the next epoch
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(self.n, generator=generator).tolist()
        seeds = torch.randint(2**31 - 1, (self.n,), generator=generator).tolist()
        return iter(list(zip(order, seeds, strict=True)))
