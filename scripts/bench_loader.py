"""Benchmark the training input pipeline: the PNG path against the image cache; prints a table.

    .venv/bin/python scripts/bench_loader.py [--root <BreaKHis_v1>] [--size 224] [--workers 2] [--batch 32]
                                             [--passes 3] [--repeats 3] [--device cpu|cuda]

The same images (the real BreaKHis sample when present, else a synthetic tree at BreaKHis' 700x460),
the same DataLoader settings (workers, batch, persistent workers) and the same process, one path
after the other: each is warmed up with one pass (workers started, files in the page cache), then
timed over ``--passes`` passes of the images, ``--repeats`` times, interleaved; the table gives
the median images/s and the spread. Rows:

- png: read + decode the PNG, resize to ``--size`` (what every epoch cost before the cache; also
  the evaluation path);
- cache: read the row of the uint8 memmap (``histo-prepare`` / ``data.cache=auto``); with
  ``augment.run_on=device`` this is the whole loader work of a training step;
- png + paper augmentation, cache + paper augmentation: the same with the paper's flips, rotation
  and translation in the loader workers (``augment.run_on=loader``);
- device augmentation: the same augmentation as one ``grid_sample`` per batch on ``--device``
  (on a CPU it competes with the loader for the same cores: shown for scale, not a target).

The last line, ``ratio: <cache / png>``, is the speed-up of the cache path (target: >= 10).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from histo.data.breakhis import build_index  # noqa: E402
from histo.data.cache import ensure  # noqa: E402
from histo.data.dataset import ImageDataset  # noqa: E402
from histo.data.device_augment import BatchAugment  # noqa: E402
from histo.data.synthetic import SyntheticSpec, write_dataset  # noqa: E402
from histo.data.transforms import eval_transform, train_transform  # noqa: E402

REAL_SAMPLE = REPO.parent / "shared" / "data" / "breakhis-sample" / "BreaKHis_v1"
PAPER = {"hflip": 0.5, "vflip": 0.5, "rotate": 36, "translate": 0.3, "border": "reflect", "interpolation": "bilinear"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REAL_SAMPLE, help="a BreaKHis_v1 folder (default: the sample)")
    parser.add_argument("--size", type=int, default=224, help="model input size (V1-B0/V2-B0: 224)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, the same for every path")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--passes", type=int, default=3, help="passes over the images per timing")
    parser.add_argument("--repeats", type=int, default=3, help="timings per path (interleaved); the median is shown")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the device augmentation runs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        root, source = _dataset(args.root, Path(tmp))
        index = build_index(root)
        images = index.images
        table = pd.DataFrame({"image": images, "label": 0})
        started = time.perf_counter()
        cache = ensure(Path(tmp) / "cache", index, [args.size], "bilinear", None, args.workers)[args.size][0]
        build_rate = len(images) / (time.perf_counter() - started)

        def dataset(cached: bool, augment: dict | None) -> ImageDataset:
            transform = (train_transform(args.size, augment=augment, resized=cached) if augment
                         else eval_transform(args.size, resized=cached))
            return ImageDataset(root, table, transform, cache=cache if cached else None)

        paths = {
            "png": dataset(False, None),
            "cache": dataset(True, None),
            "png + paper augmentation": dataset(False, PAPER),
            "cache + paper augmentation": dataset(True, PAPER),
        }
        loaders = {name: _loader(ds, args) for name, ds in paths.items()}
        order = list(loaders)
        rates: dict[str, list[float]] = {name: [] for name in order}
        for name in order:
            _timed_pass(loaders[name], 1)  # warm-up: workers started, pages cached
        for r in range(args.repeats):
            for name in order if r % 2 == 0 else order[::-1]:
                rates[name].append(len(images) * args.passes / _timed_pass(loaders[name], args.passes))
        device_rate = _device_augment_rate(args, len(images))
        del loaders

    print(f"# Loader benchmark: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"{len(images)} images from {source}; size {args.size}, batch {args.batch}, {args.workers} workers "
          f"(persistent), {args.passes} passes per timing, median of {args.repeats}\n")
    print("| path | images/s (median) | min - max | vs png |")
    print("|---|---|---|---|")
    png = statistics.median(rates["png"])
    for name in order:
        med = statistics.median(rates[name])
        print(f"| {name} | {med:,.0f} | {min(rates[name]):,.0f} - {max(rates[name]):,.0f} | {med / png:.1f}x |")
    print(f"| device augmentation ({args.device}, grid_sample per batch) | {device_rate:,.0f} | | |")
    print(f"\nBuilding the cache ({args.workers} workers, decode + resize once): {build_rate:,.0f} images/s.")
    print(f"ratio: {statistics.median(rates['cache']) / png:.1f}")


def _dataset(root: Path, tmp: Path) -> tuple[Path, str]:
    if root.is_dir():
        return root, str(root)
    spec = SyntheticSpec(patients_per_subtype=2, images_per_magnification=3, width=700, height=460)
    out = write_dataset(tmp / "BreaKHis_v1", spec)
    return out, f"a synthetic tree at 700x460 ({root} not found)"


def _loader(dataset, args) -> DataLoader:
    passes = args.passes
    indices = list(range(len(dataset))) * passes  # the same images, `passes` times, in one iterator

    class Repeat(torch.utils.data.Dataset):
        def __len__(self):
            return len(indices)

        def __getitem__(self, i):
            return dataset[indices[i]]

    return DataLoader(Repeat(), batch_size=args.batch, num_workers=args.workers, persistent_workers=args.workers > 0,
                      pin_memory=args.device.startswith("cuda"), shuffle=False)


def _timed_pass(loader: DataLoader, passes: int) -> float:
    """Seconds for one iteration of the loader (``passes`` passes over the images)."""
    started = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - started


def _device_augment_rate(args, n: int) -> float:
    device = torch.device(args.device)
    augment = BatchAugment(**PAPER)
    batch = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, device=device)
    augment(batch)
    rates = []
    for _ in range(args.repeats):
        steps = max(1, n * args.passes // args.batch // 4)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            augment(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(steps * args.batch / (time.perf_counter() - started))
    return statistics.median(rates)


if __name__ == "__main__":
    main()
