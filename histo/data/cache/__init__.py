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

One module per concern: :mod:`~histo.data.cache.layout` (the files, and :class:`ImageCache` that reads
them), :mod:`~histo.data.cache.keying` (the key and where its cache lives), :mod:`~histo.data.cache.checking`
(valid, or stale and why), :mod:`~histo.data.cache.building` (decode, normalize, resize, publish),
:mod:`~histo.data.cache.locking` (the build lock) and :mod:`~histo.data.cache.commands` (what histo-train
and histo-prepare call). This package exports what the rest of histo uses.
"""

from histo.data.cache.building import remove_stale_temporaries
from histo.data.cache.commands import MODES, cache_for_run, ensure
from histo.data.cache.keying import CacheKey, cache_directory, stain_key
from histo.data.cache.layout import MANIFEST, ImageCache
from histo.data.cache.locking import locked

__all__ = ["MANIFEST", "MODES", "CacheKey", "ImageCache", "cache_directory", "cache_for_run", "ensure", "locked",
           "remove_stale_temporaries", "stain_key"]
