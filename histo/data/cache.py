"""The image cache: every image of a dataset decoded once, stain-normalized once and resized to a
model's size, stored as one uint8 array that training reads instead of decoding PNGs every epoch.

It is exact: the paper resizes first and augments after, so the resized (and normalized) image is
what both training and evaluation start from; a cached row equals, byte for byte, what
:class:`~histo.data.dataset.ImageDataset` makes from the PNG with
:func:`~histo.data.transforms.eval_transform`.

Layout: one directory per dataset root, image size, interpolation and stain target::

    <data.cache_dir>/<root name>-<hash of the root path>/<size>px-<interpolation>-<stain>/
        manifest.json        key, counts, the names of the two files below; written last, atomically
        images-<build>.npy   uint8 (N, S, S, 3), memory-mapped by readers
        index-<build>.csv    image (relative path), row, bytes, mtime_ns, stain (why left unchanged, or empty)

The key is (dataset, size, interpolation, stain): ``stain`` is ``none`` or ``<method>-<target
fingerprint>``; ``dataset`` is a hash of the sorted relative paths with each file's size and
modification time. Size and mtime rather than content hashes: reading 4 GB of PNGs at every run
start would cost more than a training epoch, while a stat costs microseconds and any tool that
replaces or edits a file changes its mtime. The index keeps each image's size and mtime, so a
check names what changed, and a run on part of the dataset (one magnification) can use a cache
of all of it.

A cache is used only when it is valid for the run: the manifest is readable and has the key the
run needs, its two files are complete (rows, shape, byte length), it holds every image of the run,
and each of those images still has the size and mtime it had when it was built. Anything else is
stale, logged with the reason, and rebuilt (never silently used). Builds take a lock in the
directory and write new files under a new build name, then replace the manifest atomically, so
concurrent readers (a multirun, DDP ranks) see the old complete build or the new complete build,
never half of one. Readers open the array lazily, once per process (loader workers included).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from histo.data.breakhis import build_index
from histo.data.image_file import read_rgb
from histo.data.transforms import eval_transform

log = logging.getLogger(__name__)

FORMAT = "histo.image_cache/1"
MODES = ("auto", "off")
MANIFEST = "manifest.json"
INDEX_COLUMNS = ["image", "row", "bytes", "mtime_ns", "stain"]


class StaleCache(Exception):
    """A cache that cannot be used as it is; the message says why."""


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
    """``none``, or the method and fingerprint of a fitted normalizer's target."""
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


# ----- reading and checking -----


def open_cache(directory: str | Path, key: CacheKey, stats: pd.DataFrame) -> ImageCache:
    """The cache in ``directory`` if it is valid for ``key`` and the images of ``stats`` (from
    :func:`file_stats`); otherwise :class:`StaleCache` says why."""
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


# ----- building -----


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
    :func:`locked` for each directory."""
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
    with open(directory / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []
        try:
            stale = sorted(directory.glob("*.tmp"))  # images-<build>.npy.tmp and .<file>.<id>.tmp
            for path in stale:
                path.unlink(missing_ok=True)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    if stale:
        log.info("Image cache %s: deleted %d temporary file(s) of an interrupted build (%s).", directory, len(stale),
                 ", ".join(p.name for p in stale[:3]))
    return stale


@contextmanager
def locked(directory: Path):
    """Hold the build lock of a cache directory (other builders of it wait; readers never do)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ----- what the commands call -----


def ensure(cache_dir: str | Path, root: str | Path, images: Sequence[str], sizes: Iterable[int],
           interpolation: str, stain, num_workers: int = 0, rebuild: bool = False) -> dict[int, tuple[ImageCache, str]]:
    """A valid cache of ``images`` at each size, built (for every image of ``root``, so that runs on
    parts of the dataset share it) where missing or stale. Returns size ->
    (cache, what happened: ``valid``, or ``built`` with the reason)."""
    root = Path(root).resolve()
    stain_name = stain_key(stain)
    keys = {s: CacheKey(int(s), interpolation, stain_name) for s in sorted(set(sizes))}
    dirs = {s: cache_directory(cache_dir, root, k) for s, k in keys.items()}
    stats = file_stats(root, images)
    for directory in dirs.values():
        remove_stale_temporaries(directory)
    out, stale = {}, {}
    for size, key in keys.items():
        try:
            if rebuild:
                raise StaleCache("a rebuild was asked for")
            out[size] = (open_cache(dirs[size], key, stats), "valid")
        except StaleCache as why:
            stale[size] = str(why)
    if not stale:
        return out
    with _all_locked([dirs[s] for s in stale]):
        for size in list(stale):  # another process may have built it while we waited for the lock
            if not rebuild:
                try:
                    out[size] = (open_cache(dirs[size], keys[size], stats), "valid")
                    del stale[size]
                except StaleCache:
                    pass
        if stale:
            for size, why in stale.items():
                log.info("Image cache %s: %s; building it for %s.", dirs[size], why, root)
            everything = build_index(root, "all", check_images=False).frame["image"].tolist()
            todo = sorted(set(everything) | set(images))
            built = build(root, todo, {s: dirs[s] for s in stale}, interpolation, stain, num_workers)
            for size, cache in built.items():
                out[size] = (cache, f"built ({stale[size]})")
    return dict(sorted(out.items()))


@contextmanager
def _all_locked(directories: list[Path]):
    if not directories:
        yield
        return
    with locked(directories[0]), _all_locked(directories[1:]):
        yield


def cache_for_run(data_cfg, index, size: int, stain, num_workers: int) -> ImageCache | None:
    """The cache a training run reads (``data.cache``): None for ``off``; for ``auto`` a valid cache of
    the run's images at ``size``, built first (every image of the dataset, logged) when missing or stale."""
    mode = data_cfg.cache
    if mode not in MODES:
        raise ValueError(f"data.cache={mode!r} is not valid; use auto (read the image cache, building it when "
                         "missing or stale) or off (decode the PNGs every epoch).")
    if mode == "off":
        return None
    images = index.frame["image"].tolist()
    cache, status = ensure(data_cfg.cache_dir, index.root, images, [size], data_cfg.interpolation, stain,
                           num_workers)[size]
    log.info("Image cache (data.cache=auto): %s, %s.", cache.directory, status)
    if stain is not None:
        unchanged = cache.unchanged(images)
        log.info("Stain normalization (%s) left %d of this run's %d images unchanged %s.", stain.method,
                 sum(unchanged.values()), len(images), unchanged or "")
    return cache
