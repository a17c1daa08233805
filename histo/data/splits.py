"""Train/val/test splits of an index: the paper's image split and the honest patient-disjoint ones.

A split is a table ``image, split`` sorted by image; its fingerprint is a hash of the CSV bytes,
so two runs share a split exactly when their fingerprints match.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from histo.data.breakhis import PATIENT_KEYS, DataError, Index, patient_id

STRATEGIES = ("image", "patient", "patient_kfold")
SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One assignment of every image to train, val or test."""

    frame: pd.DataFrame  # columns image, split; sorted by image
    strategy: str

    def to_csv_bytes(self) -> bytes:
        return self.frame.to_csv(index=False, lineterminator="\n").encode()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_csv_bytes()).hexdigest()[:16]

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_csv_bytes())
        return path

    def images(self, name: str) -> list[str]:
        return self.frame.loc[self.frame["split"] == name, "image"].tolist()

    def counts(self) -> dict[str, int]:
        return {s: int((self.frame["split"] == s).sum()) for s in SPLITS}

    def test_patients_in_train(self, index: Index) -> dict[str, int]:
        """How many test patients also have images in train, with patients keyed by slide and by number
        (:func:`~histo.data.breakhis.patient_id`): the paper's leak; 0 under both for a patient split by number."""
        slides = index.frame.set_index("image")["slide"]
        out = {}
        for key in PATIENT_KEYS:
            by_split = {s: {patient_id(slide, key) for slide in slides.loc[self.images(s)]} for s in ("train", "test")}
            out[key] = len(by_split["train"] & by_split["test"])
        return out


def make_split(
    index: Index,
    task: str,
    strategy: str,
    seed: int,
    val_ratio: float = 0.15,
    test_ratio: float = 0.15,
    folds: int | None = None,
    fold: int | None = None,
) -> Split:
    """Split ``index`` with a seeded strategy, stratified by the classes of ``task``.

    - ``image``: the paper's. Within each class x magnification group, shuffle and send
      floor(val_ratio n) images to val and floor(test_ratio n) to test; the rest train.
    - ``patient``: whole patients to train/val/test, stratified by class, about the given ratios of
      patients per class.
    - ``patient_kfold``: ``folds`` patient-disjoint folds stratified by class (StratifiedGroupKFold);
      fold ``fold`` is test, and a patient-disjoint val_ratio share of the other patients is val. Only this
      strategy reads ``folds`` and ``fold`` (conf/split/patient_kfold.yaml sets them).
    """
    if strategy not in STRATEGIES:
        raise DataError(f"split.strategy={strategy!r} is not valid; use one of {', '.join(STRATEGIES)}.")
    _check_ratios(val_ratio, test_ratio)
    frame = index.frame.assign(label=index.labels(task).to_numpy()).sort_values("image", ignore_index=True)
    rng = np.random.default_rng(seed)
    if strategy == "image":
        assignment = _image_split(frame, rng, val_ratio, test_ratio)
    elif strategy == "patient":
        assignment = _patient_split(frame, rng, val_ratio, test_ratio)
    else:
        assignment = _patient_kfold_split(frame, rng, seed, val_ratio, folds, fold)
    return Split(pd.DataFrame({"image": frame["image"], "split": assignment}), strategy)


def read_split(path: str | Path, index: Index) -> Split:
    """Read a split CSV written by :meth:`Split.write` and check it covers exactly the indexed images."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split.file={str(path)!r} does not exist.")
    frame = pd.read_csv(path, dtype=str)
    if list(frame.columns) != ["image", "split"] or not frame["split"].isin(SPLITS).all():
        raise DataError(f"split.file={str(path)!r} must have columns image,split with values train/val/test.")
    missing = set(index.images) - set(frame["image"])
    extra = set(frame["image"]) - set(index.images)
    if missing or extra:
        raise DataError(
            f"split.file={str(path)!r} does not match data.root: {len(missing)} indexed images are not in it "
            f"and {len(extra)} of its images are not indexed (e.g. {sorted(missing or extra)[0]})."
        )
    return Split(frame.sort_values("image", ignore_index=True), "file")


def _check_ratios(val_ratio: float, test_ratio: float) -> None:
    if not (0 <= val_ratio < 1 and 0 <= test_ratio < 1 and val_ratio + test_ratio < 1):
        raise DataError(
            f"split.val_ratio={val_ratio} and split.test_ratio={test_ratio} must be in [0, 1) and sum below 1."
        )


def _image_split(frame: pd.DataFrame, rng: np.random.Generator, val_ratio: float, test_ratio: float) -> np.ndarray:
    out = np.full(len(frame), "train", dtype=object)
    for _, group in frame.groupby(["label", "magnification"], sort=True):
        order = group.index.to_numpy()[rng.permutation(len(group))]
        n_val, n_test = math.floor(val_ratio * len(group)), math.floor(test_ratio * len(group))
        out[order[:n_val]] = "val"
        out[order[n_val : n_val + n_test]] = "test"
    return out


def _patient_labels(frame: pd.DataFrame) -> pd.Series:
    """One label per patient: the most frequent label of its images (ties to the lower index)."""
    return frame.groupby("patient")["label"].agg(lambda s: s.value_counts().sort_index().idxmax()).sort_index()


def _patient_split(frame: pd.DataFrame, rng: np.random.Generator, val_ratio: float, test_ratio: float) -> np.ndarray:
    role = _patient_roles(_patient_labels(frame), rng, val_ratio, test_ratio)
    return frame["patient"].map(role).to_numpy(dtype=object)


def _patient_roles(labels: pd.Series, rng: np.random.Generator, val_ratio: float, test_ratio: float) -> dict:
    """Each patient's split: per class, the patients shuffled, the first to val, the next to test, the rest to train."""
    role = {}
    for _, patients in labels.groupby(labels):
        ids = patients.index.to_numpy()[rng.permutation(len(patients))]
        n_val, n_test = _allocate(len(ids), val_ratio, test_ratio)
        role.update({p: "val" for p in ids[:n_val]})
        role.update({p: "test" for p in ids[n_val : n_val + n_test]})
        role.update({p: "train" for p in ids[n_val + n_test :]})
    return role


def _allocate(n: int, val_ratio: float, test_ratio: float) -> tuple[int, int]:
    """Patients of one class to val and test: rounded shares, at least one each when a class has
    three or more patients (so every split sees every class) and always one left for train."""
    n_val, n_test = round(val_ratio * n), round(test_ratio * n)
    if n >= 3:
        n_val, n_test = max(n_val, int(val_ratio > 0)), max(n_test, int(test_ratio > 0))
    while n_val + n_test >= n and n_val + n_test > 0:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def _patient_kfold_split(
    frame: pd.DataFrame, rng: np.random.Generator, seed: int, val_ratio: float, folds: int | None, fold: int | None
) -> np.ndarray:
    if folds is None or fold is None:
        raise DataError(f"split.strategy=patient_kfold needs split.folds and split.fold (got {folds} and {fold}); "
                        "choose split=patient_kfold, which sets them, rather than overriding split.strategy.")
    n_patients = frame["patient"].nunique()
    if not 2 <= folds <= n_patients:
        raise DataError(f"split.folds={folds} must be between 2 and the number of patients ({n_patients}).")
    if not 0 <= fold < folds:
        raise DataError(f"split.fold={fold} must be in 0..{folds - 1}.")
    kfold = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    _, test_rows = list(kfold.split(frame, frame["label"], groups=frame["patient"]))[fold]
    out = np.full(len(frame), "train", dtype=object)
    out[test_rows] = "test"
    roles = _patient_roles(_patient_labels(frame.loc[out == "train"]), rng, val_ratio, 0.0)
    val_patients = [p for p, role in roles.items() if role == "val"]
    out[frame["patient"].isin(val_patients).to_numpy() & (out == "train")] = "val"
    return out
