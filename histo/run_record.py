"""run.json: what a finished training run was and what it scored, built in one place.

:func:`run_record` lays out every key; :mod:`histo.train` writes the record last
(:meth:`~histo.evaluation.run_dir.RunDir.write_record`) and every later stage reads it through
:class:`~histo.evaluation.run_dir.RunDir`.
"""

from __future__ import annotations

import platform
import time
from importlib import metadata
from pathlib import Path

from omegaconf import OmegaConf

from histo.evaluation import metrics, predictions
from histo.evaluation.run_dir import PREDICTED_SPLITS, RunDir


def run_record(cfg, config: dict, run: RunDir, inputs, trainer, best: str, resumed: dict, started: float) -> dict:
    """The record of a run whose prediction files are written: its config (``cfg``; ``config`` resolved),
    what it trained on (``inputs``, a :class:`histo.train.TrainingData`), the fitted ``trainer`` and the
    ``best`` checkpoint it predicted with, what it resumed from, and its wall time since ``started``."""
    data = inputs.data
    scores = {split: metrics.evaluate(predictions.read(run.predictions_path(split))) for split in PREDICTED_SPLITS}
    return {
        "model": cfg.model.name,
        "family": cfg.model.family,
        "timm_name": cfg.model.timm_name,
        "image_size": cfg.model.image_size,
        "seed": cfg.seed,
        "experiment": cfg.name,
        "task": data.task,
        "class_names": list(data.class_names),
        "split": {
            **OmegaConf.to_container(cfg.split, resolve=True),
            "strategy": data.split.strategy,
            "fingerprint": data.split.fingerprint,
            "file": run.split_path.name,
            "counts": data.split.counts(),
            **_leak(data.split.test_patients_in_train(data.index), cfg.data.patient_key),
        },
        "data": data.summary(),
        "degenerate": inputs.degenerate,
        "stain": inputs.stain_record,
        "image_cache": inputs.cache.describe() if inputs.cache is not None else None,
        "checkpoint": str(_relative(best, run.path)) if best else None,
        "best_val_accuracy": _float(trainer.checkpoint_callback.best_model_score) if best else None,
        "epochs": trainer.current_epoch,
        "resumed_after_epochs": resumed.get("epochs_completed") if resumed else None,
        "trainer": {"world_size": trainer.world_size, "precision": str(trainer.precision),
                    "accelerator": type(trainer.accelerator).__name__,
                    "deterministic": cfg.trainer.get("deterministic", False)},
        "predictions": {split: str(run.predictions_path(split).relative_to(run.path)) for split in PREDICTED_SPLITS},
        "metrics": scores,
        "config": config,
        "versions": _versions(),
        "wall_time_s": round(time.time() - started, 1),
        "files": run.file_digests(),  # rows and sha256 of each prediction file: every reader checks them
    }


def _versions() -> dict:
    """Python's and the libraries' versions that shape a run (None: not installed)."""
    names = ("histo", "torch", "torchvision", "timm", "pytorch-lightning", "torchmetrics", "albumentations",
             "hydra-core", "numpy", "pandas", "scikit-learn")
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _leak(counts: dict[str, int], key: str) -> dict:
    """run.json's leak counts: under the run's own patient key, and under each key."""
    return {"test_patients_in_train": counts[key], "test_patients_in_train_by_key": counts}


def _relative(path, base):
    try:
        return Path(path).resolve().relative_to(Path(base).resolve())
    except ValueError:
        return Path(path)


def _float(value) -> float | None:
    return None if value is None else float(value)
