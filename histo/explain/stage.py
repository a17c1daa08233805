"""The explain stage: CAMs of one or more runs' best checkpoints on chosen images, written as pictures.

    <out>/index.html                         one row per image: montage, labels, probabilities, links
    <out>/explain.json                       what was done, and per image what each model said (the
                                             report reads it to show montages in its gallery; its
                                             format: histo.evaluation.explain_manifest)
    <out>/montages/<image stem>.png          one tile per model, rows by family, annotated
    <out>/overlays/<run name>/<image stem>.png   each model's CAM on its own evaluation input

Probabilities are those of the forward pass that produced each map; they are checked against the
run's prediction files (a mismatch means the evaluation input was not reproduced, and is logged).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from histo.evaluation import predictions
from histo.evaluation.explain_manifest import MANIFEST
from histo.evaluation.json_file import write_json
from histo.evaluation.run_dir import RunDir
from histo.evaluation.run_inputs import evaluation_inputs
from histo.explain.cam import CLASS_AGNOSTIC, DEFAULT_LAYER, METHODS, compute_cams, target_layer
from histo.explain.errors import ExplainError
from histo.explain.montage import IMAGE_WEIGHT, Tile, overlay, render_montage, save_png
from histo.explain.page import write_index
from histo.explain.runs import ExplainRun, load_runs
from histo.explain.selection import select_images

log = logging.getLogger("histo.explain")

TARGETS = ("predicted", "true")
PROB_TOLERANCE = 1e-3  # largest |P(map's pass) - P(prediction file)| before a warning


def run_explain(
    runs,
    out,
    images="misclassified",
    n: int = 4,
    split: str = "test",
    misclassified_by: str = "any",
    method: str = "gradcam",
    layer: str = DEFAULT_LAYER,
    target: str = "predicted",
    data_root=None,
    device: str = "auto",
    batch_size: int = 16,
    image_weight: float = IMAGE_WEIGHT,
    seed: int = 0,
    max_images: int | None = None,
) -> dict:
    """Explain ``images`` of the runs at ``runs`` into ``out``; returns the manifest (explain.json)."""
    _check_options(method, target, batch_size)
    explained = load_runs(runs, data_root)
    selected, how = select_images(explained, images, n, split, misclassified_by, seed, max_images)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    models = _load_models(explained, device, layer)
    log.info("Explaining %d image(s) with %d model(s) (%s at %s): %s", len(selected), len(explained), method, layer,
             how)
    out = Path(out)
    entries = _explain_images(out, selected, explained, models, device, batch_size, method, layer, target,
                              image_weight)
    _warn_if_unlike_prediction_files(entries)
    manifest = {
        "method": method,
        "layer": layer,
        "target": target,
        "class_agnostic": method in CLASS_AGNOSTIC,
        "selection": how,
        "split": split,
        "misclassified_by": misclassified_by if images == "misclassified" else None,
        "class_names": explained[0].inputs.class_names,
        "runs": [_run_entry(r) for r in explained],
        "data_root": str(explained[0].inputs.root.resolve()),
        "images": entries,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MANIFEST, manifest)
    index = write_index(out, manifest)
    log.info("Explain outputs in %s: %s, %s, montages/, overlays/", out, index.name, MANIFEST)
    return manifest


def _check_options(method: str, target: str, batch_size: int) -> None:
    if method not in METHODS:
        raise ExplainError(f"method={method!r} is not a CAM method; use one of {', '.join(METHODS)}.")
    if target not in TARGETS:
        raise ExplainError(f"target={target!r} is not valid; use predicted (each model's prediction) or true.")
    if batch_size < 1:
        raise ExplainError(f"batch_size={batch_size} must be at least 1.")


def _load_models(explained: list[ExplainRun], device: str, layer: str) -> dict:
    """Each run's best checkpoint on ``device`` (run name -> model); an unknown ``layer`` fails here, naming
    the valid ones."""
    models = {}
    for run in explained:
        models[run.name] = run.load_model(device)
        target_layer(models[run.name].net, layer)
    return models


def _explain_images(out: Path, selected, explained: list[ExplainRun], models: dict, device: str, batch_size: int,
                    method: str, layer: str, target: str, image_weight: float) -> list[dict]:
    """Every model's map of each selected image, ``batch_size`` images at a time, then each image's overlays
    and montage; the manifest entry of each image, in order."""
    class_names = explained[0].inputs.class_names
    reference = _reference_probabilities(explained, selected)
    stems = _stems(selected["image"].tolist())
    entries = []
    # per image: each model's map, then the montage
    progress = tqdm(total=len(selected) * (len(explained) + 1), unit="step", desc=method)
    for start in range(0, len(selected), batch_size):
        chunk = selected.iloc[start:start + batch_size]
        labels = chunk["label"].to_numpy()
        per_run = {}
        for run in explained:
            progress.set_postfix_str(f"images {start + 1}-{start + len(chunk)}: {run.label}")
            inputs = evaluation_inputs(run.inputs, chunk["image"].tolist())
            x = models[run.name].preprocess(torch.from_numpy(inputs).permute(0, 3, 1, 2).to(device))
            result = compute_cams(models[run.name], x, labels if target == "true" else None, method, layer)
            per_run[run.name] = (inputs, result)
            progress.update(len(chunk))
        progress.set_postfix_str(f"images {start + 1}-{start + len(chunk)}: montages")
        for i, row in enumerate(chunk.itertuples(index=False)):
            entries.append(_explain_image(out, row, stems[start + i], explained, per_run, i, class_names, method,
                                          layer, target, image_weight, reference))
            progress.update(1)
    progress.close()
    return entries


def _warn_if_unlike_prediction_files(entries: list[dict]) -> None:
    mismatched = [e for e in entries if (e["max_abs_diff_vs_prediction_file"] or 0) > PROB_TOLERANCE]
    if mismatched:
        log.warning("%d image(s) got probabilities that differ from the runs' prediction files by more than %g "
                    "(first: %s); the evaluation input may not be the one the run predicted on.",
                    len(mismatched), PROB_TOLERANCE, mismatched[0]["image"])


def _run_entry(run: ExplainRun) -> dict:
    """What explain.json records of a run."""
    return {"name": run.name, "label": run.label, "model": run.model_name, "family": run.family,
            "path": str(run.path.resolve()), "checkpoint": str(run.checkpoint.resolve()),
            "image_size": run.inputs.image_size, "interpolation": run.inputs.interpolation,
            "stain": run.inputs.stain_method}


def _explain_image(out: Path, row, stem: str, runs: list[ExplainRun], per_run: dict, i: int, class_names,
                   method: str, layer: str, target: str, image_weight: float, reference: dict) -> dict:
    label = int(row.label)
    tiles, probs, overlays, flat, explained_class, diffs = [], {}, {}, {}, {}, []
    for run in runs:
        inputs, result = per_run[run.name]
        p = predictions.softmax(result.logits[i])
        picture = overlay(inputs[i], result.maps[i], image_weight, flat=bool(result.flat[i]))
        overlays[run.name] = save_png(picture, out / "overlays" / run.name / f"{stem}.png").relative_to(out).as_posix()
        stain = run.inputs.stain_method
        tiles.append(Tile(run.label, run.family, picture, inputs[i], p, bool(result.flat[i]),
                          "" if stain in (None, "none") else f"{stain} stain"))
        probs[run.name] = p.tolist()
        flat[run.name] = bool(result.flat[i])
        explained_class[run.name] = None if method in CLASS_AGNOSTIC else class_names[int(result.explained[i])]
        if (run.name, row.image) in reference:
            diffs.append(float(np.abs(reference[run.name, row.image] - p).max()))
    mean = np.mean([t.probs for t in tiles], axis=0)
    what = ("class-agnostic: the first principal component of the activations" if method in CLASS_AGNOSTIC
            else "explaining each model's predicted class" if target == "predicted"
            else f"explaining the true class ({class_names[label]})")
    montage = render_montage(
        out / "montages" / f"{stem}.png", tiles, label, class_names,
        title=f"{Path(row.image).name}\ntrue: {class_names[label]} ({row.subtype}, patient {row.patient}, "
              f"{row.magnification}x)",
        method_line=f"{method} at layer {layer}, {what}",
    )
    return {
        "image": row.image,
        "stem": stem,
        "split": row.split,
        "patient": str(row.patient),
        "subtype": str(row.subtype),
        "magnification": int(row.magnification),
        "label": label,
        "true_class": class_names[label],
        "probs": probs,
        "mean": mean.tolist(),
        "ensemble_pred": class_names[int(mean.argmax())],
        "wrong": [name for name, p in probs.items() if int(np.argmax(p)) != label],
        "explained": explained_class,
        "flat": flat,
        "montage": montage.relative_to(out).as_posix(),
        "overlays": overlays,
        "max_abs_diff_vs_prediction_file": max(diffs) if diffs else None,
    }


def _reference_probabilities(runs: list[ExplainRun], selected) -> dict:
    """(run name, image) -> probabilities from the run's prediction files, for the images that have them."""
    out = {}
    wanted = set(selected["image"])
    for run in runs:
        for split in sorted(set(selected["split"]) & {"val", "test"}):
            if not RunDir(run.path).predictions_path(split).is_file():
                continue
            frame = RunDir(run.path).read_predictions(split)
            keep = frame["image"].isin(wanted).to_numpy()
            for image, p in zip(frame["image"][keep], predictions.probabilities(frame)[keep], strict=True):
                out[run.name, image] = p
    return out


def _stems(images: list[str]) -> list[str]:
    """A file stem per image: its file name without .png, made unique if two images share a name."""
    stems, seen = [], {}
    for image in images:
        stem = Path(image).stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return stems

