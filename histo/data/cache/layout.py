"""The files of a cache directory (the format :mod:`histo.data.cache` describes) and :class:`ImageCache`,
which reads a valid one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

FORMAT = "histo.image_cache/1"
MANIFEST = "manifest.json"
INDEX_COLUMNS = ["image", "row", "bytes", "mtime_ns", "stain"]


class ImageCache:
    """A valid cache: the uint8 (S, S, 3) image of each cached path. Pickles without its array (a
    loader worker opens the file itself on first read), so workers share the page cache."""

    def __init__(self, directory: Path, manifest: dict, index: pd.DataFrame):
        self.directory = Path(directory)
        self.manifest = manifest
        self.array_path = self.directory / manifest["array"]
        self.size = int(manifest["key"]["size"])
        self._rows = dict(zip(index["image"], index["row"].astype(int), strict=True))
        self._reasons = dict(zip(index["image"], index["stain"].fillna("").astype(str), strict=True))
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, images: Sequence[str]) -> np.ndarray:
        """The row of each image; a KeyError names the first image the cache does not hold."""
        missing = [i for i in images if i not in self._rows]
        if missing:
            raise KeyError(f"The image cache {self.directory} does not hold {missing[0]} "
                           f"({len(missing)} image(s) missing); run histo-prepare again or use data.cache=off.")
        return np.array([self._rows[i] for i in images], dtype=np.int64)

    def read(self, row: int) -> np.ndarray:
        """The uint8 (S, S, 3) image of ``row`` (a copy, writable)."""
        if self._array is None:
            if not self.array_path.is_file():
                raise FileNotFoundError(f"The image cache file {self.array_path} has gone (rebuilt by another "
                                        "process because the dataset changed?); restart the run.")
            self._array = np.load(self.array_path, mmap_mode="r")
        return np.array(self._array[row])

    def unchanged(self, images: Iterable[str]) -> dict[str, int]:
        """How many of ``images`` stain normalization left unchanged, by reason."""
        return dict(Counter(r for r in (self._reasons[i] for i in images) if r))

    def describe(self) -> dict:
        """What run.json records about the cache a run read."""
        m = self.manifest
        return {"path": str(self.directory), "key": m["key"], "images": m["images"], "build": m["build"]}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None  # never pickle the array: each process maps the file itself
        return state
