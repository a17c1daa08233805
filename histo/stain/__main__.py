"""Stain-normalize a folder of PNGs: ``histo-stain method=vahadane target=<png> input=<dir> output=<dir>``
(or ``python -m histo.stain ...``).

Every ``*.png`` under ``input`` is written to the same relative path under ``output``, with a
progress bar. Images that cannot be normalized (too little tissue, one colour) are written
unchanged, listed in ``output/stain_passed.csv`` with the reason, and counted at the end
(``on_failure=raise`` stops at the first instead). ``output/stain_target.json`` holds the fitted
target, so another folder can be normalized the same way with ``target_file=``.
"""

from __future__ import annotations

import csv
import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from histo import CONF_DIR
from histo.data.dataset import read_rgb
from histo.stain.memory import keep_freed_memory
from histo.stain.methods import TARGET_FILE, fit_from_config, make_normalizer
from histo.stain.normalizer import REASONS, StainNormalizer

log = logging.getLogger("histo.stain")
PASSED_FILE = "stain_passed.csv"


def normalize_folder(normalizer: StainNormalizer, input_dir: str | Path, output_dir: str | Path,
                     batch_size: int = 1, device: str = "cpu") -> dict[str, str]:
    """Normalize every PNG under ``input_dir`` into ``output_dir``; returns the images passed through
    unchanged (relative path -> reason)."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input={input_dir} is not a folder.")
    if output_dir.resolve() == input_dir.resolve() or input_dir.resolve() in output_dir.resolve().parents:
        raise ValueError(f"output={output_dir} must not be input or inside it (a second run would read its output).")
    files = sorted(p.relative_to(input_dir) for p in input_dir.rglob("*.png"))
    if not files:
        raise FileNotFoundError(f"No *.png under input={input_dir}.")
    passed: dict[str, str] = {}
    window = 2 * max(1, batch_size)  # images decoded ahead and written behind: memory stays bounded
    with ThreadPoolExecutor(max_workers=2) as readers, ThreadPoolExecutor(max_workers=1) as writer, \
            tqdm(total=len(files), unit="img", desc=normalizer.method) as bar:
        images = _read_ahead(readers, [input_dir / f for f in files], window)
        writes: deque = deque()
        for batch_files, batch in _batches(files, images, batch_size):
            tensor = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(device)
            out, failed = normalizer.normalize(tensor, names=[str(input_dir / f) for f in batch_files])
            out = out.permute(0, 2, 3, 1).cpu().numpy()
            for rel, image, reason in zip(batch_files, out, failed, strict=True):
                if reason:
                    passed[str(rel)] = reason
                writes.append(writer.submit(_write_png, output_dir / rel, image))
                while len(writes) > window:
                    writes.popleft().result()
            bar.update(len(batch_files))
        for w in writes:
            w.result()
    return passed


def _read_ahead(pool: ThreadPoolExecutor, paths: list[Path], window: int) -> Iterator[np.ndarray]:
    """The decoded images of ``paths`` in order, at most ``window`` of them decoded ahead."""
    pending: deque = deque(pool.submit(read_rgb, p) for p in paths[:window])
    for path in paths[window:]:
        yield pending.popleft().result()
        pending.append(pool.submit(read_rgb, path))
    while pending:
        yield pending.popleft().result()


def _batches(files: list[Path], images: Iterator[np.ndarray], size: int):
    """Consecutive images of the same shape, at most ``size`` at a time."""
    names, batch = [], []
    for rel, image in zip(files, images, strict=True):
        if batch and (len(batch) == size or image.shape != batch[0].shape):
            yield names, batch
            names, batch = [], []
        names.append(rel)
        batch.append(image)
    if batch:
        yield names, batch


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"Could not write {path}.")


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} but CUDA is not available; use device=cpu.")
    return name


def run(cfg: DictConfig) -> dict[str, str]:
    """The command: fit (or load) the target, normalize the folder, save the target and the list
    of unchanged images, and print the counts."""
    method_file = Path(CONF_DIR) / "stain" / f"{cfg.method}.yaml"
    if not method_file.is_file():
        raise ValueError(f"method={cfg.method} is not valid; use vahadane, macenko, reinhard or none.")
    stain = OmegaConf.merge(OmegaConf.load(method_file), cfg.options or {},
                            {"target": cfg.target, "target_file": cfg.target_file, "on_failure": cfg.on_failure})
    if cfg.method == "none":
        normalizer = make_normalizer("none", on_failure=cfg.on_failure)
    else:
        normalizer = fit_from_config(OmegaConf.to_container(stain, resolve=True))
    output = Path(cfg.output)
    started = time.time()
    passed = normalize_folder(normalizer, cfg.input, output, cfg.batch_size, _device(cfg.device))
    normalizer.target.save(output / TARGET_FILE)
    with open(output / PASSED_FILE, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "reason"])
        writer.writerows(sorted(passed.items()))
    total = normalizer.counts["normalized"] + len(passed)
    print(f"{cfg.method}: normalized {normalizer.counts['normalized']} of {total} images from {cfg.input} into "
          f"{output} in {time.time() - started:.1f} s; {len(passed)} passed through unchanged.")
    for reason, text in REASONS.items():
        if normalizer.counts[reason]:
            print(f"  {reason}: {normalizer.counts[reason]} ({text})")
    print(f"Unchanged images are listed in {output / PASSED_FILE}; the target is saved in {output / TARGET_FILE}.")
    return passed


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="normalize")
def main(cfg: DictConfig) -> None:
    keep_freed_memory()  # this process normalizes image after image: reuse memory rather than page-fault it in
    run(cfg)


if __name__ == "__main__":
    main()
