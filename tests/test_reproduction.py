"""`make paper-smoke`: the paper's whole pipeline (ten models, three ensembles, the report) on synthetic data."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from histo.ensemble.methods import METHODS
from histo.evaluation.run_comparison import fold_summary, fold_summary_markdown

MODELS = ["V1-B0", "V1-B1", "V1-B2", "V1-B3", "V1-B4", "V2-B0", "V2-B1", "V2-B2", "V2-B3", "V2-S"]


@pytest.mark.slow
def test_make_paper_smoke_reports_every_model_and_ensemble(paper_smoke):
    out, result = paper_smoke
    assert f"{out}/report/report.html" in result.stdout  # it says where the results are
    table = (out / "report" / "report.md").read_text()
    rows = set(re.findall(r"^\| \d+ \| ([^|]+?) \|", table, flags=re.M))
    expected = set(MODELS) | {f"{e} {m}" for e in ("v1", "v2", "all") for m in METHODS}
    assert expected <= rows, f"missing rows: {sorted(expected - rows)}"
    assert "paper accuracy" in table  # the paper's numbers beside ours
    for ensemble in ("v1", "v2", "all"):
        members = json.loads((out / "ensembles" / ensemble / "metrics.json").read_text())["members"]
        assert len(members) == (10 if ensemble == "all" else 5)

    # Grad-CAM of the ten models (histo-explain max_images=6) ranks the misclassified images as the report's
    # gallery does, so the gallery's first cards are the explained images, each with its montage
    explained = [e["image"] for e in json.loads((out / "ensembles/all/explain/explain.json").read_text())["images"]]
    gallery = [w["image"] for w in json.loads((out / "report" / "metrics.json").read_text())["misclassified"]]
    assert explained and gallery[:len(explained)] == explained
    page = (out / "report" / "report.html").read_text()
    cards = page.split('<div class="card">')[1:]
    with_montage = ["Grad-CAM montage" in card for card in cards]
    assert with_montage[:len(explained)] == [True] * len(explained) and not any(with_montage[len(explained):])


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
