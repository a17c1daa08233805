"""What a cache is keyed by: image size, interpolation, stain target and the dataset's files (their
relative paths, sizes and mtimes), and where the cache of a key lives."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class CacheKey:
    """What the cached pixels depend on, besides the dataset's files."""

    size: int
    interpolation: str
    stain: str  # "none" or "<method>-<target fingerprint>"

    @property
    def dirname(self) -> str:
        return f"{self.size}px-{self.interpolation}-{self.stain}"


def stain_key(normalizer) -> str:
    """``none``, or the method and fingerprint of a fitted normalizer's target: images prepared with equal keys
    are equal (the image cache's directory, :class:`histo.evaluation.model_input.ModelInput`'s key)."""
    if normalizer is None:
        return "none"
    return f"{normalizer.method}-{normalizer.target.fingerprint}"


def cache_directory(cache_dir: str | Path, root: str | Path, key: CacheKey) -> Path:
    """Where the cache of ``key`` for the dataset at ``root`` lives."""
    root = Path(root).resolve()
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return Path(cache_dir).expanduser().resolve() / f"{root.name}-{tag}" / key.dirname


def file_stats(root: str | Path, images: Iterable[str]) -> pd.DataFrame:
    """``image, bytes, mtime_ns`` of each image (paths relative to ``root``), sorted by image."""
    rows = []
    for image in sorted(images):
        st = os.stat(Path(root) / image)
        rows.append((image, st.st_size, st.st_mtime_ns))
    return pd.DataFrame(rows, columns=["image", "bytes", "mtime_ns"])


def dataset_fingerprint(stats: pd.DataFrame) -> str:
    """A short hash of the sorted relative paths with their sizes and mtimes."""
    content = stats.sort_values("image")[["image", "bytes", "mtime_ns"]].to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(content.encode()).hexdigest()[:16]
