"""`make paper-smoke`: the paper's whole pipeline (ten models, three ensembles, the report) on synthetic data."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from histo.evaluation.compare import fold_summary, fold_summary_markdown

REPO = Path(__file__).resolve().parents[1]
MODELS = ["V1-B0", "V1-B1", "V1-B2", "V1-B3", "V1-B4", "V2-B0", "V2-B1", "V2-B2", "V2-B3", "V2-S"]
METHODS = ["soft", "hard", "weighted", "stack", "greedy", "feature_stack"]


@pytest.mark.slow
def test_make_paper_smoke_reports_every_model_and_ensemble(tmp_path):
    out = tmp_path / "smoke"
    result = subprocess.run(["make", "-C", str(REPO), "paper-smoke", f"OUT={out}"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{out}/report/report.html" in result.stdout  # it says where the results are
    table = (out / "report" / "report.md").read_text()
    rows = set(re.findall(r"^\| \d+ \| ([^|]+?) \|", table, flags=re.M))
    expected = set(MODELS) | {f"{e} {m}" for e in ("v1", "v2", "all") for m in METHODS}
    assert expected <= rows, f"missing rows: {sorted(expected - rows)}"
    assert "paper accuracy" in table  # the paper's numbers beside ours
    for ensemble in ("v1", "v2", "all"):
        members = json.loads((out / "ensembles" / ensemble / "metrics.json").read_text())["members"]
        assert len(members) == (10 if ensemble == "all" else 5)


def test_fold_summary_gives_mean_and_spread(tmp_path):
    reports = []
    for fold, acc in enumerate([0.8, 0.9, 1.0]):
        doc = {"rows": {"V1-B0": {"kind": "model", "overall": {"accuracy": acc, "balanced_accuracy": acc}},
                        "v1 soft": {"kind": "ensemble", "overall": {"accuracy": 0.95, "balanced_accuracy": 0.95}}}}
        reports.append(tmp_path / f"fold{fold}.json")
        reports[-1].write_text(json.dumps(doc))
    summary = fold_summary(reports).set_index("row")
    assert summary.loc["V1-B0", "accuracy_mean"] == pytest.approx(0.9)
    assert summary.loc["V1-B0", "accuracy_std"] == pytest.approx(0.1)
    assert (summary.loc["V1-B0", "accuracy_min"], summary.loc["V1-B0", "accuracy_max"]) == (0.8, 1.0)
    assert summary.index[0] == "v1 soft" and summary.loc["v1 soft", "accuracy_count"] == 3
    text = fold_summary_markdown(summary.reset_index())
    assert "0.900 ± 0.100 (0.800-1.000)" in text and pd.notna(summary.loc["v1 soft", "accuracy_std"])
