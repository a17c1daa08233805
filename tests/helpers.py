"""Test helpers: compose real Hydra configs for fast CPU runs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from histo import CONF_DIR
from histo.data.synthetic import SyntheticSpec
from histo.evaluation import predictions
from histo.evaluation.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLE = REPO.parent / "shared" / "data" / "breakhis-sample" / "BreaKHis_v1"
SMALL_SPEC = SyntheticSpec(patients_per_subtype=2, images_per_magnification=2, width=64, height=42, seed=3)

# What every test training run shares: CPU, tiny images, no progress bar, no worker processes.
FAST = [
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "model.pretrained=false",
    "model.image_size=32",
    "data.num_workers=0",
    "data.batch_size=16",
    "data.cache=off",  # no image cache under ./outputs from tests; tests/test_cache.py covers data.cache=auto
]


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose a real config from conf/ as the command line would, with its run directory set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real run, where the job's config has no hydra node
    return cfg


def train_config(output_dir: Path, data_root: Path, *overrides: str) -> DictConfig:
    """A train config for a fast CPU run on ``data_root`` writing into ``output_dir``."""
    return compose_config("train", [*FAST, f"data.root={data_root}", *overrides], output_dir)


def binary_split(split: str, benign: int, malignant: int, images: int = 6) -> pd.DataFrame:
    """Prediction-file metadata of ``benign`` + ``malignant`` patients with ``images`` images each."""
    return pd.DataFrame([
        {"image": f"{split}/p{p:02d}_{i:02d}.png", "patient": f"{split}-{p:02d}", "subtype": "F" if p < benign else "DC",
         "magnification": [40, 100, 200, 400][i % 4], "label": int(p >= benign)}
        for p in range(benign + malignant) for i in range(images)
    ])


def binary_run(path: Path, model: str, meta: dict[str, pd.DataFrame], skill: dict[str, float], seed: int) -> Path:
    """A finished binary run (run.json, predictions/{val,test}.csv) whose logits favour the true class by
    ``skill[split]`` plus noise; runs made with the same ``meta`` share a split and can be ensembled."""
    rng = np.random.default_rng(seed)
    for split, frame in meta.items():
        margin = skill[split] + rng.normal(0, 1.5, len(frame))
        logit = np.where(frame["label"] == 1, margin, -margin)
        predictions.write(predictions.make_frame(frame, np.c_[np.zeros(len(frame)), logit], ["benign", "malignant"]),
                          path / "predictions" / f"{split}.csv")
    RunDir(path).write_record({
        "model": model, "family": model[:2], "task": "binary", "class_names": ["benign", "malignant"], "seed": seed,
        "split": {"strategy": "patient", "fingerprint": "0123456789abcdef"}, "stain": {"method": "none"},
    })
    return path


class KillAfterEpochs(pl.Callback):
    """``kill -9`` its own process at the end of training epoch ``epochs``, after checkpoints/last.ckpt is
    written: an interrupted run at a known point (``+callbacks.kill._target_=helpers.KillAfterEpochs``)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 == self.epochs:
            os.kill(os.getpid(), signal.SIGKILL)


class WaitForFile(pl.Callback):
    """Block at the end of the first training epoch until ``path`` exists: a run that is surely still
    writing its directory while a test starts a second one."""

    def __init__(self, path: str, timeout: float = 300.0):
        self.path, self.timeout = Path(path), timeout

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        deadline = time.time() + self.timeout
        while not self.path.exists() and time.time() < deadline:
            time.sleep(0.1)


