"""The paper's printed test numbers (Kalati et al. 2025; PAPER.md section 4), kept once, as data.

``paper_kalati2025.csv`` holds one row per model or ensemble of the paper, keyed by our names:
model names (``v1_b0`` ... ``v2_s``), ``<ensemble> <method>`` for ensembles (``v1 soft`` = the
paper's unweighted average, ``v1 hard`` = majority vote, ``v1 feature_stack`` = its MLP stack) and
``<model> stain=<method>`` for the stain-normalised run. Specificity and balanced accuracy are
derived from the confusion matrices (TP/FN/FP/TN, malignant positive), which the printed lists of
misclassified files determine exactly.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PAPER_FILE = Path(__file__).with_name("paper_kalati2025.csv")
SOURCE = "Kalati et al. 2025, test split 1: image-level split, n = 1182 (812 malignant / 370 benign)"
CAVEAT = (
    "The paper's split is by image: every test patient also has images in train, so its numbers measure "
    "within-patient interpolation and are not comparable with a patient-disjoint split (PAPER.md section 6)."
)


def paper_results() -> pd.DataFrame:
    """The paper's numbers, indexed by our key; missing values are NaN."""
    return pd.read_csv(PAPER_FILE, dtype={"key": str, "label": str}).set_index("key")


def member_key(model: str, stain_method: str | None = None) -> str:
    """The key of a single model's row: ``v1_b0``, or ``v1_b0 stain=vahadane`` for a stain-normalised run.

    >>> member_key("v1_b0"), member_key("v1_b0", "none"), member_key("v1_b0", "vahadane")
    ('v1_b0', 'v1_b0', 'v1_b0 stain=vahadane')
    """
    return model if stain_method in (None, "none") else f"{model} stain={stain_method}"


def ensemble_key(name: str, method: str) -> str:
    """The key of an ensemble's row, e.g. ``v2 soft``."""
    return f"{name} {method}"
