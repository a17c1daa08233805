"""How metrics appear in the tables of ``table.md`` (histo-ensemble) and the report (histo-report):
column titles, number format, the ranking key, error counts, the paper's cells and the definitions."""

from __future__ import annotations

import math

import pandas as pd

from histo.evaluation.metrics import METRIC, REGISTRY

COLUMNS = {m.name: m.title for m in REGISTRY}  # metric -> column title, in table order
DEFINITIONS = (
    "PRR: patient recognition rate, the mean over patients of the share of their images classified correctly "
    "(Spanhol et al. 2016); patient vote: accuracy of one label per patient from the mean probability of its "
    "images; ECE: expected calibration error (15 bins); errors: misclassified images."
)


VOTES_NOTE = ("Hard voting outputs votes, not probabilities: ECE, log loss and temperature are n/a; its AUROC (*) "
              "ranks images by the share of members voting for the positive class, ties counted half.")


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value) -> str:
    """Three decimals, ``-`` when missing.

    >>> number(0.98765), number(None), number(float("nan")), number(-0.0)
    ('0.988', '-', '-', '0.000')
    """
    return "-" if missing(value) else f"{value + 0.0:.3f}"


def interval(bounds, withheld: bool = False, brackets: bool = False) -> str | None:
    """A confidence interval as every table writes it: ``low-high`` (``[low, high]`` with ``brackets``),
    ``no CI`` when ``withheld`` (too few patients for one), None when there is none to show.

    >>> interval([0.81234, 0.9]), interval([0.8, 0.9], brackets=True), interval(None, withheld=True), interval(None)
    ('0.812-0.900', '[0.800, 0.900]', 'no CI', None)
    """
    if not bounds or bounds[0] is None:
        return "no CI" if withheld else None
    return f"[{bounds[0]:.3f}, {bounds[1]:.3f}]" if brackets else f"{bounds[0]:.3f}-{bounds[1]:.3f}"


def fmt_prob(p: float) -> str:
    """Probabilities to three decimals, without rounding a near-certainty to 1.000 or 0.000.

    >>> fmt_prob(0.99996), fmt_prob(0.00002), fmt_prob(0.5)
    ('>0.999', '<0.001', '0.500')
    """
    if p > 0.999:
        return ">0.999"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}"


def rank_value(overall: dict, metric: str) -> float:
    """The sort key of a row ranked by ``metric`` (best first with ``reverse=True``): missing values last."""
    value = overall.get(metric)
    if missing(value) or not math.isfinite(value):
        return -math.inf
    return value if METRIC[metric].higher_is_better else -value


def errors(overall: dict) -> int:
    """Misclassified images, from the accuracy and the image count."""
    return int(round(overall["n_images"] * (1 - overall["accuracy"])))


def paper_cells(paper_results: pd.DataFrame, key: str) -> list[str]:
    """The paper's accuracy, balanced accuracy and errors for row ``key`` (empty when the paper has none)."""
    if key not in paper_results.index:
        return ["", "", ""]
    row = paper_results.loc[key]
    return [number(row["accuracy"]), number(row["balanced_accuracy"]),
            "" if pd.isna(row["errors"]) else str(int(row["errors"]))]
