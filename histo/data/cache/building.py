"""Building a cache: every image read, stain-normalized and resized once, written under a new build name
and published atomically (the manifest last), and the leftovers of killed builds removed."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from histo.data.cache.keying import CacheKey, dataset_fingerprint, file_stats, stain_key
from histo.data.cache.layout import FORMAT, INDEX_COLUMNS, MANIFEST, ImageCache
from histo.data.cache.locking import locked_if_free
from histo.data.image_file import read_rgb
from histo.data.transforms import eval_transform

log = logging.getLogger("histo.data.cache")  # the package's one logger


class _Decode(Dataset):
    """Item i: image i read, stain-normalized at full resolution, resized to each size, as
    :class:`~histo.data.dataset.ImageDataset` does, plus why stain normalization left it unchanged."""

    def __init__(self, root: Path, images: Sequence[str], sizes: Sequence[int], interpolation: str, stain):
        self.root, self.images, self.stain = Path(root), list(images), stain
        self.resizes = [eval_transform(s, interpolation) for s in sizes]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        path = self.root / self.images[i]
        image, reason = read_rgb(path), None
        if self.stain is not None:
            image, reason = self.stain.normalize_image(image, str(path))
        return i, [r(image=image)["image"] for r in self.resizes], reason or ""


def build(root: str | Path, images: Sequence[str], directories: dict[int, Path], interpolation: str, stain,
          num_workers: int = 0) -> dict[int, ImageCache]:
    """Build the cache of ``images`` (relative to ``root``) at each size of ``directories`` (size ->
    cache directory) in one pass over the PNGs; returns the published caches. Call it under
    :func:`~histo.data.cache.locking.locked` for each directory."""
    root = Path(root)
    stats = file_stats(root, images)  # before reading: a file changed meanwhile reads as stale next time
    images = list(stats["image"])
    sizes = sorted(directories)
    build_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    stain_name = stain_key(stain)
    started = time.time()
    arrays, tmp_paths = {}, []
    try:
        for size in sizes:
            directories[size].mkdir(parents=True, exist_ok=True)
            tmp = directories[size] / f"images-{build_id}.npy.tmp"
            tmp_paths.append(tmp)
            arrays[size] = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                                     shape=(len(images), size, size, 3))
        reasons = [""] * len(images)
        # its own generator: building a cache must not draw from the global ones a training run seeded
        loader = DataLoader(_Decode(root, images, sizes, interpolation, stain), batch_size=None,
                            num_workers=num_workers, generator=torch.Generator().manual_seed(0))
        what = ", ".join(f"{s}px" for s in sizes)
        for i, resized, reason in tqdm(loader, total=len(images), unit="img", desc=f"image cache {what}"):
            for size, image in zip(sizes, resized, strict=True):
                arrays[size][i] = image.numpy() if isinstance(image, torch.Tensor) else image
            reasons[i] = reason
        index = stats.assign(row=range(len(images)), stain=reasons)[INDEX_COLUMNS]
        unchanged = dict(Counter(r for r in reasons if r))
        seconds = round(time.time() - started, 1)
        caches = {}
        for size in sizes:
            arrays[size].flush()
            del arrays[size]
            key = CacheKey(size, interpolation, stain_name)
            manifest = {
                "format": FORMAT,
                "key": {"dataset": dataset_fingerprint(stats), **asdict(key)},
                "root": str(root.resolve()),
                "images": len(images),
                "build": build_id,
                "array": f"images-{build_id}.npy",
                "index": f"index-{build_id}.csv",
                "stain_unchanged": unchanged,
                "seconds": seconds,
                "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            caches[size] = _publish(directories[size], manifest, index)
        return caches
    finally:
        arrays.clear()
        for tmp in tmp_paths:
            tmp.unlink(missing_ok=True)


def _publish(directory: Path, manifest: dict, index: pd.DataFrame) -> ImageCache:
    """Move the new build into place, then replace the manifest (the commit), then drop old builds."""
    os.replace(directory / f"{manifest['array']}.tmp", directory / manifest["array"])
    _atomic_write(directory / manifest["index"], index.to_csv(index=False, lineterminator="\n"))
    _atomic_write(directory / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    keep = {manifest["array"], manifest["index"], MANIFEST}
    for old in [*directory.glob("images-*.npy"), *directory.glob("index-*.csv")]:
        if old.name not in keep:
            old.unlink(missing_ok=True)
    return ImageCache(directory, manifest, index)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files (``*.tmp``) a killed build left in a cache directory, unless a build
    holds the directory's lock now (its temporaries are not stale); returns what was deleted."""
    if not directory.is_dir():
        return []
    with locked_if_free(directory) as free:
        if not free:
            return []
        stale = sorted(directory.glob("*.tmp"))  # images-<build>.npy.tmp and .<file>.<id>.tmp
        for path in stale:
            path.unlink(missing_ok=True)
    if stale:
        log.info("Image cache %s: deleted %d temporary file(s) of an interrupted build (%s).", directory, len(stale),
                 ", ".join(p.name for p in stale[:3]))
    return stale
