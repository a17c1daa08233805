"""The report (histo.report) over the ``trained_runs`` fixture and an ensemble of it."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_curve

from histo.ensemble.stage import run_ensemble
from histo.evaluation import metrics, paper, predictions
from histo.evaluation.run_dir import RunDir
from histo.explain.stage import run_explain
from histo.report import gallery, plots
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
    assert '<table class="metrics">' in table and all(f"<b>{n}</b>" in table for n in names)
    assert "paper accuracy" in table and "0.988" in table and html.escape(paper.CAVEAT) in page  # the paper's V1-B0 beside ours
    assert "PAPER.md" not in page and "README.md, section" in page  # it cites what the repository holds
    assert "Balanced accuracy with its" in page  # per magnification: the metric histo-ensemble's table.md shows

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

    # the gallery: every misclassified image, as stored and as the model saw it, ranked as histo-explain ranks
    # them, so the first cards are the images explain (max_images=3) explained, each with its montage
    wrong = document["misclassified"]
    cards = page.split('<div class="card">')[1:]
    assert len(wrong) > 0 and len(cards) == len(wrong)
    assert all(card.count("<img") >= 2 and "original" in card and "model input" in card for card in cards)
    explained = [e["image"] for e in json.loads((ensemble_dir / "explain" / "explain.json").read_text())["images"]]
    assert explained and [w["image"] for w in wrong[:len(explained)]] == explained
    assert ["Grad-CAM montage</summary>" in card for card in cards] == [i < len(explained) for i in range(len(cards))]

    # markdown: every picture it references exists
    markdown = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+\.png)\)", markdown)
    assert len(links) >= 6 + len(wrong)
    assert all((out / link).resolve().is_file() for link in links), links


def test_report_of_runs_on_val_and_refusals(trained_runs, tmp_path):
    out = tmp_path / "val"
    run_report(trained_runs, out, split="val", resamples=0, gallery=gallery.GallerySettings(max_images=2))
    document = json.loads((out / "metrics.json").read_text())
    frame = RunDir(trained_runs[0]).read_predictions("val")
    assert document["rows"]["V1-B0"]["overall"]["accuracy"] == pytest.approx(metrics.evaluate(frame, 0)["overall"]["accuracy"])
    per_patient = document["rows"]["V1-B0"]["per_patient"]
    assert np.mean([p["share_correct"] for p in per_patient.values()]) == pytest.approx(
        document["rows"]["V1-B0"]["overall"]["patient_recognition_rate"])
    assert (out / "report.md").read_text().count("![](gallery/") == 2 * min(2, len(document["misclassified"]))  # original, input

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


def _training_log(epochs: int, rng) -> pd.DataFrame:
    """Per-epoch means as :func:`plots.read_curves` returns them, epochs from 0."""
    loss = np.sort(rng.uniform(0.05, 0.7, (2, epochs)))[:, ::-1]
    return pd.DataFrame({"train/loss": loss[0], "val/loss": loss[1], "train/accuracy": 1 - loss[0] / 2,
                         "val/accuracy": 1 - loss[1] / 2}, index=pd.Index(range(epochs), name="epoch"))


@pytest.mark.parametrize(("epochs", "runs"), [(1, 2), (1, 13), (40, 2), (40, 13)])
def test_plots_fit_the_page_for_one_epoch_and_forty_two_curves_and_thirteen(tmp_path, epochs, runs):
    rng = np.random.default_rng(epochs * runs)
    names = [f"all feature_stack {k}" for k in range(runs)]  # as long as the paper report's names
    colour = plots.colours(names)
    assert len(set(colour.values())) == runs
    curves = {n: (_training_log(epochs, rng), epochs - 1) for n in names}
    figures = [plots.learning_curves(curves, colour, tmp_path / "curves.png")]
    rows = [SimpleNamespace(name=n, kind="model" if k < runs // 2 + 1 else "ensemble", source=Path(f"ens{k % 3}"))
            for k, n in enumerate(names)]
    numbers = {}
    for k, n in enumerate(names):
        scores = rng.uniform(size=60) + np.repeat([0, 0.5], 30)
        fpr, tpr, _ = roc_curve(np.repeat([0, 1], 30), scores if k % 4 else np.arange(60))  # every 4th: the same curve
        numbers[n] = {"roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}, "overall": {"auroc": 0.95},
                      "ci": {"overall": {"auroc": [0.9, 0.99]}}}
    same = plots.identical_curves(rows, numbers)
    assert same[names[0]] == names[::4]
    assert len(plots.roc_groups(rows)) == (1 if runs <= 8 else 1 + len({r.source for r in rows if r.kind == "ensemble"}))
    figures.append(plots.roc_curves(rows, numbers, colour, "malignant", tmp_path / "roc.png"))
    for path in figures:
        assert Image.open(path).width <= plots.PAGE_PX  # shown 1:1 in a 1280 px window: its text stays readable


def test_learning_curves_count_epochs_from_zero_as_the_checkpoints(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,step,train/loss,val/loss\n0,5,,0.6\n0,5,0.7,\n1,11,,0.5\n1,11,0.6,\n")
    curves = plots.read_curves(log)
    assert curves.index.tolist() == [0, 1]
    assert plots.best_epoch({"checkpoint": "checkpoints/best-epoch001.ckpt"}, curves) == 1


def test_learning_curves_read_logs_written_before_the_metric_names_were_unified(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,step,val/acc,val/balanced_acc,train/acc\n0,5,0.6,0.5,\n0,5,,,0.7\n1,11,0.8,0.7,\n")
    curves = plots.read_curves(log)
    assert {"val/accuracy", "val/balanced_accuracy", "train/accuracy"} <= set(curves.columns)
    assert plots.best_epoch({}, curves) == 1


def test_gallery_ranks_as_explain_over_the_single_models_then_adds_what_only_ensembles_get_wrong():
    def frame(p_malignant):  # images a, b (malignant) and c (benign)
        logit = np.log(np.asarray(p_malignant) / (1 - np.asarray(p_malignant)))
        return pd.DataFrame({"image": ["a", "b", "c"], "patient": ["1", "2", "3"], "subtype": ["DC", "DC", "A"],
                             "magnification": [40, 40, 40], "label": [1, 1, 0], "logit_benign": 0.0,
                             "logit_malignant": logit})

    models = [SimpleNamespace(name=n, kind="model", frame=frame([0.3, 0.4, 0.1])) for n in ("A", "B")]
    ensemble = SimpleNamespace(name="E", kind="ensemble", frame=frame([0.9, 0.1, 0.8]))  # wrong on b (surely) and c
    wrong = gallery.misclassified([*models, ensemble], ["benign", "malignant"])
    # explain over the two runs: a and b, each wrong in both, a more confidently; the ensemble's votes change nothing
    _, order = predictions.most_wrong_first([m.frame for m in models])
    assert [w["image"] for w in wrong] == ["a", "b", "c"] and models[0].frame["image"][order[:2]].tolist() == ["a", "b"]
    assert [w["n_wrong"] for w in wrong] == [2, 3, 1]


def test_report_warns_of_image_level_folds_and_shows_hard_voting_as_votes(tmp_path):
    from helpers import binary_run, binary_split
    meta = {"val": binary_split("val", 1, 4), "test": binary_split("test", 5, 8)}
    runs = [binary_run(tmp_path / name, name, meta, {"val": 1.0, "test": 1.0}, k)
            for k, name in enumerate(["v1_b0", "v1_b1", "v2_b0"])]
    run_ensemble(runs, tmp_path / "ens", methods=["hard", "weighted"], name="v", resamples=0)
    run_report([tmp_path / "ens"], tmp_path / "report", resamples=0, gallery=gallery.GallerySettings(max_images=0))
    markdown = (tmp_path / "report" / "report.md").read_text()
    warning = next(line for line in markdown.splitlines() if line.startswith("> **Warning**") and "image-level" in line)
    assert "weighted" in warning
    hard_row = next(line for line in markdown.splitlines() if "| v hard |" in line)
    assert "n/a" in hard_row and "vote share" in markdown
    rows = json.loads((tmp_path / "report" / "metrics.json").read_text())["rows"]
    assert rows["v hard"]["overall"]["ece"] is None and rows["v hard"]["score"] == "vote_share"
