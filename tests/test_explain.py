"""Grad-CAM (histo.explain) on the two tiny runs of the ``trained_runs`` fixture (32 px, one epoch)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from histo import CONF_DIR
from histo.evaluation import predictions
from histo.evaluation.run_dir import RunDir
from histo.evaluation.run_inputs import evaluation_inputs, run_inputs
from histo.explain.cam import METHODS, compute_cams
from histo.explain.errors import ExplainError
from histo.explain.montage import overlay
from histo.explain.runs import load_runs
from histo.explain.selection import select_images
from histo.explain.stage import run_explain

LAYER = "blocks.2"  # stride 8: a 4x4 map at 32 px (bn2, stride 32, is a single cell there)


def _batch(run, images):
    model = run.load_model()
    x = model.preprocess(torch.from_numpy(evaluation_inputs(run.inputs, images)).permute(0, 3, 1, 2))
    return model, x


@pytest.mark.parametrize("method", list(METHODS))
def test_cam_maps_are_finite_in_unit_range_at_input_size(trained_runs, method):
    run = load_runs([trained_runs[0]])[0]
    frame = RunDir(trained_runs[0]).read_predictions("test")
    images = frame["image"].tolist()[:4]
    model, x = _batch(run, images)
    result = compute_cams(model, x, None, method, LAYER)
    assert result.maps.shape == (4, 32, 32) and result.maps.dtype == np.float32
    assert np.isfinite(result.maps).all() and result.maps.min() >= 0 and result.maps.max() <= 1
    assert (result.maps[result.flat] == 0).all()  # a briefly trained model may well give flat (all-negative) maps
    assert np.allclose(result.maps[~result.flat].max(axis=(1, 2)), 1.0, atol=1e-4)
    # the maps' forward pass is the evaluation the prediction file came from: same input, same probabilities
    expected = predictions.probabilities(frame)[:4]
    assert np.abs(torch.softmax(torch.tensor(result.logits), 1).numpy() - expected).max() < 1e-4
    assert (result.explained == expected.argmax(axis=1)).all()


def test_default_layer_works_for_v1_and_v2_and_explains_the_true_class(trained_runs):
    for run in load_runs(trained_runs):
        model, x = _batch(run, RunDir(run.path).read_predictions("test")["image"].tolist()[:3])
        result = compute_cams(model, x, np.array([1, 1, 1]))  # bn2: one cell at 32 px, so flat maps of zeros
        assert result.maps.shape == (3, 32, 32) and np.isfinite(result.maps).all()
        assert result.flat.all() and (result.maps == 0).all() and (result.explained == 1).all()


def test_frozen_network_still_gets_gradients_at_the_target_layer(trained_runs):
    run = load_runs([trained_runs[1]])[0]
    model, x = _batch(run, RunDir(run.path).read_predictions("test")["image"].tolist()[:4])
    before = compute_cams(model, x, None, "layercam", LAYER)
    for p in model.parameters():
        p.requires_grad_(False)
    after = compute_cams(model, x, None, "layercam", LAYER)
    assert np.allclose(before.maps, after.maps, atol=1e-6) and (before.flat == after.flat).all()


class _Toy(torch.nn.Module):
    """``features`` (the target layer, ``net.features``) -> global average pooling -> ``head``, frozen."""

    def __init__(self, features: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.net = torch.nn.Sequential()
        self.net.add_module("features", features)
        self.net.add_module("pool", torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()))
        self.net.add_module("head", head)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        return self.net(x)


def _spotlight() -> _Toy:
    """A stride-4 'feature' that is the mean brightness of each 4x4 cell, pooled; class 1 = bright, class 0 = dark."""
    features = torch.nn.Conv2d(3, 1, 4, stride=4, bias=False)
    torch.nn.init.constant_(features.weight, 1 / 48)
    head = torch.nn.Linear(1, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        head.bias.zero_()
    return _Toy(features, head)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_maps_point_at_the_evidence_at_the_right_place(method):
    x = torch.zeros(1, 3, 16, 16)
    x[:, :, 0:4, 8:12] = 1.0  # one bright cell: row 0, column 2 of the 4x4 feature map
    bright = compute_cams(_spotlight(), x, np.array([1]), method, "features")
    assert not bright.flat[0] and bright.maps[0].max() == pytest.approx(1.0, abs=1e-4)
    row, col = np.unravel_index(bright.maps[0].argmax(), (16, 16))
    assert row < 4 and 8 <= col < 12  # the heatmap is aligned with the input, not shifted or transposed
    assert bright.maps[0, 12:, :4].max() < 0.05
    dark = compute_cams(_spotlight(), x, np.array([0]), method, "features")  # no positive evidence for class 0
    assert dark.flat[0] and (dark.maps[0] == 0).all()


def _constant(zero_head: bool) -> _Toy:
    """A classifier whose target layer outputs a constant, or whose head has zero weights."""
    features = torch.nn.Conv2d(3, 4, 3, padding=1)
    torch.nn.init.zeros_(features.weight)
    torch.nn.init.constant_(features.bias, 0.5)  # the same value everywhere, for every input
    head = torch.nn.Linear(4, 2)
    if zero_head:
        torch.nn.init.zeros_(head.weight)  # zero gradient everywhere
    return _Toy(features, head)


@pytest.mark.parametrize("zero_head", [False, True])
@pytest.mark.parametrize("method", list(METHODS))
def test_constant_or_zero_gradient_maps_are_zeros_not_nan(method, zero_head):
    result = compute_cams(_constant(zero_head), torch.rand(3, 3, 16, 16), None, method, "features")
    assert result.maps.shape == (3, 16, 16)
    assert np.isfinite(result.maps).all() and (result.maps == 0).all() and result.flat.all()


def test_a_flat_map_is_drawn_as_the_greyed_input_not_as_a_heatmap():
    image = np.random.default_rng(0).integers(100, 156, (8, 8, 3), dtype=np.uint8)  # tissue-like mid tones
    flat = overlay(image, np.zeros((8, 8), np.float32), flat=True)
    assert (flat[..., 0] == flat[..., 1]).all() and (flat[..., 1] == flat[..., 2]).all() and flat.min() >= 153
    wash = overlay(image, np.zeros((8, 8), np.float32))  # zeros through JET: the blue-purple wash it used to be
    assert (wash[..., 2].astype(int) - wash[..., 0] > 40).all()


def test_bad_method_and_layer_are_named_with_the_valid_ones(trained_runs):
    run = load_runs([trained_runs[0]])[0]
    model, x = _batch(run, RunDir(run.path).read_predictions("test")["image"].tolist()[:1])
    with pytest.raises(ExplainError, match="use one of gradcam, gradcam\\+\\+, layercam, eigencam"):
        compute_cams(model, x, None, "scorecam")
    with pytest.raises(ExplainError, match="layer='top_activation'.*conv_head, bn2.*blocks.0"):
        compute_cams(model, x, None, "gradcam", "top_activation")


def test_misclassified_is_the_union_or_the_mean_of_the_runs(trained_runs):
    runs = load_runs(trained_runs)
    frames = [RunDir(p).read_predictions("test") for p in trained_runs]
    labels = frames[0]["label"].to_numpy()
    probs = np.stack([predictions.probabilities(f) for f in frames])
    union = set(frames[0]["image"][(probs.argmax(axis=2) != labels).any(axis=0)])
    mean = set(frames[0]["image"][probs.mean(axis=0).argmax(axis=1) != labels])
    chosen, how = select_images(runs, "misclassified", misclassified_by="any")
    assert set(chosen["image"]) == union and "any of the runs" in how
    assert set(select_images(runs, "misclassified", misclassified_by="mean")[0]["image"]) == mean
    per_class, _ = select_images(runs, "n_per_class", n=2)
    assert per_class["label"].value_counts().to_dict() == {0: 2, 1: 2}


def test_images_by_path_and_clear_refusals(trained_runs, tmp_path):
    runs = load_runs(trained_runs)
    image = RunDir(trained_runs[0]).read_predictions("test")["image"].iloc[0]
    by_name, _ = select_images(runs, [Path(image).name, str(runs[0].inputs.root / image)])
    assert by_name["image"].tolist() == [image]  # a bare file name and an absolute path: the same image
    with pytest.raises(ExplainError, match="not in the data of run"):
        select_images(runs, ["histology_slides/nowhere/SOB_B_A-14-1-40-001.png"])

    other = tmp_path / "other_split"
    shutil.copytree(trained_runs[1], other)
    record = json.loads((other / "run.json").read_text())
    record["split"]["fingerprint"] = "0000000000000000"
    (other / "run.json").write_text(json.dumps(record))
    with pytest.raises(ExplainError, match=f"{trained_runs[0]}.*{other}.*different split fingerprint"):
        load_runs([trained_runs[0], other])

    no_ckpt = tmp_path / "no_checkpoint"
    shutil.copytree(trained_runs[0], no_ckpt)
    shutil.rmtree(no_ckpt / "checkpoints")
    with pytest.raises(ExplainError, match="best checkpoint .* does not exist"):
        load_runs([no_ckpt])


def test_stain_step_is_rebuilt_from_the_run_directory(trained_runs, tmp_path):
    from histo.stain.methods import make_normalizer, stain_record

    run = tmp_path / "stained"
    shutil.copytree(trained_runs[0], run)
    inputs = run_inputs(run)
    images = RunDir(run).read_predictions("test")["image"].tolist()[:2]
    from histo.data.dataset import read_rgb

    normalizer = make_normalizer("reinhard").fit(read_rgb(inputs.root / images[1]))
    record = json.loads((run / "run.json").read_text())
    record["stain"] = stain_record({"method": "reinhard", "target": images[1], "target_file": None,
                                    "on_failure": "pass", "luminosity_threshold": 0.8, "min_tissue": 0.05},
                                   normalizer, run)
    (run / "run.json").write_text(json.dumps(record))
    stained = evaluation_inputs(run_inputs(run), images)
    from histo.data.transforms import eval_transform

    expected = eval_transform(32, "bilinear")(image=normalizer(read_rgb(inputs.root / images[0])))["image"]
    assert np.array_equal(stained[0], expected) and not np.array_equal(stained[0], evaluation_inputs(inputs, images)[0])


def test_explain_writes_overlays_montages_and_index(trained_runs, tmp_path):
    out = tmp_path / "explain"
    manifest = run_explain(trained_runs, out, images="n_per_class", n=2, layer=LAYER)
    assert len(manifest["images"]) == 4 and [r["model"] for r in manifest["runs"]] == ["v1_b0", "v2_b0"]
    page = (out / "index.html").read_text()
    for entry in manifest["images"]:
        montage = Image.open(out / entry["montage"])
        assert montage.text["Tiles"] == "2" and montage.text["Rows"] == "1,1"  # one row per family, as the paper
        for name in ("v1_b0", "v2_b0"):
            overlay = Image.open(out / entry["overlays"][name])
            assert overlay.size == (32, 32) and overlay.mode == "RGB"
        assert entry["montage"] in page and entry["max_abs_diff_vs_prediction_file"] < 1e-4
        assert np.isclose(sum(entry["mean"]), 1.0) and entry["ensemble_pred"] in ("benign", "malignant")
    assert "http" not in page and "<script" not in page


@pytest.mark.slow
def test_histo_explain_command(trained_runs, tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "histo.explain", f"runs=[{trained_runs[0]},{trained_runs[1]}]", "images=misclassified",
         f"out={out}", f"layer={LAYER}", "max_images=3"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "explain.json").read_text())
    assert (out / "index.html").is_file()
    assert sorted(p.name for p in (out / "montages").iterdir()) == sorted(f"{e['stem']}.png" for e in manifest["images"])


def _compose(*overrides: str):
    """The explain config as the command line composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="explain", overrides=list(overrides))


def test_explain_config_composes_and_refuses_unknown_options(trained_runs, tmp_path):
    from histo.explain.__main__ import explain

    cfg = _compose(f"runs={trained_runs[0]}", "images=n_per_class", "method=nope")
    assert cfg.layer == "bn2" and cfg.target == "predicted" and cfg.misclassified_by == "any"
    with pytest.raises(ExplainError, match="method='nope' is not a CAM method"):
        explain(cfg, str(tmp_path))
    cfg = _compose(f"runs={trained_runs[0]}", "target=ensemble")
    with pytest.raises(ExplainError, match="target='ensemble' is not valid"):
        explain(cfg, str(tmp_path))
