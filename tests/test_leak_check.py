"""scripts/leak_check.py (make leak-check): the paper's image split against a patient split of the same images."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "leak_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("leak_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(strategy, seed, accuracy, leak):
    return {"run": f"{strategy}{seed}", "strategy": strategy, "seed": seed, "model": "lite0", "epochs": 3, "data": "d",
            "n_images": 30, "n_patients": 3 if leak == 0 else 16,
            "accuracy": accuracy, "balanced_accuracy": accuracy, "patient_recognition_rate": accuracy,
            "ci": {m: None for m in ("accuracy", "balanced_accuracy", "patient_recognition_rate")},
            "ci_withheld": "1 benign and 2 malignant test patients: an interval needs at least 5 per class" if leak == 0 else None,
            "leak": {"number": leak, "slide": leak}}


def test_summary_pairs_seeds_and_tables_the_leak():
    leak_check = _module()
    runs = [_run("image", s, a, 16) for s, a in enumerate([0.95, 0.97, 0.96])]
    runs += [_run("patient", s, a, 0) for s, a in enumerate([0.70, 0.80, 0.75])]
    summary = leak_check.summarize(runs)
    accuracy = summary["metrics"]["accuracy"]
    assert accuracy["image"]["mean"] == pytest.approx(0.96) and accuracy["patient"]["mean"] == pytest.approx(0.75)
    assert accuracy["difference"]["mean"] == pytest.approx(0.21)
    low, high = accuracy["difference"]["interval"]
    assert low < 0.21 < high and high <= 1
    text = leak_check.markdown(summary, runs)
    assert text.startswith("# The paper's leak on d: lite0, 3 epochs, seeds 0, 1, 2")
    assert "| test people also in train (per seed) | 16, 16, 16 | 0, 0, 0 | |" in text
    assert "| accuracy | 0.960 [" in text and "(no CI)" in text and "No CI: 1 benign and 2 malignant" in text


@pytest.mark.slow
def test_leak_check_end_to_end_on_synthetic_data(synthetic_root, tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(synthetic_root), "--seeds", "1", "--epochs", "1", "--model", "v1_b0",
         "--out", str(tmp_path), "model.pretrained=false", "model.image_size=32", "model.frozen_layers=0",
         "data.num_workers=0", "data.cache=off", "trainer.num_sanity_val_steps=0"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((tmp_path / "leak_check.json").read_text())
    runs = {r["strategy"]: r for r in document["runs"]}
    assert set(runs) == {"image", "patient"}
    assert runs["image"]["leak"]["number"] > 0 and runs["patient"]["leak"] == {"number": 0, "slide": 0}
    assert "| accuracy |" in result.stdout and (tmp_path / "leak_check.html").read_text().count("<table>") == 2
