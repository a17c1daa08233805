"""histo.stain and torch-staintools behind one call, and its timing: what bench_stain.py and gpu_check.py share.

Each ``*_normalizer(method, target, ...)`` fits once on ``target`` (uint8 (H, W, 3)) and returns a
function from a uint8 (N, 3, H, W) batch on a device to the normalized uint8 batch on that device;
:func:`timed` times one call (a GPU synchronised) and :func:`race` lets several libraries take turns.

torch-staintools (``pip install torch-staintools``, in the ``bench`` extra) runs with the settings its
README and ``NormalizerBuilder.build`` recommend: concentrations by ``qr`` (least squares; its builder's
default and its README's example), Vahadane's dictionary learned by 60 FISTA steps of 50 iterations on
every pixel (background zeroed), luminosity threshold 0.8, inputs as float in [0, 1], batched (one call
for a whole batch: its "vectorized" path), outputs back to uint8 with torchvision's
``convert_image_dtype`` as its demo does. ``compile`` is its ``CONFIG.ENABLE_COMPILE`` (torch.compile of its solvers, on by default):
on for a GPU as its benchmarks run it, off on a CPU, where compiling took over 7 minutes per shape on 2
cores and the compiled code was no faster (issue 17's note). ``cache=True`` turns on its stain-matrix
cache with the images' names as keys: a second pass over the same images (every epoch after the first,
if it normalized on the fly) then skips the stain-matrix estimate. It draws random initialisations from
torch's global generator, which is seeded before fitting. Its ``transform`` is called, not the module's
``forward``, which would log any exception and return the input unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from histo.stain import make_normalizer

Normalize = Callable[[torch.Tensor], torch.Tensor]
TORCH_STAINTOOLS_SETTINGS = {"concentration_solver": "qr"}


def histo_normalizer(method: str, target: np.ndarray) -> Normalize:
    """histo.stain's ``method`` with its defaults, fitted on ``target`` (it runs on the batch's device)."""
    return make_normalizer(method).fit(target).transform


def torch_staintools_normalizer(method: str, target: np.ndarray, device: torch.device | str, compile: bool,
                                cache: bool = False) -> Callable[..., torch.Tensor]:
    """torch-staintools' ``method`` fitted on ``target``; with ``cache``, call it with the images' ``names``
    (its cache's keys: the same name again reuses that image's stain matrix)."""
    from torch_staintools.constants import CONFIG
    from torch_staintools.normalizer import NormalizerBuilder
    from torchvision.transforms.functional import convert_image_dtype

    device = torch.device(device)
    CONFIG.ENABLE_COMPILE = compile  # read at each call by its solvers
    normalizer = NormalizerBuilder.build(method, use_cache=cache, device=device, **TORCH_STAINTOOLS_SETTINGS)
    normalizer = normalizer.to(device)
    torch.manual_seed(0)
    # keys for its cache: without one it hashes the image, which fails on a CPU (uint64 shifts, torch 2.14)
    normalizer.fit(to_batch(target, device).float() / 255, cache_keys=["target"] if cache else None)

    def normalize(images: torch.Tensor, names: Sequence[str] | None = None) -> torch.Tensor:
        if cache and names is None:
            raise ValueError("With cache=True, name the images (its cache's keys).")
        out = normalizer.transform(convert_image_dtype(images, torch.float32), cache_keys=list(names) if cache else None)
        return convert_image_dtype(out, torch.uint8)

    return normalize


def to_batch(images: np.ndarray | Sequence[np.ndarray], device: torch.device | str) -> torch.Tensor:
    """One uint8 (H, W, 3) image or several of the same size as a uint8 (N, 3, H, W) batch on ``device``."""
    stacked = np.stack([images] if isinstance(images, np.ndarray) else list(images))
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous().to(device)


def to_images(batch: torch.Tensor) -> list[np.ndarray]:
    """A uint8 (N, 3, H, W) batch as N uint8 (H, W, 3) numpy images on the CPU."""
    return list(batch.permute(0, 2, 3, 1).cpu().numpy())


def timed(device: torch.device | str, threads: int | None, call: Callable, *args):
    """Seconds of ``call(*args)`` (the device synchronised after it) and what it returned. ``threads`` sets
    torch's CPU threads just before the call (spams resets OpenMP's to all cores at each of its calls)."""
    device = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    out = call(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, out


def race(contenders: dict, chunks: list[list[int]], call: str, threads: int, warm_up: bool,
         check_same: bool) -> list[dict]:
    """Each contender on each chunk of images, taking turns (the order rotates from chunk to chunk); one row
    per contender: seconds per image of each chunk, outputs, images/s and, with ``check_same``, whether
    the first chunk again gives the same bytes."""
    if warm_up:
        for device, run in contenders.values():
            timed(device, threads, run, chunks[0])
    rows = {name: {"library": name, "call": call, "per_image": [], "outs": [], "same": None} for name in contenders}
    names = list(contenders)
    seconds_total = dict.fromkeys(names, 0.0)
    for k, chunk in enumerate(chunks):
        for name in names[k % len(names):] + names[: k % len(names)]:
            device, run = contenders[name]
            seconds, out = timed(device, threads, run, chunk)
            seconds_total[name] += seconds
            rows[name]["per_image"].append(seconds / len(chunk))
            rows[name]["outs"].extend(to_images(out))
    for name, row in rows.items():
        row["n"] = len(row["outs"])
        row["rate"] = row["n"] / seconds_total[name]
        if check_same:
            again = to_images(contenders[name][1](chunks[0]))
            row["same"] = all(np.array_equal(a, b) for a, b in zip(again, row["outs"], strict=False))
    return list(rows.values())
