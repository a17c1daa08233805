"""``explain.json``: what histo-explain did, the file through which other stages (the report's gallery) find
its montages. Written by :mod:`histo.explain.stage`, read here; no stage imports the explain stage for it.

One JSON object:

=================  ==================================================================================
key                value
=================  ==================================================================================
method, layer      the CAM method (gradcam, gradcam++, layercam, eigencam) and the target module
target             predicted | true: the class each map explains
class_agnostic     whether the method ignores the target class (eigencam)
selection          how the images were chosen (misclassified, n_per_class, or a given list)
split              the prediction files the images were chosen from (val | test)
misclassified_by   any | mean for a misclassified selection, else null
class_names        class names in class-index order
runs               one object per explained run: name, label, model, family, path, checkpoint,
                   image_size, interpolation, stain
data_root          the dataset root the images are relative to
images             one object per image: image (path relative to the dataset root), stem, split,
                   patient, subtype, magnification, label, true_class, probs (run name -> class
                   probabilities), mean, ensemble_pred, wrong (run names), explained, flat,
                   montage and overlays (paths relative to the explain directory), and
                   max_abs_diff_vs_prediction_file
=================  ==================================================================================
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

MANIFEST = "explain.json"
EXPLAIN_DIR = "explain"  # conventional place of a histo-explain output inside a run or ensemble directory

log = logging.getLogger("histo.evaluation")


def is_explain_dir(directory: str | Path) -> bool:
    """Whether ``directory`` holds a histo-explain output (its explain.json)."""
    return (Path(directory) / MANIFEST).is_file()


def read_manifest(directory: str | Path) -> dict:
    """The explain.json of ``directory``; an unreadable one is logged and read as empty (no montages)."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("images"), list):
            raise ValueError("no images")
        return manifest
    except (OSError, ValueError, AttributeError):
        log.warning("%s is not a histo-explain manifest; its montages are not shown.", path)
        return {}
