"""Benchmark histo.stain against staintools, torchstain and torch-staintools on real BreaKHis images; prints tables.

    .venv/bin/pip install -e '.[bench]'   # staintools, spams-bin, torchstain, torch-staintools (see pyproject.toml)
    .venv/bin/python scripts/bench_stain.py [--root <BreaKHis_v1>] [--vahadane-images 30] [--threads 1]
                                            [--keep-freed-memory] [--device cpu|cuda] [--peer-images 8]

Everything runs in this one process on the CPU (the peer table below: ``--device``), on the same
images, against the same target image, one image at a time, each reference call timed right next to
ours (so a busy machine slows both). staintools Vahadane takes about a second per image, so it runs on a fixed, evenly spaced subset
(``--vahadane-images``; 0 = all). Speed is images per second over all timed images; agreement is
the mean absolute difference (uint8 levels) between our output and the reference's, per image.
staintools' Vahadane is not deterministic, so it also runs twice on a few images to show its own
spread. Targets (issue 3): Vahadane >= 30x staintools and median difference <= 3 levels; Macenko
>= 2x torchstain's torch backend and median difference <= 2; Reinhard within 1 level of
staintools; identical bytes from the same input twice for all three.

Then the GPU-minded peer, torch-staintools (batched torch Vahadane and Macenko), beside histo and
staintools on ``--peer-images`` images of one size, on ``--device`` (staintools always on the CPU), with
the settings its README recommends (stain_peers.py says which and why): one image a call,
``--peer-batch`` images a call, and a second pass over the same batches with its stain-matrix cache
filled (what an on-the-fly normalization meets from the second epoch on). The libraries take turns
image by image and batch by batch, so a busy machine slows all of them alike; tables give medians. Its Vahadane costs seconds per image on a CPU, hence the small default count.
"""

from __future__ import annotations

import os

# Before numpy, torch and spams load their OpenMP runtimes: idle OpenMP threads sleep instead of
# spinning. Otherwise spams' threads (staintools Vahadane) keep spinning after each call and slow
# whatever runs next in this process on a two-core machine, ours and torchstain alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import itertools  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stain_peers import (  # noqa: E402
    TORCH_STAINTOOLS_SETTINGS,
    histo_normalizer,
    race,
    to_batch,
    torch_staintools_normalizer,
)

from histo.data.image_file import read_rgb  # noqa: E402
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
    parser.add_argument("--device", default="cpu", help="where histo and torch-staintools run in the peer table")
    parser.add_argument("--peer-images", type=int, default=8, help="images of one size for the peer table (0: skip it)")
    parser.add_argument("--peer-batch", type=int, default=8, help="images per call in the peer table's batched rows")
    parser.add_argument("--torch-staintools-compile", choices=["auto", "on", "off"], default="auto",
                        help="its torch.compile: auto = on for CUDA, off on a CPU (stain_peers.py says why)")
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
    if args.peer_images > 0:
        print_peers(args, files, target, {"vahadane": st_vahadane, "macenko": staintools.StainNormalizer("macenko")})
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
    if not tensors:
        print(f"Ours, batches of {batch}: skipped, fewer than {batch} images of {shape[1]}x{shape[0]} (--images).")
        return
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


def print_peers(args, files: list[Path], target: np.ndarray, staintools_normalizers: dict) -> None:
    """torch-staintools beside histo and staintools (the reference), per image and batched, on ``args.device``."""
    try:
        import torch_staintools  # noqa: F401
    except ImportError as e:
        print(f"\nSKIPPED the torch-staintools table: it is not installed ({e}); `pip install -e '.[bench]'`.")
        return
    device = torch.device(args.device)
    compile = device.type == "cuda" if args.torch_staintools_compile == "auto" else args.torch_staintools_compile == "on"
    images = _same_size(files, target.shape, args.peer_images)
    batch = min(args.peer_batch, len(images))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"
    print(f"\n## torch-staintools {_version('torch-staintools')} beside histo, against staintools "
          f"({len(images)} images of {target.shape[1]}x{target.shape[0]}, histo and torch-staintools on {where}, "
          f"staintools on the CPU, {args.threads} torch thread(s))")
    print(f"torch-staintools settings: {TORCH_STAINTOOLS_SETTINGS}, compile {'on' if compile else 'off'}; "
          "the rest its builder's defaults. Libraries take turns image by image and batch by batch.\n")
    print("| method | library | call | images | ms/image, median (min-max) | images/s | vs staintools "
          "| MAD to staintools, median (max) | same input twice |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method, st in staintools_normalizers.items():
        st.fit(target.copy())
        rows = peer_rows(method, st, images, target, device, compile, batch, args.threads)
        reference = rows[0]
        for r in rows:
            speed = "1x" if r is reference else f"{r['rate'] / reference['rate']:.3g}x"
            mads = r.get("mads")
            agreement = f"{statistics.median(mads):.2f} ({max(mads):.2f})" if mads else "(the reference)"
            same = {True: "identical", False: "different", None: "(not run twice)"}[r["same"]]
            print(f"| {method} | {r['library']} | {r['call']} | {r['n']} | {1000 * statistics.median(r['per_image']):.1f} "
                  f"({1000 * min(r['per_image']):.1f}-{1000 * max(r['per_image']):.1f}) | {r['rate']:.2f} | {speed} "
                  f"| {agreement} | {same} |")


def peer_rows(method: str, st, images: list[np.ndarray], target: np.ndarray, device: torch.device, compile: bool,
              batch: int, threads: int) -> list[dict]:
    """The peer table's rows for one method: staintools, histo and torch-staintools one image a call; histo and
    torch-staintools ``batch`` images a call; torch-staintools on the same batches again, its cache filled."""
    ours = histo_normalizer(method, target)
    peer = torch_staintools_normalizer(method, target, device, compile, cache=True)
    cpu, calls = torch.device("cpu"), itertools.count()

    def batch_of(indices: list[int]) -> torch.Tensor:
        return to_batch([images[i] for i in indices], device)

    def peer_fresh(indices: list[int]) -> torch.Tensor:  # new cache keys: it estimates the stain matrices
        return peer(batch_of(indices), [f"call{next(calls)}" for _ in indices])

    def peer_by_name(indices: list[int]) -> torch.Tensor:  # the same key for the same image: the second time, cached
        return peer(batch_of(indices), [f"image{i}" for i in indices])

    warm_up = device.type == "cuda" or compile  # kernels, compiling; on a CPU without compiling it only costs time
    contenders = {  # name: (device, a call on the indices of some images)
        "staintools": (cpu, lambda ix: to_batch([np.asarray(st.transform(images[i].copy())) for i in ix], cpu)),
        "histo": (device, lambda ix: ours(batch_of(ix))),
        "torch-staintools": (device, peer_fresh),
    }
    singles = [[i] for i in range(len(images))]
    batches = [list(range(i, i + batch)) for i in range(0, len(images) - batch + 1, batch)]
    rows = race(contenders, singles, "one image", threads, warm_up, check_same=True)
    del contenders["staintools"]
    if warm_up:
        race(contenders, batches[:1], "", threads, warm_up=False, check_same=False)
    contenders["torch-staintools"] = (device, peer_by_name)
    rows += race(contenders, batches, f"batch of {batch}", threads, warm_up=False, check_same=False)
    rows += race({"torch-staintools": (device, peer_by_name)}, batches, f"batch of {batch}, stain matrices cached "
                 "(the same batches again)", threads, warm_up=False, check_same=False)
    reference = rows[0]["outs"]
    for row in rows[1:]:
        row["mads"] = [float(np.abs(o.astype(np.int16) - r.astype(np.int16)).mean())
                       for o, r in zip(row["outs"], reference, strict=True)]
    return rows


def _same_size(files: list[Path], shape: tuple, n: int) -> list[np.ndarray]:
    """``n`` images of ``shape`` (so that they batch), evenly spaced over ``files``."""
    picked = [image for image in map(read_rgb, files) if image.shape == shape]
    return [picked[round(i * (len(picked) - 1) / max(1, n - 1))] for i in range(min(n, len(picked)))]


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
