"""The report stage: runs and ensemble outputs in, one page out.

    <out>/report.html        self-contained: every picture embedded, no server or internet needed
    <out>/report.md          the same in markdown, linking the PNGs below
    <out>/metrics.json       every number of the report, per row (recomputable from the prediction files)
    <out>/plots/*.png        learning curves, ROC, confusion matrices, per magnification/subtype/patient
    <out>/gallery/*.png      misclassified images as the models saw them
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from histo.data.breakhis import SUBTYPES
from histo.evaluation import bootstrap, metrics, paper, predictions
from histo.evaluation.json_file import write_json
from histo.evaluation.table_format import DEFINITIONS, VOTES_NOTE
from histo.report import gallery as gallery_mod
from histo.report import plots
from histo.report.numbers import row_numbers
from histo.report.render import Report, to_html, to_markdown
from histo.report.sources import ReportError, load_rows

log = logging.getLogger("histo.report")
COMPARE_TO = (None, "paper")
PLOT_FILES = {"curves": "learning_curves", "roc": "roc", "confusion": "confusion", "magnification": "per_magnification",
              "subtype": "per_subtype", "patient": "per_patient"}


def run_report(
    runs,
    out,
    split: str = "test",
    title: str | None = None,
    compare_to: str | None = None,
    explain=None,
    rank_by: str = "balanced_accuracy",
    ensemble_members: bool = True,
    gallery_max: int = 40,
    thumbnail: int = 240,
    data_root=None,
    resamples: int = metrics.RESAMPLES,
    level: float = metrics.LEVEL,
    seed: int = 0,
) -> Path:
    """Write the report of ``runs`` (run and ensemble directories) into ``out``; returns report.html."""
    if compare_to not in COMPARE_TO:
        raise ReportError(f"compare_to={compare_to!r} is not valid; use null or paper.")
    if rank_by not in metrics.METRICS:
        raise ReportError(f"rank_by={rank_by!r} is not a metric; use one of {', '.join(metrics.METRICS)}.")
    if split not in ("val", "test"):
        raise ReportError(f"split={split!r} is not valid; use test (or val for runs only).")
    out = Path(out)
    rows = load_rows(runs, split, ensemble_members)
    class_names = predictions.class_names(rows[0].frame)
    colour = plots.colours([r.name for r in rows])
    log.info("Report on %d row(s): %s", len(rows), ", ".join(r.name for r in rows))
    numbers = {r.name: row_numbers(r.frame, resamples, seed, level, r.score)
               for r in tqdm(rows, unit="row", desc=f"metrics, {resamples} bootstrap resamples")}

    plot_dir = out / "plots"
    positive = class_names[1] if len(class_names) == 2 else None
    curves = {r.name: _curves(r) for r in rows if r.kind == "model"}
    magnifications = sorted({m for r in rows for m in numbers[r.name]["per_magnification"]}, key=int)
    subtypes = sorted({s for r in rows for s in numbers[r.name]["per_subtype"]},
                      key=lambda s: (SUBTYPES.get(s, ("", ""))[0], s))
    ranking = {"auroc": "AUROC", "f1": "F1"}.get(rank_by, rank_by.replace("_", " ").capitalize())
    figures = {  # section -> how to draw it; drawn one by one below, with progress
        "curves": lambda path: plots.learning_curves(curves, colour, path),
        "roc": lambda path: plots.roc_curves(rows, numbers, colour, positive, path) if positive else None,
        "confusion": lambda path: plots.confusion_matrices(rows, numbers, colour, class_names, path),
        "magnification": lambda path: plots.per_group(
            rows, numbers, colour, "per_magnification",
            {m: _group_label(f"{m}x", rows[0].frame, "magnification", int(m)) for m in magnifications},
            f"{ranking} per magnification (the metric that ranks the table, as in histo-ensemble)",
            rank_by, path),
        "subtype": lambda path: plots.per_group(
            rows, numbers, colour, "per_subtype", {s: _subtype_label(s, rows[0].frame) for s in subtypes},
            "Accuracy per subtype (benign subtypes first)", "accuracy", path),
        "patient": lambda path: plots.per_patient(rows, numbers, colour, class_names, path),
    }
    plot_paths = {key: draw(plot_dir / f"{PLOT_FILES[key]}.png")
                  for key, draw in tqdm(figures.items(), unit="plot", desc="plots")}
    ci_text = _ci_text(resamples, seed, level)
    notes = {
        "curves": ("Per epoch (counted from 0, as in the checkpoint names best-epochNNN), from each run's CSV log: "
                   "validation solid with filled dots, training dotted with open dots; the star marks the checkpoint "
                   "whose predictions are reported. With a few epochs the runs sit side by side around each epoch. "
                   "Ensembles have no training curves."
                   if plot_paths["curves"] else "No training logs found (csv/metrics.csv of the runs)."),
        "roc": (f"Positive class {positive}; AUROC with its {ci_text}. Ensembles dashed; identical curves are drawn "
                "with alternating dashes of their colours and labelled 'same curve as'."
                + (" One panel for the single models and one per ensemble output." if len(plots.roc_groups(rows)) > 1
                   else "")
                + (" Hard voting: the ROC curve of the vote share." if any(r.score == "vote_share" for r in rows)
                   else "")
                if positive else "ROC curves are drawn for the binary task only."),
        "confusion": "Rows: true class; columns: predicted. Colour: share of the true class (recall per class).",
        "magnification": f"{ranking} with its {ci_text}; n = images (patients). Ensembles as diamonds.",
        "subtype": f"Accuracy of the images of each subtype with its {ci_text}; n = images (patients).",
        "patient": (f"Each {split} patient's share of images classified correctly (cells say correct/total while they "
                    "are wide enough; metrics.json has every count); the patient recognition rate in the metrics "
                    "table is the mean of these shares."),
    }

    wrong = gallery_mod.misclassified(rows, class_names)
    n_wrong = len(wrong)
    shown = wrong[:gallery_max]
    thumbs, why = gallery_mod.thumbnails(rows, [w["image"] for w in shown], out / "gallery", thumbnail, data_root)
    montages = gallery_mod.find_montages(gallery_mod.explain_dirs(explain, rows))
    gallery_note = (f"{n_wrong} {split} image(s) misclassified by at least one row"
                    + (f"; the {len(shown)} most often and most confidently wrong are shown" if n_wrong > len(shown) else "")
                    + ". Each image as stored, beside the input of the first run's model (its size, interpolation "
                      "and stain normalization); ranked as histo-explain ranks them (single models: most often, then "
                      "most confidently wrong), then the images only ensembles get wrong."
                    + (f" No images: {why}" if why else "")
                    + (f" Grad-CAM montages for {sum(w['image'] in montages for w in shown)} of them (histo-explain)."
                       if montages else " No Grad-CAM montages: run histo-explain (out=<run dir>/explain) or pass explain=<dir>."))

    first = rows[0]
    leaked = first.split.get("test_patients_in_train")
    overall = numbers[first.name]["overall"]
    header = [
        f"{len(rows)} row{'s' if len(rows) != 1 else ''} ({sum(r.kind == 'model' for r in rows)} single models, "
        f"{sum(r.kind == 'ensemble' for r in rows)} ensemble methods) from "
        f"{', '.join(sorted({str(r.source) for r in rows}))}.",
        f"Task {first.task} ({', '.join(class_names)}{'; positive class ' + positive if positive else ''}); split "
        f"{first.split.get('strategy', '?')} (fingerprint {first.fingerprint}); {split}: {overall['n_images']} images "
        f"of {overall['n_patients']} patients.",
        f"Confidence intervals: {ci_text}.",
        f"Written by histo-report on {time.strftime('%Y-%m-%d %H:%M')}; every number is recomputed from the "
        "prediction files (metrics.json beside this page).",
    ]
    warnings = []
    if leaked:
        warnings.append(f"{leaked} test patient(s) also have images in train (split "
                        f"{first.split.get('strategy')}): these numbers measure within-patient interpolation.")
    if compare_to == "paper":
        warnings.append(f"Paper columns: {paper.SOURCE}. {paper.CAVEAT}")
    warnings += list(dict.fromkeys(warning for row in rows for warning in row.warnings))
    definitions = [DEFINITIONS]
    if any(r.score == "vote_share" for r in rows):
        definitions.append(VOTES_NOTE)
    withheld = next((why for r in rows if (why := numbers[r.name].get("ci_method", {}).get("withheld", {}).get(
        "overall"))), None)
    if withheld:
        definitions.append(bootstrap.withheld_note(withheld))
    elif any(bootstrap.any_missing(numbers[r.name].get("ci")) for r in rows):
        definitions.append(bootstrap.NO_CI)
    report = Report(
        title=title or f"histo report: {_count(rows, 'model', 'model')}{_count(rows, 'ensemble', 'ensemble method', ', ')}"
                        f" on the {split} split",
        header=header, warnings=warnings,
        rows=[{"name": r.name, "kind": r.kind, "colour": colour[r.name], "source": str(r.source),
               "paper_key": r.paper_key, "numbers": numbers[r.name]} for r in rows],
        rank_by=rank_by, split=split, plots=plot_paths, plot_notes=notes, gallery=shown,
        gallery_note=gallery_note, thumbs=thumbs, montages=montages,
        paper=paper.paper_results() if compare_to == "paper" else None, definitions=definitions,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(to_markdown(report, out))
    html_path = out / "report.html"
    html_path.write_text(to_html(report))
    document = {"generated": time.strftime("%Y-%m-%d %H:%M:%S"), "split": split, "class_names": class_names,
                "bootstrap": bootstrap.describe(resamples, seed, level) if resamples > 0 else None,
                "rows": {r.name: {"kind": r.kind, "source": str(r.source.resolve()), **numbers[r.name]} for r in rows},
                "misclassified": wrong}
    write_json(out / "metrics.json", document, indent=1)
    log.info("Report in %s: report.html, report.md, metrics.json, plots/, gallery/", out)
    return html_path



def _count(rows, kind: str, noun: str, prefix: str = "") -> str:
    n = sum(r.kind == kind for r in rows)
    return f"{prefix}{n} {noun}{'s' if n != 1 else ''}" if n else ""


def _curves(row):
    try:
        frame = plots.read_curves(row.curves_path)
    except (pd.errors.ParserError, ValueError) as error:  # e.g. two runs once wrote into one log
        raise ReportError(f"{row.curves_path}, the training log of {row.source}, cannot be read: {error}") from error
    return frame, (plots.best_epoch(row.record, frame) if frame is not None else None)


def _subtype_label(code: str, frame) -> str:
    name = SUBTYPES.get(code, ("", code))[1].replace("_", " ")
    return _group_label(f"{code} {name}", frame, "subtype", code)


def _group_label(title: str, frame, column: str, value) -> str:
    """A group's tick label with its size: ``n = images (patients)``."""
    part = frame[frame[column].astype(type(value)) == value]
    return f"{title}\nn = {len(part)} ({part['patient'].nunique()})"


def _ci_text(resamples: int, seed: int, level: float) -> str:
    if resamples <= 0:
        return "no confidence interval (bootstrap resamples = 0)"
    return bootstrap.summary(bootstrap.describe(resamples, seed, level))
