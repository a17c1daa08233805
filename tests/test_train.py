"""Training end to end: prediction files, run.json, checkpoints that load without Hydra."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from histo.evaluation import predictions
from histo.evaluation.run_dir import RunDir


def test_short_run_writes_valid_prediction_files(trained_runs):
    for path in trained_runs:
        run = RunDir(path)
        record = run.record()
        split = pd.read_csv(run.split_path)
        for name in ("val", "test"):
            frame = run.read_predictions(name)
            assert sorted(frame["image"]) == sorted(split.loc[split["split"] == name, "image"])
            assert predictions.class_names(frame) == ["benign", "malignant"]
            assert np.load(path / "features" / f"{name}.npy").shape[0] == len(frame)
        assert record["split"]["test_patients_in_train"] == 0
        assert set(record["metrics"]["test"]["overall"]) >= {"accuracy", "auroc", "patient_recognition_rate"}
        json.loads(run.record_path.read_text())  # strict JSON
