"""histo-export: ONNX and TorchScript models that give the checkpoint's logits, with a sidecar to prepare pixels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from histo.evaluation import predictions
from histo.evaluation.run_dir import RunDir
from histo.predict import PredictError
from histo.predict.export import export_run, run_exported
from histo.predict.models import load_runs


def _prepared_test_images(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """The run's test images as its model saw them (uint8 N, 3, S, S) and its logits for them."""
    frame = RunDir(run).read_predictions("test")
    root = Path(RunDir(run).record()["data"]["root"])
    (member,) = load_runs([run], torch.device("cpu"))
    from histo.data.image_file import read_rgb

    images = np.stack([member.input(read_rgb(root / p))[0].transpose(2, 0, 1) for p in frame["image"]])
    return images, predictions.logits(frame)


def test_onnx_export_gives_the_run_logits_for_any_batch(trained_runs, tmp_path):
    run = trained_runs[1]
    sidecar = export_run(run, "onnx", tmp_path / "model.onnx")
    images, logits = _prepared_test_images(run)
    assert np.abs(run_exported(tmp_path / "model.onnx", images) - logits).max() < 1e-4
    assert np.abs(run_exported(tmp_path / "model.onnx", images[:1]) - logits[:1]).max() < 1e-4
    on_disk = json.loads((tmp_path / "model.onnx.json").read_text())
    assert on_disk == json.loads(json.dumps(sidecar))
    assert on_disk["class_names"] == ["benign", "malignant"] and on_disk["input"]["shape"] == ["batch", 3, 32, 32]
    assert on_disk["preprocessing"]["interpolation"] == "bilinear" and on_disk["preprocessing"]["stain_method"] == "none"
    assert on_disk["verification"]["max_abs_logit_difference"] < 1e-4


def test_torchscript_export_through_the_command(trained_runs, tmp_path):
    run = trained_runs[0]
    root = Path(RunDir(run).record()["data"]["root"])
    image = root / RunDir(run).read_predictions("test")["image"].iloc[0]
    done = subprocess.run([sys.executable, "-m", "histo.export", f"run={run}", "format=torchscript",
                           f"out={tmp_path / 'm.pt'}", f"images={image}", f"hydra.run.dir={tmp_path / 'h'}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    images, logits = _prepared_test_images(run)
    assert np.abs(run_exported(tmp_path / "m.pt", images) - logits).max() < 1e-4
    sidecar = json.loads((tmp_path / "m.pt.json").read_text())
    assert sidecar["verification"]["on"] == "the given images" and sidecar["verification"]["images"] == 1
    bad = subprocess.run([sys.executable, "-m", "histo.export", f"run={run}", "format=tflite",
                          f"hydra.run.dir={tmp_path / 'h2'}"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "format='tflite' is not valid; use one of onnx, torchscript" in bad.stdout + bad.stderr


def test_export_refuses_a_run_without_checkpoint(tmp_path):
    with pytest.raises(PredictError, match="is not a finished run"):
        export_run(tmp_path, "onnx", tmp_path / "m.onnx")
