"""Cross-validation folds on the val split, for the methods that are fitted (weighted, stack, greedy, feature_stack).

Val holds several images per patient, so folds are patient-grouped and stratified by class
(scikit-learn's StratifiedGroupKFold): no patient is on both sides of a fold. The number of folds is
at most the number of val patients of the rarest class, so every training fold sees every class.
When val has fewer than two patients of some class (tiny or synthetic splits, rare subtypes),
grouped folds are impossible and the folds fall back to images (StratifiedKFold); the fallback is
logged and recorded in the method's details.

Fitted methods report out-of-fold val predictions: each val image is predicted by a model fitted
without its fold, so anything fitted afterwards on val (the temperature) is not fitted on in-sample
predictions. Test labels are never used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Folds:
    splits: tuple[tuple[np.ndarray, np.ndarray], ...]  # (fit rows, held-out rows) per fold
    grouping: str  # "patient" or "image"
    note: str

    def describe(self) -> dict:
        return {"folds": len(self.splits), "grouping": self.grouping, "note": self.note}


def val_folds(labels, patients, n_splits: int, seed: int) -> Folds:
    """Patient-grouped, class-stratified folds of the val images (image-level when val has too few patients).

    >>> labels = np.array([0, 0, 0, 0, 1, 1, 1, 1]); patients = np.array(list("aabbccdd"))
    >>> folds = val_folds(labels, patients, n_splits=5, seed=0)
    >>> folds.grouping, len(folds.splits), all(set(patients[f]).isdisjoint(patients[h]) for f, h in folds.splits)
    ('patient', 2, True)
    """
    labels, patients = np.asarray(labels), np.asarray(patients).astype(str)
    classes = np.unique(labels)
    patients_per_class = [len(np.unique(patients[labels == c])) for c in classes]
    images_per_class = [int((labels == c).sum()) for c in classes]
    grouped = min(n_splits, min(patients_per_class))
    if grouped >= 2:
        splitter = StratifiedGroupKFold(n_splits=grouped, shuffle=True, random_state=seed)
        splits = tuple(splitter.split(np.zeros(len(labels)), labels, patients))
        return Folds(splits, "patient", f"{grouped} patient-grouped folds stratified by class")
    by_image = min(n_splits, min(images_per_class))
    if by_image < 2:
        raise ValueError(
            f"The val split has too few images to cross-validate: class {classes[np.argmin(images_per_class)]} "
            f"has {min(images_per_class)} image(s); fitted ensemble methods need at least 2 per class."
        )
    note = (
        f"{by_image} image-level folds: val has only {min(patients_per_class)} patient(s) of class "
        f"{classes[np.argmin(patients_per_class)]}, too few for patient-grouped folds (images of one patient "
        "can be on both sides of a fold)"
    )
    log.warning("Ensemble cross-validation on val: %s.", note)
    splits = tuple(StratifiedKFold(n_splits=by_image, shuffle=True, random_state=seed).split(labels, labels))
    return Folds(splits, "image", note)


def out_of_fold(folds: Folds, n_images: int, n_classes: int, fit_predict: Callable) -> np.ndarray:
    """(n_images, n_classes) val probabilities, each row from ``fit_predict(fit_rows, held_out_rows)``."""
    out = np.full((n_images, n_classes), np.nan)
    for fit_rows, held_out in folds.splits:
        out[held_out] = fit_predict(fit_rows, held_out)
    return out
