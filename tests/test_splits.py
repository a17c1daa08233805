"""Splits: the paper's counts, patient disjointness, k folds, determinism, split files."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import compose_config
from hydra.errors import ConfigCompositionException

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
    return make_split(index, task, strategy, seed=seed, **kw)


def test_image_split_reproduces_the_paper_counts(full_index):
    assert len(full_index.frame) == 7909 and full_index.frame["patient"].nunique() == 82
    split = split_of(full_index, "image")
    assert split.counts() == {"train": 5545, "val": 1182, "test": 1182}
    table = full_index.frame.merge(split.frame, on="image")
    for (tumor, mag), expected in PAPER_GROUPS.items():
        group = table[(table["tumor"] == tumor) & (table["magnification"] == mag)]
        assert tuple((group["split"] == s).sum() for s in ("train", "val", "test")) == expected
    # the paper's leak: almost every test patient also has images in train
    assert split.test_patients_in_train(full_index)["number"] > 70


def test_patient_split_is_disjoint_and_stratified(full_index):
    split = split_of(full_index, "patient")
    table = full_index.frame.merge(split.frame, on="image")
    patients = {s: set(table.loc[table["split"] == s, "patient"]) for s in ("train", "val", "test")}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert split.test_patients_in_train(full_index) == {"number": 0, "slide": 0}
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
        split_of(small_index, "patient_kfold", folds=100, fold=0)


def test_only_patient_kfold_has_folds(small_index, tmp_path):
    """split.folds and split.fold belong to patient_kfold; the other options refuse them at composition."""
    for option in ("image", "patient"):
        assert "fold" not in compose_config("train", [f"split={option}"], tmp_path).split
        with pytest.raises(ConfigCompositionException, match="Could not override 'split.fold'"):
            compose_config("train", [f"split={option}", "split.fold=1"], tmp_path)
    kfold = compose_config("train", ["split=patient_kfold"], tmp_path).split
    assert (kfold.folds, kfold.fold) == (5, 0)
    with pytest.raises(DataError, match="split.strategy=patient_kfold needs split.folds and split.fold"):
        split_of(small_index, "patient_kfold")


def test_split_file_round_trip_and_mismatch(small_index, tmp_path):
    split = split_of(small_index, "patient")
    path = split.write(tmp_path / "split.csv")
    again = read_split(path, small_index)
    assert again.fingerprint == split.fingerprint
    pd.read_csv(path).iloc[:-1].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DataError, match="1 indexed images are not in it"):
        read_split(tmp_path / "short.csv", small_index)
    with pytest.raises(DataError, match="does not exist"):
        read_split(tmp_path / "none.csv", small_index)


# ---- patients are people (issue 14) ---------------------------------------------------------------------------------

def _tree(root, slides: dict[str, str]):
    """A tiny BreaKHis tree: for each slide (``14-100AB``) its subtype code, 4 images at 40x and 100x."""
    from PIL import Image

    from histo.data.breakhis import SUBTYPES
    for slide, code in slides.items():
        tumor = SUBTYPES[code][0]
        folder = root / tumor / f"SOB_{tumor[0].upper()}_{code}_{slide}"
        folder.mkdir(parents=True, exist_ok=True)
        for mag in (40, 100):
            for seq in range(1, 5):
                Image.new("RGB", (8, 8), (200, 120, 180)).save(
                    folder / f"SOB_{tumor[0].upper()}_{code}-{slide}-{mag}-{seq:03d}.png")
    return root


def test_slides_of_one_patient_number_stay_on_one_side_by_default(tmp_path):
    # Lettered slides that share a number are one person: by default a patient split keeps them together.
    slides = {f"14-{n}{s}": code for n, code in [(100, "A"), (200, "F"), (300, "PT"), (400, "TA")]
              for s in ("AB", "CD")}
    slides |= {f"14-{n}{s}": code for n, code in [(500, "DC"), (600, "LC"), (700, "MC"), (800, "PC")] for s in ("", "D")}
    root = _tree(tmp_path / "BreaKHis_v1", slides)
    index = build_index(root)
    assert index.frame["patient"].nunique() == 8  # 16 slides, 8 people
    for seed in range(5):
        split = make_split(index, "binary", "patient", seed=seed, val_ratio=0.25, test_ratio=0.25)
        assert split.test_patients_in_train(index) == {"slide": 0, "number": 0}
    # keyed by slide, the same split strategy puts slides of one person on both sides of some split
    by_slide = build_index(root, patient_key="slide")
    leaks = [make_split(by_slide, "binary", "patient", seed=s, val_ratio=0.25,
                        test_ratio=0.25).test_patients_in_train(by_slide) for s in range(5)]
    assert all(leak["slide"] == 0 for leak in leaks) and any(leak["number"] > 0 for leak in leaks)


def test_real_sample_patient_split_keeps_people_apart(real_root, tmp_path):
    # Issue 14: with slides as patients, split seed 0 put 14-18842D in test and 14-18842 in train.
    from histo.data.breakhis import parse_name
    from histo.data.datamodule import load_data
    cfg = compose_config("train", ["split=patient", f"data.root={real_root}"], tmp_path)
    data = load_data(cfg.data, cfg.split, cfg.paths.synthetic_dir)
    people = {s: {parse_name(i.rsplit("/", 1)[-1]).patient("number") for i in data.split.images(s)}
              for s in ("train", "val", "test")}
    assert not people["test"] & people["train"] and not people["val"] & people["train"]
    assert cfg.data.patient_key == "number"
    assert data.split.test_patients_in_train(data.index) == {"slide": 0, "number": 0}
