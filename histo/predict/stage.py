"""The predict stage: trained runs or a fitted ensemble applied to new images, and what came out, as files.

    <out>/predictions.csv      one row per predicted image (columns: :mod:`histo.predict.predictor`)
    <out>/skipped.csv          image, reason: every input that was not predicted (only a header when none was)
    <out>/metrics.json         when file names (or a CSV) give labels: the ensemble's and each member's metrics
                               with patient-bootstrap CIs, as histo-ensemble computes them
    <out>/cam/<member>/*.png   with cam=true: each member's Grad-CAM on its input; ``<member>.cam`` columns
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from histo.data.image_file import MAX_PIXELS
from histo.evaluation import metrics
from histo.evaluation.json_file import write_json
from histo.explain.cam import DEFAULT_LAYER
from histo.predict.cams import CamWriter
from histo.predict.predictor import PredictionResult, load_predictor

log = logging.getLogger("histo.predict")


def run_predict(
    images,
    out,
    runs=(),
    ensemble=None,
    method: str = "soft",
    calibrated: bool = False,
    tta: str = "none",
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 32,
    num_workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
    cam: bool = False,
    cam_method: str = "gradcam",
    cam_layer: str = DEFAULT_LAYER,
    progress: bool = True,
    resamples: int = metrics.RESAMPLES,
    level: float = metrics.LEVEL,
    seed: int = metrics.SEED,
) -> PredictionResult:
    """Predict ``images`` with ``runs`` (combined by ``method``) or the fitted ``method`` of ``ensemble``; write ``out``."""
    predictor = load_predictor(runs, ensemble, method, calibrated, device, precision)
    out = Path(out)
    writer = CamWriter(out / "cam", predictor.members, cam_method, cam_layer) if cam else None
    workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
    log.info("Predicting with %s of %s on %s (tta %s) ...", predictor.method, ", ".join(predictor.member_names),
             predictor.device, tta)
    result = predictor.run(images, tta=tta, batch_size=batch_size, num_workers=workers, progress=progress,
                           max_pixels=max_pixels, on_batch=writer)
    table = result.table
    if writer is not None:
        for name in predictor.member_names:
            table[f"{name}.cam"] = [paths[name] for paths in writer.paths]
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "predictions.csv", index=False, lineterminator="\n")
    result.skipped.to_csv(out / "skipped.csv", index=False, lineterminator="\n")
    scores = result.metrics(resamples, seed, level)
    if scores is not None:
        write_json(out / "metrics.json", {"method": predictor.method, "members": predictor.member_names, "tta": tta,
                                          "calibrated": calibrated, **scores})
    log.info("Predicted %d image(s) in %.1f s (%.1f images/s), skipped %d%s. Outputs in %s: predictions.csv%s%s",
             len(table), result.seconds, result.images_per_second, len(result.skipped),
             " (reasons in skipped.csv)" if len(result.skipped) else "", out,
             ", metrics.json" if scores is not None else "", ", cam/" if cam else "")
    return result
