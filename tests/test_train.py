"""Training end to end: prediction files, run.json, checkpoints that load without Hydra."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
from helpers import train_config

from histo.config_check import ConfigError
from histo.data.breakhis import build_index
from histo.data.datamodule import BreakHisDataModule, load_data
from histo.evaluation import predictions
from histo.evaluation.prediction_writer import PredictionWriter
from histo.evaluation.run_dir import RunDir
from histo.models import Classifier
from histo.train import train


def test_short_run_writes_valid_prediction_files(trained_runs):
    for path in trained_runs:
        run = RunDir(path)
        record = run.record()
        split = pd.read_csv(run.split_path)
        for name in ("val", "test"):
            frame = run.read_predictions(name)
            assert sorted(frame["image"]) == sorted(split.loc[split["split"] == name, "image"])
            assert predictions.class_names(frame) == ["benign", "malignant"]
            assert np.load(path / "features" / f"{name}.npy").shape[0] == len(frame)
        assert record["split"]["test_patients_in_train"] == 0
        assert set(record["metrics"]["test"]["overall"]) >= {"accuracy", "auroc", "patient_recognition_rate"}
        json.loads(run.record_path.read_text())  # strict JSON


def test_run_record_describes_the_run(trained_runs):
    run = RunDir(trained_runs[1])
    record = run.record()
    assert record["model"] == "v2_b0" and record["family"] == "v2"
    assert record["class_names"] == ["benign", "malignant"]
    assert record["split"]["fingerprint"] == hashlib.sha256(run.split_path.read_bytes()).hexdigest()[:16]
    assert record["split"]["strategy"] == "patient"
    assert run.best_checkpoint().is_file()
    assert record["config"]["model"]["name"] == "v2_b0"
    assert record["versions"]["torch"] and record["wall_time_s"] > 0
    # the two fixture runs share one split, so they can be ensembled
    assert record["split"]["fingerprint"] == RunDir(trained_runs[0]).record()["split"]["fingerprint"]
    metrics_csv = pd.read_csv(trained_runs[1] / "csv" / "metrics.csv")
    assert {"train/loss", "val/accuracy", "val/auroc", "val/balanced_accuracy", "train/specificity"} <= set(metrics_csv.columns)


def test_image_split_records_the_patient_leak(synthetic_root, tmp_path):
    cfg = train_config(tmp_path, synthetic_root, "split=image", "debug=limit", "trainer.max_epochs=1",
                       "callbacks.model_checkpoint.save_top_k=0")
    record = train(cfg)
    table = build_index(synthetic_root).frame.merge(pd.read_csv(tmp_path / "split.csv"), on="image")
    train_patients = set(table.loc[table["split"] == "train", "patient"])
    leaked = set(RunDir(tmp_path).read_predictions("test")["patient"]) & train_patients
    assert record["split"]["test_patients_in_train"] == len(leaked) > 0
    assert record["checkpoint"] is None  # no checkpoint kept: predictions from the last weights
    assert len(RunDir(tmp_path).read_predictions("test")) == record["split"]["counts"]["test"]


@pytest.mark.parametrize("logger", ["tensorboard", "none"])
def test_the_csv_training_log_is_kept_whatever_the_logger(synthetic_root, tmp_path, logger):
    train(train_config(tmp_path, synthetic_root, f"logger={logger}", "debug=limit", "trainer.max_epochs=1"))
    log = pd.read_csv(RunDir(tmp_path).training_log_path)  # what histo-report draws the learning curves from
    assert {"epoch", "train/loss", "val/accuracy"} <= set(log.columns)
    assert (tmp_path / "tensorboard").is_dir() == (logger == "tensorboard")


def test_fast_dev_run_writes_no_prediction_files(synthetic_root, tmp_path):
    assert train(train_config(tmp_path, synthetic_root, "debug=fdr")) == {}
    assert not (tmp_path / "predictions").exists() and not (tmp_path / "run.json").exists()


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="data.root=.*no such directory"):
        train(train_config(tmp_path, tmp_path / "no-such-dir"))


def test_ddp_on_two_cpu_processes_predicts_each_image_once(synthetic_root, tmp_path):
    """Under DDP the sampler pads uneven shards; the prediction files still list each image once."""
    index = build_index(synthetic_root)
    images = sorted(index.images)
    roles = ["val"] * 7 + ["test"] * 9 + ["train"] * (len(images) - 16)  # odd: shards are uneven
    split_file = tmp_path / "odd_split.csv"
    pd.DataFrame({"image": images, "split": np.random.default_rng(0).permutation(roles)}).to_csv(
        split_file, index=False)
    cfg = train_config(tmp_path / "run", synthetic_root, "trainer=ddp_sim", "debug=limit", "trainer.max_epochs=1",
                       "trainer.enable_progress_bar=false", "data.batch_size=4", f"split.file={split_file}")
    train(cfg)
    run = RunDir(tmp_path / "run")
    assert run.record()["trainer"]["world_size"] == 2
    for name, n in (("val", 7), ("test", 9)):
        frame = run.read_predictions(name)
        assert len(frame) == n and frame["image"].is_unique
    assert run.record()["split"]["strategy"] == "file"


def test_each_prediction_file_holds_the_split_its_loader_served(synthetic_root, tmp_path):
    """The writer names each predict loader's output by the split the datamodule says it serves, not by the
    loader's position: a datamodule that serves test first still gets val.csv of the val images."""

    class TestFirst(BreakHisDataModule):
        predict_splits = ("test", "val")

    cfg = train_config(tmp_path, synthetic_root, "split=patient")
    data = load_data(cfg.data, cfg.split, cfg.paths.synthetic_dir)
    model = Classifier("tf_efficientnet_b0", list(data.class_names), image_size=32)
    for name, kind in (("usual", BreakHisDataModule), ("test_first", TestFirst)):
        datamodule = kind(data, image_size=32, batch_size=16, num_workers=0)
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[PredictionWriter(tmp_path / name, datamodule)])
        trainer.predict(model, datamodule=datamodule, return_predictions=False)
    for split in ("val", "test"):
        usual, test_first = (predictions.read(tmp_path / name / "predictions" / f"{split}.csv")
                             for name in ("usual", "test_first"))
        assert sorted(usual["image"]) == sorted(data.split.images(split))
        pd.testing.assert_frame_equal(test_first, usual)


def test_wandb_offline_logs_and_closes_the_run(synthetic_root, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = train_config(tmp_path, synthetic_root, "logger=wandb", "debug=limit", "trainer.max_epochs=1")
    record = train(cfg)
    assert wandb.run is None  # closed, so the next run of a multirun opens its own
    assert record["metrics"]["test"]["overall"]["n_images"] > 0
    offline_runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
    logged = next(offline_runs[0].glob("*.wandb")).read_bytes()  # what `wandb sync` will upload
    assert b"test/balanced_accuracy" in logged and b"test/accuracy_low" in logged  # summary with CIs
    assert b"patient_key" in logged  # the resolved config, not only the model's hyperparameters
    assert b"split/fingerprint" in logged and b"predictions-" in logged  # summary and artifact

