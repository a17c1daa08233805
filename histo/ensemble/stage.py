"""The ensemble stage: load members, combine them with each method, score everything, write the outputs.

    <out>/metrics.json                    every member and method: metrics with patient-bootstrap CIs,
                                          overall and per magnification; method details; McNemar tests
    <out>/predictions/<method>_test.csv   each method's test predictions, in the prediction-file contract
    <out>/fitted/<method>.json            each method's fitted parameters (+ .safetensors for feature_stack),
                                          which histo-predict applies to new images (histo.ensemble.fitted)
    <out>/table.md                        members and ensembles side by side, best first

Members are scored from their own prediction files (the same code and bootstrap settings as the
methods), not from their run.json, so every number in the table is comparable and recomputable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from histo.ensemble import fitted, table
from histo.ensemble.folds import val_folds
from histo.ensemble.members import EnsembleError, Member, Members, load_members
from histo.ensemble.methods import DEFAULT, METHODS, Combination, check_settings, combine, selected
from histo.evaluation import bootstrap, calibration, metrics, paper, predictions
from histo.evaluation.json_file import write_json
from histo.evaluation.mcnemar import mcnemar
from histo.evaluation.run_dir import warnings as run_warnings
from histo.evaluation.table_format import rank_value

log = logging.getLogger("histo.ensemble")

COMPARE_TO = (None, "paper")


def run_ensemble(
    runs,
    out,
    methods=DEFAULT,
    name: str = "ensemble",
    calibrate: bool = False,
    compare_to: str | None = None,
    rank_by: str = "balanced_accuracy",
    seed: int = 0,
    resamples: int = metrics.RESAMPLES,
    level: float = metrics.LEVEL,
    folds: int = 5,
    settings: dict | None = None,
) -> dict:
    """Combine the runs at ``runs`` with each of ``methods`` (names, or ``default`` / ``all``: see
    :func:`histo.ensemble.methods.selected`), write the outputs into ``out``; returns metrics.json."""
    methods, settings = selected(methods), settings or {}
    _check_options(methods, compare_to, rank_by, settings)
    members = load_members(runs)
    log.info("Members (%s, split %s %s): %s", members.task, members.split["strategy"], members.split["fingerprint"],
             ", ".join(f"{m.name} ({m.run.path})" for m in members))
    val_cv = _val_folds(methods, members, folds, seed)
    out = Path(out)
    member_entries = {m.name: _member_entry(m) for m in members}
    outputs = {method: _apply(method, members, val_cv, seed, settings.get(method), name, out) for method in methods}
    scoring = Scoring(resamples, seed, level, calibrate)
    _score_members(members, member_entries, scoring)
    _score_methods(outputs, members, scoring)
    _save_fitted(out, outputs, members)
    # the reference member is chosen on val: choosing it on test would select on the numbers it is judged by
    best = max(member_entries, key=lambda k: rank_value(member_entries[k]["val"]["overall"], rank_by))
    _mcnemar_vs_best_member(outputs, members, best)
    document = _metrics_document(name, members, val_cv, scoring, rank_by, best, compare_to, member_entries, outputs)
    _write(out, document, compare_to)
    return document


@dataclass(frozen=True)
class MethodOutput:
    """One method's combination of the members, its test prediction frame, and its metrics.json entry
    (filled in as the stage goes: scores, fitted file, McNemar test)."""

    combination: Combination
    frame: pd.DataFrame  # test predictions, in the prediction-file contract
    entry: dict


@dataclass(frozen=True)
class Scoring:
    """How every member and method is scored: the same bootstrap for all, and a temperature when asked."""

    resamples: int
    seed: int
    level: float
    calibrate: bool

    def score(self, entry: dict, test_frame, val_logits, val_labels, fitted_on: str, kind: str = "probability") -> None:
        """``entry["test"]``: the metrics of ``test_frame``; ``entry["calibration"]``: a temperature fitted on
        the val logits (votes are not probabilities: nothing to calibrate)."""
        entry["test"] = metrics.evaluate(test_frame, resamples=self.resamples, seed=self.seed, level=self.level,
                                         score=kind)
        if self.calibrate and kind == "probability":
            entry["calibration"] = _temperature(val_logits, val_labels, test_frame, fitted_on)


def _val_folds(methods: list[str], members: Members, folds: int, seed: int):
    """The patient-grouped val folds the fitted methods are fitted on (None when no method is fitted)."""
    fitted_methods = [m for m in methods if METHODS[m].fitted]
    if not fitted_methods:
        return None
    try:
        return val_folds(members.labels("val"), members.patients("val"), folds, seed)
    except ValueError as error:
        raise EnsembleError(f"Methods {', '.join(fitted_methods)} cannot be fitted: {error}") from error


def _apply(method: str, members: Members, val_cv, seed: int, settings: dict | None, name: str, out: Path) -> MethodOutput:
    """Combine the members with ``method`` and write its test prediction file."""
    log.info("Method %s ...", method)
    combination = combine(method, members, val_cv, seed, settings)
    frame = predictions.make_frame(members.frame("test"), combination.test_logits(), members.class_names)
    path = predictions.write(frame, out / "predictions" / f"{method}_test.csv")
    return MethodOutput(combination, frame, {
        "row": paper.ensemble_key(name, method),
        "description": METHODS[method].description,
        "members": members.names,
        "predictions": str(path.relative_to(out)),
        "details": combination.details,
    })


def _score_members(members: Members, entries: dict[str, dict], scoring: Scoring) -> None:
    """Each member's test metrics (and calibration) and its val metrics, which choose the best member."""
    for member in members:
        scoring.score(entries[member.name], member.frames["test"], predictions.logits(member.frames["val"]),
                      members.labels("val"), "val")
        entries[member.name]["val"] = {"overall": metrics.evaluate(member.frames["val"], resamples=0)["overall"]}


def _score_methods(outputs: dict[str, MethodOutput], members: Members, scoring: Scoring) -> None:
    """Each method's test metrics, and its calibration fitted on the val predictions it reports."""
    for method, output in outputs.items():
        combination = output.combination
        scoring.score(output.entry, output.frame, combination.val_logits(), members.labels("val")[combination.val_rows],
                      METHODS[method].val_used, METHODS[method].score)


def _save_fitted(out: Path, outputs: dict[str, MethodOutput], members: Members) -> None:
    """``fitted/<method>.json`` (with the temperature, when calibrated), checked to reproduce the method's output."""
    for output in outputs.values():
        temperature = (output.entry.get("calibration") or {}).get("temperature")
        path = fitted.save(out, output.combination, members, temperature)
        fitted.check(path, output.combination, members)
        output.entry["fitted"] = str(path.relative_to(out))


def _mcnemar_vs_best_member(outputs: dict[str, MethodOutput], members: Members, best: str) -> None:
    """McNemar's test of each method against the member ``best`` on the test images."""
    labels = members.frame("test")["label"].to_numpy()
    best_correct = predictions.probabilities(members.by_name(best).frames["test"]).argmax(axis=1) == labels
    for output in outputs.values():
        test = mcnemar(output.combination.test.argmax(axis=1) == labels, best_correct)
        output.entry["mcnemar_vs_best_member"] = {
            "best_member": best,
            "n_images": test["n_images"],
            "ensemble_only_correct": test["a_only_correct"],
            "member_only_correct": test["b_only_correct"],
            "p_value": test["p_value"],
        }


def _metrics_document(name: str, members: Members, val_cv, scoring: Scoring, rank_by: str, best: str,
                      compare_to: str | None, member_entries: dict[str, dict], outputs: dict[str, MethodOutput]) -> dict:
    """metrics.json: the members and methods with their scores, and how they were made."""
    test = members.frame("test")
    return {
        "name": name,
        "task": members.task,
        "class_names": members.class_names,
        "positive_class": members.class_names[1] if len(members.class_names) == 2 else None,
        "split": {**members.split, "test_patients_in_train": members.members[0].record["split"].get(
            "test_patients_in_train")},
        "test": {"n_images": len(test), "n_patients": int(test["patient"].nunique())},
        "val_folds": val_cv.describe() if val_cv else None,
        "warnings": _warnings(val_cv, [m for m in outputs if METHODS[m].fitted]),
        "bootstrap": bootstrap.describe(scoring.resamples, scoring.seed, scoring.level) if scoring.resamples > 0 else None,
        "rank_by": rank_by,
        "best_member": best,
        "best_member_chosen_on": "val",
        "calibrate": bool(scoring.calibrate),
        "compare_to": compare_to,
        "members": member_entries,
        "methods": {method: output.entry for method, output in outputs.items()},
    }


def _write(out: Path, document: dict, compare_to: str | None) -> None:
    """metrics.json and table.md (with the paper's columns for ``compare_to=paper``)."""
    write_json(out / "metrics.json", document)
    markdown = table.render(document, paper.paper_results() if compare_to == "paper" else None)
    (out / "table.md").write_text(markdown)
    log.info("Ensemble outputs in %s: metrics.json, table.md, predictions/<method>_test.csv, fitted/<method>.json"
             "\n\n%s", out, markdown)


def _check_options(methods: list[str], compare_to, rank_by: str, settings: dict) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise EnsembleError(
            f"methods={methods} {'has unknown ' + ', '.join(unknown) if unknown else 'is empty'}; "
            f"use some of {', '.join(METHODS)}, or default or all."
        )
    if len(set(methods)) != len(methods):
        raise EnsembleError(f"methods={methods} lists a method twice.")
    if compare_to not in COMPARE_TO:
        raise EnsembleError(f"compare_to={compare_to!r} is not valid; use null or paper.")
    if rank_by not in metrics.METRICS:
        raise EnsembleError(f"rank_by={rank_by!r} is not a metric; use one of {', '.join(metrics.METRICS)}.")
    stray = [k for k in settings if k not in METHODS]
    if stray:
        raise EnsembleError(f"Settings for unknown methods {stray}; methods are {', '.join(METHODS)}.")
    for method, options in settings.items():
        check_settings(method, options)


def _warnings(folds, fitted: list[str]) -> list[str]:
    """What a reader of the numbers must know about how they were made."""
    if folds is None or folds.grouping != "image":
        return []
    return [f"{', '.join(fitted)} {'was' if len(fitted) == 1 else 'were'} fitted on val with {folds.note}. "
            "Out-of-fold val numbers are then optimistic, and the fit may follow individual patients."]


def _temperature(val_logits, val_labels, test_frame, fitted_on: str) -> dict:
    """Temperature fitted on val logits (a method's: log of its val output), applied to the test logits."""
    temperature = calibration.fit_temperature(val_logits, val_labels)
    test_labels = test_frame["label"].to_numpy()
    before = predictions.probabilities(test_frame)
    after = calibration.scale(predictions.logits(test_frame), temperature)
    return {
        "temperature": temperature,
        "fitted_on": fitted_on,
        "test_before": {"ece": calibration.expected_calibration_error(test_labels, before),
                        "log_loss": calibration.log_loss(test_labels, before)},
        "test_after": {"ece": calibration.expected_calibration_error(test_labels, after),
                       "log_loss": calibration.log_loss(test_labels, after)},
    }


def _member_entry(member: Member) -> dict:
    return {
        "run": str(member.run.path.resolve()),
        "model": member.model,
        "family": member.record.get("family"),
        "seed": member.record.get("seed"),
        "stain": (member.record.get("stain") or {}).get("method"),
        "warnings": run_warnings(member.record),  # e.g. trained on a degenerate split (allow_degenerate=true)
    }
