"""Export a run's network for serving without histo: ONNX or TorchScript, with a JSON sidecar.

The exported model takes what an image decoder gives, uint8 RGB (N, 3, S, S) with any N, and
returns the logits (N, C); the model's mean/std normalization is inside. What cannot be inside is
said in the sidecar ``<file>.json``: the square size and resize (squash, OpenCV interpolation), the
stain normalization to apply first (method, fitted target values and settings: histo.stain reproduces
it from them) and the class names. Each export is verified against the checkpoint before it is
reported: the largest logit difference is in the sidecar and must be below ``TOLERANCE``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from histo.evaluation.json_file import write_json
from histo.predict.errors import PredictError
from histo.predict.models import RunModel, load_runs
from histo.predict.sources import collect

log = logging.getLogger("histo.export")

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4


class ServedClassifier(torch.nn.Module):
    """uint8 RGB (N, 3, S, S) -> logits (N, C): a classifier's network with its input normalization inside."""

    def __init__(self, classifier):
        super().__init__()
        self.net = classifier.net
        self.register_buffer("mean", classifier._mean.detach().clone())
        self.register_buffer("std", classifier._std.detach().clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images.float() - self.mean) / self.std)


def export_run(run: str | Path, fmt: str, out: str | Path, images=None) -> dict:
    """Export the best checkpoint of ``run`` as ``fmt`` to ``out`` (+ ``out.json``); verify on ``images``
    (anything :mod:`histo.predict.sources` reads; default a few random images). Returns the sidecar."""
    if fmt not in FORMATS:
        raise PredictError(f"format={fmt!r} is not valid; use one of {', '.join(FORMATS)}.")
    (member,) = load_runs([run], torch.device("cpu"), precision="32-true", channels_last=False)
    served = ServedClassifier(member.model).eval()
    size = member.input.image_size
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        _onnx(served, example, out)
    else:
        _torchscript(served, example, out)
    batch = _verification_batch(member, images)
    gap = float(np.abs(run_exported(out, batch.numpy()) - _reference(served, batch)).max())
    if gap > TOLERANCE:
        raise PredictError(f"The exported {out} differs from the checkpoint by {gap:.2e} in the logits "
                           f"(more than {TOLERANCE}); do not use it, and please report it.")
    sidecar = _sidecar(member, served, fmt, out, gap, len(batch), images is not None)
    write_json(_sidecar_path(out), sidecar)
    log.info("Exported %s (%s) to %s and %s; largest logit difference from the checkpoint on %d image(s): %.2e.",
             member.run, fmt, out, _sidecar_path(out), len(batch), gap)
    return sidecar


def run_exported(path: str | Path, images: np.ndarray) -> np.ndarray:
    """Logits of an exported model (ONNX through onnxruntime, TorchScript through torch) for uint8 (N, 3, S, S)."""
    path = Path(path)
    if path.suffix == FORMATS["onnx"]:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images})[0]
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(images)).numpy()


def _onnx(served: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (the exporter of torch.onnx needs it)
    except ImportError as error:
        raise PredictError("format=onnx needs the export extra: pip install 'histo[export]' (onnx, onnxscript, "
                           "onnxruntime).") from error
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # its optimisation passes log each step at INFO
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(served, (example,), str(out), dynamo=True, input_names=["images"], output_names=["logits"],
                      dynamic_shapes={"images": {0: batch}}, external_data=False, verbose=False)


def _torchscript(served: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(served, example, check_trace=False)  # convolutions only: valid for any batch size
    traced.save(str(out))


def _verification_batch(member: RunModel, images) -> torch.Tensor:
    size = member.input.image_size
    if images is None:
        return torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    from histo.predict.prepared import PreparedImages

    sources, _ = collect(images)
    dataset = PreparedImages(sources, {member.input.key: member.input})
    items = [item for item in (dataset[i] for i in range(len(dataset))) if "error" not in item]
    if not items:
        raise PredictError(f"images={images} holds no usable image to verify the export on.")
    return torch.stack([item["inputs"][member.input.key] for item in items])


def _reference(served: torch.nn.Module, batch: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return served(batch).numpy()


def _sidecar(member: RunModel, served: ServedClassifier, fmt: str, out: Path, gap: float, n: int, real: bool) -> dict:
    size = member.input.image_size
    return {
        "format": fmt,
        "file": out.name,
        "run": str(member.run.resolve()),
        "model": member.record.get("model"),
        "timm_name": member.record.get("timm_name"),
        "task": member.record.get("task"),
        "class_names": member.class_names,
        "input": {"name": "images", "dtype": "uint8", "layout": "NCHW", "channels": "RGB", "shape": ["batch", 3, size, size],
                  "range": "0-255"},
        "output": {"name": "logits", "shape": ["batch", len(member.class_names)],
                   "meaning": "class logits in class_names order; softmax gives probabilities"},
        "preprocessing": {
            "decode": "to RGB uint8: 16-bit to the high byte, grayscale and palette to RGB, alpha dropped",
            **member.input.describe(),
            "order": "stain-normalize the full-resolution image, then resize to image_size x image_size",
            "normalization": "inside the model: (x - 255 * mean) / (255 * std)",
            "mean": [float(v) for v in member.model.hparams.mean],
            "std": [float(v) for v in member.model.hparams.std],
        },
        "verification": {"max_abs_logit_difference": gap, "images": n,
                         "on": "the given images" if real else "random uint8 images", "tolerance": TOLERANCE},
    }


def _sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")
