"""The ensemble stage over run directories: refusals, subtype ensembles, honesty, and the real command end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import binary_run, binary_split
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from histo import CONF_DIR
from histo.ensemble.__main__ import ensemble
from histo.ensemble.members import EnsembleError, load_members
from histo.ensemble.methods import METHODS
from histo.ensemble.stage import run_ensemble
from histo.evaluation import metrics, paper, predictions
from histo.evaluation.run_dir import RunDir

FAST = {"resamples": 50, "settings": {"feature_stack": {"max_epochs": 15, "patience": 5}}}
SUBTYPES = ["adenosis", "fibroadenoma", "phyllodes_tumor", "tubular_adenoma", "ductal_carcinoma",
            "lobular_carcinoma", "mucinous_carcinoma", "papillary_carcinoma"]


def _copy_run(source: Path, target: Path) -> Path:
    """A writable copy of a fixture run (without checkpoints), for tests that break it."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints", "csv", "*.log"))
    return target


def _edit_record(run: Path, **changes) -> None:
    record = json.loads((run / "run.json").read_text())
    for key, value in changes.items():
        node = record
        *parents, last = key.split("__")
        for parent in parents:
            node = node[parent]
        node[last] = value
    (run / "run.json").write_text(json.dumps(record))


def _edit_predictions(run: Path, split: str, edit) -> None:
    """Change a prediction file as if the run had written it so (run.json records the new file)."""
    path = run / "predictions" / f"{split}.csv"
    frame = pd.read_csv(path)
    frame = edit(frame)
    frame.to_csv(path, index=False)
    RunDir(run).write_record({**RunDir(run).record(), "files": RunDir(run).file_digests()})


@pytest.fixture
def two_runs(trained_runs, tmp_path) -> list[Path]:
    return [_copy_run(run, tmp_path / run.name) for run in trained_runs]


# ---- refusals: each names the run directory and the reason -------------------------------------------------------

def test_refuses_fewer_than_two_runs(trained_runs):
    with pytest.raises(EnsembleError, match=f"at least two runs; got 1: {trained_runs[0]}"):
        load_members(trained_runs[:1])


def test_refuses_the_same_run_twice(trained_runs):
    with pytest.raises(EnsembleError, match=f"Run {trained_runs[0]}.* listed twice"):
        load_members([trained_runs[0], trained_runs[1], trained_runs[0]])


def test_refuses_different_split_fingerprints(two_runs):
    _edit_record(two_runs[1], split__fingerprint="0123456789abcdef")
    with pytest.raises(EnsembleError, match=f"{two_runs[0]} and {two_runs[1]} have different split fingerprint"):
        load_members(two_runs)


def test_refuses_different_images(two_runs):
    _edit_predictions(two_runs[1], "test", lambda f: f.iloc[1:])
    with pytest.raises(EnsembleError, match=f"{two_runs[1]} predict different test images"):
        load_members(two_runs)


def test_refuses_different_labels(two_runs):
    def flip(frame):
        frame.loc[0, "label"] = 1 - frame.loc[0, "label"]
        return frame

    _edit_predictions(two_runs[1], "val", flip)
    with pytest.raises(EnsembleError, match=f"{two_runs[1]} disagree on the label of 1 val images"):
        load_members(two_runs)


def test_refuses_a_missing_file(two_runs):
    (two_runs[1] / "predictions" / "val.csv").unlink()
    with pytest.raises(EnsembleError, match=f"Run {two_runs[1]} cannot be used: .*val.csv does not exist"):
        load_members(two_runs)
    (two_runs[0] / "run.json").unlink()
    with pytest.raises(EnsembleError, match=f"Run {two_runs[0]} cannot be used: .*run.json does not exist"):
        load_members(two_runs)


def test_refuses_non_finite_logits(two_runs):
    def poison(frame):
        frame.loc[3, "logit_malignant"] = np.inf
        return frame

    _edit_predictions(two_runs[0], "test", poison)
    with pytest.raises(EnsembleError, match=f"Run {two_runs[0]} cannot be used: .*non-finite logits"):
        load_members(two_runs)


def test_refuses_different_tasks(two_runs):
    _edit_record(two_runs[1], task="subtype")
    with pytest.raises(EnsembleError, match=f"{two_runs[0]} and {two_runs[1]} have different task"):
        load_members(two_runs)


def test_refuses_feature_stack_without_features(two_runs, tmp_path):
    shutil.rmtree(two_runs[1] / "features")
    with pytest.raises(EnsembleError, match=f"Run {two_runs[1]} has no features.*predict.features=true"):
        run_ensemble(two_runs, tmp_path / "out", methods=["feature_stack"], resamples=0)


def test_refuses_unknown_methods_and_settings_before_reading_runs(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]  # never read
    with pytest.raises(EnsembleError, match="unknown vote"):
        run_ensemble(runs, tmp_path / "out", methods=["soft", "vote"])
    with pytest.raises(EnsembleError, match="settings.greedy has unknown options round; valid: rounds"):
        run_ensemble(runs, tmp_path / "out", settings={"greedy": {"round": 3}})


# ---- subtype task and honesty, on fake runs ----------------------------------------------------------------------

def _fake_split(rng, n_patients_per_class: int, images_per_patient: int, prefix: str) -> pd.DataFrame:
    rows = []
    for label, name in enumerate(SUBTYPES):
        for p in range(n_patients_per_class):
            for i in range(images_per_patient):
                rows.append({"image": f"{prefix}/{name}/p{p}_{i}.png", "patient": f"{prefix}-{label}-{p}",
                             "subtype": name, "magnification": [40, 100, 200, 400][i % 4], "label": label})
    return pd.DataFrame(rows)


def _fake_run(path: Path, model: str, meta: dict, rng, skill: float) -> Path:
    """A finished subtype run: run.json, predictions/{val,test}.csv with noisy logits, features."""
    for split, frame in meta.items():
        logits = rng.normal(0, 1.0, (len(frame), len(SUBTYPES)))
        logits[np.arange(len(frame)), frame["label"]] += skill
        written = predictions.make_frame(frame, logits, SUBTYPES)  # sorted by image
        predictions.write(written, path / "predictions" / f"{split}.csv")
        (path / "features").mkdir(parents=True, exist_ok=True)
        features = np.c_[predictions.logits(written), rng.normal(0, 1, (len(frame), 4))]  # rows as in the file
        np.save(path / "features" / f"{split}.npy", features.astype(np.float32))
    RunDir(path).write_record({
        "model": model, "family": model[:2], "task": "subtype", "class_names": SUBTYPES, "seed": 0,
        "split": {"strategy": "patient", "fingerprint": "feedfacefeedface"}, "stain": {"method": "none"},
    })
    return path


@pytest.fixture
def subtype_runs(tmp_path) -> list[Path]:
    rng = np.random.default_rng(0)
    meta = {"val": _fake_split(rng, 3, 4, "val"), "test": _fake_split(rng, 2, 4, "test")}
    return [_fake_run(tmp_path / name, name, meta, rng, skill) for name, skill in
            [("v1_b0", 2.0), ("v1_b1", 1.5), ("v2_b0", 0.5)]]


def test_subtype_ensemble_with_every_method(subtype_runs, tmp_path):
    methods = list(METHODS)
    doc = run_ensemble(subtype_runs, tmp_path / "out", methods="all", resamples=FAST["resamples"],
                       settings=FAST["settings"])
    assert doc["task"] == "subtype" and doc["positive_class"] is None
    assert doc["val_folds"]["grouping"] == "patient"  # 3 val patients per subtype: grouped folds
    for method in methods:
        frame = predictions.read(tmp_path / "out" / "predictions" / f"{method}_test.csv")
        assert predictions.class_names(frame) == SUBTYPES and len(frame) == 8 * 2 * 4
        overall = doc["methods"][method]["test"]["overall"]
        assert overall["accuracy"] > 1 / 8  # better than chance with members that know something
        assert set(doc["methods"][method]["test"]["ci"]["overall"]) == set(metrics.METRICS)
    weights = doc["methods"]["weighted"]["details"]["weights"]
    assert weights["v1_b0"] > weights["v2_b0"]  # the better member gets more weight
    assert "macro averages" in (tmp_path / "out" / "table.md").read_text()


def test_unsorted_prediction_files_keep_features_aligned(subtype_runs):
    before = load_members(subtype_runs)
    features = before.members[1].features("test")  # read from disk on demand: read it before the edit
    run = subtype_runs[1]
    _edit_predictions(run, "test", lambda f: f.iloc[::-1])
    np.save(run / "features" / "test.npy", np.load(run / "features" / "test.npy")[::-1])
    after = load_members(subtype_runs)
    np.testing.assert_array_equal(after.logits("test"), before.logits("test"))
    np.testing.assert_array_equal(after.members[1].features("test"), features)


def test_nothing_is_fitted_on_test_labels(subtype_runs, tmp_path):
    methods = [name for name, method in METHODS.items() if method.fitted]
    run_ensemble(subtype_runs, tmp_path / "a", methods=methods, resamples=0, settings=FAST["settings"])
    labels = RunDir(subtype_runs[0]).read_predictions("test")["label"].to_numpy()
    new_labels = np.random.default_rng(1).permutation(labels)
    for run in subtype_runs:  # the same new test labels for every member
        _edit_predictions(run, "test", lambda f: f.assign(label=new_labels))
    run_ensemble(subtype_runs, tmp_path / "b", methods=methods, resamples=0, settings=FAST["settings"])
    for method in methods:
        a = predictions.read(tmp_path / "a" / "predictions" / f"{method}_test.csv")
        b = predictions.read(tmp_path / "b" / "predictions" / f"{method}_test.csv")
        np.testing.assert_array_equal(predictions.logits(a), predictions.logits(b))
        assert not np.array_equal(a["label"], b["label"])


def _compose(*overrides: str):
    """The ensemble config as the command line composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="ensemble", overrides=list(overrides))


# ---- real runs ----------------------------------------------------------------------------------------------------

def test_command_end_to_end_over_two_trained_runs(trained_runs, tmp_path):
    out = tmp_path / "ensemble"
    result = subprocess.run(
        [sys.executable, "-m", "histo.ensemble", f"runs=[{trained_runs[0]},{trained_runs[1]}]", "methods=all",
         f"out={out}", "compare_to=paper", "calibrate=true", "bootstrap.resamples=100",
         "settings.feature_stack.max_epochs=20"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(out) in result.stdout and "| # | model | kind |" in result.stdout

    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["members"]) == {"v1_b0", "v2_b0"}
    assert list(doc["methods"]) == list(METHODS)
    member_test = RunDir(trained_runs[0]).read_predictions("test")
    for name, entry in {**doc["members"], **doc["methods"]}.items():
        overall, ci = entry["test"]["overall"], entry["test"]["ci"]["overall"]
        assert overall["n_images"] == len(member_test)
        for metric in metrics.METRICS:
            assert metric in overall and metric in ci, (name, metric)
        assert set(entry["test"]["per_magnification"]) == {"40", "100", "200", "400"}
        assert entry["calibration"]["temperature"] > 0 if name != "hard" else "calibration" not in entry
    for method in doc["methods"]:
        frame = predictions.read(out / "predictions" / f"{method}_test.csv")
        assert frame["image"].tolist() == member_test["image"].tolist()
        assert doc["methods"][method]["mcnemar_vs_best_member"]["best_member"] == doc["best_member"]
    # the members are scored from their files exactly as training scored them; training records CIs too
    record = RunDir(trained_runs[0]).record()
    assert doc["members"]["v1_b0"]["test"]["overall"]["accuracy"] == pytest.approx(
        record["metrics"]["test"]["overall"]["accuracy"])
    assert set(record["metrics"]["test"]["ci"]["overall"]) == set(metrics.METRICS)

    table = (out / "table.md").read_text()
    assert table.count("| member |") == 2 and table.count("| ensemble |") == 6
    assert "paper accuracy" in table and "| 0.988 | 0.986 | 14 |" in table  # the paper's V1-B0 beside ours
    assert paper.CAVEAT in table


def test_sweep_dir_selection_through_configs(trained_runs, tmp_path):
    sweep = tmp_path / "multirun"
    sweep.mkdir()
    for i, run in enumerate(trained_runs):
        (sweep / f"{i}_{run.name}").symlink_to(run, target_is_directory=True)
    (sweep / "2_v1_b1").mkdir()  # an unfinished job
    out = tmp_path / "out"

    cfg = _compose("members=v1", f"sweep_dir={sweep}", "bootstrap.resamples=0")
    assert cfg.name == "v1" and list(cfg.models) == ["v1_b0", "v1_b1", "v1_b2", "v1_b3", "v1_b4"]
    with pytest.raises(EnsembleError, match=f"{sweep} has no finished run of v1_b1, v1_b2.*without run.json: 2_v1_b1"):
        ensemble(cfg, str(out))

    cfg = _compose("members=all", f"sweep_dir={sweep}", "models=[v2_b0,v1_b0]", "methods=[soft,hard]",
                   "bootstrap.resamples=0", "compare_to=paper")
    doc = ensemble(cfg, str(out))
    assert list(doc["members"]) == ["v2_b0", "v1_b0"]
    assert doc["methods"]["soft"]["row"] == "all soft" and "ci" not in doc["methods"]["soft"]["test"]


# ---- what the numbers mean (issue 14) -------------------------------------------------------------------------------

def test_best_member_is_chosen_on_val_not_test(tmp_path):
    # v1_b0 is the better model on test, v2_b0 on val: the reference of McNemar and the table's marker is v2_b0.
    meta = {"val": binary_split("val", 4, 8), "test": binary_split("test", 4, 8)}
    runs = [binary_run(tmp_path / "a", "v1_b0", meta, {"val": 0.2, "test": 3.0}, 0),
            binary_run(tmp_path / "b", "v2_b0", meta, {"val": 3.0, "test": 0.2}, 1)]
    doc = run_ensemble(runs, tmp_path / "out", methods=["soft", "weighted"], resamples=0)
    test_bacc = {m: doc["members"][m]["test"]["overall"]["balanced_accuracy"] for m in doc["members"]}
    assert test_bacc["v1_b0"] > test_bacc["v2_b0"]
    assert doc["best_member"] == "v2_b0" and doc["best_member_chosen_on"] == "val"
    assert doc["methods"]["soft"]["mcnemar_vs_best_member"]["best_member"] == "v2_b0"
    assert "best member on val" in (tmp_path / "out" / "table.md").read_text()


def test_hard_voting_reports_only_what_votes_support(tmp_path):
    # Hard voting was scored and temperature-scaled on made-up probabilities (votes + soft) / (M + 1).
    meta = {"val": binary_split("val", 4, 8), "test": binary_split("test", 4, 8)}
    runs = [binary_run(tmp_path / name, name, meta, {"val": s, "test": s}, k)
            for k, (name, s) in enumerate([("v1_b0", 1.0), ("v1_b1", 0.8), ("v2_b0", 0.6)])]
    doc = run_ensemble(runs, tmp_path / "out", methods=["soft", "hard"], resamples=0, calibrate=True)
    hard = doc["methods"]["hard"]
    overall = hard["test"]["overall"]
    assert overall["ece"] is None and overall["log_loss"] is None
    assert hard["test"]["score"] == "vote_share" and "calibration" not in hard
    assert doc["methods"]["soft"]["calibration"]["temperature"] > 0
    # AUROC on the share of members voting malignant, ties counted half
    members = load_members(runs)
    votes = (members.probabilities("test").argmax(axis=2) == 1).mean(axis=0)
    labels = members.labels("test")
    from sklearn.metrics import roc_auc_score
    assert overall["auroc"] == pytest.approx(roc_auc_score(labels, votes))
    assert overall["accuracy"] == pytest.approx(np.mean((votes > 0.5) == labels))
    table = (tmp_path / "out" / "table.md").read_text()
    hard_row = next(line for line in table.splitlines() if f"| {hard['row']} |" in line)  # the main table's
    assert "n/a" in hard_row and "vote share" in table
    calibration = table[table.index("## Calibration"):]
    assert re.search(rf"\| {hard['row']} \| n/a", calibration)


def test_image_level_fold_fallback_is_a_warning_in_the_table(tmp_path):
    # val with one benign patient: cross-validation on val falls back to image-level folds, which only the log said.
    meta = {"val": binary_split("val", 1, 4), "test": binary_split("test", 4, 8)}
    runs = [binary_run(tmp_path / name, name, meta, {"val": 1.0, "test": 1.0}, k)
            for k, name in enumerate(["v1_b0", "v2_b0"])]
    doc = run_ensemble(runs, tmp_path / "out", methods=["soft", "weighted"], resamples=0)
    assert doc["val_folds"]["grouping"] == "image"
    table = (tmp_path / "out" / "table.md").read_text()
    warning = next(line for line in table.splitlines() if line.startswith("**Warning**") and "image-level" in line)
    assert table.index(warning) < table.index("| # | model |") and "weighted" in warning
