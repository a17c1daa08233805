"""Patient bootstrap intervals and McNemar's exact test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histo.evaluation import bootstrap, metrics, predictions
from histo.evaluation.mcnemar import mcnemar, mcnemar_frames


def _frame(n_patients=20, images_per_patient=6, seed=0, repeat=1):
    """Patients with a per-patient difficulty, so images of one patient are correlated."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = int(p % 3 != 0)  # a third benign
        skill = rng.normal(1.5, 1.5)  # some patients are hard
        for i in range(images_per_patient):
            margin = skill + rng.normal(0, 0.5)
            for r in range(repeat):
                rows.append({"image": f"p{p:02d}_{i:02d}_{r}.png", "patient": f"p{p:02d}", "subtype": "X",
                             "magnification": [40, 100, 200, 400][i % 4], "label": label,
                             "logit": margin if label else -margin})
    meta = pd.DataFrame(rows)
    return predictions.make_frame(meta, np.c_[np.zeros(len(meta)), meta["logit"]], ["benign", "malignant"])


def test_bootstrap_is_deterministic_with_a_seed():
    frame = _frame()
    a = metrics.evaluate(frame, resamples=200, seed=7)
    b = metrics.evaluate(frame, resamples=200, seed=7)
    c = metrics.evaluate(frame, resamples=200, seed=8)
    assert a["ci"] == b["ci"]
    assert a["ci"]["overall"]["accuracy"] != c["ci"]["overall"]["accuracy"]


def test_interval_contains_the_point_estimate():
    out = metrics.evaluate(_frame(), resamples=300, seed=0)
    for block, point in [("overall", out["overall"]), *[(m, v) for m, v in out["per_magnification"].items()]]:
        ci = out["ci"]["overall"] if block == "overall" else out["ci"]["per_magnification"][block]
        for name in metrics.METRICS:
            if ci[name] is None:  # every resample alike (every patient right): no interval, never a zero-width one
                continue
            low, high = ci[name]
            assert low <= point[name] + 1e-12 and point[name] <= high + 1e-12, (block, name, low, point[name], high)
    low, high = out["ci"]["overall"]["accuracy"]
    assert high - low > 0.01  # a real interval, not a point


def test_resampling_patients_not_images():
    # Copying every image ten times within its patient adds no information: a patient bootstrap gives
    # (about) the same interval, an image bootstrap would shrink it by about sqrt(10).
    once = metrics.evaluate(_frame(repeat=1), resamples=400, seed=0)["ci"]["overall"]["accuracy"]
    tenfold = metrics.evaluate(_frame(repeat=10), resamples=400, seed=0)["ci"]["overall"]["accuracy"]
    assert tenfold[1] - tenfold[0] == pytest.approx(once[1] - once[0], rel=0.05)


def test_patient_weights_keep_each_stratum_size():
    strata = np.array([0] * 3 + [1] * 7)
    w = bootstrap.patient_weights(strata, resamples=100, seed=0)
    assert (w[:, :3].sum(axis=1) == 3).all() and (w[:, 3:].sum(axis=1) == 7).all()
    assert (w >= 0).all() and w[:, 3:].std() > 0


def test_mcnemar_by_hand():
    # 10 discordant images all in favour of A: p = 2 * 0.5**10
    a = [1] * 10 + [1] * 5
    b = [0] * 10 + [1] * 5
    out = mcnemar(a, b)
    assert (out["a_only_correct"], out["b_only_correct"]) == (10, 0)
    assert out["p_value"] == pytest.approx(2 * 0.5**10)
    assert mcnemar(b, a)["p_value"] == pytest.approx(out["p_value"])
    assert mcnemar([1, 0, 1], [1, 0, 1])["p_value"] == 1.0  # no discordant images
    # 3 against 2: far from significant
    assert mcnemar([1, 1, 1, 0, 0], [0, 0, 0, 1, 1])["p_value"] == pytest.approx(1.0)


def test_mcnemar_frames_needs_the_same_images():
    frame = _frame(n_patients=4)
    flipped = frame.copy()
    flipped["logit_malignant"] = -flipped["logit_malignant"]
    out = mcnemar_frames(frame, flipped)
    assert out["a_only_correct"] + out["b_only_correct"] == len(frame)
    with pytest.raises(ValueError, match="same images"):
        mcnemar_frames(frame, frame.iloc[1:])


# ---- intervals that mean what they say (issue 14) --------------------------------------------------------------------

def test_no_zero_width_interval_when_a_class_has_one_test_patient():
    # A real run had 1 benign and 2 malignant test patients: patient recognition rate, patient vote and
    # specificity got zero-width intervals. No bootstrap covers anything there: no interval, and why.
    frame = _frame(n_patients=3)  # patient 0 benign, 1 and 2 malignant
    out = metrics.evaluate(frame, resamples=300, seed=0)
    for name in metrics.METRICS:
        assert out["ci"]["overall"][name] is None, name
    assert "1 benign and 2 malignant test patients" in out["ci_method"]["withheld"]["overall"]
    assert out["overall"]["specificity"] is not None  # the estimate stays


def test_enough_patients_give_intervals_wider_than_the_old_stratified_percentile():
    frame = _frame(n_patients=24)  # 8 benign, 16 malignant
    out = metrics.evaluate(frame, resamples=400, seed=0)
    assert out["ci_method"]["withheld"]["overall"] is None
    table = metrics.patient_table(frame["label"], predictions.probabilities(frame), frame["patient"])
    old, _ = bootstrap.intervals(lambda w: metrics.scores(table, w), table.patient_label, 400, 0, 0.95,
                                 bootstrap.PREVIOUS)
    for name in ("accuracy", "specificity", "patient_recognition_rate"):
        low, high = out["ci"]["overall"][name]
        assert low <= out["overall"][name] <= high
        assert high - low > old[name][1] - old[name][0], name  # the old one was too narrow for 8 patients


def test_coverage_script_runs_and_says_where_no_interval_is_given(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "ci_coverage.py"
    result = subprocess.run([sys.executable, str(script), "--sims", "15", "--patients", "3,16", "--images", "60",
                             "--resamples", "100", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    table = (tmp_path / "coverage.md").read_text()
    row3 = next(line for line in table.splitlines() if line.startswith("| 3 (1/2) | 60 |"))
    row16 = next(line for line in table.splitlines() if line.startswith("| 16 (5/11) | 60 |"))
    assert row3.count("none (") == 5 and "none" not in row16
    coverage = pd.read_csv(tmp_path / "coverage.csv")
    assert set(coverage["scheme"]) >= {bootstrap.PREVIOUS.name, bootstrap.DEFAULT.without_minimum().name}
    assert coverage["coverage"].between(0, 1).all()


def test_a_metric_every_resample_agrees_on_gets_no_interval():
    # every patient's vote right: each resample says 1.0, a bootstrap cannot see the uncertainty of that
    frame = _frame(n_patients=24)
    frame["logit_malignant"] = np.where(frame["label"] == 1, 3.0, -3.0) + np.where(frame.index % 7 == 0, -8.0, 0.0) * (
        frame["label"] == 1)
    out = metrics.evaluate(frame, resamples=300, seed=0)
    assert out["overall"]["patient_vote_accuracy"] == 1.0 and out["ci"]["overall"]["patient_vote_accuracy"] is None
    low, high = out["ci"]["overall"]["accuracy"]
    assert low < out["overall"]["accuracy"] <= high  # not everything is degenerate
