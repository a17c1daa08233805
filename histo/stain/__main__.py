"""Stain-normalize a folder of images: ``histo-stain stain=vahadane stain.target=<image>|auto input=<dir>
output=<dir>`` (or ``python -m histo.stain ...``); ``conf/stain.yaml`` composes the ``stain`` group as
histo-train does, so a method's settings are ``stain.<key>=`` overrides.

Every image under ``input`` (PNG, JPEG, TIFF or BMP: :data:`IMAGE_SUFFIXES`) is written to the same
relative path under ``output``, in the same format, with a progress bar. Images that cannot be
normalized (too little tissue, one colour) are written unchanged; files that cannot be read are
skipped (nothing written). Both are listed in ``output/stain_passed.csv`` with the reason and counted
at the end (``stain.on_failure=raise`` stops at the first instead). ``stain.target=auto`` fits the
target on the first image under ``input`` (sorted by path) with enough tissue. ``output/stain_target.json``
holds the fitted target, so another folder can be normalized the same way with ``stain.target_file=``.
Every output file is written atomically: an interrupted run leaves whole files only.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from histo.command import UserError, hydra_command
from histo.data.breakhis import DataError
from histo.data.image_file import read_rgb
from histo.stain.memory import keep_freed_memory
from histo.stain.methods import AUTO, NONE, TARGET_FILE, fit_from_config
from histo.stain.normalizer import ON_FAILURE, REASONS, StainError, StainNormalizer
from histo.stain.target import StainTarget

log = logging.getLogger("histo.stain")
PASSED_FILE = "stain_passed.csv"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")  # what histo-stain reads (and writes back)
UNREADABLE = "unreadable"  # the reason stain_passed.csv gives for a file that could not be decoded


def image_files(input_dir: Path) -> list[Path]:
    """The images under ``input_dir`` (by suffix, any case), relative to it, sorted."""
    return sorted(p.relative_to(input_dir) for p in input_dir.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def normalize_folder(normalizer: StainNormalizer | None, input_dir: str | Path, output_dir: str | Path,
                     batch_size: int = 1, device: str = "cpu", on_failure: str = "pass") -> dict[str, str]:
    """Normalize every image under ``input_dir`` into ``output_dir`` (no normalizer: write each decoded image
    back unchanged); returns the images passed through unchanged or skipped as unreadable (relative path ->
    reason). ``on_failure="raise"`` stops at an unreadable file (the normalizer's own decides on the rest)."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if on_failure not in ON_FAILURE:
        raise UserError(f"stain.on_failure={on_failure} is not valid; use one of {', '.join(ON_FAILURE)}.")
    if not input_dir.is_dir():
        raise UserError(f"input={input_dir} is not a folder.")
    if output_dir.resolve() == input_dir.resolve() or input_dir.resolve() in output_dir.resolve().parents:
        raise UserError(f"output={output_dir} must not be input or inside it (a second run would read its output).")
    files = image_files(input_dir)
    if not files:
        raise UserError(f"No images under input={input_dir} (looked for {', '.join(IMAGE_SUFFIXES)}).")
    passed: dict[str, str] = {}
    window = 2 * max(1, batch_size)  # images decoded ahead and written behind: memory stays bounded
    with ThreadPoolExecutor(max_workers=2) as readers, ThreadPoolExecutor(max_workers=1) as writer, \
            tqdm(total=len(files), unit="img", desc=normalizer.method if normalizer else NONE) as bar:
        images = _read_ahead(readers, [input_dir / f for f in files], window)
        readable = _readable(files, images, passed, on_failure, bar)
        writes: deque = deque()
        for batch_files, batch in _batches(readable, batch_size):
            if normalizer is None:
                out, failed = batch, [None] * len(batch)
            else:
                tensor = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(device)
                out, failed = normalizer.normalize(tensor, names=[str(input_dir / f) for f in batch_files])
                out = out.permute(0, 2, 3, 1).cpu().numpy()
            for rel, image, reason in zip(batch_files, out, failed, strict=True):
                if reason:
                    passed[str(rel)] = reason
                writes.append(writer.submit(_write_image, output_dir / rel, image))
                while len(writes) > window:
                    writes.popleft().result()
            bar.update(len(batch_files))
        for w in writes:
            w.result()
    return passed


def _read_ahead(pool: ThreadPoolExecutor, paths: list[Path], window: int) -> Iterator[np.ndarray | DataError]:
    """The decoded images of ``paths`` in order (or the error that says why one cannot be read), at most
    ``window`` of them decoded ahead."""
    pending: deque = deque(pool.submit(_read, p) for p in paths[:window])
    for path in paths[window:]:
        yield pending.popleft().result()
        pending.append(pool.submit(_read, path))
    while pending:
        yield pending.popleft().result()


def _read(path: Path) -> np.ndarray | DataError:
    try:
        return read_rgb(path)
    except DataError as error:
        return error


def _readable(files: list[Path], images: Iterator, passed: dict[str, str], on_failure: str, bar):
    """(relative path, image) of each readable image; the others go to ``passed`` as unreadable (an error
    with ``on_failure=raise``)."""
    for rel, image in zip(files, images, strict=True):
        if isinstance(image, DataError):
            if on_failure == "raise":
                raise image
            log.warning("Skipped %s: %s", rel, image)
            passed[str(rel)] = UNREADABLE
            bar.update(1)
            continue
        yield rel, image


def _batches(images: Iterator[tuple[Path, np.ndarray]], size: int):
    """Consecutive images of the same shape, at most ``size`` at a time."""
    names, batch = [], []
    for rel, image in images:
        if batch and (len(batch) == size or image.shape != batch[0].shape):
            yield names, batch
            names, batch = [], []
        names.append(rel)
        batch.append(image)
    if batch:
        yield names, batch


def _write_image(path: Path, rgb: np.ndarray) -> None:
    """Write ``rgb`` in the format of ``path``'s suffix, atomically (a temporary file, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"Could not write {path}.")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} but CUDA is not available; use device=cpu.")
    return name


def run(cfg: DictConfig) -> dict[str, str]:
    """The command: fit (or load) the target, normalize the folder, save the target and the list
    of unchanged images, and print the counts."""
    for key, what in (("input", "the folder of images to normalize"), ("output", "where to write them")):
        if OmegaConf.is_missing(cfg, key) or not cfg[key]:
            raise UserError(f"{key}=<folder> is missing: {what} (histo-stain stain=vahadane "
                            "stain.target=<image>|auto input=<folder> output=<folder>).")
    input_dir, output = Path(cfg.input), Path(cfg.output)
    if not input_dir.is_dir():
        raise UserError(f"input={input_dir} is not a folder.")
    files = image_files(input_dir)
    normalizer = _fitted(cfg.stain, input_dir, files)
    started = time.time()
    passed = normalize_folder(normalizer, input_dir, output, cfg.batch_size, _device(cfg.device),
                              cfg.stain.on_failure)
    # the folder's record: the fitted target, or (none) that there was no normalizer
    (normalizer.target if normalizer else StainTarget(NONE, {})).save(output / TARGET_FILE)
    rows = io.StringIO()
    csv.writer(rows, lineterminator="\n").writerows([["image", "reason"], *sorted(passed.items())])
    _write_text(output / PASSED_FILE, rows.getvalue())
    skipped = sum(reason == UNREADABLE for reason in passed.values())
    total, took = len(files) - skipped, time.time() - started
    unreadable = f", {skipped} unreadable skipped" if skipped else ""
    if normalizer is None:
        print(f"{NONE}: wrote {total} images from {input_dir} into {output} unchanged (no normalizer) in "
              f"{took:.1f} s{unreadable}.")
    else:
        print(f"{normalizer.method}: normalized {normalizer.counts['normalized']} of {total} images from {input_dir} "
              f"into {output} in {took:.1f} s; {len(passed) - skipped} passed through unchanged{unreadable}.")
        for reason, text in REASONS.items():
            if normalizer.counts[reason]:
                print(f"  {reason}: {normalizer.counts[reason]} ({text})")
    if skipped:
        print(f"  {UNREADABLE}: {skipped} (the file could not be decoded; nothing written for it)")
    print(f"Unchanged and skipped images are listed in {output / PASSED_FILE}; the target is saved in "
          f"{output / TARGET_FILE}.")
    return passed


def _fitted(stain: DictConfig, input_dir: Path, files: list[Path]) -> StainNormalizer | None:
    """The normalizer ``stain`` describes (None for stain=none) with its target: an image, ``auto`` (the
    first of the input folder's ``files`` with enough tissue) or a saved ``target_file``."""
    if stain.method == NONE:
        return None
    if not stain.target and not stain.target_file:
        raise UserError(f"stain={stain.method} needs a target: stain.target=<image>, stain.target=auto (the first "
                        "image under input with enough tissue) or stain.target_file=<a saved stain_target.json>.")
    candidates = [str(f) for f in files] if stain.target == AUTO else []
    try:
        return fit_from_config(OmegaConf.to_container(stain, resolve=True), input_dir, candidates)
    except StainError as error:
        if stain.target == AUTO:
            raise UserError(f"stain.target=auto: none of the {len(candidates)} images under input={input_dir} has "
                            "enough tissue to fit a stain target; give stain.target=<image>.") from error
        raise


@hydra_command("stain", prog="histo-stain")
def main(cfg: DictConfig) -> None:
    keep_freed_memory()  # this process normalizes image after image: reuse memory rather than page-fault it in
    run(cfg)


if __name__ == "__main__":
    main()
