"""The prediction-file contract: ``predictions/{val,test}.csv``, one row per image.

Columns: ``image, patient, subtype, magnification, label`` then ``logit_<class>`` per class in
class-index order. It is the only interface between training and everything after it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from histo.command import UserError

META_COLUMNS = ["image", "patient", "subtype", "magnification", "label"]
LOGIT_PREFIX = "logit_"


class PredictionFileError(UserError):
    """A prediction file breaks the contract; the message names the file and the problem."""


def make_frame(meta: pd.DataFrame, logits: np.ndarray, class_names: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Join per-image metadata (``META_COLUMNS``) with an (N, C) logit array, sorted by image."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape != (len(meta), len(class_names)):
        raise ValueError(f"logits shape {logits.shape} does not match {len(meta)} images x {len(class_names)} classes")
    frame = meta[META_COLUMNS].reset_index(drop=True).copy()
    for i, name in enumerate(class_names):
        frame[LOGIT_PREFIX + name] = logits[:, i]
    return frame.sort_values("image", ignore_index=True)


def write(frame: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, lineterminator="\n")
    return path


def read(path: str | Path) -> pd.DataFrame:
    """Read and validate a prediction file."""
    path = Path(path)
    if not path.is_file():
        raise PredictionFileError(f"Prediction file {path} does not exist.")
    frame = pd.read_csv(path, dtype={"image": str, "patient": str, "subtype": str})
    missing = [c for c in META_COLUMNS if c not in frame.columns]
    names = class_names(frame)
    if missing or len(names) < 2:
        raise PredictionFileError(
            f"{path} is not a prediction file: missing columns {missing or []}"
            f"{'' if len(names) >= 2 else ' and fewer than two logit_<class> columns'}."
        )
    if frame["image"].duplicated().any():
        raise PredictionFileError(f"{path} lists image {frame.loc[frame['image'].duplicated(), 'image'].iloc[0]} twice.")
    values = logits(frame)
    if not np.isfinite(values).all():
        bad = frame.loc[~np.isfinite(values).all(axis=1), "image"].iloc[0]
        raise PredictionFileError(f"{path} has non-finite logits (first at image {bad}).")
    if not frame["label"].between(0, len(names) - 1).all():
        raise PredictionFileError(f"{path} has labels outside 0..{len(names) - 1}.")
    return frame


def class_names(frame: pd.DataFrame) -> list[str]:
    return [c[len(LOGIT_PREFIX) :] for c in frame.columns if c.startswith(LOGIT_PREFIX)]


def logits(frame: pd.DataFrame) -> np.ndarray:
    return frame[[LOGIT_PREFIX + n for n in class_names(frame)]].to_numpy(dtype=np.float64)


def probabilities(frame: pd.DataFrame) -> np.ndarray:
    """Softmax of the frame's logits."""
    return softmax(logits(frame))


def softmax(z) -> np.ndarray:
    """Softmax over the last axis, computed stably in float64."""
    z = np.asarray(z, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def most_wrong_first(frames: list[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
    """For prediction frames of several models on the same images (rows in the same order): which model
    gets which image wrong, (models, N) bool, and the image order most often wrong first, then most
    confidently (lowest mean probability of the true class), then by name.

    >>> a = pd.DataFrame({"image": ["x", "y", "z"], "label": [0, 1, 1], "logit_b": [0.0, 2.0, 0.0], "logit_m": [1.0, 0.0, 3.0]})
    >>> wrong, order = most_wrong_first([a, a])
    >>> wrong.sum(axis=0).tolist(), order.tolist()
    ([2, 2, 0], [1, 0, 2])
    """
    labels = frames[0]["label"].to_numpy()
    probs = np.stack([probabilities(f) for f in frames])  # (models, N, C)
    wrong = probs.argmax(axis=2) != labels
    p_true = probs.mean(axis=0)[np.arange(len(labels)), labels]
    return wrong, np.lexsort((frames[0]["image"].to_numpy(), p_true, -wrong.sum(axis=0)))
