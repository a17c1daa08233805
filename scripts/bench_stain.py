"""Benchmark histo.stain against staintools and torchstain on real BreaKHis images; prints a table.

    .venv/bin/pip install -e '.[bench]'          # staintools, spams-bin, torchstain (see pyproject.toml)
    .venv/bin/python scripts/bench_stain.py [--root <BreaKHis_v1>] [--vahadane-images 30] [--threads 1]
                                            [--keep-freed-memory]

Everything runs in this one process on the CPU, on the same images, against the same target image,
one image at a time, each reference call timed right next to ours (so a busy machine slows both).
staintools Vahadane takes about a second per image, so it runs on a fixed, evenly spaced subset
(``--vahadane-images``; 0 = all). Speed is images per second over all timed images; agreement is
the mean absolute difference (uint8 levels) between our output and the reference's, per image.
staintools' Vahadane is not deterministic, so it also runs twice on a few images to show its own
spread. Targets (issue 3): Vahadane >= 30x staintools and median difference <= 3 levels; Macenko
>= 2x torchstain's torch backend and median difference <= 2; Reinhard within 1 level of
staintools; identical bytes from the same input twice for all three.
"""

from __future__ import annotations

import os

# Before numpy, torch and spams load their OpenMP runtimes: idle OpenMP threads sleep instead of
# spinning. Otherwise spams' threads (staintools Vahadane) keep spinning after each call and slow
# whatever runs next in this process on a two-core machine, ours and torchstain alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from histo.data.dataset import read_rgb  # noqa: E402
from histo.stain import make_normalizer  # noqa: E402
from histo.stain.memory import keep_freed_memory  # noqa: E402

DEFAULT_ROOT = REPO.parent / "shared" / "data" / "breakhis-sample" / "BreaKHis_v1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="a BreaKHis_v1 folder (searched for *.png)")
    parser.add_argument("--images", type=int, default=0, help="images for Macenko and Reinhard (0 = all)")
    parser.add_argument("--vahadane-images", type=int, default=30, help="images for Vahadane (0 = all)")
    parser.add_argument("--target", type=int, default=100, help="index of the target image in sorted order")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for every library")
    parser.add_argument("--repeats", type=int, default=5, help="staintools Vahadane images run twice")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="tune glibc malloc as histo-stain does (histo/stain/memory.py), for every library")
    args = parser.parse_args()

    try:
        import staintools
        import torchstain
    except ImportError as e:
        print(f"SKIPPED: the reference libraries are not installed ({e}). Install them with "
              "`pip install -e '.[bench]'` (see pyproject.toml).")
        return 0
    files = sorted(args.root.rglob("*.png")) if args.root.is_dir() else []
    if len(files) <= args.target:
        print(f"SKIPPED: no BreaKHis images under {args.root} (pass --root <BreaKHis_v1>).")
        return 0

    torch.set_num_threads(args.threads)
    malloc = "glibc malloc kept freed memory (histo-stain's setting)" if args.keep_freed_memory and \
        keep_freed_memory() else "default glibc malloc"
    target = read_rgb(files[args.target])
    chosen = _subset(files, args.images)
    chosen_vahadane = _subset(files, args.vahadane_images)
    images = {f: read_rgb(f) for f in sorted(set(chosen) | set(chosen_vahadane))}
    print(f"# Stain normalization benchmark: {platform.machine()}, {_cores()} cores, one process, CPU, "
          f"{torch.get_num_threads()} torch thread(s) for every library, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
          f"{malloc}, torch {torch.__version__}")
    print(f"# {len(files)} real BreaKHis images under {args.root}; target {files[args.target].name}; "
          f"Vahadane on {len(chosen_vahadane)} of them (every {max(1, len(files) // len(chosen_vahadane))}th, "
          f"staintools takes ~1 s each), Macenko and Reinhard on {len(chosen)}.")
    print(f"# versions: staintools {_version('staintools')}, spams-bin {_version('spams-bin')}, "
          f"torchstain {_version('torchstain')}, opencv {_version('opencv-python-headless')}")

    rows = []
    st_vahadane = staintools.StainNormalizer("vahadane")
    st_vahadane.fit(target.copy())
    rows.append(compare("Vahadane", "staintools", lambda im: st_vahadane.transform(im.copy()),
                        make_normalizer("vahadane").fit(target), [images[f] for f in chosen_vahadane],
                        repeats=args.repeats, min_speedup=30, max_median_mad=3))
    ts_macenko = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    ts_macenko.fit(torch.from_numpy(target).permute(2, 0, 1))
    rows.append(compare("Macenko", "torchstain (torch)",
                        lambda im: ts_macenko.normalize(torch.from_numpy(im).permute(2, 0, 1), stains=False)[0].numpy(),
                        make_normalizer("macenko").fit(target), [images[f] for f in chosen],
                        repeats=args.repeats, min_speedup=2, max_median_mad=2))
    st_reinhard = staintools.ReinhardColorNormalizer()
    st_reinhard.fit(target.copy())
    rows.append(compare("Reinhard", "staintools", lambda im: st_reinhard.transform(im.copy()),
                        make_normalizer("reinhard").fit(target), [images[f] for f in chosen],
                        repeats=args.repeats, min_speedup=None, max_median_mad=1))
    print_table(rows)
    torch.set_num_threads(args.threads)
    print_batched([images[f] for f in chosen], target)
    return 0


def compare(method, library, reference, ours, images, repeats, min_speedup, max_median_mad) -> dict:
    """Time the reference and ours image by image (alternating), compare outputs, check determinism.
    The thread count is set again before each call: spams resets OpenMP's to all cores on each call."""
    threads = torch.get_num_threads()
    first = images[0]
    reference(first), ours(first)  # warm up both
    ref_times, our_times, mads, over_one, same, ref_same, ref_spread = [], [], [], [], True, True, []
    for i, image in enumerate(images):
        torch.set_num_threads(threads)
        t = time.perf_counter()
        ref_out = np.asarray(reference(image)).astype(np.int16)
        ref_times.append(time.perf_counter() - t)
        torch.set_num_threads(threads)
        t = time.perf_counter()
        out = ours(image)
        our_times.append(time.perf_counter() - t)
        diff = np.abs(out.astype(np.int16) - ref_out)
        mads.append(float(diff.mean()))
        over_one.append(float((diff > 1).mean()))
        same &= np.array_equal(ours(image.copy()), out)
        if i < repeats:
            again = np.asarray(reference(image)).astype(np.int16)
            ref_same &= np.array_equal(again, ref_out)
            ref_spread.append(float(np.abs(again - ref_out).mean()))
    ref_rate, our_rate = len(images) / sum(ref_times), len(images) / sum(our_times)
    speedup = our_rate / ref_rate
    median_mad = statistics.median(mads)
    met = median_mad <= max_median_mad and same and (min_speedup is None or speedup >= min_speedup)
    return {
        "method": method, "library": library, "n": len(images),
        "ref_ms": 1000 * statistics.median(ref_times), "our_ms": 1000 * statistics.median(our_times),
        "ref_rate": ref_rate, "our_rate": our_rate, "speedup": speedup,
        "median_mad": median_mad, "max_mad": max(mads), "over_one": max(over_one),
        "same": same, "ref_same": ref_same, "ref_spread": statistics.median(ref_spread) if ref_spread else 0.0,
        "target": (f">= {min_speedup}x, " if min_speedup else "") + f"median MAD <= {max_median_mad}, same bytes",
        "met": met,
    }


def print_table(rows: list[dict]) -> None:
    print()
    print("| method | reference | images | reference ms/img | ours ms/img | reference img/s | ours img/s | speed-up "
          "| MAD to reference, median (max) | pixels > 1 level off (worst image) | ours: same input twice "
          "| reference: same input twice (its own MAD) | target | met |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['library']} | {r['n']} | {r['ref_ms']:.1f} | {r['our_ms']:.1f} "
              f"| {r['ref_rate']:.2f} | {r['our_rate']:.1f} | {r['speedup']:.1f}x "
              f"| {r['median_mad']:.3f} ({r['max_mad']:.3f}) | {100 * r['over_one']:.3f} % "
              f"| {'identical' if r['same'] else 'DIFFERENT'} "
              f"| {'identical' if r['ref_same'] else 'different'} ({r['ref_spread']:.3f}) "
              f"| {r['target']} | {'yes' if r['met'] else 'NO'} |")


def print_batched(images: list[np.ndarray], target: np.ndarray, batch: int = 8) -> None:
    """Ours on batches of same-size images (what histo-stain batch_size=8 and a GPU use)."""
    shape = images[0].shape
    same = [im for im in images if im.shape == shape][: 4 * batch]
    tensors = [torch.from_numpy(np.stack(same[i : i + batch])).permute(0, 3, 1, 2).contiguous()
               for i in range(0, len(same) - batch + 1, batch)]
    print()
    print(f"Ours, batches of {batch} ({len(tensors) * batch} images of {shape[1]}x{shape[0]}):")
    for method in ("vahadane", "macenko", "reinhard"):
        normalizer = make_normalizer(method).fit(target)
        normalizer.transform(tensors[0])
        t = time.perf_counter()
        outs = [normalizer.transform(b) for b in tensors]
        rate = len(tensors) * batch / (time.perf_counter() - t)
        alone = torch.cat([normalizer.transform(tensors[0][i : i + 1]) for i in range(batch)])
        print(f"  {method:9s} {rate:6.1f} img/s; batch output equals one image at a time: "
              f"{'yes' if torch.equal(outs[0], alone) else 'NO'}")


def _subset(files: list[Path], n: int) -> list[Path]:
    if n <= 0 or n >= len(files):
        return list(files)
    return [files[round(i * (len(files) - 1) / (n - 1))] for i in range(n)] if n > 1 else files[:1]


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def _cores() -> int:
    return os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
