"""A training run's directory: where its files are, and its ``run.json`` record.

    <run>/run.json                 what the run was and what it scored (see DESIGN.md)
    <run>/split.csv                the split it used (fingerprint in run.json)
    <run>/predictions/{val,test}.csv
    <run>/features/{val,test}.npy  penultimate features (predict.features=true)
    <run>/checkpoints/*.ckpt       the best checkpoint is named in run.json
    <run>/csv/metrics.csv          per-epoch training log (always written, whatever the logger)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from histo.evaluation import predictions
from histo.evaluation.json_file import write_json

PREDICTED_SPLITS = ("val", "test")  # the splits a run writes prediction files for, in the predict loaders' order


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def record_path(self) -> Path:
        return self.path / "run.json"

    @property
    def split_path(self) -> Path:
        return self.path / "split.csv"

    @property
    def training_log_path(self) -> Path:
        """The per-epoch CSV log every run writes, whatever else it logs to (learning curves)."""
        return self.path / "csv" / "metrics.csv"

    def predictions_path(self, split: str) -> Path:
        return self.path / "predictions" / f"{split}.csv"

    def features_path(self, split: str) -> Path:
        return self.path / "features" / f"{split}.npy"

    def read_predictions(self, split: str) -> pd.DataFrame:
        return predictions.read(self.predictions_path(split))

    def record(self) -> dict:
        if not self.record_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a finished run: {self.record_path} does not exist.")
        return json.loads(self.record_path.read_text())

    def write_record(self, record: dict) -> Path:
        return write_json(self.record_path, record)

    def best_checkpoint(self) -> Path:
        """The checkpoint the prediction files came from, as recorded in run.json."""
        ckpt = self.record().get("checkpoint")
        if not ckpt:
            raise FileNotFoundError(f"{self.record_path} names no checkpoint (was the run a fast_dev_run?).")
        path = Path(ckpt)
        return path if path.is_absolute() else self.path / path

