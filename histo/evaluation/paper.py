"""The paper (Kalati et al. 2025): its ten models in its order, and its printed test numbers
(its results table), kept once, as data.

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
    "within-patient interpolation and are not comparable with a patient-disjoint split (README.md, section "
    "'Reproducing the paper')."
)

# the paper's order: V1 B0-B4, then V2 B0, B1, B2, B3, S (tables, montages and make paper follow it)
MODELS = ("v1_b0", "v1_b1", "v1_b2", "v1_b3", "v1_b4", "v2_b0", "v2_b1", "v2_b2", "v2_b3", "v2_s")
FAMILY_ORDER = ("v1", "v2")


def display_name(model: str) -> str:
    """``v1_b0`` -> ``V1-B0``, ``v2_s`` -> ``V2-S``; other names unchanged.

    >>> display_name("v2_s"), display_name("v1_b3"), display_name("resnet")
    ('V2-S', 'V1-B3', 'resnet')
    """
    return model.upper().replace("_", "-") if model in MODELS else model


def order_key(model: str, family: str | None) -> tuple:
    """Sort key: family (V1, V2, others), then the paper's model order, then the name."""
    family_rank = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)
    model_rank = MODELS.index(model) if model in MODELS else len(MODELS)
    return family_rank, model_rank, model


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
