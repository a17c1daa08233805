"""Whether a built cache is valid for a run: :func:`open_cache` returns it, or :class:`StaleCache` says why not."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from histo.data.cache.keying import CacheKey
from histo.data.cache.layout import FORMAT, INDEX_COLUMNS, MANIFEST, ImageCache


class StaleCache(Exception):
    """A cache that cannot be used as it is; the message says why."""


def open_cache(directory: str | Path, key: CacheKey, stats: pd.DataFrame) -> ImageCache:
    """The cache in ``directory`` if it is valid for ``key`` and the images of ``stats`` (from
    :func:`~histo.data.cache.keying.file_stats`); otherwise :class:`StaleCache` says why."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise StaleCache("no cache there yet")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:
        raise StaleCache(f"its {MANIFEST} cannot be read ({err})") from err
    if manifest.get("format") != FORMAT:
        raise StaleCache(f"its {MANIFEST} is not a {FORMAT} manifest")
    built = {k: manifest["key"].get(k) for k in ("size", "interpolation", "stain")}
    if built != asdict(key):
        raise StaleCache(f"it was built for {built}, this run needs {asdict(key)}")
    n, size = int(manifest["images"]), key.size
    try:
        index = pd.read_csv(directory / manifest["index"], dtype={"image": str, "stain": str}, keep_default_na=False)
        shape = _array_shape(directory / manifest["array"])
    except FileNotFoundError as err:
        raise StaleCache(f"a file is missing ({Path(err.filename).name})") from err
    if list(index.columns) != INDEX_COLUMNS or len(index) != n or sorted(index["row"]) != list(range(n)):
        raise StaleCache(f"its index lists {len(index)} images where the manifest says {n}")
    if shape != (n, size, size, 3):
        raise StaleCache(f"its array is {shape} (truncated or damaged) where the manifest says {(n, size, size, 3)}")
    known = index.set_index("image")
    missing = [i for i in stats["image"] if i not in known.index]
    if missing:
        raise StaleCache(f"it lacks {len(missing)} image(s) of this dataset (first: {missing[0]}), e.g. added since")
    now = stats.set_index("image")
    then = known.loc[now.index, ["bytes", "mtime_ns"]]
    changed = now.index[(then["bytes"] != now["bytes"]) | (then["mtime_ns"] != now["mtime_ns"])]
    if len(changed):
        raise StaleCache(f"{len(changed)} image(s) changed since it was built (first: {changed[0]})")
    return ImageCache(directory, manifest, index)


def _array_shape(path: Path) -> tuple[int, ...]:
    """The shape an .npy file's header declares, or () when its bytes do not match it (truncated)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        offset = f.tell()
    expected = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
    if np.dtype(dtype) != np.uint8 or os.path.getsize(path) != expected:
        return ()
    return tuple(shape)
