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
from pathlib import Path

from histo.ensemble import fitted, table
from histo.ensemble.folds import val_folds
from histo.ensemble.members import EnsembleError, Member, load_members
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
    methods = selected(methods)
    _check_options(methods, compare_to, rank_by, settings or {})
    fitted_methods = [m for m in methods if METHODS[m].fitted]
    members = load_members(runs)
    log.info("Members (%s, split %s %s): %s", members.task, members.split["strategy"], members.split["fingerprint"],
             ", ".join(f"{m.name} ({m.run.path})" for m in members))
    val_cv = None
    if fitted_methods:
        try:
            val_cv = val_folds(members.labels("val"), members.patients("val"), folds, seed)
        except ValueError as error:
            raise EnsembleError(f"Methods {', '.join(fitted_methods)} cannot be fitted: {error}") from error

    out = Path(out)
    test_meta = members.frame("test")
    member_entries = {m.name: _member_entry(m) for m in members}
    combinations: dict[str, Combination] = {}
    method_entries, method_frames = {}, {}
    for method in methods:
        log.info("Method %s ...", method)
        combinations[method] = combine(method, members, val_cv, seed, (settings or {}).get(method))
        method_frames[method] = predictions.make_frame(test_meta, combinations[method].test_logits(),
                                                       members.class_names)
        path = predictions.write(method_frames[method], out / "predictions" / f"{method}_test.csv")
        method_entries[method] = {
            "row": paper.ensemble_key(name, method),
            "description": METHODS[method].description,
            "members": members.names,
            "predictions": str(path.relative_to(out)),
            "details": combinations[method].details,
        }

    def score(entry, test_frame, val_logits, val_labels, fitted_on, kind="probability"):
        entry["test"] = metrics.evaluate(test_frame, resamples=resamples, seed=seed, level=level, score=kind)
        if calibrate and kind == "probability":  # votes are not probabilities: nothing to calibrate
            entry["calibration"] = _temperature(val_logits, val_labels, test_frame, fitted_on)

    for member in members:
        score(member_entries[member.name], member.frames["test"], predictions.logits(member.frames["val"]),
              members.labels("val"), "val")
        member_entries[member.name]["val"] = {"overall": metrics.evaluate(member.frames["val"], resamples=0)["overall"]}
    for method, combination in combinations.items():
        score(method_entries[method], method_frames[method], combination.val_logits(),
              members.labels("val")[combination.val_rows], METHODS[method].val_used, METHODS[method].score)

    for method, combination in combinations.items():
        temperature = (method_entries[method].get("calibration") or {}).get("temperature")
        path = fitted.save(out, combination, members, temperature)
        fitted.check(path, combination, members)
        method_entries[method]["fitted"] = str(path.relative_to(out))

    # the reference member is chosen on val: choosing it on test would select on the numbers it is judged by
    best = max(member_entries, key=lambda k: rank_value(member_entries[k]["val"]["overall"], rank_by))
    labels = test_meta["label"].to_numpy()
    best_correct = predictions.probabilities(members.by_name(best).frames["test"]).argmax(axis=1) == labels
    for method, entry in method_entries.items():
        test = mcnemar(combinations[method].test.argmax(axis=1) == labels, best_correct)
        entry["mcnemar_vs_best_member"] = {
            "best_member": best,
            "n_images": test["n_images"],
            "ensemble_only_correct": test["a_only_correct"],
            "member_only_correct": test["b_only_correct"],
            "p_value": test["p_value"],
        }

    document = {
        "name": name,
        "task": members.task,
        "class_names": members.class_names,
        "positive_class": members.class_names[1] if len(members.class_names) == 2 else None,
        "split": {**members.split, "test_patients_in_train": members.members[0].record["split"].get(
            "test_patients_in_train")},
        "test": {"n_images": len(test_meta), "n_patients": int(test_meta["patient"].nunique())},
        "val_folds": val_cv.describe() if val_cv else None,
        "warnings": _warnings(val_cv, fitted_methods),
        "bootstrap": bootstrap.describe(resamples, seed, level) if resamples > 0 else None,
        "rank_by": rank_by,
        "best_member": best,
        "best_member_chosen_on": "val",
        "calibrate": bool(calibrate),
        "compare_to": compare_to,
        "members": member_entries,
        "methods": method_entries,
    }
    write_json(out / "metrics.json", document)
    markdown = table.render(document, paper.paper_results() if compare_to == "paper" else None)
    (out / "table.md").write_text(markdown)
    log.info("Ensemble outputs in %s: metrics.json, table.md, predictions/<method>_test.csv, fitted/<method>.json"
             "\n\n%s", out, markdown)
    return document


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
