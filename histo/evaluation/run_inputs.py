"""The exact evaluation input of a run: the uint8 images its model saw when it predicted val and test
(read from the run directory, so histo-explain and the report's gallery show the same input).

Everything that shapes that input is read from the run directory, never re-chosen: the dataset
root (``run.json`` ``data.root``), the model's square size (``image_size``), the resize
interpolation (``config.data.interpolation``) and the fitted stain normalizer (``stain`` and the
saved ``stain_target.json``). :func:`evaluation_inputs` then goes through the same
:class:`~histo.data.dataset.ImageDataset` and :func:`~histo.data.transforms.eval_transform` as
prediction did, so Grad-CAM and the report's gallery show what the model saw, byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from histo.command import UserError
from histo.data.dataset import ImageDataset
from histo.data.transforms import eval_transform
from histo.evaluation.run_dir import RunDir


class RunInputError(UserError):
    """A run whose evaluation input cannot be rebuilt; the message names the run or path and what to do."""


@dataclass
class RunInputs:
    """What builds a run's evaluation input, read from its directory by :func:`run_inputs`."""

    run: Path
    root: Path  # the dataset root the run's image paths are relative to
    image_size: int
    interpolation: str
    stain_method: str
    stain: object | None  # a fitted histo.stain normalizer, or None
    task: str
    class_names: list[str]
    patient_key: str
    split_fingerprint: str
    split: pd.DataFrame = field(repr=False)  # split.csv: image, split


def run_inputs(run_dir: str | Path, data_root: str | Path | None = None) -> RunInputs:
    """Read how run ``run_dir`` built its evaluation input; ``data_root`` overrides where its dataset is."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunInputError(f"Run {run.path} does not exist.")
    try:
        record = run.record()
    except (FileNotFoundError, ValueError) as error:
        raise RunInputError(f"Run {run.path} cannot be used: {error}") from error
    config = record.get("config") or {}
    if not run.split_path.is_file():
        raise RunInputError(f"Run {run.path} has no {run.split_path.name}: it is not a finished training run.")
    split = pd.read_csv(run.split_path, dtype={"image": str, "split": str})
    return RunInputs(
        run=run.path,
        root=resolve_data_root(run.path, record, data_root),
        image_size=int(record["image_size"]),
        interpolation=(config.get("data") or {}).get("interpolation", "bilinear"),
        stain_method=(record.get("stain") or {}).get("method", "none"),
        stain=stain_normalizer(run.path, record),
        task=record.get("task", "binary"),
        class_names=list(record["class_names"]),
        patient_key=(config.get("data") or {}).get("patient_key", "slide"),
        split_fingerprint=(record.get("split") or {}).get("fingerprint", ""),
        split=split,
    )


def evaluation_inputs(inputs: RunInputs, images: Sequence[str]) -> np.ndarray:
    """The uint8 (N, S, S, 3) RGB images the run's model saw for ``images`` (paths relative to the
    dataset root): read, stain-normalized at full resolution, resized as in evaluation."""
    table = pd.DataFrame({"image": list(images), "label": 0})
    missing = [p for p in table["image"] if not (inputs.root / p).is_file()]
    if missing:
        raise RunInputError(
            f"{len(missing)} image(s) of run {inputs.run} are missing under its dataset root {inputs.root} "
            f"(first: {missing[0]}); point data_root=<dir> at the dataset the run was trained on."
        )
    dataset = ImageDataset(inputs.root, table, eval_transform(inputs.image_size, inputs.interpolation),
                           stain=inputs.stain)
    if len(dataset) == 0:
        return np.zeros((0, inputs.image_size, inputs.image_size, 3), dtype=np.uint8)
    return np.stack([dataset[i]["image"].numpy().transpose(1, 2, 0) for i in range(len(dataset))])


def resolve_data_root(run_dir: Path, record: dict, override: str | Path | None = None) -> Path:
    """The run's dataset root: ``override`` when given; else ``data.root`` of run.json, as recorded when
    absolute, or when relative (to where training ran) against the working directory, the training
    directory implied by a relative ``paths.output_dir``, and the run directory's parents."""
    if override:
        root = Path(override).expanduser()
        if not root.is_dir():
            raise RunInputError(f"data_root={override} is not a directory.")
        return root
    recorded = (record.get("data") or {}).get("root")
    if not recorded:
        raise RunInputError(f"Run {run_dir}: run.json records no data.root; pass data_root=<dataset dir>.")
    root = Path(recorded).expanduser()
    if root.is_absolute():
        candidates = [root]
    else:
        candidates = [Path.cwd() / root]
        output_dir = Path(((record.get("config") or {}).get("paths") or {}).get("output_dir") or "")
        resolved = run_dir.resolve()
        if str(output_dir) not in ("", ".") and not output_dir.is_absolute() and resolved.parts[-len(output_dir.parts):] == output_dir.parts:
            candidates.append(Path(*resolved.parts[: -len(output_dir.parts)]) / root)
        candidates += [parent / root for parent in resolved.parents]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise RunInputError(
        f"Run {run_dir} was trained on data.root={recorded}, which is not found "
        f"{'' if root.is_absolute() else 'relative to the working directory or the run directory '}"
        f"({candidates[0]}); pass data_root=<the dataset dir>."
    )


def stain_normalizer(run_dir: Path, record: dict):
    """The stain normalizer the run fitted (None for ``method: none``): see
    :func:`histo.stain.methods.normalizer_from_record`."""
    from histo.stain.methods import normalizer_from_record  # only stain-normalised runs need it
    from histo.stain.normalizer import StainError

    try:
        return normalizer_from_record(record.get("stain"), run_dir)
    except (StainError, ValueError, TypeError, KeyError) as error:
        raise RunInputError(f"Run {run_dir}: cannot rebuild its stain normalizer: {error}") from error
