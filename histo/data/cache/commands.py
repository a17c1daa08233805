"""What the commands call: :func:`ensure` (histo-prepare, the benchmarks) and :func:`cache_for_run`
(histo-train, from ``data.*``): a valid cache, built first where missing or stale."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from histo.data.breakhis import Index, build_index
from histo.data.cache.building import build, remove_stale_temporaries
from histo.data.cache.checking import StaleCache, open_cache
from histo.data.cache.keying import CacheKey, cache_directory, file_stats, stain_key
from histo.data.cache.layout import ImageCache
from histo.data.cache.locking import all_locked

log = logging.getLogger("histo.data.cache")  # the package's one logger

MODES = ("auto", "off")


def ensure(cache_dir: str | Path, index: Index, sizes: Iterable[int], interpolation: str, stain,
           num_workers: int = 0, rebuild: bool = False) -> dict[int, tuple[ImageCache, str]]:
    """A valid cache of the images of ``index`` at each size, built (for every image under its root, so that
    runs on parts of the dataset share it) where missing or stale. Returns size ->
    (cache, what happened: ``valid``, or ``built`` with the reason)."""
    root, images = Path(index.root).resolve(), index.images
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
    with all_locked([dirs[s] for s in stale]):
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
            everything = build_index(root, "all", check_images=False).images
            todo = sorted(set(everything) | set(images))
            built = build(root, todo, {s: dirs[s] for s in stale}, interpolation, stain, num_workers)
            for size, cache in built.items():
                out[size] = (cache, f"built ({stale[size]})")
    return dict(sorted(out.items()))


def cache_for_run(data_cfg, index: Index, size: int, stain, num_workers: int) -> ImageCache | None:
    """The cache a training run reads (``data.cache``): None for ``off``; for ``auto`` a valid cache of
    the run's images at ``size``, built first (every image of the dataset, logged) when missing or stale."""
    mode = data_cfg.cache
    if mode not in MODES:
        raise ValueError(f"data.cache={mode!r} is not valid; use auto (read the image cache, building it when "
                         "missing or stale) or off (decode the PNGs every epoch).")
    if mode == "off":
        return None
    cache, status = ensure(data_cfg.cache_dir, index, [size], data_cfg.interpolation, stain, num_workers)[size]
    log.info("Image cache (data.cache=auto): %s, %s.", cache.directory, status)
    if stain is not None:
        unchanged = cache.unchanged(index.images)
        log.info("Stain normalization (%s) left %d of this run's %d images unchanged %s.", stain.method,
                 sum(unchanged.values()), len(index.images), unchanged or "")
    return cache
