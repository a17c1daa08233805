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

Each metric is one :class:`Metric` of :data:`REGISTRY` (name, column title, direction, computation from
:class:`Counts`); the tables, the ``rank_by`` and histo-compare ``sort=`` choices, histo-compare's columns
and the tests derive from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from histo.evaluation import bootstrap, calibration, predictions

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


@dataclass(frozen=True)
class Counts:
    """What every metric is computed from, for B patient weightings (B, P) of one :class:`PatientTable`."""

    table: PatientTable
    weights: np.ndarray  # (B, P)
    total: np.ndarray  # (B,) images
    tp: np.ndarray  # (B, C) per class: true positives, false positives, false negatives, true negatives
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray
    support: np.ndarray  # (B, C) images of each class
    predicted: np.ndarray  # (B, C) images predicted as each class
    present: np.ndarray  # (B, C) whether the class occurs in the labels

    @classmethod
    def of(cls, table: PatientTable, weights: np.ndarray | None = None) -> Counts:
        w = np.ones((1, len(table.patients))) if weights is None else np.asarray(weights, dtype=np.float64)
        n_classes = table.n_classes
        cm = (w @ table.confusion.reshape(len(table.patients), -1)).reshape(-1, n_classes, n_classes)
        total = cm.sum(axis=(1, 2))
        tp = np.diagonal(cm, axis1=1, axis2=2)
        support, predicted = cm.sum(axis=2), cm.sum(axis=1)
        fp, fn = predicted - tp, support - tp
        tn = total[:, None] - tp - fp - fn
        return cls(table, w, total, tp, fp, fn, tn, support, predicted, support > 0)

    @property
    def recall(self) -> np.ndarray:
        return _ratio(self.tp, self.support)

    def positive_or_macro(self, per_class: np.ndarray) -> np.ndarray:
        """Binary: the positive (malignant) class's value; more classes: the macro average (:func:`_macro`)."""
        return per_class[:, 1] if self.table.n_classes == 2 else _macro(per_class, self.present)

    def per_patient_mean(self, values: np.ndarray) -> np.ndarray:
        """The weighted mean over patients of a (P,) per-patient value."""
        return self.weights @ values / self.weights.sum(axis=1)


@dataclass(frozen=True)
class Metric:
    """One metric, declared once: its name (run.json, metrics.json, ``rank_by``, histo-compare's ``sort``), its
    column title in table.md and the report, how it is computed, and where it is shown."""

    name: str
    title: str
    compute: Callable[[Counts], np.ndarray]  # (B,) values, one per patient weighting
    higher_is_better: bool = True  # the direction tables and comparisons rank by
    compare_column: int | None = None  # its place among histo-compare's metric columns (None: not shown there)


def _auroc(c: Counts) -> np.ndarray:
    table = c.table
    image_weights = c.weights[:, table.image_patient]
    if table.n_classes == 2:
        return weighted_auroc(table.ranking[:, 1], table.labels == 1, image_weights)
    per_class = np.stack(
        [weighted_auroc(table.ranking[:, k], table.labels == k, image_weights) for k in range(table.n_classes)],
        axis=1,
    )
    return _nanmean_rows(per_class)


REGISTRY: tuple[Metric, ...] = (
    Metric("accuracy", "accuracy", lambda c: _ratio(c.tp.sum(axis=1), c.total), compare_column=0),
    Metric("balanced_accuracy", "bal. acc.", lambda c: _nanmean_rows(np.where(c.present, c.recall, np.nan)),
           compare_column=1),
    Metric("precision", "precision", lambda c: c.positive_or_macro(_ratio(c.tp, c.predicted))),
    Metric("recall", "recall", lambda c: c.positive_or_macro(c.recall)),
    Metric("specificity", "specificity", lambda c: c.positive_or_macro(_ratio(c.tn, c.tn + c.fp))),
    Metric("f1", "F1", lambda c: c.positive_or_macro(_ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)), compare_column=3),
    Metric("auroc", "AUROC", _auroc, compare_column=2),
    Metric("patient_recognition_rate", "PRR", lambda c: c.per_patient_mean(c.table.share_correct), compare_column=4),
    Metric("patient_vote_accuracy", "patient vote",
           lambda c: c.per_patient_mean(c.table.vote_correct.astype(np.float64)), compare_column=5),
)
METRIC: dict[str, Metric] = {m.name: m for m in REGISTRY}
METRICS: tuple[str, ...] = tuple(METRIC)  # every metric's name, in table order


def scores(table: PatientTable, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` for each row of patient ``weights`` (B, P); shape (B,) each.

    ``weights=None`` counts every patient once (the point estimate, B = 1).
    """
    counts = Counts.of(table, weights)
    return {metric.name: metric.compute(counts) for metric in REGISTRY}


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
