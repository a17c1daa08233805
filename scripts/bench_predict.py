"""Benchmark histo-predict against a plain single-process loop on the same images and network; prints a table.

    .venv/bin/python scripts/bench_predict.py [--images <folder>] [--model v1_b0] [--size 224] [--batch 32]
                                              [--workers 2] [--repeats 3] [--device cpu|cuda] [--models all]

The images are the real BreaKHis sample when present (else a synthetic tree at BreaKHis' 700x460); the
network is an untrained run of ``--model`` at ``--size`` (speed does not depend on the weights). Both sides
use the same weights, batch size, device and threads; each is warmed up once and then timed
``--repeats`` times, alternating, from file paths to probabilities; the table shows medians:

- plain: one process, the checkpoint loaded as the README's snippet loads it, for each batch: PIL open +
  convert to RGB + resize (PIL bilinear) + normalize + forward + softmax (what a user writes by hand; it
  skips histo's checks and its exact training resize);
- histo-predict: :meth:`histo.predict.Predictor.run` (decode and resize in ``--workers`` loader processes,
  the forward pass channels-last in the main process, every file checked, the table built).

The last line, ``ratio: <histo-predict / plain>``, is the speed of ours relative to the plain loop
(target on CPU: >= 1.0). ``--device cuda --models all`` adds one row per model at the paper's sizes
(histo-predict only), for the GPU check.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from histo import config_option  # noqa: E402
from histo.data.breakhis import BINARY_CLASSES  # noqa: E402
from histo.data.synthetic import SyntheticSpec, write_dataset  # noqa: E402
from histo.evaluation.json_file import write_json  # noqa: E402
from histo.models import Classifier, load_classifier  # noqa: E402
from histo.predict import Predictor  # noqa: E402

REAL_SAMPLE = REPO.parent / "shared" / "data" / "breakhis-sample" / "BreaKHis_v1"
MODELS = ("v1_b0", "v1_b1", "v1_b2", "v1_b3", "v1_b4", "v2_b0", "v2_b1", "v2_b2", "v2_b3", "v2_s")


def untrained_run(out: Path, model: str, size: int | None = None) -> Path:
    """A run directory (run.json + checkpoint) of ``model`` (a conf/model name) with random weights, for speed
    measurements: histo-predict loads it like a trained run."""
    conf = config_option("model", model)
    size = size or int(conf.image_size)
    classifier = Classifier(conf.timm_name, list(BINARY_CLASSES), image_size=size, model_name=model, pretrained=False)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": classifier.state_dict(), "hyper_parameters": dict(classifier.hparams),
                "pytorch-lightning_version": pl.__version__}, out / "checkpoints" / "untrained.ckpt")
    write_json(out / "run.json", {"model": model, "family": str(conf.family), "timm_name": conf.timm_name,
                                  "image_size": size, "task": "binary", "class_names": list(BINARY_CLASSES),
                                  "stain": {"method": "none"}, "checkpoint": "checkpoints/untrained.ckpt",
                                  "trainer": {"precision": "32-true"}, "config": {"data": {"interpolation": "bilinear"}}})
    return out


def plain_loop(model: torch.nn.Module, paths: list[str], batch: int) -> float:
    """Seconds for the hand-written loop over ``paths`` with ``model`` (the checkpoint as a user loads it)."""
    size, device = int(model.hparams.image_size), next(model.parameters()).device
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(paths), batch):
            arrays = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR))
                      for p in paths[start:start + batch]]
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(device)
            model(model.preprocess(x)).softmax(dim=1).cpu()
    return time.perf_counter() - started


def ours(predictor: Predictor, paths: list[str], batch: int, workers: int) -> float:
    started = time.perf_counter()
    result = predictor.run(paths, batch_size=batch, num_workers=workers)
    assert len(result.table) == len(paths), result.skipped
    return time.perf_counter() - started


def _images(folder: Path | None, tmp: Path, n: int) -> list[str]:
    if folder is None:
        folder = REAL_SAMPLE if REAL_SAMPLE.is_dir() else write_dataset(
            tmp / "BreaKHis_v1", SyntheticSpec(patients_per_subtype=2, images_per_magnification=7, width=700, height=460))
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    return paths[:n] if n else paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=None, help="a folder of PNGs (default: the real sample)")
    parser.add_argument("--n", type=int, default=0, help="use only the first n images (0: all)")
    parser.add_argument("--model", default="v1_b0", help="a conf/model name for the comparison")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="histo-predict's loader processes")
    parser.add_argument("--repeats", type=int, default=3, help="timings per side, alternating; medians shown")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--models", default="", help="all, or a comma-separated list: images/s per model at its "
                                                     "paper size (histo-predict only)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = _images(args.images, tmp, args.n)
        run = untrained_run(tmp / "run", args.model, args.size)
        predictor = Predictor.from_runs([run], device=args.device)
        plain_model = load_classifier(run / "checkpoints" / "untrained.ckpt", map_location=str(predictor.device)).eval()
        ours(predictor, paths[: args.batch], args.batch, args.workers)  # warm-up: workers, caches, kernels
        plain_loop(plain_model, paths[: args.batch], args.batch)
        times = {"plain": [], "histo-predict": []}
        for r in range(args.repeats):
            for side in ("plain", "histo-predict") if r % 2 == 0 else ("histo-predict", "plain"):
                seconds = (plain_loop(plain_model, paths, args.batch) if side == "plain"
                           else ours(predictor, paths, args.batch, args.workers))
                times[side].append(seconds)
        rates = {side: [len(paths) / s for s in t] for side, t in times.items()}
        per_model = [_model_rate(tmp, m, paths, args) for m in _model_list(args.models)]

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU ({platform.machine()}, {torch.get_num_threads()} torch threads)"
    print(f"# histo-predict benchmark on {device}: {len(paths)} images, {args.model} at {args.size} px, batch "
          f"{args.batch}, {args.workers} loader workers, {args.repeats} alternating repeats; torch {torch.__version__}\n")
    print("| path | images/s (median) | min - max | vs plain |")
    print("|---|---|---|---|")
    plain = statistics.median(rates["plain"])
    for side, values in rates.items():
        median = statistics.median(values)
        print(f"| {side} | {median:,.1f} | {min(values):,.1f} - {max(values):,.1f} | {median / plain:.2f}x |")
    if per_model:
        print("\n| model | size | histo-predict images/s |")
        print("|---|---|---|")
        for model, size, rate in per_model:
            print(f"| {model} | {size} | {rate:,.1f} |")
    print(json.dumps({"images": len(paths), "rates": rates}), file=sys.stderr)
    print(f"ratio: {statistics.median(rates['histo-predict']) / plain:.2f}")


def _model_list(spec: str) -> list[str]:
    return [] if not spec else list(MODELS) if spec == "all" else spec.split(",")


def _model_rate(tmp: Path, model: str, paths: list[str], args) -> tuple[str, int, float]:
    predictor = Predictor.from_runs([untrained_run(tmp / f"run_{model}", model)], device=args.device)
    ours(predictor, paths[: args.batch], args.batch, args.workers)
    seconds = statistics.median(ours(predictor, paths, args.batch, args.workers) for _ in range(args.repeats))
    return model, predictor.members[0].input.image_size, len(paths) / seconds


if __name__ == "__main__":
    main()
