"""What a report is made of: run directories and ensemble outputs, as rows of prediction frames.

A run directory (``run.json``) gives one row: its model, from ``predictions/<split>.csv``, with its
training log (``csv/metrics.csv``) for learning curves. An ensemble output (``metrics.json``) gives one
row per method, from ``predictions/<method>_test.csv``, and, unless told otherwise, its members' runs
too (when their directories still exist). Every row must predict the same images of the same split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from histo.command import UserError
from histo.evaluation import paper, predictions
from histo.evaluation.paper import display_name, order_key
from histo.evaluation.predictions import PredictionFileError
from histo.evaluation.run_dir import RunDir, unique_names
from histo.evaluation.run_dir import warnings as run_warnings


class ReportError(UserError):
    """Inputs or options that cannot be reported; the message names the path or key and what to do."""


@dataclass
class Row:
    """One line of the report: a single model (``kind="model"``) or an ensemble method (``"ensemble"``)."""

    name: str  # unique label shown everywhere, e.g. V1-B0 or "v1 soft"
    kind: str
    frame: pd.DataFrame  # prediction frame of the report's split, sorted by image
    source: Path  # the run or ensemble directory
    paper_key: str
    split: dict  # strategy, fingerprint, test_patients_in_train (as recorded)
    task: str
    run: Path | None = None  # the run directory (models only): training log, evaluation input
    record: dict = field(default_factory=dict, repr=False)
    members: list[Path] = field(default_factory=list)  # ensembles: the member runs that exist
    score: str = "probability"  # what the prediction file's softmax is: probability or vote_share (hard voting)
    warnings: list[str] = field(default_factory=list)  # what the tables must flag (degenerate split, fold fallback)

    @property
    def fingerprint(self) -> str | None:
        return self.split.get("fingerprint")

    @property
    def curves_path(self) -> Path | None:
        return None if self.run is None else RunDir(self.run).training_log_path


def load_rows(paths, split: str = "test", ensemble_members: bool = True) -> list[Row]:
    """The report's rows from run and ensemble directories, models first (paper order), then ensembles."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ReportError("No inputs: runs='[<run or ensemble dir>,...]'.")
    models: dict[Path, Row] = {}
    ensembles: list[Row] = []

    def add_model(run: Path) -> None:  # each run read once, also when several ensembles share it
        if run.resolve() not in models:
            models[run.resolve()] = _model_row(run, split)

    for path in paths:
        if (path / "run.json").is_file():
            add_model(path)
        elif (path / "metrics.json").is_file():
            rows, members = _ensemble_rows(path, split)
            ensembles += rows
            for member in members if ensemble_members else []:
                add_model(member)
        else:
            raise ReportError(
                f"{path} is neither a training run (no run.json) nor an ensemble output (no metrics.json)."
            )
    rows = sorted(models.values(), key=lambda r: (*order_key(r.record.get("model", ""), r.record.get("family")),
                                                  str(r.source)))
    rows += ensembles
    _unique_names(rows)
    _check_same_images(rows, split)
    return rows


def _model_row(path: Path, split: str) -> Row:
    run = RunDir(path)
    try:
        record = run.record()
        frame = run.read_predictions(split)
    except (FileNotFoundError, ValueError) as error:
        raise ReportError(f"Run {path} cannot be reported: {error}") from error
    model = record.get("model") or path.name
    stain = (record.get("stain") or {}).get("method")
    return Row(display_name(model), "model", frame.sort_values("image", ignore_index=True), path,
               paper.member_key(model, stain), dict(record.get("split") or {}), record.get("task", "binary"),
               run=path, record=record,
               warnings=[f"{display_name(model)}: {w}" for w in run_warnings(record)])


def _ensemble_rows(path: Path, split: str) -> tuple[list[Row], list[Path]]:
    if split != "test":
        raise ReportError(f"{path} is an ensemble output, which has test predictions only; use split=test.")
    try:
        document = json.loads((path / "metrics.json").read_text())
    except ValueError as error:
        raise ReportError(f"{path / 'metrics.json'} is not valid JSON ({error}).") from error
    if "methods" not in document:
        raise ReportError(f"{path / 'metrics.json'} is not an ensemble output (no 'methods').")
    members = [Path(m["run"]) for m in document.get("members", {}).values() if m.get("run")]
    members = [m for m in members if (m / "run.json").is_file()]
    split_info = dict(document.get("split") or {})
    rows = []
    for method, entry in document["methods"].items():
        try:
            frame = predictions.read(path / entry["predictions"])
        except PredictionFileError as error:
            raise ReportError(f"Ensemble {path}, method {method}: {error}") from error
        rows.append(Row(entry.get("row", f"{document.get('name', 'ensemble')} {method}"), "ensemble",
                        frame.sort_values("image", ignore_index=True), path, entry.get("row", ""), split_info,
                        document.get("task") or "binary", record=entry, members=members,
                        score=(entry.get("test") or {}).get("score", "probability"),
                        warnings=[f"Ensemble {path.name}: {w}" for w in document.get("warnings") or []]
                        + [f"{path.name} member {name}: {w}" for name, member in document.get("members", {}).items()
                           for w in member.get("warnings", [])]))
    return rows, members


def _unique_names(rows: list[Row]) -> None:
    for row, name in zip(rows, unique_names([r.name for r in rows], [r.source for r in rows]), strict=True):
        row.name = name


def _check_same_images(rows: list[Row], split: str) -> None:
    first = rows[0]
    for row in rows[1:]:
        if first.fingerprint and row.fingerprint and first.fingerprint != row.fingerprint:
            raise ReportError(
                f"{first.source} ({first.name}) and {row.source} ({row.name}) use different splits (fingerprints "
                f"{first.fingerprint} vs {row.fingerprint}); a report compares models on the same images."
            )
        if not np.array_equal(first.frame["image"].to_numpy(), row.frame["image"].to_numpy()):
            raise ReportError(
                f"{first.source} ({first.name}) and {row.source} ({row.name}) predict different {split} images; "
                "a report compares models on the same images."
            )
