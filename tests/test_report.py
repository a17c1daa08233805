"""The report (histo.report) over the ``trained_runs`` fixture and an ensemble of it."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from histo.ensemble.stage import run_ensemble
from histo.evaluation import metrics, paper
from histo.evaluation.run_dir import RunDir
from histo.explain.stage import run_explain
from histo.report.sources import ReportError
from histo.report.stage import run_report


@pytest.fixture(scope="module")
def ensemble_dir(trained_runs, tmp_path_factory) -> Path:
    """An ensemble of the two runs, with Grad-CAM of its misclassified images in the conventional place."""
    out = tmp_path_factory.mktemp("ensemble")
    run_ensemble(trained_runs, out, methods=["soft", "hard"], name="v1v2", resamples=100)
    run_explain(trained_runs, out / "explain", images="misclassified", layer="blocks.2", max_images=3)
    return out


def test_report_from_an_ensemble_and_its_members(ensemble_dir, tmp_path):
    out = tmp_path / "report"
    page = run_report([ensemble_dir], out, compare_to="paper", resamples=100).read_text()
    names = ["V1-B0", "V2-B0", "v1v2 soft", "v1v2 hard"]
    table = page[page.index('<h2 id="metrics">'):page.index('<h2 id="curves">')]
    assert "<table>" in table and all(f"<b>{n}</b>" in table for n in names)
    assert "paper accuracy" in table and "0.988" in table and html.escape(paper.CAVEAT) in page  # the paper's V1-B0 beside ours

    # the same numbers as the ensemble stage, from the same prediction files and bootstrap
    document = json.loads((out / "metrics.json").read_text())
    ensemble = json.loads((ensemble_dir / "metrics.json").read_text())
    for name, entry in (("v1v2 soft", ensemble["methods"]["soft"]), ("V1-B0", ensemble["members"]["v1_b0"])):
        ours = document["rows"][name]
        for metric in metrics.METRICS:
            assert ours["overall"][metric] == pytest.approx(entry["test"]["overall"][metric], nan_ok=True)
            assert ours["ci"]["overall"][metric] == pytest.approx(entry["test"]["ci"]["overall"][metric], nan_ok=True)
        assert sum(map(sum, ours["confusion"])) == ours["overall"]["n_images"]

    # self-contained: every picture is embedded, nothing is fetched
    sources = re.findall(r'src="([^"]+)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for plot in ("learning_curves", "roc", "confusion", "per_magnification", "per_subtype", "per_patient"):
        assert (out / "plots" / f"{plot}.png").is_file()

    # the gallery: every misclassified image with a thumbnail, and Grad-CAM where explain computed it
    wrong = document["misclassified"]
    assert len(wrong) > 0 and page.count('class="card"') == len(wrong)
    explained = json.loads((ensemble_dir / "explain" / "explain.json").read_text())["images"]
    assert 0 < page.count("Grad-CAM montage</summary>") == len({e["image"] for e in explained} & {w["image"] for w in wrong})

    # markdown: every picture it references exists
    markdown = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+\.png)\)", markdown)
    assert len(links) >= 6 + len(wrong)
    assert all((out / link).resolve().is_file() for link in links), links


def test_report_of_runs_on_val_and_refusals(trained_runs, tmp_path):
    out = tmp_path / "val"
    run_report(trained_runs, out, split="val", resamples=0, gallery_max=2)
    document = json.loads((out / "metrics.json").read_text())
    frame = RunDir(trained_runs[0]).read_predictions("val")
    assert document["rows"]["V1-B0"]["overall"]["accuracy"] == pytest.approx(metrics.evaluate(frame, 0)["overall"]["accuracy"])
    per_patient = document["rows"]["V1-B0"]["per_patient"]
    assert np.mean([p["share_correct"] for p in per_patient.values()]) == pytest.approx(
        document["rows"]["V1-B0"]["overall"]["patient_recognition_rate"])
    assert (out / "report.md").read_text().count("![](gallery/") == min(2, len(document["misclassified"]))

    with pytest.raises(ReportError, match="neither a training run"):
        run_report([tmp_path], tmp_path / "x")
    with pytest.raises(ReportError, match="compare_to='arxiv'"):
        run_report(trained_runs, tmp_path / "x", compare_to="arxiv")


@pytest.mark.slow
def test_histo_report_command(trained_runs, tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "histo.report", f"runs=[{trained_runs[0]},{trained_runs[1]}]", f"out={out}",
         "bootstrap.resamples=50", "title=Two tiny runs"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    page = (out / "report.html").read_text()
    assert "<title>Two tiny runs</title>" in page and "<b>V2-B0</b>" in page
    assert (out / "report.md").is_file()


def test_report_warns_of_image_level_folds_and_shows_hard_voting_as_votes(tmp_path):
    from helpers import binary_run, binary_split
    meta = {"val": binary_split("val", 1, 4), "test": binary_split("test", 5, 8)}
    runs = [binary_run(tmp_path / name, name, meta, {"val": 1.0, "test": 1.0}, k)
            for k, name in enumerate(["v1_b0", "v1_b1", "v2_b0"])]
    run_ensemble(runs, tmp_path / "ens", methods=["hard", "weighted"], name="v", resamples=0)
    run_report([tmp_path / "ens"], tmp_path / "report", resamples=0, gallery_max=0)
    markdown = (tmp_path / "report" / "report.md").read_text()
    warning = next(line for line in markdown.splitlines() if line.startswith("> **Warning**") and "image-level" in line)
    assert "weighted" in warning
    hard_row = next(line for line in markdown.splitlines() if "| v hard |" in line)
    assert "n/a" in hard_row and "vote share" in markdown
    rows = json.loads((tmp_path / "report" / "metrics.json").read_text())["rows"]
    assert rows["v hard"]["overall"]["ece"] is None and rows["v hard"]["score"] == "vote_share"
