"""Every number of a report, from one prediction frame: metrics with patient-bootstrap CIs (the same
:func:`histo.evaluation.metrics.evaluate` as training and the ensemble table), accuracy per subtype,
accuracy per patient, the confusion matrix and the ROC curve."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from histo.evaluation import metrics, predictions


def row_numbers(frame: pd.DataFrame, resamples: int = metrics.RESAMPLES, seed: int = metrics.SEED,
                level: float = metrics.LEVEL, score: str = "probability") -> dict:
    """``evaluate`` of the frame plus ``per_subtype``, ``per_patient``, ``confusion`` and (binary) ``roc``
    (of the vote share for ``score="vote_share"``)."""
    probs = predictions.probabilities(frame)
    labels = frame["label"].to_numpy()
    patients = frame["patient"].astype(str).to_numpy()
    pred = probs.argmax(axis=1)
    n_classes = probs.shape[1]
    out = metrics.evaluate(frame, resamples=resamples, seed=seed, level=level, score=score)
    subtypes = frame["subtype"].astype(str).to_numpy()
    out["per_subtype"] = {
        s: subset_accuracy(labels, probs, patients, subtypes == s, resamples, seed, level, predictions.class_names(frame))
        for s in sorted(set(subtypes))
    }
    table = metrics.patient_table(labels, probs, patients)
    first = pd.DataFrame({"patient": patients, "subtype": subtypes, "label": labels}).groupby("patient").first()
    out["per_patient"] = {
        str(p): {"n_images": int(table.confusion[i].sum()), "correct": int(np.trace(table.confusion[i])),
                 "share_correct": float(table.share_correct[i]), "label": int(table.patient_label[i]),
                 "subtype": str(first.loc[p, "subtype"])}
        for i, p in enumerate(table.patients)
    }
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    out["confusion"] = confusion.tolist()
    if n_classes == 2 and len(np.unique(labels)) == 2:
        ranking = metrics.vote_shares(probs) if score == "vote_share" else probs
        fpr, tpr, _ = roc_curve(labels, ranking[:, 1])
        out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return out


def subset_accuracy(labels, probs, patients, mask, resamples: int, seed: int, level: float, class_names=None) -> dict:
    """Accuracy of the images in ``mask``, with its patient-bootstrap interval (as :func:`metrics.evaluate`)."""
    table = metrics.patient_table(labels[mask], probs[mask], patients[mask])
    point = metrics.scores(table)["accuracy"][0]
    out = {"n_images": int(mask.sum()), "n_patients": len(table.patients), "accuracy": float(point)}
    if resamples > 0:
        found, why = metrics.confidence_intervals(table, resamples, seed, level, class_names, names=("accuracy",))
        out["ci"] = found["accuracy"]
        if why:
            out["ci_withheld"] = why
    return out
