"""Splits: the paper's counts, patient disjointness, k folds, determinism, split files."""

from __future__ import annotations

import pandas as pd
import pytest

from histo.data.breakhis import DataError, build_index
from histo.data.splits import make_split, read_split
from histo.data.synthetic import SyntheticSpec, write_dataset

# The paper's image split (README.md, "Reproducing the paper"): floor(0.15 n) per class x magnification group of the full dataset.
PAPER_GROUPS = {  # (class, magnification): (train, val, test)
    ("benign", 40): (439, 93, 93), ("benign", 100): (452, 96, 96),
    ("benign", 200): (437, 93, 93), ("benign", 400): (412, 88, 88),
    ("malignant", 40): (960, 205, 205), ("malignant", 100): (1007, 215, 215),
    ("malignant", 200): (974, 208, 208), ("malignant", 400): (864, 184, 184),
}


@pytest.fixture(scope="module")
def full_index(tmp_path_factory):
    """A synthetic tree with the full dataset's per-group counts: 7,909 tiny images, 82 patients."""
    spec = SyntheticSpec(counts="breakhis", width=8, height=8, seed=1)
    root = write_dataset(tmp_path_factory.mktemp("full") / "BreaKHis_v1", spec)
    return build_index(root, check_images=False)


@pytest.fixture(scope="module")
def small_index(synthetic_root):
    return build_index(synthetic_root)


def split_of(index, strategy, seed=0, task="binary", **kw):
    return make_split(index.frame, index.labels(task), strategy, seed=seed, **kw)


def test_image_split_reproduces_the_paper_counts(full_index):
    assert len(full_index.frame) == 7909 and full_index.frame["patient"].nunique() == 82
    split = split_of(full_index, "image")
    assert split.counts() == {"train": 5545, "val": 1182, "test": 1182}
    table = full_index.frame.merge(split.frame, on="image")
    for (tumor, mag), expected in PAPER_GROUPS.items():
        group = table[(table["tumor"] == tumor) & (table["magnification"] == mag)]
        assert tuple((group["split"] == s).sum() for s in ("train", "val", "test")) == expected
    # the paper's leak: almost every test patient also has images in train
    assert split.test_patients_in_train(full_index.frame) > 70


def test_patient_split_is_disjoint_and_stratified(full_index):
    split = split_of(full_index, "patient")
    table = full_index.frame.merge(split.frame, on="image")
    patients = {s: set(table.loc[table["split"] == s, "patient"]) for s in ("train", "val", "test")}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert split.test_patients_in_train(full_index.frame) == 0
    for s in ("train", "val", "test"):  # both classes in every split
        assert set(table.loc[table["split"] == s, "tumor"]) == {"benign", "malignant"}
    # 24 benign / 58 malignant patients at 15 %: 4 and 9 patients to each of val and test
    per_class = table.drop_duplicates("patient").groupby(["split", "tumor"]).size()
    assert per_class[("val", "benign")] == 4 and per_class[("test", "malignant")] == 9


def test_patient_kfold_covers_every_patient_once(full_index):
    folds = [split_of(full_index, "patient_kfold", folds=5, fold=k) for k in range(5)]
    tables = [full_index.frame.merge(f.frame, on="image") for f in folds]
    test_patients = [set(t.loc[t["split"] == "test", "patient"]) for t in tables]
    assert sum(len(p) for p in test_patients) == 82
    assert set().union(*test_patients) == set(full_index.frame["patient"])
    for t in tables:
        by = t.groupby("patient")["split"].nunique()
        assert (by == 1).all()  # a patient is in exactly one of train/val/test
        assert (t["split"] == "val").sum() > 0
        assert set(t.loc[t["split"] == "test", "tumor"]) == {"benign", "malignant"}


@pytest.mark.parametrize("strategy", ["image", "patient", "patient_kfold"])
def test_same_seed_same_bytes(small_index, strategy):
    a = split_of(small_index, strategy, seed=7, folds=4, fold=1)
    b = split_of(small_index, strategy, seed=7, folds=4, fold=1)
    c = split_of(small_index, strategy, seed=8, folds=4, fold=1)
    assert a.to_csv_bytes() == b.to_csv_bytes() and a.fingerprint == b.fingerprint
    assert c.fingerprint != a.fingerprint


def test_subtype_task_splits_by_subtype(small_index):
    split = split_of(small_index, "image", task="subtype", val_ratio=0.25, test_ratio=0.25)
    table = small_index.frame.merge(split.frame, on="image")
    assert set(table.loc[table["split"] == "test", "subtype"]) == set(small_index.frame["subtype"])


def test_bad_split_settings(small_index):
    with pytest.raises(DataError, match="split.strategy"):
        split_of(small_index, "slide")
    with pytest.raises(DataError, match="split.val_ratio"):
        split_of(small_index, "image", val_ratio=0.6, test_ratio=0.5)
    with pytest.raises(DataError, match="split.fold"):
        split_of(small_index, "patient_kfold", folds=4, fold=4)
    with pytest.raises(DataError, match="split.folds"):
        split_of(small_index, "patient_kfold", folds=100)


def test_split_file_round_trip_and_mismatch(small_index, tmp_path):
    split = split_of(small_index, "patient")
    path = split.write(tmp_path / "split.csv")
    again = read_split(path, small_index.frame)
    assert again.fingerprint == split.fingerprint
    pd.read_csv(path).iloc[:-1].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DataError, match="1 indexed images are not in it"):
        read_split(tmp_path / "short.csv", small_index.frame)
    with pytest.raises(DataError, match="does not exist"):
        read_split(tmp_path / "none.csv", small_index.frame)
