"""Classification metrics from prediction files, image level and patient level, with patient-bootstrap CIs.

Binary task: malignant (class index 1) is the positive class. Subtype task: macro averages over the
classes that occur in the labels; a ratio with a zero denominator counts as 0 in a macro average
(as scikit-learn's ``zero_division=0``) and is NaN for the binary task (undefined, reported as null).

Patient level (Spanhol et al. 2016): the patient recognition rate (PRR) is the mean over patients of
the share of each patient's images classified correctly; patient-vote accuracy labels a patient by
the argmax of the mean probability of its images and compares it with the patient's label.

Every metric is computed from per-patient sufficient statistics (a confusion matrix, a share correct
and a vote per patient) weighted by how often each patient is drawn. The point estimate is the
weighting "every patient once"; a bootstrap resample is another weighting, so the intervals come
from the same code as the point estimates, vectorised over resamples (see :mod:`.bootstrap`, whose
default scheme gives no interval where a class has too few test patients for one to be trusted).
Training calls :func:`evaluate` with the default 1,000 resamples, so run.json carries CIs: about
0.1-0.2 s for the paper's 1,182 test images and 82 patients (overall and four magnifications,
binary task) and about 0.5 s for the 8-class subtype task, on 2 CPU cores.

Scores that are vote shares (hard voting: the share of members voting for each class) support the
accuracy-type metrics and an AUROC that ranks images by vote share (ties count half), but not
calibration: ``score="vote_share"`` reports ECE and log loss as None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from histo.evaluation import bootstrap, calibration, predictions

METRICS = (
    "accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "auroc",
    "patient_recognition_rate", "patient_vote_accuracy",
)
SCORES = ("probability", "vote_share")  # what a prediction file's softmax is
VOTE_TIE_BREAK = 1e-6  # hard voting nudges a tied vote share by at most this, toward the higher soft mean
RESAMPLES = 1000  # default bootstrap resamples
LEVEL = 0.95  # default confidence level
SEED = 0  # default bootstrap seed


@dataclass(frozen=True)
class PatientTable:
    """What every metric needs, per patient (P patients, N images, C classes)."""

    patients: np.ndarray  # (P,) patient ids, sorted
    patient_label: np.ndarray  # (P,) the majority label of each patient's images
    confusion: np.ndarray  # (P, C, C) counts, [true, predicted]
    share_correct: np.ndarray  # (P,) share of the patient's images classified correctly
    vote_correct: np.ndarray  # (P,) argmax of the mean probability equals the patient label
    image_patient: np.ndarray  # (N,) index into ``patients`` of each image
    labels: np.ndarray  # (N,)
    probs: np.ndarray  # (N, C)
    ranking: np.ndarray  # (N, C) what AUROC ranks images by: ``probs``, or vote shares without their tie-break

    @property
    def n_classes(self) -> int:
        return self.probs.shape[1]


def patient_table(labels, probs, patients, ranking=None) -> PatientTable:
    """Per-patient sufficient statistics of images with ``labels`` (N,), ``probs`` (N, C), ``patients`` (N,);
    AUROC ranks images by ``ranking`` (N, C), by default ``probs``."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    ids, image_patient = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    n_patients, n_classes = len(ids), probs.shape[1]
    pred = probs.argmax(axis=1)
    confusion = np.zeros((n_patients, n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (image_patient, labels, pred), 1)
    n_images = confusion.sum(axis=(1, 2))
    label_counts = confusion.sum(axis=2)  # (P, C)
    patient_label = label_counts.argmax(axis=1)
    mean_probs = np.zeros((n_patients, n_classes))
    np.add.at(mean_probs, image_patient, probs)
    mean_probs /= n_images[:, None]
    return PatientTable(
        patients=ids,
        patient_label=patient_label,
        confusion=confusion,
        share_correct=np.trace(confusion, axis1=1, axis2=2) / n_images,
        vote_correct=mean_probs.argmax(axis=1) == patient_label,
        image_patient=image_patient,
        labels=labels,
        probs=probs,
        ranking=probs if ranking is None else np.asarray(ranking, dtype=np.float64),
    )


def scores(table: PatientTable, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` for each row of patient ``weights`` (B, P); shape (B,) each.

    ``weights=None`` counts every patient once (the point estimate, B = 1).
    """
    w = np.ones((1, len(table.patients))) if weights is None else np.asarray(weights, dtype=np.float64)
    n_classes = table.n_classes
    cm = (w @ table.confusion.reshape(len(table.patients), -1)).reshape(-1, n_classes, n_classes)
    total = cm.sum(axis=(1, 2))
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    fp, fn = predicted - tp, support - tp
    tn = total[:, None] - tp - fp - fn
    present = support > 0
    recall = _ratio(tp, support)
    out = {
        "accuracy": _ratio(tp.sum(axis=1), total),
        "balanced_accuracy": _nanmean_rows(np.where(present, recall, np.nan)),
    }
    if n_classes == 2:
        out |= {
            "precision": _ratio(tp[:, 1], predicted[:, 1]),
            "recall": recall[:, 1],
            "specificity": _ratio(tn[:, 1], tn[:, 1] + fp[:, 1]),
            "f1": _ratio(2 * tp[:, 1], 2 * tp[:, 1] + fp[:, 1] + fn[:, 1]),
        }
    else:
        out |= {
            "precision": _macro(_ratio(tp, predicted), present),
            "recall": _macro(recall, present),
            "specificity": _macro(_ratio(tn, tn + fp), present),
            "f1": _macro(_ratio(2 * tp, 2 * tp + fp + fn), present),
        }
    image_weights = w[:, table.image_patient]
    if n_classes == 2:
        out["auroc"] = weighted_auroc(table.ranking[:, 1], table.labels == 1, image_weights)
    else:
        per_class = np.stack(
            [weighted_auroc(table.ranking[:, c], table.labels == c, image_weights) for c in range(n_classes)], axis=1
        )
        out["auroc"] = _nanmean_rows(per_class)
    n_drawn = w.sum(axis=1)
    out["patient_recognition_rate"] = w @ table.share_correct / n_drawn
    out["patient_vote_accuracy"] = w @ table.vote_correct.astype(np.float64) / n_drawn
    return out


def metric_values(labels, probs, patients) -> dict[str, float]:
    """Point estimates of :data:`METRICS`.

    >>> probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3], [0.8, 0.2], [0.4, 0.6]])
    >>> m = metric_values([1, 1, 1, 0, 0], probs, ["a", "a", "a", "b", "b"])
    >>> round(m["accuracy"], 4), round(m["patient_recognition_rate"], 4), m["patient_vote_accuracy"]
    (0.6, 0.5833, 1.0)
    """
    values = scores(patient_table(labels, probs, patients))
    return {name: float(values[name][0]) for name in METRICS}


def weighted_auroc(score: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (ties count half) with image ``weights`` (B, N), one value per row; NaN without both classes.

    The weighted Mann-Whitney statistic: the weight of (positive, negative) pairs ranked correctly
    over the weight of all such pairs.

    >>> float(weighted_auroc(np.array([0.9, 0.8, 0.3, 0.2, 0.6]), np.array([1, 1, 1, 0, 0], bool), np.ones((1, 5)))[0])
    0.8333333333333334
    """
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])  # first image of each tied group
    w = weights[:, order]
    pos = np.add.reduceat(np.where(positive[order], w, 0.0), starts, axis=1)  # (B, unique scores)
    neg = np.add.reduceat(np.where(positive[order], 0.0, w), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / pairs, np.nan)


def evaluate(frame: pd.DataFrame, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL,
             score: str = "probability") -> dict:
    """All metrics of a prediction frame, overall and per magnification, with patient-bootstrap CIs.

    Returns ``{"overall": {...}, "per_magnification": {"40": {...}, ...}, "score": score}`` where each
    block is flat: ``n_images``, ``n_patients``, every metric of :data:`METRICS`, ``ece`` and ``log_loss``
    (None for ``score="vote_share"``). With ``resamples > 0`` it adds ``"ci"`` (the same two levels, each
    metric -> ``[low, high]``, or None where the test set has too few patients of a class for an
    interval) and ``"ci_method"`` (how the intervals were made; ``withheld``: why a block has none).
    """
    if score not in SCORES:
        raise ValueError(f"score={score!r} is not valid; use one of {', '.join(SCORES)}.")
    probs = predictions.probabilities(frame)
    labels = frame["label"].to_numpy()
    patients = frame["patient"].astype(str).to_numpy()
    class_names = predictions.class_names(frame)
    ranking = vote_shares(probs) if score == "vote_share" else probs

    def block(mask):
        table = patient_table(labels[mask], probs[mask], patients[mask], ranking[mask])
        point = scores(table)
        calibrated = score == "probability"
        values = {
            "n_images": int(mask.sum()),
            "n_patients": len(table.patients),
            **{name: float(point[name][0]) for name in METRICS},
            "ece": calibration.expected_calibration_error(labels[mask], probs[mask]) if calibrated else None,
            "log_loss": calibration.log_loss(labels[mask], probs[mask]) if calibrated else None,
        }
        if resamples <= 0:
            return values, None, None
        return (values, *confidence_intervals(table, resamples, seed, level, class_names))

    blocks = {"overall": block(np.ones(len(frame), dtype=bool))}
    magnifications = frame["magnification"].to_numpy()
    per_mag = {str(m): block(magnifications == m) for m in sorted(np.unique(magnifications))}
    out = {"overall": blocks["overall"][0], "per_magnification": {m: v for m, (v, _, _) in per_mag.items()},
           "score": score}
    if resamples > 0:
        out["ci"] = {"overall": blocks["overall"][1], "per_magnification": {m: ci for m, (_, ci, _) in per_mag.items()}}
        out["ci_method"] = {**bootstrap.describe(resamples, seed, level), "withheld": {
            "overall": blocks["overall"][2], "per_magnification": {m: why for m, (_, _, why) in per_mag.items()}}}
    return out


def confidence_intervals(table: PatientTable, resamples: int, seed: int, level: float, class_names=None,
                         names=METRICS) -> tuple[dict[str, list[float | None] | None], str | None]:
    """Each metric's interval (:data:`bootstrap.DEFAULT`), or None and the reason when the test set has
    too few patients of a class for an interval to mean what it says."""
    return bootstrap.intervals(lambda w: {k: v for k, v in scores(table, w).items() if k in names},
                               table.patient_label, resamples, seed, level, class_names=class_names)


def vote_shares(probs: np.ndarray) -> np.ndarray:
    """Vote shares as hard voting writes them, without the tie-break nudge (:data:`VOTE_TIE_BREAK`): rounded to 4 places.

    >>> vote_shares(np.array([[1 / 3 + 1e-7, 2 / 3 - 1e-7]])).tolist()
    [[0.3333, 0.6667]]
    """
    return np.round(probs, 4)


def _ratio(num, den, undefined=np.nan):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), undefined)


def _macro(per_class: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean over the classes present in the labels; undefined ratios count as 0."""
    values = np.where(np.isnan(per_class), 0.0, per_class)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (values * present).sum(axis=1) / present.sum(axis=1)


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    finite = ~np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite.any(axis=1), np.where(finite, values, 0.0).sum(axis=1) / finite.sum(axis=1), np.nan)
