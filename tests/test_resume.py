"""Resuming a killed training run: the real command, ``kill -9`` after epoch 2, ``resume=true``.

Issue 13: a killed run could not be resumed (no last checkpoint; ``+ckpt_path=`` was silently ignored).
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FAST, train_config

from histo import CONF_DIR
from histo.config_check import ConfigError
from histo.evaluation.run_dir import RunDir
from histo.resume import LastCheckpoint, _rng_states, _set_rng_states, changed_settings
from histo.run_start import RunDirRefused
from histo.train import train

REPO = Path(CONF_DIR).parent
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}


SETTINGS = ["trainer.max_epochs=4", "+trainer.limit_train_batches=2"]  # 4 epochs of 2 steps


def command(root: Path, run_dir: Path, *overrides: str) -> list[str]:
    """histo-train as a user types it: the fast test settings and :data:`SETTINGS`, into ``run_dir``."""
    return [sys.executable, "-m", "histo.train", *FAST, f"data.root={root}", f"hydra.run.dir={run_dir}",
            *SETTINGS, *overrides]


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600, **kwargs)


def kill_after_epochs(args: list[str], run_dir: Path, epochs: int) -> None:
    """Start the command and ``kill -9`` it as soon as its last checkpoint records ``epochs`` epochs."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=REPO)
    last, seen = RunDir(run_dir).last_checkpoint_path, set()
    try:
        while process.poll() is None and len(seen) < epochs:
            if last.is_file():
                seen.add(last.stat().st_ino)  # each epoch end replaces the file (a new inode)
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        assert process.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"


@pytest.mark.slow
def test_a_run_killed_after_epoch_2_resumes_to_the_same_predictions_bit_for_bit(synthetic_root, tmp_path):
    full, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    assert run(command(synthetic_root, full)).returncode == 0

    kill_after_epochs(command(synthetic_root, killed), killed, epochs=2)
    assert RunDir(killed).last_checkpoint_info()["epochs_completed"] == 2
    assert not RunDir(killed).record_path.exists()
    assert str(RunDir(killed).state()).startswith("interrupted: after 2 epoch(s)")
    with pytest.raises(RunDirRefused, match="holds an unfinished run.*resume=true"):  # the command again: refused
        train(train_config(killed, synthetic_root, *SETTINGS))

    hydra_config = (killed / ".hydra" / "config.yaml").read_bytes()
    changed = run(command(synthetic_root, killed, "resume=true", "model.drop_rate=0.5", "trainer.max_epochs=6"))
    assert changed.returncode == 2
    message = changed.stderr.strip().splitlines()
    assert len(message) == 1 and "model.drop_rate (0.3 -> 0.5)" in message[0]
    assert "trainer.max_epochs (" not in message[0]  # a limit may change
    assert (killed / ".hydra" / "config.yaml").read_bytes() == hydra_config  # refused before Hydra wrote anything

    resumed = run(command(synthetic_root, killed, "resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for split in ("val", "test"):
        assert (killed / "predictions" / f"{split}.csv").read_bytes() == (full / "predictions" / f"{split}.csv").read_bytes()
    record = RunDir(killed).record()
    assert record["resumed_after_epochs"] == 2 and record["epochs"] == 4
    assert record["checkpoint"] == RunDir(full).record()["checkpoint"]  # the same best epoch, found across the kill
    with open(killed / "csv" / "metrics.csv", newline="") as f:  # appended to: each epoch's validation once
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows if r.get("val/accuracy")] == [0, 1, 2, 3]
    # the best checkpoint may be from before the kill: the last one says whether training itself continued alike
    weights = [torch.load(RunDir(d).last_checkpoint_path, weights_only=True)["state_dict"] for d in (full, killed)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "training after resume diverged"


def test_nothing_to_resume_and_ckpt_path_are_clear_errors(synthetic_root, tmp_path):
    with pytest.raises(RunDirRefused, match="nothing to resume"):
        train(train_config(tmp_path / "new", synthetic_root, "resume=true"))
    assert not (tmp_path / "new").exists()  # and no directory is left behind
    with pytest.raises(ConfigError, match="ckpt_path is not a histo setting.*resume=true"):
        train(train_config(tmp_path / "other", synthetic_root, "+ckpt_path=some.ckpt"))
    with pytest.raises(ConfigError, match="resume=true and overwrite=true"):
        train(train_config(tmp_path / "other", synthetic_root, "resume=true", "overwrite=true"))


class _Trainer:
    """What LastCheckpoint reads of a trainer; ``save_checkpoint`` records the saves."""

    sanity_checking = fast_dev_run = False
    is_global_zero = True

    def __init__(self):
        self.global_step, self.current_epoch, self.saved = 0, 0, []

    def save_checkpoint(self, path, weights_only=False):
        Path(path).write_bytes(b"checkpoint")
        self.saved.append((self.global_step, self.current_epoch))


def test_last_checkpoint_every_n_steps_and_at_each_epoch_end(tmp_path):
    callback, trainer = LastCheckpoint(tmp_path, config={}, every_n_steps=2), _Trainer()
    for step in (1, 2, 2, 3, 4):  # step 2 twice: gradient accumulation, two batches for one optimizer step
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.saved == [(2, 0), (4, 0)] and callback._epochs_completed == 0  # mid-epoch: epoch 0 not done
    callback.on_train_epoch_end(trainer, None)
    assert trainer.saved[-1] == (4, 0) and callback._epochs_completed == 1
    assert (tmp_path / "last.ckpt").is_file() and not (tmp_path / "last.ckpt.tmp").exists()


def test_the_random_generators_are_saved_and_restored():
    states = _rng_states()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    _set_rng_states(states)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_only_the_trainers_limits_may_change():
    old = {"seed": 1, "trainer": {"max_epochs": 4, "precision": "32-true"}, "resume": False}
    assert changed_settings(old, {"seed": 1, "trainer": {"max_epochs": 9, "precision": "32-true"}, "resume": True}) == []
    assert changed_settings(old, {"seed": 2, "trainer": {"max_epochs": 4, "precision": "bf16-mixed"}}) == [
        ("seed", 1, 2), ("trainer.precision", "32-true", "bf16-mixed")]


def test_a_run_whose_split_config_still_had_the_inert_fold_keys_resumes():
    """Image and patient split configs carried split.folds/fold (read by nothing) before they were removed."""
    before = {"split": {"strategy": "image", "folds": 5, "fold": 0}}
    assert changed_settings(before, {"split": {"strategy": "image"}}) == []
    kfold = {"split": {"strategy": "patient_kfold", "folds": 5, "fold": 0}}
    assert changed_settings(kfold, {"split": {"strategy": "patient_kfold", "folds": 5, "fold": 1}}) == [
        ("split.fold", 0, 1)]


def test_the_training_order_depends_on_seed_and_epoch_only():
    from histo.data.dataset import AugmentationOrder

    order = AugmentationOrder(50, seed=7)
    state = torch.get_rng_state()
    first = list(order)
    assert torch.equal(torch.get_rng_state(), state)  # an epoch's start leaves torch's global generator alone
    assert list(order) != first  # unset epochs (DDP wraps the sampler): each pass is the next epoch
    order.set_epoch(0)
    assert list(order) == first
    resumed = AugmentationOrder(50, seed=7)
    resumed.set_epoch(2)
    order.set_epoch(2)
    assert list(resumed) == list(order) != first
