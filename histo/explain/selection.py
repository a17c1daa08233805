"""Which images to explain: a list of paths, the misclassified images of a split, or n per class.

``misclassified`` reads the runs' prediction files of ``split`` (test by default):

- ``misclassified_by="any"``: the union of the images that any run classifies wrongly (the paper's
  analysis of its misclassified-file lists), most-wrong first (by how many runs err, then by the
  mean probability of the true class);
- ``misclassified_by="mean"``: the images the runs' mean probability (the soft-voting ensemble)
  classifies wrongly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from histo.evaluation import predictions
from histo.evaluation.predictions import PredictionFileError
from histo.evaluation.run_dir import RunDir
from histo.explain.errors import ExplainError
from histo.explain.inputs import image_table
from histo.explain.runs import ExplainRun

MODES = ("misclassified", "n_per_class")
MISCLASSIFIED_BY = {
    "any": "the images that any of the runs classifies wrongly (union)",
    "mean": "the images that the runs' mean probability (soft vote) classifies wrongly",
}


def select_images(
    runs: Sequence[ExplainRun],
    images,
    n: int = 4,
    split: str = "test",
    misclassified_by: str = "any",
    seed: int = 0,
    max_images: int | None = None,
) -> tuple[pd.DataFrame, str]:
    """The images to explain (columns ``image, split, patient, subtype, magnification, label``) and a
    sentence saying how they were chosen."""
    if isinstance(images, str) and images not in MODES:
        images = [images]  # one path
    if isinstance(images, str):
        frames = prediction_frames(runs, split)
        meta = frames[0][predictions.META_COLUMNS].assign(split=split)
        labels = meta["label"].to_numpy()
        if images == "misclassified":
            if misclassified_by not in MISCLASSIFIED_BY:
                raise ExplainError(f"misclassified_by={misclassified_by!r} is not valid; use any or mean.")
            wrong, order = predictions.most_wrong_first(frames)
            if misclassified_by == "any":
                chosen = wrong.any(axis=0)
            else:
                mean = np.mean([predictions.probabilities(f) for f in frames], axis=0)
                chosen = mean.argmax(axis=1) != labels
            picked = meta.iloc[[i for i in order if chosen[i]]]
            how = (f"Misclassified {split} images: {MISCLASSIFIED_BY[misclassified_by]} "
                   f"({len(picked)} of {len(meta)}), most often and most confidently wrong first.")
        else:
            if n < 1:
                raise ExplainError(f"n={n}: images=n_per_class needs n >= 1 images per class.")
            rng = np.random.default_rng(seed)
            rows = []
            for label in sorted(np.unique(labels)):
                candidates = np.flatnonzero(labels == label)
                rows += sorted(rng.choice(candidates, size=min(n, len(candidates)), replace=False).tolist())
            picked = meta.iloc[rows]
            how = f"{n} {split} images per true class, drawn at random (seed {seed}): {len(picked)} images."
    else:
        paths = list(images or [])
        if not paths:
            raise ExplainError("images is empty; use images=misclassified, images=n_per_class or images='[<path>,...]'.")
        picked = image_table(runs[0].inputs, paths).drop_duplicates("image")
        how = f"{len(picked)} image(s) listed on the command line."
    picked = picked.reset_index(drop=True)
    if max_images is not None and len(picked) > max_images:
        how += f" The first {max_images} are shown (max_images={max_images})."
        picked = picked.iloc[:max_images]
    return picked[["image", "split", "patient", "subtype", "magnification", "label"]], how


def prediction_frames(runs: Sequence[ExplainRun], split: str) -> list[pd.DataFrame]:
    """Each run's prediction frame of ``split``, sorted by image; all must list the same images."""
    frames = []
    for run in runs:
        try:
            frame = RunDir(run.path).read_predictions(split)
        except PredictionFileError as error:
            raise ExplainError(f"Run {run.path}: {error} (split={split}; use val or test).") from error
        frames.append(frame.sort_values("image", ignore_index=True))
    for run, frame in zip(runs[1:], frames[1:], strict=True):
        if not np.array_equal(frame["image"].to_numpy(), frames[0]["image"].to_numpy()):
            raise ExplainError(f"Runs {runs[0].path} and {run.path} predict different {split} images.")
    return frames
