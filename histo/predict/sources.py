"""What to predict: ``images=`` (a file, a folder, a glob, a CSV, or a list of them) or in-memory images.

A folder is walked recursively (hidden files and folders left out); every file in it is a source, so a
file that is not an image is reported in ``skipped.csv`` rather than silently passed over. A CSV lists
images in an ``image`` column (paths relative to the CSV's folder, or absolute) and may carry ``label``
(a class name or index) and ``patient`` columns for images whose file names are not BreaKHis names.
Each source keeps the name it was given by, which ``predictions.csv`` reports as ``image``.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from histo.data.image_file import EXTENSIONS
from histo.predict.errors import PredictError


class SourceError(PredictError):
    """``images=`` names nothing usable; the message names the path and what to do."""


@dataclass(frozen=True)
class Source:
    """One image to predict: a file (``path``) or an in-memory image (``array``), named ``name``."""

    name: str
    path: Path | None = None
    array: np.ndarray | None = None
    label: str | None = None  # from a CSV's label column
    patient: str | None = None  # from a CSV's patient column


def collect(images) -> tuple[list[Source], list[tuple[str, str]]]:
    """Sources for ``images`` (see the module docstring), and the (name, reason) of entries that are not images."""
    if isinstance(images, (str, Path, Image.Image, np.ndarray)):
        images = [images]
    sources: list[Source] = []
    skipped: list[tuple[str, str]] = []
    for k, item in enumerate(images):
        if isinstance(item, Image.Image):
            sources.append(Source(getattr(item, "filename", "") or f"<image {k}>", array=item))
        elif isinstance(item, np.ndarray):
            sources.append(Source(f"<array {k}>", array=item))
        elif isinstance(item, (str, Path)):
            found, passed = _expand(str(item))
            sources += found
            skipped += passed
        else:
            raise SourceError(f"images: item {k} is a {type(item).__name__}; give paths, PIL images or uint8 arrays.")
    return sources, skipped


def _expand(spec: str) -> tuple[list[Source], list[tuple[str, str]]]:
    path = Path(spec).expanduser()
    if any(c in spec for c in "*?["):
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            raise SourceError(f"images={spec} matches no file.")
        return _files([Path(m) for m in matches if Path(m).is_file()], names=None)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
        if not files:
            raise SourceError(f"images={spec} is an empty folder.")
        return _files(files, names=None)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _csv(path)
    if path.is_file():
        return _files([path], names=[spec])
    raise SourceError(f"images={spec} is not a file, folder, glob or CSV (nothing is there); check the path.")


def _files(paths: Iterable[Path], names) -> tuple[list[Source], list[tuple[str, str]]]:
    sources, skipped = [], []
    for i, path in enumerate(paths):
        name = names[i] if names else str(path)
        if path.suffix.lower() in EXTENSIONS:
            sources.append(Source(name, path=path))
        else:
            skipped.append((name, f"not an image file ({path.suffix or 'no extension'}; "
                                  f"read are {' '.join(EXTENSIONS)})"))
    return sources, skipped


def _csv(path: Path) -> tuple[list[Source], list[tuple[str, str]]]:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise SourceError(f"images={path} cannot be read as a CSV ({error}).") from error
    if "image" not in table.columns:
        raise SourceError(f"images={path} has no 'image' column (columns: {', '.join(table.columns)}); "
                          "list one image path per row under 'image'.")
    sources, skipped = [], []
    for row in table.itertuples(index=False):
        given = str(row.image).strip()
        if not given:
            continue
        file = Path(given).expanduser()
        file = file if file.is_absolute() else path.parent / file
        if not file.is_file():
            skipped.append((given, f"file not found ({file})"))
            continue
        label, patient = getattr(row, "label", "") or None, getattr(row, "patient", "") or None
        found, passed = _files([file], names=[given])
        sources += [Source(s.name, s.path, label=label, patient=patient) for s in found]
        skipped += passed
    if not sources and not skipped:
        raise SourceError(f"images={path} lists no images.")
    return sources, skipped


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)
