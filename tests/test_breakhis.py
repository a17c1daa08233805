"""The BreaKHis index: file-name parsing, options, and every bad input a user can hand it."""

from __future__ import annotations

import json
import logging
import shutil

import pandas as pd
import pytest

from histo.data.breakhis import DataError, build_index, parse_name, patient_id
from histo.data.dataset import ImageDataset
from histo.data.image_file import read_rgb
from histo.data.transforms import eval_transform


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("SOB_B_A-14-22549AB-40-001.png", ("benign", "A", "14-22549AB", 40, 1)),
        ("SOB_M_DC-14-13412-400-027.png", ("malignant", "DC", "14-13412", 400, 27)),
        ("SOB_B_PT-14-21998AB-100-057.PNG", ("benign", "PT", "14-21998AB", 100, 57)),
        ("SOB_M_MC-14-18842D-200-004.png", ("malignant", "MC", "14-18842D", 200, 4)),
    ],
)
def test_parse_name(name, expected):
    p = parse_name(name)
    assert (p.tumor, p.subtype, p.slide, p.magnification, p.seq) == expected


@pytest.mark.parametrize(
    "name",
    [
        "SOB_B_A-14-22549AB-300-001.png",  # no such magnification
        "SOB_B_DC-14-22549AB-40-001.png",  # benign class with a malignant subtype
        "SOB_X_A-14-22549AB-40-001.png",
        "SOB_B_A_14-22549AB-40-001.png",  # folder spelling, not a file name
        "thumbs.png",
    ],
)
def test_parse_name_rejects(name):
    assert parse_name(name) is None


def test_patient_number_joins_lettered_slides():
    assert parse_name("SOB_B_A-14-22549AB-40-001.png").patient("number") == "14-22549"
    assert parse_name("SOB_B_A-14-22549G-40-001.png").patient("number") == "14-22549"
    assert parse_name("SOB_B_A-14-22549G-40-001.png").patient("slide") == "14-22549G"


def test_index_of_synthetic_tree(synthetic_root):
    index = build_index(synthetic_root)
    truth = json.loads((synthetic_root / "synthetic.json").read_text())["patients"]
    assert len(index.frame) == 16 * 4 * 2
    assert set(index.frame["slide"]) == {p["slide"] for p in truth}
    assert set(index.frame["patient"]) == {patient_id(p["slide"]) for p in truth}
    assert index.summary()["per_class"] == {"benign": 64, "malignant": 64}
    assert index.skipped == []
    # both slide-folder spellings (SOB_B_A_14-1234 and SOB_B_A-14-1234) are in the tree and indexed
    spellings = {p["folder"].rsplit("/", 1)[1][len(f"SOB_B_{p['subtype']}")] for p in truth}
    assert spellings == {"_", "-"}


def test_both_folder_spellings_index_the_same(tmp_path, synthetic_root):
    """Moving a slide folder from SOB_B_A_14-xxx to SOB_B_A-14-xxx changes nothing but the path."""
    root = tmp_path / "tree"
    shutil.copytree(synthetic_root, root)
    folder = next(p for p in root.rglob("SOB_*_*_*") if p.is_dir())  # underscore spelling
    prefix, slide = folder.name.rsplit("_", 1)
    folder.rename(folder.with_name(f"{prefix}-{slide}"))
    before = build_index(synthetic_root).frame.drop(columns="image")
    after = build_index(root).frame.drop(columns="image")
    pd.testing.assert_frame_equal(before.sort_values(["patient", "magnification", "seq"], ignore_index=True),
                                  after.sort_values(["patient", "magnification", "seq"], ignore_index=True))


def test_options_magnification_task_and_patient_key(synthetic_root):
    index = build_index(synthetic_root, magnification=40)
    assert set(index.frame["magnification"]) == {40}
    assert set(build_index(synthetic_root, magnification="400X").frame["magnification"]) == {400}
    labels = index.labels("subtype")
    assert sorted(labels.unique()) == list(range(8))
    assert (index.labels("binary") == (index.frame["tumor"] == "malignant")).all()
    with pytest.raises(DataError, match="data.magnification"):
        build_index(synthetic_root, magnification=300)
    with pytest.raises(DataError, match="data.task"):
        index.labels("tumour")
    with pytest.raises(DataError, match="data.patient_key"):
        build_index(synthetic_root, patient_key="folder")


def test_unparsable_names_are_listed_not_dropped_silently(tmp_path, synthetic_root, caplog):
    root = tmp_path / "tree"
    shutil.copytree(synthetic_root, root)
    some = next(root.rglob("*.png"))
    shutil.copy(some, some.with_name("scan_0001.png"))
    shutil.copy(some, some.with_name("SOB_B_A-14-99999-300-001.png"))
    with caplog.at_level(logging.WARNING):
        index = build_index(root)
    skipped = sorted(p.rsplit("/", 1)[1] for p, _ in index.skipped)
    assert skipped == ["SOB_B_A-14-99999-300-001.png", "scan_0001.png"]
    assert len(index.frame) == 128
    assert "scan_0001.png" in caplog.text and "2 PNG file(s)" in caplog.text


def test_missing_and_empty_roots(tmp_path):
    with pytest.raises(DataError, match=r"data.root=.*is not a directory"):
        build_index(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"data.root=.*holds no PNG"):
        build_index(tmp_path / "empty")


def test_tree_without_breakhis_names(tmp_path, synthetic_root):
    (tmp_path / "other").mkdir()
    shutil.copy(next(synthetic_root.rglob("*.png")), tmp_path / "other" / "image1.png")
    with pytest.raises(DataError, match=r"No PNG .* has a BreaKHis file name.*image1.png"):
        build_index(tmp_path / "other")


def test_unreadable_images_name_their_path(tmp_path, synthetic_root):
    root = tmp_path / "tree"
    shutil.copytree(synthetic_root, root)
    victim = sorted(root.rglob("*.png"))[5]
    victim.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=victim.name):
        build_index(root)
    # A file that is cut short keeps a valid header: the loader names it when decoding fails.
    good = sorted(root.rglob("*.png"))[6]
    good.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match=good.name):
        read_rgb(good)


def test_images_of_different_sizes_come_out_square(synthetic_root):
    index = build_index(synthetic_root)
    table = index.frame.assign(label=index.labels("binary"))
    sizes = {read_rgb(synthetic_root / p).shape for p in table["image"][:8]}
    assert len(sizes) == 2  # the synthetic tree has 460- and 456-like heights, as BreaKHis
    dataset = ImageDataset(synthetic_root, table, eval_transform(48))
    items = [dataset[i] for i in range(8)]
    assert {tuple(it["image"].shape) for it in items} == {(3, 48, 48)}
    assert all(it["image"].dtype.is_floating_point is False for it in items)


def test_real_sample(real_root):
    index = build_index(real_root)
    f = index.frame
    assert len(f) == 214 and index.skipped == []
    assert index.summary()["per_class"] == {"benign": 116, "malignant": 98}
    assert f["subtype"].nunique() == 8
    assert f["patient"].nunique() == 16 and f["slide"].nunique() == 19  # 22549AB/CD/G and 18842/18842D are one each
    assert build_index(real_root, patient_key="slide").frame["patient"].nunique() == 19
    assert index.summary()["per_magnification"] == {40: 34, 100: 168, 200: 3, 400: 9}
