"""Resuming an interrupted training run from its ``checkpoints/last.ckpt`` (``resume=true``).

:class:`LastCheckpoint` writes that file, atomically, at the end of every training epoch (after
validation and the best checkpoint) and, with ``last_checkpoint_every_n_steps=N``, every N training
steps. Besides Lightning's state (weights, optimizer, scheduler, epoch and step counters, the best
checkpoint so far) it holds the global random generators (torch, CUDA, numpy, Python) and what the
run is: its resolved config and split fingerprint. :func:`resume_from` refuses to continue with a
config that differs in anything but the trainer's limits, and :func:`continue_csv_log` makes the
resumed run append to ``csv/metrics.csv``.

Resumed from an epoch-end checkpoint, a run gives bit-identical prediction files on CPU to a run
never interrupted. From a mid-epoch (step) checkpoint it continues correctly but not
bit-identically: Lightning starts that epoch's data loader again, so the epoch's remaining steps see
a fresh order.
"""

from __future__ import annotations

import csv
import logging
import os
import random
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from histo.command import UserError
from histo.evaluation.run_dir import CHECKPOINT_INFO, RunDir

log = logging.getLogger(__name__)

# What may change when a run is resumed: how long it trains and what it shows, nothing it computes.
RESUMABLE = ("resume", "overwrite", "last_checkpoint_every_n_steps", "trainer.max_epochs", "trainer.max_steps", "trainer.max_time",
             "trainer.min_epochs", "trainer.min_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary")
# Keys that older configs carried where nothing read them (split.folds/fold of the image and patient splits):
# a checkpoint that has one the current config lacks still resumes.
RETIRED = ("split.folds", "split.fold")


class ResumeError(UserError):
    """A run that cannot be resumed as asked; the message says why and what to do."""


class LastCheckpoint(pl.Callback):
    """Write ``<dirpath>/last.ckpt`` at every epoch end (and every ``every_n_steps`` training steps) with
    the run's ``config`` and ``split_fingerprint``; restore the random generators it holds."""

    def __init__(self, dirpath: str | Path, config: dict, split_fingerprint: str | None = None,
                 every_n_steps: int | None = None):
        self.path = Path(dirpath) / "last.ckpt"
        self.config = config
        self.split_fingerprint = split_fingerprint
        self.every_n_steps = every_n_steps
        self._epochs_completed = 0
        self._saved_step = 0
        self._restore: dict | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps: with gradient accumulation several batches share one
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._saved_step:
            self._saved_step = step
            self._save(trainer, trainer.current_epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer, trainer.current_epoch + 1)

    def _save(self, trainer: pl.Trainer, epochs_completed: int) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        self._epochs_completed = epochs_completed
        tmp = self.path.with_name(f"{self.path.name}.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # the whole state: optimizer, loops, callbacks
        if trainer.is_global_zero:
            os.replace(tmp, self.path)  # a kill while saving leaves the previous last.ckpt intact

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_INFO] = {"config": self.config, "split_fingerprint": self.split_fingerprint,
                                       "epochs_completed": self._epochs_completed}

    def state_dict(self) -> dict:
        return {"rng": _rng_states()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restore = state_dict.get("rng")

    def on_train_start(self, trainer, pl_module) -> None:
        # set here, after Lightning's setup and sanity check, right before the first epoch draws
        if self._restore is not None:
            _set_rng_states(self._restore)
            self._restore = None


def resume_from(run: RunDir, config: dict) -> tuple[Path, dict]:
    """The checkpoint to continue ``run`` from and what it records, once checked against ``config``
    (the resolved config of the command that resumes)."""
    path = run.last_checkpoint_path
    if not path.is_file():
        raise ResumeError(f"resume=true: nothing to resume in {run.path}: it has no {path.relative_to(run.path)} "
                          "(a run writes it at the end of each epoch). Give the interrupted run's directory "
                          "(hydra.run.dir=<run dir>), or train without resume=true.")
    try:
        info = run.last_checkpoint_info()
    except Exception as error:  # damaged, or not a checkpoint at all
        raise ResumeError(f"resume=true: {path} cannot be read ({type(error).__name__}: {error}); "
                          "train the run anew with overwrite=true.") from error
    if "config" not in info:
        raise ResumeError(f"resume=true: {path} records no run config (not written by histo-train); "
                          "train the run anew with overwrite=true.")
    changed = changed_settings(info["config"], config)
    if changed:
        shown = ", ".join(f"{key} ({old!r} -> {new!r})" for key, old, new in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        raise ResumeError(
            f"resume=true: the config differs from the interrupted run's in {shown}{more}; only the trainer's "
            f"limits ({', '.join(k for k in RESUMABLE if k.startswith('trainer.'))}) may change. Resume with the "
            "run's own settings (see its .hydra/config.yaml), or train anew with overwrite=true."
        )
    log.info("resume=true: continuing %s from %s (%d epoch(s) done).", run.path, path, info.get("epochs_completed", 0))
    return path, info


def check_split(info: dict, fingerprint: str, run: RunDir) -> None:
    """The resumed run must split the same images the same way (the dataset may have changed meanwhile)."""
    if info.get("split_fingerprint") not in (None, fingerprint):
        raise ResumeError(f"resume=true: the split of {run.path} is now {fingerprint}, but the interrupted run used "
                          f"{info['split_fingerprint']}: the dataset under data.root changed. Train anew with "
                          "overwrite=true.")


def changed_settings(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, old, new) for every dotted key whose value differs, except the :data:`RESUMABLE` ones and
    :data:`RETIRED` ones only the old config has."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(set(a) | set(b))
    missing = object()
    return [(k, a.get(k), b.get(k)) for k in keys
            if k not in RESUMABLE and not (k in RETIRED and k not in b) and a.get(k, missing) != b.get(k, missing)]


def continue_csv_log(loggers, epochs_completed: int) -> None:
    """Keep the rows of ``csv/metrics.csv`` from the epochs the checkpoint completed, so the resumed run
    appends to them (Lightning's CSV logger would start the file anew)."""
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("epoch") not in (None, "") and float(r["epoch"]) < epochs_completed]
        writer = logger.experiment  # creating the writer deletes the old file
        with open(path, "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = header  # so its next rows extend this header instead of replacing it


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out |= _flatten(item, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: value}


def _rng_states() -> dict:
    """The global random generators, as plain values (the checkpoint loads with ``weights_only=True``)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
