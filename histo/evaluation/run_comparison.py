"""Compare results across runs: the runs of a sweep (one row per run, its state, the overrides that differ,
metrics with intervals) and the folds of a cross-validation (mean and spread per model or ensemble).

Reads only what the stages wrote: ``run.json`` and Hydra's ``.hydra/`` files of each run, or the
``metrics.json`` of each fold's report. Runs that are unfinished (running, interrupted) or broken (a
damaged run.json, a prediction file that changed) are listed with their state, never skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from histo.evaluation.metrics import METRIC, METRICS, REGISTRY
from histo.evaluation.run_dir import RunDir
from histo.evaluation.table_format import interval, number

RUN_COLUMNS = ("run", "model", "n_images")  # the columns of every comparison, beside the overrides that differ
SHOWN = tuple(m.name for m in sorted((m for m in REGISTRY if m.compare_column is not None),
                                     key=lambda m: m.compare_column))  # histo-compare's metric columns
RUN_MARKERS = ("run.json", "run.lock", "split.csv", "checkpoints")  # what only a training run's directory holds


def find_runs(root: str | Path) -> list[RunDir]:
    """Every finished run (a directory with run.json) under ``root``, in path order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory.")
    runs = [RunDir(p.parent) for p in sorted(root.rglob("run.json"))]
    if not runs:
        raise FileNotFoundError(f"No finished run under {root}: no run.json found (are the runs still going?).")
    return runs


def run_directories(root: str | Path) -> list[RunDir]:
    """Every training run directory under ``root``, finished or not (anything a run writes marks one), in path order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory.")
    found = sorted({p.parent for marker in RUN_MARKERS for p in root.rglob(marker)})
    if not found:
        raise FileNotFoundError(f"No training run under {root} (no run.json, run.lock, split.csv or checkpoints/).")
    return [RunDir(p) for p in found]


def overrides(run: RunDir) -> dict[str, str]:
    """The command-line overrides of a run (``key=value``), from Hydra's record of the job; ``resume`` and
    ``overwrite`` say how a run was started, not what it is, and are left out."""
    path = run.path / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(path.read_text()) if path.is_file() else []
    pairs = (item.split("=", 1) for item in items or [] if "=" in item)
    return {key.lstrip("+"): value for key, value in pairs if key.lstrip("+") not in ("resume", "overwrite")}


def setting(run: RunDir, record: dict | None, key: str) -> str:
    """What a run used for an override ``key`` it was not given: the config group's option (``model`` ->
    ``v1_b0``) or the value in its config (``seed`` -> ``42``)."""
    hydra_file = run.path / ".hydra" / "hydra.yaml"
    choices = ((yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}).get("runtime", {}).get("choices", {})
               if hydra_file.is_file() else {})
    if key in choices:
        return str(choices[key])
    config_file = run.path / ".hydra" / "config.yaml"
    node = (record or {}).get("config") or (yaml.safe_load(config_file.read_text()) if config_file.is_file() else {})
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def comparison(root: str | Path, split: str = "test", sort_by: str = "balanced_accuracy",
               sort_split: str = "val") -> pd.DataFrame:
    """One row per run under ``root``: run, model, state, differing overrides, each metric of ``split`` and its
    interval. Finished runs come first, sorted by ``sort_by`` on ``sort_split`` (val by default: ranking runs by
    test numbers selects on the numbers that are then reported); unfinished and broken runs follow with their
    state and no numbers."""
    if sort_by not in METRICS:
        raise ValueError(f"sort_by={sort_by!r} is not a metric; use one of {', '.join(METRICS)}.")
    if {split, sort_split} - {"val", "test"}:
        raise ValueError(f"split={split!r} and sort_split={sort_split!r} must each be val or test.")
    runs = run_directories(root)
    states = [run.state() for run in runs]
    records = [run.record() if state.name == "finished" else None for run, state in zip(runs, states, strict=True)]
    given = [overrides(r) for r in runs]
    keys = sorted({k for o in given for k in o})
    # a `model=` override is the model column's own choice: shown once, as the run recorded it
    differing = [k for k in keys if len({o.get(k) for o in given}) > 1 and k not in RUN_COLUMNS]
    rows = []
    for run, state, record, over in zip(runs, states, records, given, strict=True):
        row = {"run": str(run.path.relative_to(root)) if run.path != Path(root) else ".",
               "model": record["model"] if record else setting(run, None, "model.name") or setting(run, None, "model"),
               "state": str(state)}
        row |= {k: over.get(k) or setting(run, record, k) for k in differing}
        scores = record["metrics"][split] if record else {"overall": {}}
        row["n_images"] = scores["overall"].get("n_images")
        row[sort_key(sort_split, sort_by)] = record["metrics"][sort_split]["overall"].get(sort_by) if record else None
        for name in METRICS:
            row[name] = scores["overall"].get(name)
            low, high = scores.get("ci", {}).get("overall", {}).get(name) or (None, None)  # None: too few patients
            row[f"{name}_low"], row[f"{name}_high"] = low, high
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["_finished"] = [s.name == "finished" for s in states]
    frame = frame.sort_values(["_finished", sort_key(sort_split, sort_by)],
                              ascending=[False, not METRIC[sort_by].higher_is_better], na_position="last",
                              kind="stable", ignore_index=True)
    frame = frame.drop(columns="_finished")
    frame.attrs["differing"] = differing
    frame.attrs["sorted_by"] = sort_key(sort_split, sort_by)
    return frame


def sort_key(split: str, metric: str) -> str:
    """The column a comparison is sorted by, e.g. ``val_balanced_accuracy``."""
    return f"{split}_{metric}"


def to_markdown(frame: pd.DataFrame, metrics: tuple[str, ...] = SHOWN) -> str:
    """The comparison as a markdown table: ``estimate [low, high]`` per metric; a ``state`` column when a
    run is not finished, is broken, or carries a warning (e.g. degenerate splits)."""
    show_state = bool((frame["state"] != "finished").any()) if "state" in frame else False
    columns = ["run", "model", *(["state"] if show_state else []), *frame.attrs.get("differing", []), "n_images",
               *([frame.attrs["sorted_by"]] if "sorted_by" in frame.attrs else [])]
    header = columns + list(metrics)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in frame.iterrows():
        cells = ["" if pd.isna(row[c]) else str(int(row[c])) if c == "n_images"
                 else number(row[c]) if isinstance(row[c], float) else str(row[c]) for c in columns]
        cells += [_with_interval(row, m) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _with_interval(row: pd.Series, name: str) -> str:
    value, low, high = row.get(name), row.get(f"{name}_low"), row.get(f"{name}_high")
    if value is None or pd.isna(value):
        return "n/a"
    text = interval(None if low is None or high is None or pd.isna(low) or pd.isna(high) else (low, high),
                    brackets=True)
    return f"{value:.3f}" + (f" {text}" if text else "")


def fold_summary(reports: list[str | Path]) -> pd.DataFrame:
    """Mean, sd, min, max and count across folds of every row's metrics, from each fold's report
    ``metrics.json`` (rows are matched by name: a model such as ``V1-B0`` or an ensemble method)."""
    records = []
    for fold, path in enumerate(reports):
        document = json.loads(Path(path).read_text())
        for name, row in document["rows"].items():
            records.append({"fold": fold, "row": name, "kind": row["kind"],
                            **{m: row["overall"].get(m) for m in METRICS}})
    frame = pd.DataFrame(records)
    stats = frame.groupby(["row", "kind"])[list(METRICS)].agg(["mean", "std", "min", "max", "count"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    return stats.reset_index().sort_values("balanced_accuracy_mean", ascending=False, ignore_index=True)


def fold_summary_markdown(summary: pd.DataFrame, metrics: tuple[str, ...] = SHOWN) -> str:
    """``mean ± sd (min-max)`` per metric, one line per model or ensemble method."""
    header = ["row", "kind", "folds", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in summary.iterrows():
        cells = [r["row"], r["kind"], str(int(r[f"{metrics[0]}_count"]))]
        for m in metrics:
            mean, sd, low, high = (r[f"{m}_{s}"] for s in ("mean", "std", "min", "max"))
            cells.append("n/a" if pd.isna(mean) else
                         f"{mean:.3f} ± {0.0 if pd.isna(sd) else sd:.3f} ({low:.3f}-{high:.3f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
