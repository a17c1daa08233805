"""Images a user names for histo-explain, resolved against a run's data and described from their file names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from histo.data.breakhis import SUBTYPES, parse_name
from histo.evaluation.run_inputs import RunInputs
from histo.explain.errors import ExplainError


def image_table(inputs: RunInputs, images: Sequence[str]) -> pd.DataFrame:
    """Resolve user-given image paths against the run's data and describe them: ``image`` (relative to the
    root), ``split``, ``patient``, ``subtype``, ``magnification``, ``label``. A path may be relative to the
    dataset root, absolute inside it, or a bare file name; anything else is an error naming the path."""
    known = inputs.split.set_index("image")["split"]
    by_name = pd.Series(known.index, index=[Path(p).name for p in known.index])
    rows = []
    for given in images:
        path = Path(str(given)).expanduser()
        if path.is_absolute():
            try:
                path = path.resolve().relative_to(inputs.root.resolve())
            except ValueError:
                raise ExplainError(
                    f"Image {given} is not under the dataset root {inputs.root} of run {inputs.run}; give paths "
                    "relative to that root (as in the prediction files) or inside it."
                ) from None
        key = path.as_posix()
        if key not in known.index:
            matches = by_name.get(key) if path.name == key else None
            if matches is None:
                raise ExplainError(
                    f"Image {given} is not in the data of run {inputs.run} (its split.csv lists "
                    f"{len(known)} images under {inputs.root}); give a path from its predictions/*.csv."
                )
            matches = [matches] if isinstance(matches, str) else list(matches)
            if len(matches) > 1:
                raise ExplainError(f"Image name {given} matches {len(matches)} images ({matches[0]}, ...); give the full path.")
            key = matches[0]
        rows.append({"image": key, "split": known[key], **describe(key, inputs)})
    return pd.DataFrame(rows)


def describe(image: str, inputs: RunInputs) -> dict:
    """Patient, subtype, magnification and class index of an image, from its BreaKHis file name."""
    parsed = parse_name(Path(image).name)
    if parsed is None:
        raise ExplainError(f"Image {image} does not have a BreaKHis file name; it cannot be labelled.")
    name = parsed.tumor if inputs.task == "binary" else SUBTYPES[parsed.subtype][1]
    return {"patient": parsed.patient(inputs.patient_key), "subtype": parsed.subtype,
            "magnification": parsed.magnification, "label": inputs.class_names.index(name)}
