"""Stain normalization in use: configs and targets, histo-stain over a folder, stain jitter in the
training augmentations, and the paper's stain comparison through the real training command."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import FAST, compose_config
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from histo import CONF_DIR
from histo.command import UserError
from histo.data.dataset import read_rgb
from histo.data.transforms import augmentations, train_transform
from histo.stain import METHODS, StainError, StainTarget
from histo.stain.__main__ import run as run_command
from histo.stain.jitter import StainJitter
from histo.stain.methods import NONE, fit_from_config, stain_record

REPO = Path(CONF_DIR).parent
# Subprocesses on one thread: on a busy two-core machine torch's second thread mostly spin-waits
# (measured: the stain comparison below took 60 s of CPU with two threads, 9 s with one).
ONE_THREAD = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def stain_config(overrides: list[str]):
    """conf/stain.yaml composed as the histo-stain command line would."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="stain", overrides=overrides)


@pytest.fixture(scope="module")
def images(synthetic_root) -> list[str]:
    """The synthetic tree's images, relative to its root, sorted."""
    return sorted(str(p.relative_to(synthetic_root)) for p in synthetic_root.rglob("*.png"))


# ----- configs and targets -----

@pytest.mark.parametrize("method", [NONE, *METHODS])  # every conf/stain option (test_stain.py checks they match)
def test_every_stain_option_composes_and_builds(method, synthetic_root, images, tmp_path):
    cfg = compose_config("train", [f"stain={method}", "stain.target=auto"], tmp_path)
    normalizer = fit_from_config(cfg.stain, synthetic_root, images)
    if method == NONE:
        assert normalizer is None
        return
    assert normalizer.method == method and normalizer.target.source == [images[0]]
    record = stain_record(dict(cfg.stain), normalizer, tmp_path)
    assert record["fitted"]["values"] == StainTarget.load(tmp_path / "stain_target.json").values
    assert record["method"] == method and record["saved_target"] == "stain_target.json"


def test_a_target_must_be_named(synthetic_root, tmp_path):
    cfg = compose_config("train", ["stain=vahadane"], tmp_path)
    with pytest.raises(ValueError, match=r"stain\.target=<image path>.*stain\.target=auto.*stain\.target_file"):
        fit_from_config(cfg.stain, synthetic_root, [])
    with pytest.raises(FileNotFoundError, match="stain.target"):
        fit_from_config({**cfg.stain, "target": "missing.png"}, synthetic_root, [])
    with pytest.raises(ValueError, match="not both"):
        fit_from_config({**cfg.stain, "target": "a.png", "target_file": "b.json"}, synthetic_root, [])


def test_targets_resolve_relative_to_the_dataset_and_reload_from_a_file(synthetic_root, images, tmp_path):
    stain = dict(compose_config("train", ["stain=macenko"], tmp_path).stain)
    by_path = fit_from_config({**stain, "target": images[5]}, synthetic_root)  # relative to data.root
    absolute = fit_from_config({**stain, "target": str(synthetic_root / images[5])})
    assert by_path.target.values == absolute.target.values
    by_path.target.save(tmp_path / "t.json")
    reloaded = fit_from_config({**stain, "target_file": str(tmp_path / "t.json")})
    assert reloaded.target == by_path.target
    with pytest.raises(ValueError, match="vahadane"):
        fit_from_config({**stain, "method": "vahadane", "target_file": str(tmp_path / "t.json")})


def test_auto_skips_images_without_tissue(tmp_path, synthetic_root, images):
    cv2.imwrite(str(tmp_path / "a_blank.png"), np.full((40, 60, 3), 255, np.uint8))
    (tmp_path / "b.png").write_bytes((synthetic_root / images[0]).read_bytes())
    stain = dict(compose_config("train", ["stain=vahadane", "stain.target=auto"], tmp_path).stain)
    assert fit_from_config(stain, tmp_path, ["b.png", "a_blank.png"]).target.source == ["b.png"]
    with pytest.raises(StainError, match="stain.target"):
        fit_from_config(stain, tmp_path, ["a_blank.png"])


def test_the_dataset_normalizes_each_image_at_full_resolution_before_resizing(synthetic_root, images, tmp_path):
    import pandas as pd

    from histo.data.dataset import ImageDataset
    from histo.data.transforms import eval_transform

    cfg = compose_config("train", ["stain=vahadane", "stain.target=auto"], tmp_path)
    normalizer = fit_from_config(cfg.stain, synthetic_root, images)
    table = pd.DataFrame({"image": images[:3], "label": [0, 1, 0]})
    dataset = ImageDataset(synthetic_root, table, eval_transform(32), stain=normalizer)
    for i, rel in enumerate(images[:3]):
        expected = eval_transform(32)(image=normalizer(read_rgb(synthetic_root / rel)))["image"]
        assert torch.equal(dataset[i]["image"], torch.from_numpy(expected.transpose(2, 0, 1)))
    assert normalizer.counts["normalized"] >= 3


# ----- histo-stain -----

def test_histo_stain_normalizes_a_folder_and_lists_what_it_left_unchanged(synthetic_root, images, tmp_path, capsys):
    source = tmp_path / "in"
    for rel in images[:6]:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes((synthetic_root / rel).read_bytes())
    blank = np.full((42, 64, 3), 250, np.uint8)
    cv2.imwrite(str(source / "blank.png"), blank)
    cfg = stain_config([f"stain.target={synthetic_root / images[10]}", f"input={source}",
                            f"output={tmp_path / 'out'}", "batch_size=4"])
    passed = run_command(cfg)
    out = tmp_path / "out"
    assert passed == {"blank.png": "little_tissue"}
    for rel in images[:6]:
        written = read_rgb(out / rel)
        assert written.shape == read_rgb(source / rel).shape and not np.array_equal(written, read_rgb(source / rel))
    assert np.array_equal(read_rgb(out / "blank.png"), blank)
    with open(out / "stain_passed.csv") as f:
        assert list(csv.reader(f)) == [["image", "reason"], ["blank.png", "little_tissue"]]
    assert StainTarget.load(out / "stain_target.json").source == [str(synthetic_root / images[10])]
    printed = capsys.readouterr().out
    assert "normalized 6 of 7 images" in printed and "little_tissue: 1" in printed

    # The saved target repeats the run without the target image, byte for byte, one image at a time.
    again = stain_config([f"stain.target_file={out / 'stain_target.json'}", f"input={source}",
                          f"output={tmp_path / 'again'}", "batch_size=1"])
    run_command(again)
    for rel in images[:6]:
        assert np.array_equal(read_rgb(tmp_path / "again" / rel), read_rgb(out / rel))


def test_histo_stain_reads_other_formats_skips_unreadable_files_and_fits_auto_on_its_input(
        synthetic_root, images, tmp_path, capsys):
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    bgr = [cv2.cvtColor(read_rgb(synthetic_root / rel), cv2.COLOR_RGB2BGR) for rel in images[:4]]
    for name, image in zip(("a.png", "c.jpg", "d.TIF", "e.bmp"), bgr, strict=True):
        cv2.imwrite(str(source / name), image)
    (source / "broken.png").write_bytes(b"")  # an empty file, and one that is no image at all
    (source / "garbage.jpg").write_bytes(b"not an image")
    (source / "notes.txt").write_text("not an image file name: ignored")
    cfg = stain_config(["stain=reinhard", "stain.target=auto", f"input={source}", f"output={out}"])
    passed = run_command(cfg)
    assert passed == {"broken.png": "unreadable", "garbage.jpg": "unreadable"}
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.jpg", "d.TIF", "e.bmp", "stain_passed.csv",
                                                     "stain_target.json"]  # whole files only: no temporaries
    assert read_rgb(out / "d.TIF").shape == bgr[2].shape
    assert StainTarget.load(out / "stain_target.json").source == ["a.png"]  # auto: the first image under input
    with open(out / "stain_passed.csv") as f:
        assert list(csv.reader(f))[1:] == [["broken.png", "unreadable"], ["garbage.jpg", "unreadable"]]
    printed = capsys.readouterr().out
    assert "normalized 4 of 4 images" in printed and "2 unreadable skipped" in printed and "unreadable: 2" in printed
    with pytest.raises(ValueError, match="Cannot read image .*broken.png"):
        run_command(stain_config(["stain=reinhard", "stain.target=auto", "stain.on_failure=raise",
                                  f"input={source}", f"output={tmp_path / 'raise'}"]))
    with pytest.raises(ValueError, match="stain=vahadane needs a target: stain.target=<image>, stain.target=auto"):
        run_command(stain_config([f"input={source}", f"output={tmp_path / 'none'}"]))


def test_histo_stain_with_no_normalizer_writes_the_images_back_unchanged(synthetic_root, images, tmp_path, capsys):
    """none is no normalizer (None): each image decoded and written back, the unreadable listed, and a record
    (method none, no values) in stain_target.json."""
    source = tmp_path / "in"
    source.mkdir()
    for rel in images[:3]:
        (source / Path(rel).name).write_bytes((synthetic_root / rel).read_bytes())
    (source / "broken.png").write_bytes(b"")
    passed = run_command(stain_config(["stain=none", f"input={source}", f"output={tmp_path / 'out'}"]))
    assert passed == {"broken.png": "unreadable"}
    for rel in images[:3]:
        assert np.array_equal(read_rgb(tmp_path / "out" / Path(rel).name), read_rgb(synthetic_root / rel))
    assert StainTarget.load(tmp_path / "out" / "stain_target.json") == StainTarget("none", {})
    assert "none: wrote 3 images" in capsys.readouterr().out
    with pytest.raises(ValueError, match="Cannot read image .*broken.png"):
        run_command(stain_config(["stain=none", "stain.on_failure=raise", f"input={source}",
                                  f"output={tmp_path / 'raise'}"]))


def test_histo_stain_refuses_to_write_inside_its_input(tmp_path, synthetic_root, images):
    cfg = stain_config(["stain=reinhard", f"stain.target={synthetic_root / images[0]}", f"input={synthetic_root}",
                        f"output={synthetic_root / 'normalized'}"])
    with pytest.raises(ValueError, match="must not be input or inside it"):
        run_command(cfg)
    cfg = stain_config([f"stain.target={synthetic_root / images[0]}", f"input={synthetic_root}",
                        f"output={tmp_path / 'out'}", "+stain.sample=10"])
    with pytest.raises(UserError, match=r"stain.sample=10: not a setting of stain method vahadane; its settings: .*samples"):
        run_command(cfg)  # a UserError: one line and exit status 2 from the command


def test_the_real_histo_stain_command(synthetic_root, images, tmp_path):
    for rel in images[:2]:
        (tmp_path / "in" / Path(rel).name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / Path(rel).name).write_bytes((synthetic_root / rel).read_bytes())
    command = [sys.executable, "-m", "histo.stain", "stain=macenko", f"stain.target={synthetic_root / images[5]}",
               "stain.alpha=2", "+stain.threads=1", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "macenko: normalized 2 of 2 images" in done.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [Path(images[0]).name, Path(images[1]).name, "stain_passed.csv", "stain_target.json"])
    assert not list(tmp_path.glob("*.log"))  # logs go to the console only
    assert StainTarget.load(tmp_path / "out" / "stain_target.json").options["alpha"] == 2  # stain.<key>=: a setting

    # an unknown method is Hydra's own error about the stain group, which names the options; exit status 2
    command[3] = "stain=bogus"
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=ONE_THREAD)
    assert done.returncode == 2 and "Could not find 'stain/bogus'" in done.stderr, done.stderr[-2000:]
    assert all(name in done.stderr for name in ("none", "vahadane", "macenko", "reinhard"))


# ----- stain jitter -----

def test_stain_jitter_is_off_by_default_and_seeded_when_on(synthetic_root, images, tmp_path):
    for option in ("none", "paper"):
        augment = compose_config("train", [f"augment={option}"], tmp_path).augment
        assert augment.stain_jitter is None
        assert not any(isinstance(t, StainJitter) for t in augmentations(**augment))
    augment = compose_config("train", ["augment=paper_stain_jitter", "augment.stain_jitter.p=1.0"], tmp_path).augment
    image = read_rgb(synthetic_root / images[3])
    transform = train_transform(32, augment=dict(augment))
    assert isinstance(transform.transforms[1], StainJitter)
    jitter = StainJitter(scale=0.3, shift=0.05, p=1.0)
    results = []
    for seed in (1, 1, 2):
        jitter.set_random_seed(seed)
        results.append(jitter(image=image)["image"])
    assert np.array_equal(results[0], results[1]) and not np.array_equal(results[0], results[2])
    assert results[0].dtype == np.uint8 and results[0].shape == image.shape
    assert 1 < np.abs(results[0].astype(int) - image).mean() < 60
    blank = np.full_like(image, 255)
    assert np.array_equal(jitter(image=blank)["image"], blank)
    from histo.stain.jitter import jitter as jitter_image
    from histo.stain.vahadane import Vahadane

    assert np.array_equal(jitter_image(image, Vahadane(), [1.0, 1.0], [0.0, 0.0]), image)  # no change, same bytes


# ----- the paper's stain comparison, through the real command -----

@pytest.mark.slow
def test_stain_comparison_experiment_trains_both_arms_on_one_split(synthetic_root, tmp_path):
    cfg = compose_config("train", ["experiment=paper/stain_comparison"], tmp_path)
    assert cfg.model.name == "v1_b0" and cfg.split.strategy == "image" and cfg.stain.target == "auto"
    command = [sys.executable, "-m", "histo.train", "-m", "experiment=paper/stain_comparison",
               f"data.root={synthetic_root}", f"paths.output_root={tmp_path}", "trainer.max_epochs=1",
               "data.magnification=40", "logger=none", *FAST]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted((tmp_path / "stain_comparison" / "multiruns").glob("*/*_v1_b0_*"))
    assert [r.name for r in runs] == ["0_v1_b0_none", "1_v1_b0_vahadane"]
    records = [json.loads((r / "run.json").read_text()) for r in runs]
    assert records[0]["split"]["fingerprint"] == records[1]["split"]["fingerprint"]
    assert records[0]["seed"] == records[1]["seed"]
    assert records[0]["stain"]["method"] == "none" and "fitted" not in records[0]["stain"]
    fitted = records[1]["stain"]["fitted"]
    assert fitted["method"] == "vahadane" and len(fitted["source"]) == 1
    assert StainTarget.load(runs[1] / "stain_target.json").values == fitted["values"]
    tests = [(r / "predictions" / "test.csv").read_text().splitlines()[1:] for r in runs]
    assert [line.split(",")[0] for line in tests[0]] == [line.split(",")[0] for line in tests[1]]
    assert torch.tensor(fitted["values"]["max_concentrations"]).min() > 0
