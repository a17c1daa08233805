"""The torchmetrics collection logged every epoch for train and val.

Fed with class probabilities (N, C) and integer targets. Binary: precision, recall, specificity,
F1 and AUROC of the malignant class (index 1); subtype: macro averages. Balanced accuracy is the
macro-averaged per-class recall in both cases.
"""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassSpecificity,
)
from torchmetrics.wrappers import LambdaInputTransformer

from histo.evaluation.metrics import METRICS


def positive_probability(probs: torch.Tensor) -> torch.Tensor:
    return probs[:, 1]


def epoch_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Metrics named ``<prefix><name>`` with the names of :data:`histo.evaluation.metrics.METRICS`
    (``val/accuracy``, ``val/balanced_accuracy``, ...), as run.json and ``optimized_metric`` name them."""
    metrics = {
        "accuracy": MulticlassAccuracy(num_classes, average="micro"),
        "balanced_accuracy": MulticlassAccuracy(num_classes, average="macro"),
    }
    if num_classes == 2:
        binary = {
            "precision": BinaryPrecision(),
            "recall": BinaryRecall(),
            "specificity": BinarySpecificity(),
            "f1": BinaryF1Score(),
            "auroc": BinaryAUROC(),
        }
        metrics |= {k: LambdaInputTransformer(m, transform_pred=positive_probability) for k, m in binary.items()}
    else:
        metrics |= {
            "precision": MulticlassPrecision(num_classes, average="macro"),
            "recall": MulticlassRecall(num_classes, average="macro"),
            "specificity": MulticlassSpecificity(num_classes, average="macro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
            "auroc": MulticlassAUROC(num_classes, average="macro"),
        }
    unknown = set(metrics) - set(METRICS)
    assert not unknown, f"epoch metrics outside the metric registry: {unknown}"
    return MetricCollection(metrics, prefix=prefix)
