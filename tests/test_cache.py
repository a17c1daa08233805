"""The image cache: exact, reused when valid, rebuilt when stale, shared safely, read by training."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import threading

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import compose_config, train_config
from omegaconf import OmegaConf

from histo.data.breakhis import build_index
from histo.data.cache import (
    MANIFEST,
    CacheKey,
    cache_directory,
    cache_for_run,
    ensure,
    locked,
    remove_stale_temporaries,
    stain_key,
)
from histo.data.dataset import ImageDataset
from histo.data.image_file import read_rgb
from histo.data.transforms import eval_transform
from histo.evaluation.run_dir import RunDir
from histo.prepare import model_sizes, prepare
from histo.stain import make_normalizer
from histo.train import train

BLANK = "histology_slides/breast/benign/SOB/adenosis/SOB_B_A_14-99999Z/40X/SOB_B_A-14-99999Z-40-001.png"


@pytest.fixture
def root(synthetic_root, tmp_path):
    """A copy of the synthetic tree (tests change files) plus one blank image stain normalization must skip."""
    copy = tmp_path / "BreaKHis_v1"
    shutil.copytree(synthetic_root, copy)
    (copy / BLANK).parent.mkdir(parents=True)
    cv2.imwrite(str(copy / BLANK), np.full((42, 64, 3), 255, np.uint8))
    return copy


def images_of(root) -> list[str]:
    return build_index(root).images


def reinhard(root):
    return make_normalizer("reinhard").fit(read_rgb(root / images_of(root)[3]))


def build(root, cache_dir, sizes=(32,), stain=None, index=None, **kwargs):
    return ensure(cache_dir, index or build_index(root), sizes, "bilinear", stain, **kwargs)


def test_cached_images_equal_the_png_path_byte_for_byte(root, tmp_path):
    stain = reinhard(root)
    (cache, status), = build(root, tmp_path / "cache", stain=stain, num_workers=2).values()
    assert status.startswith("built") and len(cache) == len(images_of(root))
    table = pd.DataFrame({"image": images_of(root), "label": 0})
    from_pngs = ImageDataset(root, table, eval_transform(32), stain=stain)
    from_cache = ImageDataset(root, table, eval_transform(32, resized=True), cache=cache)
    for i in range(len(table)):
        assert np.array_equal(from_cache[i]["image"].numpy(), from_pngs[i]["image"].numpy()), table["image"][i]
    assert cache.unchanged(table["image"]) == {"little_tissue": 1}  # the blank image, passed through
    assert cache.directory.name == f"32px-bilinear-reinhard-{stain.target.fingerprint}" == f"32px-bilinear-{stain_key(stain)}"


def test_a_valid_cache_is_reused_and_a_subset_reads_it(root, tmp_path):
    first = build(root, tmp_path / "cache")[32][0]
    forty = build_index(root, magnification=40)
    again, status = build(root, tmp_path / "cache", index=forty)[32]
    assert status == "valid" and again.manifest["build"] == first.manifest["build"]
    assert len(again.rows(forty.images)) == len(forty.images) < len(first)


def _change_an_image(root, cache):
    path = root / images_of(root)[5]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    return "1 image(s) changed"


def _add_an_image(root, cache):
    source = root / images_of(root)[0]
    shutil.copy(source, source.with_name(source.name.replace("-001.png", "-077.png")))
    return "lacks 1 image(s)"


def _truncate_the_array(root, cache):
    with open(cache.array_path, "r+b") as f:
        f.truncate(cache.array_path.stat().st_size - 100)
    return "truncated"


def _drop_an_index_row(root, cache):
    index = cache.directory / cache.manifest["index"]
    pd.read_csv(index).iloc[:-1].to_csv(index, index=False)
    return "its index lists"


def _change_the_key(root, cache):
    manifest = json.loads((cache.directory / MANIFEST).read_text())
    manifest["key"]["interpolation"] = "area"
    (cache.directory / MANIFEST).write_text(json.dumps(manifest))
    return "it was built for"


def _delete_the_array(root, cache):
    cache.array_path.unlink()
    return "a file is missing"


@pytest.mark.parametrize("spoil", [_change_an_image, _add_an_image, _truncate_the_array, _drop_an_index_row,
                                   _change_the_key, _delete_the_array])
def test_a_stale_cache_is_detected_and_rebuilt(root, tmp_path, spoil, caplog):
    old = build(root, tmp_path / "cache")[32][0]
    reason = spoil(root, old)
    with caplog.at_level("INFO", logger="histo.data.cache"):
        new, status = build(root, tmp_path / "cache")[32]
    assert status.startswith("built") and reason in status and reason in caplog.text
    assert new.manifest["build"] != old.manifest["build"]
    assert sorted(p.name for p in new.directory.iterdir()) == sorted(  # the old build is gone, nothing half-written
        [".lock", MANIFEST, new.manifest["array"], new.manifest["index"]])
    assert build(root, tmp_path / "cache")[32][1] == "valid"
    table = pd.DataFrame({"image": images_of(root), "label": 0})
    png = ImageDataset(root, table, eval_transform(32))
    cached = ImageDataset(root, table, eval_transform(32, resized=True), cache=new)
    assert all(np.array_equal(png[i]["image"], cached[i]["image"]) for i in (0, 5, len(table) - 1))


def test_concurrent_builders_build_once(root, tmp_path):
    results = []
    threads = [threading.Thread(target=lambda: results.append(build(root, tmp_path / "cache")[32])) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(status.split(" ")[0] for _, status in results)
    assert statuses == ["built", "valid"]
    assert results[0][0].manifest["build"] == results[1][0].manifest["build"]


def test_the_cache_pickles_without_its_array(root, tmp_path):
    cache = build(root, tmp_path / "cache", sizes=(64,))[64][0]
    image = cache.read(3)  # maps the array in this process
    blob = pickle.dumps(cache)
    assert len(blob) < cache.array_path.stat().st_size / 50  # the images do not travel to loader workers
    assert np.array_equal(pickle.loads(blob).read(3), image)


def test_cache_modes_and_locations(root, tmp_path):
    data = compose_config("train", [f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}"], tmp_path).data
    assert data.cache == "auto"  # the default
    index = build_index(root)
    assert cache_for_run(OmegaConf.merge(data, {"cache": "off"}), index, 32, None, 0) is None
    with pytest.raises(ValueError, match="data.cache='sometimes'"):
        cache_for_run(OmegaConf.merge(data, {"cache": "sometimes"}), index, 32, None, 0)
    cache = cache_for_run(data, index, 32, None, 0)
    assert cache.directory == cache_directory(tmp_path / "c", root, CacheKey(32, "bilinear", "none"))
    assert cache.directory.parent.name.startswith("BreaKHis_v1-") and cache.directory.name == "32px-bilinear-none"


def test_prepare_sizes_come_from_the_model_configs(tmp_path):
    sizes = model_sizes("all")
    assert sizes == {224: ["lite0", "v1_b0", "v2_b0"], 240: ["v1_b1", "v2_b1"], 260: ["v1_b2", "v2_b2"],
                     300: ["v1_b3", "v2_b3"], 380: ["v1_b4", "v2_s"]}
    assert model_sizes(["v2_s"], [96]) == {96: ["96px"], 380: ["v2_s"]}
    assert model_sizes(None, [32]) == {32: ["32px"]}  # sizes alone: only those, not also the ten models'
    assert model_sizes(None) == sizes and model_sizes("all", [32]) == {32: ["32px"], **sizes}
    assert compose_config("prepare", ["sizes=[32]"], tmp_path).models is None
    with pytest.raises(ValueError, match="models: 'v1_b9'"):
        model_sizes(["v1_b9"])


def test_prepare_builds_what_training_reads_and_training_records_it(root, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    overrides = [f"data.root={root}", f"data.cache_dir={cache_dir}", "data.num_workers=0", "split=patient",
                 "stain=reinhard", "stain.target=auto"]
    prepare(compose_config("prepare", [*overrides, "sizes=[32]"], tmp_path / "prep"))
    printed = capsys.readouterr().out
    assert "| 32 | 32px |" in printed and "built" in printed and "left 1 of" in printed

    record = train(train_config(tmp_path / "run", root, *overrides, "data.cache=auto", "augment=none",
                                "debug=limit", "trainer.max_epochs=1"))
    built = json.loads(next(cache_dir.rglob(MANIFEST)).read_text())
    assert record["image_cache"]["build"] == built["build"]  # read, not rebuilt: same stain target, same key
    assert record["stain"]["unchanged"] == {"little_tissue": 1}

    # The same run from the PNGs gives the same predictions: the cache changes nothing but speed.
    plain = train(train_config(tmp_path / "png", root, *overrides, "data.cache=off", "augment=none",
                               "debug=limit", "trainer.max_epochs=1"))
    assert plain["image_cache"] is None
    for split in ("val", "test"):
        a, b = RunDir(tmp_path / "run").read_predictions(split), RunDir(tmp_path / "png").read_predictions(split)
        np.testing.assert_allclose(a.filter(like="logit_").to_numpy(), b.filter(like="logit_").to_numpy(), atol=1e-5)


def test_the_same_seed_gives_the_same_model_whether_the_cache_is_built_or_found(root, tmp_path, caplog):
    """Issue 13: building the cache drew from torch's global generator after seeding, so the run that built
    it and the run that found it trained different models."""
    caplog.set_level(logging.INFO, logger="histo.data.cache")
    overrides = ["data.cache=auto", f"data.cache_dir={tmp_path / 'cache'}", "debug=limit", "trainer.max_epochs=1"]
    built = train(train_config(tmp_path / "built", root, *overrides))
    assert "building it" in caplog.text
    found = train(train_config(tmp_path / "found", root, *overrides))
    assert found["image_cache"]["build"] == built["image_cache"]["build"]  # read, not built again
    for split in ("val", "test"):
        a, b = (RunDir(tmp_path / run).predictions_path(split).read_bytes() for run in ("built", "found"))
        assert a == b


def test_the_temporary_files_of_a_killed_build_are_removed(root, tmp_path):
    (cache, _), = build(root, tmp_path / "cache").values()
    stale = [cache.directory / "images-20250101-000000-abcdef.npy.tmp", cache.directory / ".manifest.json.1a2b3c.tmp"]
    for path in stale:
        path.write_bytes(b"left by a build that was killed")
    with locked(cache.directory):  # a build holds the directory: its temporaries are not stale
        assert remove_stale_temporaries(cache.directory) == []
    (again, status), = build(root, tmp_path / "cache").values()
    assert status == "valid" and not any(path.exists() for path in stale)
