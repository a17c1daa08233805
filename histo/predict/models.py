"""The trained models a Predictor applies: each run's best checkpoint, its model input and its precision."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from histo.evaluation.model_input import ModelInput, model_input
from histo.evaluation.run_dir import RunDir, unique_names
from histo.predict.errors import PredictError

AUTOCAST = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass
class RunModel:
    """One finished run, loaded for prediction: ``name`` is unique among a Predictor's members."""

    name: str
    run: Path
    record: dict
    model: torch.nn.Module  # a histo.models.Classifier in eval mode on the Predictor's device
    input: ModelInput
    precision: str  # a key of AUTOCAST: the run's own precision unless the caller chose one

    @property
    def class_names(self) -> list[str]:
        return list(self.record["class_names"])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, C) and penultimate features (N, D), float32, for a uint8 (N, 3, S, S) batch on the
        device: the same steps as the run's own prediction (``predict_step`` after ``preprocess``)."""
        dtype = AUTOCAST[self.precision]
        autocast = (torch.autocast(self.device.type, dtype=dtype) if dtype is not None
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            out = self.model.predict_step({"image": self.model.preprocess(images), "index": None}, 0)
        return out["logits"].float(), out["features"].float()


def load_runs(paths: Sequence[str | Path], device: torch.device, precision: str = "auto",
              names: Sequence[str] | None = None, channels_last: bool = True) -> list[RunModel]:
    """The runs at ``paths`` on ``device``; ``names`` (default: the model names, ``model@<dir>`` when they
    repeat). All must predict the same classes. ``precision``: ``auto`` (each run's own) or a key of AUTOCAST.
    ``channels_last``: NHWC network and input, about 1.6x faster convolutions on CPU (scripts/bench_predict.py);
    logits change only by float rounding (below 1e-5)."""
    if precision != "auto" and precision not in AUTOCAST:
        raise PredictError(f"precision={precision!r} is not valid; use auto (each run's own) or one of "
                           f"{', '.join(AUTOCAST)}.")
    paths = [Path(p) for p in paths]
    if not paths:
        raise PredictError("No runs given: runs='[<run dir>,...]' (finished training runs) or ensemble=<dir>.")
    records = [_record(p) for p in paths]
    if names is None:
        models = [r.get("model") or p.name for r, p in zip(records, paths, strict=True)]
        names = unique_names(models, paths)
    loaded = [_load(path, record, name, device, precision, channels_last)
              for path, record, name in zip(paths, records, names, strict=True)]
    for other in loaded[1:]:
        if other.class_names != loaded[0].class_names:
            raise PredictError(f"Runs {loaded[0].run} and {other.run} predict different classes "
                               f"({loaded[0].class_names} vs {other.class_names}); combine runs of one task.")
    return loaded


def _record(path: Path) -> dict:
    run = RunDir(path)
    if not run.path.is_dir():
        raise PredictError(f"Run {path} does not exist.")
    try:
        return run.record()
    except (FileNotFoundError, ValueError) as error:
        raise PredictError(f"Run {path} cannot be used: {error}") from error


def _load(path: Path, record: dict, name: str, device: torch.device, precision: str, channels_last: bool) -> RunModel:
    from histo.models import load_classifier  # imports timm and Lightning: only when models are loaded

    run = RunDir(path)
    try:
        checkpoint = run.best_checkpoint()
    except FileNotFoundError as error:
        raise PredictError(f"Run {path} cannot predict: {error}") from error
    if not checkpoint.is_file():
        raise PredictError(f"Run {path} cannot predict: its best checkpoint {checkpoint} (run.json 'checkpoint') "
                           "does not exist.")
    own = str((record.get("trainer") or {}).get("precision") or "32-true")
    chosen = own if precision == "auto" else precision
    if chosen not in AUTOCAST:
        raise PredictError(f"Run {path} was trained with precision {own}, which prediction does not reproduce; "
                           f"pass precision= one of {', '.join(AUTOCAST)}.")
    try:
        inputs = model_input(run.path, record)
    except (ValueError, KeyError, RuntimeError) as error:
        raise PredictError(f"Run {path}: cannot rebuild its model input: {error}") from error
    model = load_classifier(checkpoint, map_location=str(device)).float().eval()
    model.save_features = True
    if channels_last:
        model.net = model.net.to(memory_format=torch.channels_last)
        model.hparams.channels_last = True  # preprocess() then hands the network NHWC input
    if int(model.hparams.image_size) != inputs.image_size:
        raise PredictError(f"Run {path}: checkpoint {checkpoint} is for {model.hparams.image_size} px but run.json "
                           f"says image_size={inputs.image_size}; the run directory is inconsistent.")
    return RunModel(name, run.path, record, model, inputs, chosen)
