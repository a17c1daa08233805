"""Metrics and calibration on small hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from histo.evaluation import calibration, metrics, predictions
from histo.evaluation.run_comparison import SHOWN
from histo.evaluation.table_format import COLUMNS

# Patient A (malignant): 3 images, 2 right. Patient B (benign): 2 images, 1 right.
LABELS = np.array([1, 1, 1, 0, 0])
P_MALIGNANT = np.array([0.9, 0.8, 0.3, 0.2, 0.6])
PROBS = np.c_[1 - P_MALIGNANT, P_MALIGNANT]
PATIENTS = np.array(["A", "A", "A", "B", "B"])


def test_binary_metrics_by_hand():
    # predictions 1 1 0 | 0 1: TP 2, FN 1, TN 1, FP 1
    m = metrics.metric_values(LABELS, PROBS, PATIENTS)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["auroc"] == pytest.approx(5 / 6)  # of 6 (malignant, benign) pairs only (0.3, 0.6) is misordered


def test_patient_split_between_right_and_wrong():
    m = metrics.metric_values(LABELS, PROBS, PATIENTS)
    # PRR: mean over patients of the share right, (2/3 + 1/2) / 2, not the image accuracy 3/5
    assert m["patient_recognition_rate"] == pytest.approx(7 / 12)
    # votes from mean probabilities: A 0.667 -> malignant (right), B 0.4 -> benign (right)
    assert m["patient_vote_accuracy"] == 1.0
    # one more wrong benign image for B flips its vote: mean 0.6 -> malignant
    more = metrics.metric_values(np.r_[LABELS, 0], np.r_[PROBS, [[0.0, 1.0]]], np.append(PATIENTS, "B"))
    assert more["patient_vote_accuracy"] == 0.5
    assert more["patient_recognition_rate"] == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_undefined_binary_ratio_is_nan():
    # nothing predicted malignant: precision is undefined, not 0
    m = metrics.metric_values([1, 0], [[0.9, 0.1], [0.8, 0.2]], ["a", "b"])
    assert np.isnan(m["precision"]) and m["recall"] == 0.0 and m["specificity"] == 1.0


def test_subtype_macro_metrics_by_hand():
    # 3 classes; class 2 is never predicted; one patient per image
    labels = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    probs = np.eye(3)[pred] * 0.7 + 0.1
    m = metrics.metric_values(labels, probs, ["a", "b", "c", "d", "e"])
    # per class precision (1/2, 2/3, 0 as undefined), recall (1/2, 1, 0)
    assert m["precision"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert m["recall"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro", zero_division=0))
    # specificity per class: TN / (TN + FP) = 2/3, 2/3, 4/4
    assert m["specificity"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(labels, probs / probs.sum(1, keepdims=True), multi_class="ovr"))


def test_weighted_auroc_matches_sklearn_sample_weights():
    rng = np.random.default_rng(1)
    score = np.round(rng.random(40), 1)  # ties
    positive = rng.random(40) < 0.6
    weights = rng.integers(0, 4, size=(3, 40)).astype(float)
    ours = metrics.weighted_auroc(score, positive, weights)
    expected = [skm.roc_auc_score(positive, score, sample_weight=w) for w in weights]
    np.testing.assert_allclose(ours, expected)


def test_weights_count_patients_several_times():
    table = metrics.patient_table(LABELS, PROBS, PATIENTS)
    twice_a = metrics.scores(table, np.array([[2, 1]]))  # patient A drawn twice, B once
    assert twice_a["accuracy"][0] == pytest.approx((2 * 2 + 1) / (2 * 3 + 2))
    assert twice_a["patient_recognition_rate"][0] == pytest.approx((2 * 2 / 3 + 1 / 2) / 3)


def _frame(labels, probs, patients, magnifications, class_names=("benign", "malignant")):
    n = len(labels)
    meta = pd.DataFrame({
        "image": [f"img{i:03d}.png" for i in range(n)], "patient": patients, "subtype": "X",
        "magnification": magnifications, "label": labels,
    })
    return predictions.make_frame(meta, np.log(np.asarray(probs)), list(class_names))


def test_evaluate_overall_per_magnification_and_ci():
    frame = _frame(LABELS, PROBS, PATIENTS, [40, 40, 100, 40, 100])
    out = metrics.evaluate(frame, resamples=50, seed=0)
    assert out["overall"]["n_images"] == 5 and out["overall"]["n_patients"] == 2
    assert out["overall"]["accuracy"] == pytest.approx(3 / 5)
    assert set(out["per_magnification"]) == {"40", "100"}
    assert out["per_magnification"]["40"]["accuracy"] == 1.0  # 0.9 and 0.8 malignant, 0.2 benign: all right
    assert out["per_magnification"]["100"]["accuracy"] == 0.0  # 0.3 malignant, 0.6 benign: both wrong
    assert set(out["ci"]["overall"]) == set(metrics.METRICS)
    assert out["ci_method"]["unit"] == "patient" and out["ci_method"]["resamples"] == 50
    assert "ece" in out["overall"] and "log_loss" in out["overall"]
    assert "ci" not in metrics.evaluate(frame, resamples=0)


def test_expected_calibration_error_by_hand():
    probs = np.array([[0.05, 0.95], [0.05, 0.95], [0.45, 0.55], [0.55, 0.45]])
    labels = np.array([1, 1, 1, 1])
    # bin (0.9, 1]: 2 right, confidence 0.95 -> |1 - 0.95| * 2; bin (0.5, 0.6]: one right (0.55), one wrong (0.55)
    expected = (2 * 0.05 + abs(1 - 2 * 0.55)) / 4
    assert calibration.expected_calibration_error(labels, probs, bins=10) == pytest.approx(expected)
    assert calibration.expected_calibration_error([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == 0.0


def test_temperature_scaling_softens_overconfident_logits_without_changing_predictions():
    rng = np.random.default_rng(0)
    margin = rng.normal(0.0, 2.0, 2000)
    labels = (rng.random(2000) < 1 / (1 + np.exp(-margin))).astype(int)  # calibrated at T = 1
    logits = np.c_[np.zeros(2000), 5 * margin]  # five times too confident
    t = calibration.fit_temperature(logits, labels)
    assert 4 < t < 6
    scaled = calibration.scale(logits, t)
    assert np.array_equal(scaled.argmax(1), logits.argmax(1))
    before = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert calibration.log_loss(labels, scaled) < calibration.log_loss(labels, before)
    assert calibration.expected_calibration_error(labels, scaled) < calibration.expected_calibration_error(labels, before)


@pytest.mark.parametrize("metric", metrics.REGISTRY, ids=lambda m: m.name)
@pytest.mark.parametrize("n_classes", [2, 4])
def test_every_registered_metric_is_a_rate_per_weighting_with_a_title(metric, n_classes):
    rng = np.random.default_rng(n_classes)
    labels = np.r_[np.arange(n_classes), rng.integers(0, n_classes, 30)]
    probs = rng.dirichlet(np.ones(n_classes), len(labels))
    table = metrics.patient_table(labels, probs, rng.integers(0, 8, len(labels)))
    weights = rng.integers(0, 3, (5, len(table.patients))).astype(float)
    weights[:, 0] += 1  # every weighting draws someone
    values = metric.compute(metrics.Counts.of(table, weights))
    assert values.shape == (5,) and np.all((values[~np.isnan(values)] >= 0) & (values[~np.isnan(values)] <= 1))
    assert metric.title and COLUMNS[metric.name] == metric.title
    np.testing.assert_array_equal(metrics.scores(table, weights)[metric.name], values)


def test_metric_registry_names_and_compare_columns():
    assert list(metrics.scores(metrics.patient_table(LABELS, PROBS, PATIENTS))) == list(metrics.METRICS)
    assert len(metrics.METRIC) == len(metrics.REGISTRY) == len(COLUMNS)
    places = sorted(m.compare_column for m in metrics.REGISTRY if m.compare_column is not None)
    assert places == list(range(len(SHOWN)))
    assert set(SHOWN) <= set(metrics.METRICS)


@pytest.mark.parametrize("classes", [2, 4])
def test_epoch_logs_use_the_registry_names(classes):
    from histo.evaluation.epoch_metrics import epoch_metrics

    names = {key.removeprefix("val/") for key in epoch_metrics(classes, "val/")}
    assert {"accuracy", "balanced_accuracy", "auroc"} <= names <= set(metrics.METRICS)
