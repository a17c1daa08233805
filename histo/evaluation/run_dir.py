"""A training run's directory: where its files are, its ``run.json`` record, and what state it is in.

    <run>/run.json                 what the run was and what it scored (laid out by histo.run_record, written
                                   by histo.train); written last and atomically, so a directory with a run.json
                                   holds a finished run
    <run>/split.csv                the split it used (fingerprint in run.json)
    <run>/predictions/{val,test}.csv
    <run>/features/{val,test}.npy  penultimate features (predict.features=true)
    <run>/checkpoints/*.ckpt       the best checkpoint is named in run.json; last.ckpt is what
                                   ``resume=true`` continues from
    <run>/csv/metrics.csv          per-epoch training log (always written, whatever the logger)
    <run>/run.lock                 while a process writes the run (:mod:`histo.evaluation.run_lock`)

run.json records each prediction file's row count and sha256 (``files``). :meth:`RunDir.read_predictions`
checks them, so every stage that reads a run (ensemble, report, explain, compare, predict) refuses a
prediction file that changed after the run finished, naming the file and the difference.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from histo.command import UserError
from histo.evaluation import predictions, run_lock
from histo.evaluation.json_file import write_json
from histo.evaluation.predictions import PredictionFileError

PREDICTED_SPLITS = ("val", "test")  # the splits a run writes prediction files for, in the predict loaders' order
LAST_CHECKPOINT = "checkpoints/last.ckpt"
CHECKPOINT_INFO = "histo_run"  # the key of what a histo checkpoint holds besides Lightning's state (histo.resume)


class RunRecordError(UserError):
    """A run.json that cannot be read; the message names the file."""


@dataclass(frozen=True)
class RunState:
    """Where a run directory stands: ``finished``, ``running``, ``interrupted`` (resumable),
    ``unfinished`` (nothing to resume) or ``broken`` (a damaged run.json or prediction file)."""

    name: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}" if self.detail else self.name


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def record_path(self) -> Path:
        return self.path / "run.json"

    @property
    def split_path(self) -> Path:
        return self.path / "split.csv"

    @property
    def training_log_path(self) -> Path:
        """The per-epoch CSV log every run writes, whatever else it logs to (learning curves)."""
        return self.path / "csv" / "metrics.csv"

    @property
    def last_checkpoint_path(self) -> Path:
        return self.path / LAST_CHECKPOINT

    def predictions_path(self, split: str) -> Path:
        return self.path / "predictions" / f"{split}.csv"

    def features_path(self, split: str) -> Path:
        return self.path / "features" / f"{split}.npy"

    def read_predictions(self, split: str) -> pd.DataFrame:
        """The prediction file of ``split``, checked against what run.json records about it."""
        self.check_predictions(split, self.record())
        return predictions.read(self.predictions_path(split))

    def record(self) -> dict:
        if not self.record_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a finished run: {self.record_path} does not exist.")
        try:
            record = json.loads(self.record_path.read_text())
        except ValueError as error:
            raise RunRecordError(f"{self.record_path} is damaged: not valid JSON ({error}). "
                                 "Train the run again (overwrite=true).") from error
        if not isinstance(record, dict):
            raise RunRecordError(f"{self.record_path} is damaged: not a JSON object. Train the run again (overwrite=true).")
        return record

    def write_record(self, record: dict) -> Path:
        """Write run.json (atomically). Call it last: it marks the run finished."""
        return write_json(self.record_path, record)

    def file_digests(self) -> dict[str, dict]:
        """Row count and sha256 of each prediction file, keyed by its path in the run (run.json ``files``)."""
        paths = [self.predictions_path(s) for s in PREDICTED_SPLITS]
        return {p.relative_to(self.path).as_posix(): file_digest(p) for p in paths if p.is_file()}

    def check_predictions(self, split: str, record: dict) -> None:
        """Raise :class:`PredictionFileError` when the prediction file of ``split`` is not the one run.json
        records (runs written before run.json recorded its files are not checked)."""
        path = self.predictions_path(split)
        expected = (record.get("files") or {}).get(path.relative_to(self.path).as_posix())
        if expected is None:
            return
        if not path.is_file():
            raise PredictionFileError(f"{path} does not exist, but run.json of {self.path} records it with "
                                      f"{expected['rows']} rows. Restore it, or train the run again.")
        actual = file_digest(path)
        if actual["rows"] != expected["rows"]:
            raise PredictionFileError(
                f"{path} has {actual['rows']} rows but run.json records {expected['rows']}: the file changed after "
                "the run finished. Restore it, or train the run again."
            )
        if actual["sha256"] != expected["sha256"]:
            raise PredictionFileError(
                f"{path} is not the file run.json records (sha256 {actual['sha256'][:12]}… vs "
                f"{expected['sha256'][:12]}…, both {expected['rows']} rows): it was edited after the run finished. "
                "Restore it, or train the run again."
            )

    def best_checkpoint(self) -> Path:
        """The checkpoint the prediction files came from, as recorded in run.json."""
        ckpt = self.record().get("checkpoint")
        if not ckpt:
            raise FileNotFoundError(f"{self.record_path} names no checkpoint (was the run a fast_dev_run?).")
        path = Path(ckpt)
        return path if path.is_absolute() else self.path / path

    def last_checkpoint_info(self) -> dict:
        """What ``checkpoints/last.ckpt`` says about the run it belongs to (config, split, epochs completed)."""
        import torch

        checkpoint = torch.load(self.last_checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
        return dict(checkpoint.get(CHECKPOINT_INFO) or {})

    def state(self) -> RunState:
        """Finished (with any warnings of its record), running, interrupted, unfinished or broken."""
        if self.record_path.is_file():
            try:
                record = self.record()
                for split in PREDICTED_SPLITS:
                    self.check_predictions(split, record)
            except (RunRecordError, PredictionFileError) as error:
                return RunState("broken", str(error))
            return RunState("finished", "; ".join(warnings(record)))
        holder = run_lock.holder(self.path)
        if holder is not None:
            return RunState("running", holder.describe())
        if self.last_checkpoint_path.is_file():
            try:
                epochs = f"after {self.last_checkpoint_info()['epochs_completed']} epoch(s)"
            except Exception:  # a checkpoint of another version, or damaged: the state still says where it is
                epochs = "with an unreadable last checkpoint"
            return RunState("interrupted", f"{epochs}; continue it with resume=true hydra.run.dir={self.path}")
        return RunState("unfinished", "no run.json and no checkpoint to resume from")


def unique_names(models: list[str], directories: list[str | Path]) -> list[str]:
    """Each run's name in tables and files: its model, or ``model@<directory name>`` where runs share a model.

    >>> unique_names(["v1_b0", "v1_b0", "v2_b0"], ["runs/a", "runs/b", "runs/c"])
    ['v1_b0@a', 'v1_b0@b', 'v2_b0']
    """
    return [m if models.count(m) == 1 else f"{m}@{Path(d).name}" for m, d in zip(models, directories, strict=True)]


def warnings(record: dict) -> list[str]:
    """What a table must say next to a run's numbers: the degenerate splits it was allowed to train on."""
    return [f"degenerate (allow_degenerate=true): {problem}" for problem in record.get("degenerate") or []]


def file_digest(path: str | Path) -> dict:
    """``rows`` (lines after the header) and ``sha256`` of a prediction file."""
    data = Path(path).read_bytes()
    return {"rows": max(data.count(b"\n") - 1, 0), "sha256": hashlib.sha256(data).hexdigest()}
