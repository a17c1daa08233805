"""table.md: the members and ensembles of one ensemble run side by side, best first, from metrics.json."""

from __future__ import annotations

import pandas as pd

from histo.evaluation import bootstrap, paper
from histo.evaluation.table_format import (
    COLUMNS,
    DEFINITIONS,
    VOTES_NOTE,
    errors,
    interval,
    missing,
    number,
    paper_cells,
    rank_value,
)

MACRO_NOTE = "Subtype task: precision, recall, specificity, F1 and AUROC are macro averages over the classes present."


def render(document: dict, paper_results: pd.DataFrame | None = None) -> str:
    """The markdown table of a metrics.json ``document``; ``paper_results`` adds the paper's numbers beside ours."""
    rows = _rows(document)
    best = document["best_member"]
    test = document["test"]
    lines = [
        f"# Ensemble `{document['name']}`: {_count(document['members'], 'member')}, {_count(document['methods'], 'method')}",
        "",
        f"Task {document['task']} ({', '.join(document['class_names'])}"
        + (f"; positive class {document['positive_class']}" if document["positive_class"] else "")
        + f"), split `{document['split']['strategy']}` (fingerprint {document['split']['fingerprint']}), "
        f"test {test['n_images']} images of {test['n_patients']} patients.",
        "",
        f"Ranked by {COLUMNS[document['rank_by']]} on test, best first. " + _ci_note(document),
        DEFINITIONS,
        f"McNemar: exact two-sided test of each ensemble against the best member on val ({best}, by "
        f"{COLUMNS[document['rank_by']]}) on the same test images; +a/-b: images only the ensemble / only the member "
        "classifies correctly.",
    ]
    if any(row["test"].get("score") == "vote_share" for row in rows):
        lines.append(VOTES_NOTE)
    withheld = next((why for row in rows if (why := (row["test"].get("ci_method") or {}).get("withheld", {}).get(
        "overall"))), None)
    if withheld:
        lines.append(bootstrap.withheld_note(withheld))
    elif any(bootstrap.any_missing(row["test"].get("ci")) for row in rows):
        lines.append(bootstrap.NO_CI)
    if document["positive_class"] is None:
        lines.append(MACRO_NOTE)
    leaked = document["split"].get("test_patients_in_train")
    if leaked:
        lines.append(f"**Warning**: {leaked} test patients also have images in train (split "
                     f"`{document['split']['strategy']}`): these numbers measure within-patient interpolation.")
    lines += [f"**Warning**: {warning}" for warning in document.get("warnings", [])]
    lines += [f"**Warning**: member {name}: {warning}" for name, member in document["members"].items()
              for warning in member.get("warnings", [])]
    lines.append("")

    header = ["#", "model", "kind", *COLUMNS.values(), "ECE", "errors", f"vs {best} (McNemar)"]
    if paper_results is not None:
        header += ["paper accuracy", "paper bal. acc.", "paper errors"]
    lines += [_line(header), _line(["---"] * len(header))]
    for rank, row in enumerate(rows, start=1):
        overall, ci = row["test"]["overall"], row["test"].get("ci", {}).get("overall", {})
        cells = [str(rank), row["name"], row["kind"]]
        votes = row["test"].get("score") == "vote_share"
        cells += [_cell(overall.get(metric), ci.get(metric), ci) + ("*" if votes and metric == "auroc" else "")
                  for metric in COLUMNS]
        cells += ["n/a" if votes else number(overall.get("ece")), str(errors(overall)), _mcnemar(row, best)]
        if paper_results is not None:
            cells += paper_cells(paper_results, row["paper_key"])
        lines.append(_line(cells))

    lines += ["", f"## Per magnification: {COLUMNS[document['rank_by']]}", ""]
    magnifications = sorted({m for row in rows for m in row["test"]["per_magnification"]}, key=int)
    lines += [_line(["model", *[f"{m}x" for m in magnifications]]), _line(["---"] * (len(magnifications) + 1))]
    for row in rows:
        per_mag = row["test"]["per_magnification"]
        per_mag_ci = row["test"].get("ci", {}).get("per_magnification", {})
        lines.append(_line([row["name"], *[
            _cell(per_mag.get(m, {}).get(document["rank_by"]), per_mag_ci.get(m, {}).get(document["rank_by"]),
                  per_mag_ci.get(m))
            for m in magnifications
        ]]))

    if document.get("calibrate"):
        lines += ["", "## Calibration: temperature scaling fitted on val, applied to test", "",
                  _line(["model", "temperature", "fitted on", "ECE before", "ECE after", "log loss before",
                         "log loss after"]),
                  _line(["---"] * 7)]
        for row in rows:
            cal = row.get("calibration")
            if cal is None:  # hard voting: votes, not probabilities
                lines.append(_line([row["name"], *["n/a"] * 6]))
                continue
            lines.append(_line([
                row["name"], f"{cal['temperature']:.3f}", cal["fitted_on"],
                number(cal["test_before"]["ece"]), number(cal["test_after"]["ece"]),
                number(cal["test_before"]["log_loss"]), number(cal["test_after"]["log_loss"]),
            ]))

    lines += ["", "## Methods", ""]
    for method, entry in document["methods"].items():
        lines.append(f"- **{method}** ({entry['description']}): {_details(entry['details'])}")
    if document.get("val_folds"):
        folds = document["val_folds"]
        lines.append(f"- Fitted methods were cross-validated on val: {folds['note']}. Test labels were never used.")
    if paper_results is not None:
        lines += ["", f"Paper columns: {paper.SOURCE}. {paper.CAVEAT}"]
    return "\n".join(lines) + "\n"


def _rows(document: dict) -> list[dict]:
    rows = [
        {"name": name, "kind": "member", "paper_key": paper.member_key(entry["model"], entry.get("stain")), **entry}
        for name, entry in document["members"].items()
    ] + [
        {"name": entry["row"], "kind": "ensemble", "paper_key": entry["row"], **entry}
        for entry in document["methods"].values()
    ]
    return sorted(rows, key=lambda row: rank_value(row["test"]["overall"], document["rank_by"]), reverse=True)


def _ci_note(document: dict) -> str:
    boot = document.get("bootstrap")
    if not boot:
        return "No confidence intervals (bootstrap resamples = 0)."
    return f"Cells: estimate ({bootstrap.summary(boot)})."


def _cell(value, bounds, block_ci) -> str:
    """``estimate (low-high)``; ``estimate (no CI)`` where intervals were computed but withheld."""
    if missing(value):
        return "-"
    text = interval(bounds, withheld=bounds is None and bool(block_ci))
    return f"{value:.3f}" + (f" ({text})" if text else "")


def _mcnemar(row: dict, best: str) -> str:
    if row["kind"] == "member":
        return "best member on val" if row["name"] == best else ""
    test = row["mcnemar_vs_best_member"]
    return f"+{test['ensemble_only_correct']}/-{test['member_only_correct']}, p = {test['p_value']:.3g}"


def _details(details: dict) -> str:
    parts = []
    for key, value in details.items():
        if key in ("note", "holdout", "grouping", "folds", "members"):
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {_short(v)}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(_short, value))
        parts.append(f"{key.replace('_', ' ')}: {_short(value)}")
    return "; ".join(parts) if parts else "nothing fitted"


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_short, value)) + "]"
    return str(value)


def _line(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _count(items, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"
