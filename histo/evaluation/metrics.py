"""Classification metrics from prediction files, image level and patient level.

Binary task: malignant is the positive class. Subtype task: macro averages over classes.
Patient level (Spanhol et al. 2016): the patient recognition rate is the mean over patients of the
share of each patient's images classified correctly; patient-vote accuracy labels a patient by the
mean probability of its images.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from histo.evaluation import predictions

METRICS = (
    "accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "auroc",
    "patient_recognition_rate", "patient_vote_accuracy",
)


def image_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, precision, recall, specificity, F1 and AUROC."""
    labels = np.asarray(labels)
    n_classes = probs.shape[1]
    pred = probs.argmax(axis=1)
    out = {
        "accuracy": skm.accuracy_score(labels, pred),
        "balanced_accuracy": _mean_recall(labels, pred, n_classes),
    }
    if n_classes == 2:
        cm = skm.confusion_matrix(labels, pred, labels=[0, 1])
        (tn, fp), (fn, tp) = cm
        out |= {
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "auroc": skm.roc_auc_score(labels, probs[:, 1]) if len(np.unique(labels)) == 2 else float("nan"),
        }
    else:
        cm = skm.confusion_matrix(labels, pred, labels=list(range(n_classes)))
        tp = np.diag(cm).astype(float)
        fp, fn = cm.sum(axis=0) - tp, cm.sum(axis=1) - tp
        tn = cm.sum() - tp - fp - fn
        present = cm.sum(axis=1) > 0
        out |= {
            "precision": float(np.nanmean(_ratio(tp, tp + fp))),
            "recall": float(np.mean(_ratio(tp, tp + fn)[present])),
            "specificity": float(np.nanmean(_ratio(tn, tn + fp))),
            "f1": float(np.nanmean(_ratio(2 * tp, 2 * tp + fp + fn))),
            "auroc": _macro_auroc(labels, probs),
        }
    return {k: float(v) for k, v in out.items()}


def patient_metrics(labels: np.ndarray, probs: np.ndarray, patients: np.ndarray) -> dict[str, float]:
    """Patient recognition rate and patient-vote accuracy."""
    frame = pd.DataFrame({"patient": patients, "label": labels, "correct": probs.argmax(axis=1) == labels})
    per_patient = frame.groupby("patient")
    prr = per_patient["correct"].mean().mean()
    mean_probs = pd.DataFrame(probs).groupby(frame["patient"].to_numpy()).mean()
    patient_label = per_patient["label"].agg(lambda s: s.value_counts().idxmax()).loc[mean_probs.index]
    vote = (mean_probs.to_numpy().argmax(axis=1) == patient_label.to_numpy()).mean()
    return {"patient_recognition_rate": float(prr), "patient_vote_accuracy": float(vote)}


def evaluate(frame: pd.DataFrame) -> dict:
    """All metrics of a prediction frame, overall and per magnification, plus counts."""
    probs = predictions.probabilities(frame)
    labels = frame["label"].to_numpy()

    def block(mask):
        return {
            "n_images": int(mask.sum()),
            "n_patients": int(frame.loc[mask, "patient"].nunique()),
            **image_metrics(labels[mask], probs[mask]),
            **patient_metrics(labels[mask], probs[mask], frame.loc[mask, "patient"].to_numpy()),
        }

    everything = np.ones(len(frame), dtype=bool)
    return {
        "overall": block(everything),
        "per_magnification": {
            str(mag): block((frame["magnification"] == mag).to_numpy())
            for mag in sorted(frame["magnification"].unique())
        },
    }


def _ratio(num, den):
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return float(out) if out.ndim == 0 else out


def _mean_recall(labels, pred, n_classes) -> float:
    """Balanced accuracy: the mean recall over the classes present in ``labels``."""
    present = np.unique(labels)
    return float(np.mean([(pred[labels == c] == c).mean() for c in present])) if n_classes else float("nan")


def _macro_auroc(labels, probs) -> float:
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    scores = [skm.roc_auc_score(labels == c, probs[:, c]) for c in present]
    return float(np.mean(scores))
