"""histo-predict and the Predictor: parity with the runs' and ensembles' own prediction files, TTA, bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import train_config
from PIL import Image

from histo.ensemble import fitted
from histo.ensemble.methods import METHODS
from histo.ensemble.stage import run_ensemble
from histo.evaluation import predictions
from histo.evaluation.run_dir import RunDir
from histo.predict import PredictError, Predictor
from histo.predict.models import load_runs
from histo.predict.stage import run_predict

TOLERANCE = 1e-4  # the parity bound on logits (max abs); observed differences are below 1e-6


@pytest.fixture(scope="module")
def stained_cached_run(synthetic_root, tmp_path_factory) -> Path:
    """A one-epoch V1-B0 run with Macenko normalization, trained and predicted from the image cache."""
    from histo.train import train

    out = tmp_path_factory.mktemp("run_stained")
    cache = tmp_path_factory.mktemp("cache")
    train(train_config(out, synthetic_root, "split=patient", "trainer.max_epochs=1", "stain=macenko",
                       "stain.target=auto", "data.cache=auto", f"data.cache_dir={cache}"))
    assert json.loads((out / "run.json").read_text())["image_cache"] is not None
    return out


@pytest.fixture(scope="module")
def ensemble_dir(trained_runs, tmp_path_factory) -> Path:
    """histo-ensemble with every method over the two fixture runs, with a temperature per method."""
    out = tmp_path_factory.mktemp("ensemble")
    run_ensemble(trained_runs, out, methods="all", calibrate=True, resamples=0,
                 settings={"feature_stack": {"max_epochs": 15, "patience": 5}})
    return out


def _test_images(run: Path) -> tuple[pd.DataFrame, list[str]]:
    frame = RunDir(run).read_predictions("test")
    root = Path(RunDir(run).record()["data"]["root"])
    return frame, [str(root / image) for image in frame["image"]]


def _member_logits(table: pd.DataFrame, member: str, classes: list[str]) -> np.ndarray:
    return table[[f"{member}.logit_{c}" for c in classes]].to_numpy()


@pytest.mark.parametrize("which", ["v1_b0", "v2_b0", "stained_cached"])
def test_a_run_reproduces_its_own_test_logits(trained_runs, stained_cached_run, which):
    run = {"v1_b0": trained_runs[0], "v2_b0": trained_runs[1], "stained_cached": stained_cached_run}[which]
    frame, paths = _test_images(run)
    predictor = Predictor.from_runs([run], device="cpu")
    table = predictor.predict(paths, batch_size=5)
    classes = predictor.class_names
    assert table["image"].tolist() == paths and len(table.attrs["skipped"]) == 0
    gap = np.abs(_member_logits(table, predictor.member_names[0], classes) - predictions.logits(frame)).max()
    assert gap < TOLERANCE
    # one run: its probabilities are the table's, and the labels, patients and magnifications come from the names
    np.testing.assert_allclose(table[[f"prob_{c}" for c in classes]], predictions.probabilities(frame), atol=1e-6)
    assert (table["label"] == [classes[k] for k in frame["label"]]).all()
    assert (table["patient"] == frame["patient"]).all() and (table["magnification"] == frame["magnification"].astype(str)).all()
    assert (table["agreement"] == 1.0).all()


@pytest.fixture(scope="module")
def ensemble_members(ensemble_dir):
    """The ensemble's members loaded once (as Predictor.from_ensemble loads them), shared by the method tests."""
    soft = fitted.load(ensemble_dir, "soft")
    return load_runs(soft.member_runs(), torch.device("cpu"), names=soft.member_names)


@pytest.mark.parametrize("method", list(METHODS))
def test_a_fitted_ensemble_reproduces_its_test_predictions(ensemble_dir, ensemble_members, trained_runs, method):
    reference = predictions.read(ensemble_dir / "predictions" / f"{method}_test.csv")
    _, paths = _test_images(trained_runs[0])
    predictor = Predictor(ensemble_members, fitted.load(ensemble_dir, method))
    table = predictor.predict(paths, batch_size=7)
    ours = np.log(np.clip(table[[f"prob_{c}" for c in predictor.class_names]].to_numpy(), 1e-300, None))
    assert np.abs(ours - predictions.logits(reference)).max() < TOLERANCE
    # calibrated: softmax(log p / T) with the temperature histo-ensemble fitted on val; none for vote shares
    calibration = json.loads((ensemble_dir / "metrics.json").read_text())["methods"][method].get("calibration")
    if calibration is None:
        assert METHODS[method].score == "vote_share"
        with pytest.raises(PredictError, match="vote shares"):
            Predictor(ensemble_members, fitted.load(ensemble_dir, method), calibrated=True)
        return
    temperature = calibration["temperature"]
    calibrated = Predictor(ensemble_members, fitted.load(ensemble_dir, method), calibrated=True).predict(paths[:4])
    expected = predictions.softmax(predictions.logits(reference)[:4] / temperature)
    np.testing.assert_allclose(calibrated[[f"prob_{c}" for c in predictor.class_names]], expected, atol=1e-5)


def test_fitted_files_are_plain_data_and_refuse_a_changed_member(ensemble_dir, trained_runs, tmp_path):
    for path in (ensemble_dir / "fitted").iterdir():
        assert path.suffix in (".json", ".safetensors")
        if path.suffix == ".json":
            assert json.loads(path.read_text())["format"] == fitted.FORMAT
    assert fitted.available(ensemble_dir) == sorted(METHODS)
    moved = tmp_path / "moved"  # runs and ensemble moved together: found by their relative paths
    for run in trained_runs:
        shutil.copytree(run, moved / "runs" / run.name)
    shutil.copytree(ensemble_dir, moved / "ens" / ensemble_dir.name)
    document = json.loads((ensemble_dir / "fitted" / "soft.json").read_text())
    for member, run in zip(document["members"], trained_runs, strict=True):
        member.update(run=str(tmp_path / "gone"), run_relative=f"../../runs/{run.name}")
    (moved / "ens" / ensemble_dir.name / "fitted" / "soft.json").write_text(json.dumps(document))
    assert len(Predictor.from_ensemble(moved / "ens" / ensemble_dir.name, "soft", device="cpu").members) == 2
    val = moved / "runs" / trained_runs[1].name / "predictions" / "val.csv"
    val.write_text(val.read_text().replace("\n", "\n", 1) + "\n")  # any change of the file the fit saw
    with pytest.raises(PredictError, match=r"v2_b0 .* has changed since .* Refit"):
        Predictor.from_ensemble(moved / "ens" / ensemble_dir.name, "soft", device="cpu")
    with pytest.raises(PredictError, match="has no fitted bogus ensemble.*it has: feature_stack, greedy"):
        Predictor.from_ensemble(ensemble_dir, "bogus", device="cpu")


def test_d4_average_equals_the_mean_over_eight_views_by_hand(trained_runs):
    _, paths = _test_images(trained_runs[1])
    predictor = Predictor.from_runs([trained_runs[1]], device="cpu")
    classes = predictor.class_names
    d4 = predictor.predict(paths[:3], tta="d4")
    flips = predictor.predict(paths[:3], tta="flips")
    for row, path in enumerate(paths[:3]):
        seen = next(iter(predictor.prepare(path).values()))  # the (S, S, 3) input the model sees
        views = [np.rot90(seen, k) for k in range(4)] + [np.rot90(np.fliplr(seen), k) for k in range(4)]
        # a square uint8 input of the right size passes the model input unchanged (no stain, same-size resize)
        by_hand = predictor.predict([np.ascontiguousarray(v) for v in views])
        probs = by_hand[[f"prob_{c}" for c in classes]].to_numpy()
        np.testing.assert_allclose(d4.loc[row, [f"prob_{c}" for c in classes]], probs.mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(flips.loc[row, [f"prob_{c}" for c in classes]], probs[[0, 2, 4, 6]].mean(axis=0),
                                   atol=1e-6)
    # the views differ, so TTA changes the probabilities (it is not a no-op)
    plain = predictor.predict(paths[:3])
    assert np.abs(plain["prob_malignant"] - d4["prob_malignant"]).max() > 1e-6


def test_pil_images_and_arrays_give_the_file_predictions(trained_runs):
    _, paths = _test_images(trained_runs[0])
    predictor = Predictor.from_runs(trained_runs, device="cpu")
    rgb = np.asarray(Image.open(paths[0]).convert("RGB"))
    inputs = [paths[0], Image.open(paths[0]), rgb, Image.fromarray(rgb).convert("RGBA"), (rgb.astype(np.uint16) * 257)]
    table = predictor.predict(inputs)
    assert table["image"].tolist()[0] == paths[0] and table["image"].tolist()[2] == "<array 2>"
    probs = table[["prob_benign", "prob_malignant"]].to_numpy()
    np.testing.assert_allclose(probs, np.repeat(probs[:1], len(inputs), axis=0), atol=1e-12)
    assert set(predictor.member_names) == {"v1_b0", "v2_b0"}
    gray_image = Image.fromarray(rgb).convert("L")
    gray = predictor.predict([gray_image, np.asarray(gray_image), np.dstack([np.asarray(gray_image)] * 3)])
    np.testing.assert_allclose(gray["prob_benign"], gray["prob_benign"].iloc[0], atol=1e-12)


def _bad_folder(folder: Path, source: Path) -> None:
    """A folder of the inputs a user meets: good JPEG/16-bit/RGBA files and broken or foreign ones."""
    folder.mkdir()
    rgb = np.asarray(Image.open(source).convert("RGB"))
    Image.fromarray(rgb).save(folder / source.with_suffix(".jpg").name, quality=95)  # a BreaKHis name: labelled
    cv2.imwrite(str(folder / "sixteen_bit.png"), (rgb.astype(np.uint16) * 257)[:, :, ::-1])
    Image.fromarray(rgb).convert("RGBA").save(folder / "with_alpha.png")
    (folder / "nested").mkdir()
    Image.fromarray(rgb).save(folder / "nested" / "deep.tif")
    data = source.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    jpeg = (folder / source.with_suffix(".jpg").name).read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "not_an_image.png").write_text("hello")
    (folder / "notes.txt").write_text("a lab note")
    Image.fromarray(np.full((20, 30, 3), 240, np.uint8)).save(folder / "blank.png")
    (folder / ".hidden.png").write_bytes(b"")  # hidden files are left out (and not reported)


def test_command_on_a_folder_of_good_and_bad_files(trained_runs, tmp_path):
    _, paths = _test_images(trained_runs[0])
    folder = tmp_path / "inbox"
    _bad_folder(folder, Path(paths[0]))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "histo.predict", f"runs=[{trained_runs[0]},{trained_runs[1]}]",
                           f"images={folder}", f"out={out}", "device=cpu", "num_workers=2", "bootstrap.resamples=20",
                           "cam=true", "cam_layer=blocks.2", "tta=flips"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Predicted 4 image(s)" in done.stdout and "skipped 6" in done.stdout
    table = pd.read_csv(out / "predictions.csv")
    assert sorted(Path(p).name for p in table["image"]) == sorted(
        [Path(paths[0]).with_suffix(".jpg").name, "sixteen_bit.png", "with_alpha.png", "deep.tif"])
    skipped = pd.read_csv(out / "skipped.csv").set_index("image")["reason"]
    reasons = {Path(k).name: v for k, v in skipped.items()}
    assert set(reasons) == {"truncated.png", "truncated.jpg", "empty.png", "not_an_image.png", "notes.txt", "blank.png"}
    assert "empty" in reasons["empty.png"] and "blank" in reasons["blank.png"] and "not an image" in reasons["notes.txt"]
    assert "truncated" in reasons["truncated.jpg"]
    # the decoder fails alike on a truncated PNG and on a text file named .png
    assert "decoder failed" in reasons["truncated.png"] and "decoder failed" in reasons["not_an_image.png"]
    # the labelled JPEG gives metrics; every predicted image has one Grad-CAM overlay per member
    scores = json.loads((out / "metrics.json").read_text())
    assert scores["n_labelled"] == 1 and set(scores["members"]) == {"v1_b0", "v2_b0"} and scores["tta"] == "flips"
    for member in ("v1_b0", "v2_b0"):
        for path in table[f"{member}.cam"]:
            assert Image.open(out / path).size == (32, 32)


def test_csv_input_with_labels_and_patients(trained_runs, tmp_path):
    _, paths = _test_images(trained_runs[0])
    for i, path in enumerate(paths[:3]):
        shutil.copy(path, tmp_path / f"case{i}.png")
    pd.DataFrame({"image": ["case0.png", "case1.png", "case2.png", "missing.png"],
                  "label": ["malignant", "0", "benign", "benign"], "patient": ["p1", "p1", "p2", "p3"]}
                 ).to_csv(tmp_path / "list.csv", index=False)
    result = run_predict(str(tmp_path / "list.csv"), tmp_path / "out", runs=[trained_runs[0]], device="cpu",
                         num_workers=0, resamples=0, progress=False)
    assert result.table["label"].tolist() == ["malignant", "benign", "benign"]
    assert result.table["patient"].tolist() == ["p1", "p1", "p2"] and result.skipped["image"].tolist() == ["missing.png"]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["ensemble"]["overall"]["n_patients"] == 2


def test_refusals_name_the_option(trained_runs, ensemble_dir, tmp_path):
    with pytest.raises(PredictError, match="either runs=.* or ensemble="):
        run_predict(str(tmp_path), tmp_path / "o", runs=[trained_runs[0]], ensemble=ensemble_dir)
    with pytest.raises(PredictError, match="method=stack is fitted on val.*ensemble="):
        Predictor.from_runs(trained_runs, method="stack", device="cpu")
    with pytest.raises(PredictError, match=f"images={tmp_path / 'nope'} is not a file, folder, glob or CSV"):
        Predictor.from_runs(trained_runs[:1], device="cpu").predict(str(tmp_path / "nope"))
    with pytest.raises(PredictError, match="tta='d8' is not valid"):
        Predictor.from_runs(trained_runs[:1], device="cpu").predict([], tta="d8")
    with pytest.raises(PredictError, match="is not a finished run"):
        Predictor.from_runs([tmp_path], device="cpu")
    with pytest.raises(PredictError, match="precision='fp8' is not valid"):
        Predictor.from_runs(trained_runs[:1], device="cpu", precision="fp8")
