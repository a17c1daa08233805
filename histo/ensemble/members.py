"""The members of an ensemble: finished runs whose prediction files can be combined.

Members are loaded from run directories (``run.json`` + ``predictions/{val,test}.csv``, :mod:`histo.evaluation.predictions`)
and checked against each other before anything is combined: at least two distinct runs, the same
task and classes, the same split (fingerprint), and on val and test the same images with the same
patients and labels. Every refusal names the run directory and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from histo.command import UserError
from histo.evaluation import predictions
from histo.evaluation.run_dir import PREDICTED_SPLITS, RunDir, unique_names


class EnsembleError(UserError):
    """The runs cannot be combined (or the ensemble is misconfigured); the message says which run and why."""


@dataclass(frozen=True)
class Member:
    name: str  # unique within the ensemble: the model name, or model@<run dir name> when models repeat
    run: RunDir
    record: dict
    frames: dict[str, pd.DataFrame]  # split -> prediction frame, sorted by image
    file_rows: dict[str, np.ndarray]  # split -> row of the file behind each row of the frame (files should be sorted)

    @property
    def model(self) -> str:
        return self.record.get("model", self.run.path.name)

    def features(self, split: str) -> np.ndarray:
        """Penultimate features of ``split`` (rows as in the prediction file), saved with predict.features=true."""
        path = self.run.features_path(split)
        if not path.is_file():
            raise EnsembleError(
                f"Run {self.run.path} has no {path.relative_to(self.run.path)}: method feature_stack needs the "
                "members' penultimate features; train them with predict.features=true."
            )
        values = np.load(path)
        if values.ndim != 2 or len(values) != len(self.frames[split]):
            raise EnsembleError(
                f"Run {self.run.path}: {path.name} has shape {values.shape}, but predictions/{split}.csv has "
                f"{len(self.frames[split])} rows."
            )
        if not np.isfinite(values).all():
            raise EnsembleError(f"Run {self.run.path}: {path} has non-finite features.")
        return values[self.file_rows[split]].astype(np.float32)


@dataclass(frozen=True)
class Members:
    """Validated members: every array below has the same images in the same order for all members."""

    members: tuple[Member, ...]

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):
        return iter(self.members)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def by_name(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    @property
    def class_names(self) -> list[str]:
        return predictions.class_names(self.members[0].frames["test"])

    @property
    def task(self) -> str | None:
        return self.members[0].record.get("task")

    @property
    def split(self) -> dict:
        return {k: self.members[0].record["split"].get(k) for k in ("strategy", "fingerprint")}

    def frame(self, split: str) -> pd.DataFrame:
        """The images of ``split`` (columns of the prediction contract without logits)."""
        return self.members[0].frames[split][predictions.META_COLUMNS]

    def labels(self, split: str) -> np.ndarray:
        return self.members[0].frames[split]["label"].to_numpy()

    def patients(self, split: str) -> np.ndarray:
        return self.members[0].frames[split]["patient"].astype(str).to_numpy()

    def logits(self, split: str) -> np.ndarray:
        """(members, images, classes)."""
        return np.stack([predictions.logits(m.frames[split]) for m in self.members])

    def probabilities(self, split: str) -> np.ndarray:
        """(members, images, classes) softmax probabilities."""
        return np.stack([predictions.probabilities(m.frames[split]) for m in self.members])


def load_members(paths) -> Members:
    """Load and cross-check the runs at ``paths``; raises :class:`EnsembleError` naming the offending run."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise EnsembleError(
            f"An ensemble needs at least two runs; got {len(paths)}"
            f"{': ' + ', '.join(map(str, paths)) if paths else ''}. List them with runs='[<run dir>,<run dir>]' "
            "or pick them from a multirun with members=v1|v2|all sweep_dir=<dir>."
        )
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            raise EnsembleError(f"Run {path} is listed twice (also as {seen[key]}); each member must be a different run.")
        seen[key] = path
    loaded = [_load(path) for path in paths]
    names = _names(loaded)
    members = tuple(Member(name, *parts) for name, parts in zip(names, loaded, strict=True))
    _check_compatible(members)
    return Members(members)


def runs_of_models(sweep_dir, models) -> list[Path]:
    """The finished runs of a multirun directory (``<sweep_dir>/<job>/run.json``) whose model is in ``models``.

    Runs are returned in the order of ``models``, then of their directory names; every listed model must be found.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise EnsembleError(f"sweep_dir={sweep_dir} is not a directory.")
    by_model: dict[str, list[Path]] = {}
    for record_path in sorted(sweep_dir.glob("*/run.json")):
        run = RunDir(record_path.parent)
        by_model.setdefault(_read_record(run).get("model"), []).append(run.path)
    missing = [m for m in models if m not in by_model]
    if missing:
        unfinished = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not (p / "run.json").is_file())
        raise EnsembleError(
            f"{sweep_dir} has no finished run of {', '.join(missing)} (finished: "
            f"{', '.join(sorted(k for k in by_model if k)) or 'none'}"
            f"{'; without run.json: ' + ', '.join(unfinished) if unfinished else ''}). "
            "Train the missing models or choose the members with models='[...]'."
        )
    return [path for model in models for path in by_model[model]]


def _load(path: Path) -> tuple[RunDir, dict, dict[str, pd.DataFrame], dict[str, np.ndarray]]:
    run = RunDir(path)
    if not run.path.is_dir():
        raise EnsembleError(f"Run {path} does not exist.")
    record = _read_record(run)
    frames, file_rows = {}, {}
    for split in PREDICTED_SPLITS:
        try:
            frame = run.read_predictions(split)
        except predictions.PredictionFileError as error:
            raise EnsembleError(f"Run {path} cannot be used: {error}") from error
        file_rows[split] = np.argsort(frame["image"].to_numpy(), kind="stable")
        frames[split] = frame.iloc[file_rows[split]].reset_index(drop=True)
    return run, record, frames, file_rows


def _read_record(run: RunDir) -> dict:
    try:
        record = run.record()
    except FileNotFoundError as error:
        raise EnsembleError(f"Run {run.path} cannot be used: {error}") from error
    except ValueError as error:  # invalid JSON
        raise EnsembleError(f"Run {run.path} cannot be used: {run.record_path} is not valid JSON ({error}).") from error
    if not (record.get("split") or {}).get("fingerprint"):
        raise EnsembleError(f"Run {run.path} cannot be used: {run.record_path} records no split fingerprint.")
    return record


def _names(loaded) -> list[str]:
    models = [record.get("model") or run.path.name for run, record, *_ in loaded]
    return unique_names(models, [run.path for run, *_ in loaded])


def _check_compatible(members: tuple[Member, ...]) -> None:
    first = members[0]
    reference = {
        "task": first.record.get("task"),
        "class names": predictions.class_names(first.frames["test"]),
        "split fingerprint": first.record["split"]["fingerprint"],
    }
    for other in members[1:]:
        values = {
            "task": other.record.get("task"),
            "class names": predictions.class_names(other.frames["test"]),
            "split fingerprint": other.record["split"]["fingerprint"],
        }
        for what, value in values.items():
            if value != reference[what]:
                raise EnsembleError(
                    f"Runs {first.run.path} and {other.run.path} have different {what} ({reference[what]} vs "
                    f"{value}); members must be trained on the same split for the same task."
                )
    for member in members:
        names = predictions.class_names(member.frames["val"])
        if names != reference["class names"]:
            raise EnsembleError(f"Run {member.run.path}: val and test prediction files have different classes.")
    for split in PREDICTED_SPLITS:
        ref = first.frames[split]
        for other in members[1:]:
            _check_same_images(first.run.path, ref, other.run.path, other.frames[split], split)


def _check_same_images(path_a: Path, a: pd.DataFrame, path_b: Path, b: pd.DataFrame, split: str) -> None:
    images_a, images_b = a["image"].to_numpy(), b["image"].to_numpy()
    if not np.array_equal(images_a, images_b):
        only_a = sorted(set(images_a) - set(images_b))
        only_b = sorted(set(images_b) - set(images_a))
        example = f"e.g. {only_a[0]} only in the first" if only_a else f"e.g. {only_b[0]} only in the second"
        raise EnsembleError(
            f"Runs {path_a} and {path_b} predict different {split} images ({len(images_a)} vs {len(images_b)}; "
            f"{example}); members must be trained on the same split."
        )
    for column in ("label", "patient"):
        differ = a[column].astype(str).to_numpy() != b[column].astype(str).to_numpy()
        if differ.any():
            raise EnsembleError(
                f"Runs {path_a} and {path_b} disagree on the {column} of {differ.sum()} {split} images "
                f"(e.g. {images_a[differ][0]}: {a[column].to_numpy()[differ][0]} vs {b[column].to_numpy()[differ][0]})."
            )
