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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from histo.data.breakhis import SUBTYPES
from histo.evaluation import bootstrap, metrics, paper, predictions
from histo.evaluation.json_file import write_json
from histo.evaluation.table_format import DEFINITIONS, VOTES_NOTE
from histo.report import plots
from histo.report.gallery import GallerySettings, make_gallery
from histo.report.numbers import row_numbers
from histo.report.render import Report, to_html, to_markdown
from histo.report.sources import ReportError, Row, load_rows

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
    gallery: GallerySettings = GallerySettings(),
    data_root=None,
    resamples: int = metrics.RESAMPLES,
    level: float = metrics.LEVEL,
    seed: int = 0,
) -> Path:
    """Write the report of ``runs`` (run and ensemble directories) into ``out``; returns report.html."""
    _check_options(split, compare_to, rank_by)
    out = Path(out)
    scored = _score(load_rows(runs, split, ensemble_members), split, resamples, seed, level)
    plot_paths = _draw_plots(scored, rank_by, out / "plots")
    cards = make_gallery(scored.rows, scored.class_names, split, gallery, explain, data_root, out / "gallery")
    report = Report(
        title=title or _title(scored),
        header=_header(scored), warnings=_warnings(scored, compare_to),
        rows=[{"name": r.name, "kind": r.kind, "colour": scored.colour[r.name], "source": str(r.source),
               "paper_key": r.paper_key, "numbers": scored.numbers[r.name]} for r in scored.rows],
        rank_by=rank_by, split=split, plots=plot_paths, plot_notes=_plot_notes(scored, plot_paths, rank_by),
        gallery=cards.shown, gallery_note=cards.note, thumbs=cards.thumbs, montages=cards.montages,
        paper=paper.paper_results() if compare_to == "paper" else None, definitions=_definitions(scored),
    )
    return _write(out, report, _metrics_document(scored, cards.wrong))


@dataclass(frozen=True)
class Scored:
    """The report's rows with every number recomputed from their prediction files: what each section shows."""

    rows: list[Row]
    numbers: dict[str, dict]  # row name -> :func:`histo.report.numbers.row_numbers`
    class_names: list[str]
    colour: dict[str, str]  # row name -> its colour in every plot
    split: str
    bootstrap: dict | None  # how the CIs were drawn (:func:`histo.evaluation.bootstrap.describe`); None: no CIs

    @property
    def positive(self) -> str | None:
        """The positive class of a binary task (ROC curves); None for the subtype task."""
        return self.class_names[1] if len(self.class_names) == 2 else None

    @property
    def ci_text(self) -> str:
        if self.bootstrap is None:
            return "no confidence interval (bootstrap resamples = 0)"
        return bootstrap.summary(self.bootstrap)


def _check_options(split: str, compare_to: str | None, rank_by: str) -> None:
    if compare_to not in COMPARE_TO:
        raise ReportError(f"compare_to={compare_to!r} is not valid; use null or paper.")
    if rank_by not in metrics.METRICS:
        raise ReportError(f"rank_by={rank_by!r} is not a metric; use one of {', '.join(metrics.METRICS)}.")
    if split not in ("val", "test"):
        raise ReportError(f"split={split!r} is not valid; use test (or val for runs only).")


def _score(rows: list[Row], split: str, resamples: int, seed: int, level: float) -> Scored:
    """Every row's numbers, with ``resamples`` patient-bootstrap resamples for the CIs."""
    log.info("Report on %d row(s): %s", len(rows), ", ".join(r.name for r in rows))
    numbers = {r.name: row_numbers(r.frame, resamples, seed, level, r.score)
               for r in tqdm(rows, unit="row", desc=f"metrics, {resamples} bootstrap resamples")}
    return Scored(rows, numbers, predictions.class_names(rows[0].frame), plots.colours([r.name for r in rows]), split,
                  bootstrap.describe(resamples, seed, level) if resamples > 0 else None)


def _draw_plots(scored: Scored, rank_by: str, plot_dir: Path) -> dict[str, Path | None]:
    """Each section's figure as ``plot_dir/<PLOT_FILES[section]>.png`` (None: nothing to draw)."""
    rows, numbers, colour = scored.rows, scored.numbers, scored.colour
    curves = {r.name: _curves(r) for r in rows if r.kind == "model"}
    magnifications = sorted({m for r in rows for m in numbers[r.name]["per_magnification"]}, key=int)
    subtypes = sorted({s for r in rows for s in numbers[r.name]["per_subtype"]},
                      key=lambda s: (SUBTYPES.get(s, ("", ""))[0], s))
    figures = {  # section -> how to draw it; drawn one by one below, with progress
        "curves": lambda path: plots.learning_curves(curves, colour, path),
        "roc": lambda path: plots.roc_curves(rows, numbers, colour, scored.positive, path) if scored.positive else None,
        "confusion": lambda path: plots.confusion_matrices(rows, numbers, colour, scored.class_names, path),
        "magnification": lambda path: plots.per_group(
            rows, numbers, colour, "per_magnification",
            {m: _group_label(f"{m}x", rows[0].frame, "magnification", int(m)) for m in magnifications},
            f"{_ranking(rank_by)} per magnification (the metric that ranks the table, as in histo-ensemble)",
            rank_by, path),
        "subtype": lambda path: plots.per_group(
            rows, numbers, colour, "per_subtype", {s: _subtype_label(s, rows[0].frame) for s in subtypes},
            "Accuracy per subtype (benign subtypes first)", "accuracy", path),
        "patient": lambda path: plots.per_patient(rows, numbers, colour, scored.class_names, path),
    }
    return {key: draw(plot_dir / f"{PLOT_FILES[key]}.png") for key, draw in tqdm(figures.items(), unit="plot", desc="plots")}


def _plot_notes(scored: Scored, plot_paths: dict[str, Path | None], rank_by: str) -> dict[str, str]:
    """The sentence under each figure: what it shows and how to read it."""
    rows, ci_text, positive = scored.rows, scored.ci_text, scored.positive
    return {
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
        "magnification": f"{_ranking(rank_by)} with its {ci_text}; n = images (patients). Ensembles as diamonds.",
        "subtype": f"Accuracy of the images of each subtype with its {ci_text}; n = images (patients).",
        "patient": (f"Each {scored.split} patient's share of images classified correctly (cells say correct/total while "
                    "they are wide enough; metrics.json has every count); the patient recognition rate in the metrics "
                    "table is the mean of these shares."),
    }


def _title(scored: Scored) -> str:
    rows = scored.rows
    return (f"histo report: {_count(rows, 'model', 'model')}{_count(rows, 'ensemble', 'ensemble method', ', ')}"
            f" on the {scored.split} split")


def _header(scored: Scored) -> list[str]:
    """Sentences about the rows, the data and the method, under the title."""
    rows, first, positive = scored.rows, scored.rows[0], scored.positive
    overall = scored.numbers[first.name]["overall"]
    return [
        f"{len(rows)} row{'s' if len(rows) != 1 else ''} ({sum(r.kind == 'model' for r in rows)} single models, "
        f"{sum(r.kind == 'ensemble' for r in rows)} ensemble methods) from "
        f"{', '.join(sorted({str(r.source) for r in rows}))}.",
        f"Task {first.task} ({', '.join(scored.class_names)}{'; positive class ' + positive if positive else ''}); "
        f"split {first.split.get('strategy', '?')} (fingerprint {first.fingerprint}); {scored.split}: "
        f"{overall['n_images']} images of {overall['n_patients']} patients.",
        f"Confidence intervals: {scored.ci_text}.",
        f"Written by histo-report on {time.strftime('%Y-%m-%d %H:%M')}; every number is recomputed from the "
        "prediction files (metrics.json beside this page).",
    ]


def _warnings(scored: Scored, compare_to: str | None) -> list[str]:
    """What a reader must know before trusting the numbers: a leaking split, the paper's caveat, each row's flags."""
    first = scored.rows[0]
    leaked = first.split.get("test_patients_in_train")
    warnings = []
    if leaked:
        warnings.append(f"{leaked} test patient(s) also have images in train (split "
                        f"{first.split.get('strategy')}): these numbers measure within-patient interpolation.")
    if compare_to == "paper":
        warnings.append(f"Paper columns: {paper.SOURCE}. {paper.CAVEAT}")
    return warnings + list(dict.fromkeys(warning for row in scored.rows for warning in row.warnings))


def _definitions(scored: Scored) -> list[str]:
    """The notes under the metrics table: the metrics' definitions, and why some CIs are missing."""
    rows, numbers = scored.rows, scored.numbers
    definitions = [DEFINITIONS]
    if any(r.score == "vote_share" for r in rows):
        definitions.append(VOTES_NOTE)
    withheld = next((why for r in rows if (why := numbers[r.name].get("ci_method", {}).get("withheld", {}).get(
        "overall"))), None)
    if withheld:
        definitions.append(bootstrap.withheld_note(withheld))
    elif any(bootstrap.any_missing(numbers[r.name].get("ci")) for r in rows):
        definitions.append(bootstrap.NO_CI)
    return definitions


def _metrics_document(scored: Scored, wrong: list[dict]) -> dict:
    """metrics.json: every number of the report, per row, and every misclassified image."""
    return {"generated": time.strftime("%Y-%m-%d %H:%M:%S"), "split": scored.split, "class_names": scored.class_names,
            "bootstrap": scored.bootstrap,
            "rows": {r.name: {"kind": r.kind, "source": str(r.source.resolve()), **scored.numbers[r.name]}
                     for r in scored.rows},
            "misclassified": wrong}


def _write(out: Path, report: Report, document: dict) -> Path:
    """report.md, report.html and metrics.json into ``out``; returns report.html."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(to_markdown(report, out))
    html_path = out / "report.html"
    html_path.write_text(to_html(report))
    write_json(out / "metrics.json", document, indent=1)
    log.info("Report in %s: report.html, report.md, metrics.json, plots/, gallery/", out)
    return html_path


def _ranking(rank_by: str) -> str:
    """The ranking metric's name in titles and notes."""
    return {"auroc": "AUROC", "f1": "F1"}.get(rank_by, rank_by.replace("_", " ").capitalize())


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
