"""The report's gallery of misclassified images: what each row said about them, the original image beside
the image as the first run's model saw it (:func:`histo.evaluation.run_inputs.evaluation_inputs`) and, where
histo-explain was run on them, their Grad-CAM montage.

The images are ranked as histo-explain ranks them (:func:`histo.evaluation.predictions.most_wrong_first`
over the single-model rows, which are the runs explain reads), so a ``max_images=N`` explain run gives
montages to the first N cards."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from histo.data.image_file import read_rgb
from histo.evaluation import predictions
from histo.evaluation.explain_manifest import EXPLAIN_DIR, MANIFEST, is_explain_dir, read_manifest
from histo.evaluation.run_inputs import RunInputError, evaluation_inputs, run_inputs
from histo.report.sources import ReportError

log = logging.getLogger("histo.report")


@dataclass(frozen=True)
class GallerySettings:
    """``gallery`` of conf/report.yaml."""

    max_images: int = 40  # misclassified images shown, most often and most confidently wrong first
    thumbnail: int = 240  # px: width of each image as stored (never enlarged); the model's input beside it


@dataclass(frozen=True)
class Gallery:
    """The report's gallery section."""

    wrong: list[dict]  # every misclassified image (:func:`misclassified`), for metrics.json
    shown: list[dict]  # the first ``max_images`` of them, shown as cards
    thumbs: dict[str, Thumb]  # image -> its pictures (:func:`thumbnails`)
    montages: dict[str, Path]  # image -> its Grad-CAM montage (:func:`find_montages`)
    note: str  # what the section shows, and why pictures or montages are missing


def make_gallery(rows, class_names: list[str], split: str, settings: GallerySettings, explain, data_root,
                 out: Path) -> Gallery:
    """The misclassified images of ``rows``, the shown ones' pictures written into ``out``, and the montages
    of the ``explain`` outputs (and of ``<dir>/explain`` of every input)."""
    wrong = misclassified(rows, class_names)
    shown = wrong[:settings.max_images]
    thumbs, why = thumbnails(rows, [w["image"] for w in shown], out, settings.thumbnail, data_root)
    montages = find_montages(explain_dirs(explain, rows))
    note = (f"{len(wrong)} {split} image(s) misclassified by at least one row"
            + (f"; the {len(shown)} most often and most confidently wrong are shown" if len(wrong) > len(shown) else "")
            + ". Each image as stored, beside the input of the first run's model (its size, interpolation "
              "and stain normalization); ranked as histo-explain ranks them (single models: most often, then "
              "most confidently wrong), then the images only ensembles get wrong."
            + (f" No images: {why}" if why else "")
            + (f" Grad-CAM montages for {sum(w['image'] in montages for w in shown)} of them (histo-explain)."
               if montages else " No Grad-CAM montages: run histo-explain (out=<run dir>/explain) or pass explain=<dir>."))
    return Gallery(wrong, shown, thumbs, montages, note)


def misclassified(rows, class_names: list[str]) -> list[dict]:
    """Images that any row classifies wrongly: first those the single-model rows get wrong, most often and most
    confidently wrong first (histo-explain's order over the same runs), then those only ensembles get wrong."""
    frame = rows[0].frame
    labels = frame["label"].to_numpy()
    probs = np.stack([predictions.probabilities(r.frame) for r in rows])  # (rows, N, C)
    wrong, _ = predictions.most_wrong_first([r.frame for r in rows])
    _, order = predictions.most_wrong_first([r.frame for r in rows if r.kind == "model"] or [r.frame for r in rows])
    p_true = probs[:, np.arange(len(labels)), labels]
    out = []
    for i in order:
        if not wrong[:, i].any():
            continue
        meta = frame.iloc[i]
        out.append({
            "image": meta["image"], "label": int(labels[i]), "true_class": class_names[labels[i]],
            "patient": str(meta["patient"]), "subtype": str(meta["subtype"]), "magnification": int(meta["magnification"]),
            "rows": {r.name: {"p_true": float(p_true[k, i]), "pred": class_names[int(probs[k, i].argmax())],
                              "wrong": bool(wrong[k, i])} for k, r in enumerate(rows)},
            "n_wrong": int(wrong[:, i].sum()),
        })
    return out


def find_montages(explain_dirs: list[Path]) -> dict[str, Path]:
    """image -> montage PNG from the explain.json of each directory; the first directory listing an image wins."""
    out: dict[str, Path] = {}
    for directory in explain_dirs:
        for entry in read_manifest(directory).get("images", []):
            path = directory / entry["montage"]
            if path.is_file():
                out.setdefault(entry["image"], path)
    return out


def explain_dirs(given, rows) -> list[Path]:
    """The explain outputs to look in: those given, in order, then ``<dir>/explain`` of every input directory
    and member run, those with the most models first (an ensemble's montage beats a single run's)."""
    dirs = [Path(d) for d in ([given] if isinstance(given, (str, Path)) else list(given or []))]
    for directory in dirs:
        if not is_explain_dir(directory):
            raise ReportError(f"explain={directory} has no {MANIFEST}: give a histo-explain output directory.")
    found = []
    for row in rows:
        for candidate in (row.source / EXPLAIN_DIR, *(m / EXPLAIN_DIR for m in row.members)):
            if is_explain_dir(candidate) and candidate not in dirs + found:
                found.append(candidate)
    return dirs + sorted(found, key=lambda d: -len(read_manifest(d).get("runs", [])))


@dataclass(frozen=True)
class Thumb:
    """A gallery image: the original (at most the thumbnail width, never enlarged) and the model's input."""

    original: Path
    original_size: tuple[int, int]  # (width, height) of the image file
    input: Path
    input_size: int  # the model's square input, in pixels
    seen_by: str  # the run whose input it is, e.g. V1-B0
    stain: str  # its stain normalization ("none" when there is none)


def thumbnails(rows, images: list[str], out: Path, width: int, data_root=None) -> tuple[dict[str, Thumb], str | None]:
    """For each image: the original at most ``width`` px wide, as ``out/<stem>.png``, and the input of the first
    model row's run (its size, interpolation and stain normalization), as ``out/<stem>_input.png`` (at most
    as tall as the original's thumbnail). Returns image -> :class:`Thumb`, and why there are none (or None)."""
    if not images:
        return {}, None
    runs = [(r.name, r.run) for r in rows if r.run is not None] + [(m.name, m) for r in rows for m in r.members]
    if not runs:
        return {}, "no run directory to read the images' evaluation input from."
    try:
        inputs = run_inputs(runs[0][1], data_root)
        pictures = [evaluation_inputs(inputs, [image])[0] for image in tqdm(images, unit="img", desc="gallery")]
    except RunInputError as error:
        log.warning("Gallery without images: %s", error)
        return {}, str(error)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for image, picture in zip(images, pictures, strict=True):
        original = Image.fromarray(read_rgb(inputs.root / image))
        size = original.size
        original.thumbnail((width, width), Image.Resampling.LANCZOS)
        model_input = Image.fromarray(picture)
        if model_input.height > original.height:
            model_input = model_input.resize((original.height, original.height), Image.Resampling.LANCZOS)
        stem = Path(image).stem
        original.save(out / f"{stem}.png")
        model_input.save(out / f"{stem}_input.png")
        files[image] = Thumb(out / f"{stem}.png", size, out / f"{stem}_input.png", inputs.image_size, runs[0][0],
                             inputs.stain_method)
    return files, None
