"""The BreaKHis dataset: file-name grammar, classes, and the index of a tree on disk.

Labels, patient and magnification come from the file name
(``SOB_<B|M>_<subtype>-<yy>-<slide>-<mag>-<seq>.png``), never from folder names:
both slide-folder spellings exist in the wild and one slide id sits under two subtypes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from histo.command import UserError

log = logging.getLogger(__name__)

FILE_NAME = re.compile(
    r"^(?P<procedure>[A-Z]+)_(?P<tumor>[BM])_(?P<subtype>[A-Z]+)-(?P<year>\d{2})-(?P<slide>[0-9A-Za-z]+)"
    r"-(?P<magnification>40|100|200|400)-(?P<seq>\d+)\.png$",
    re.IGNORECASE,
)

BINARY_CLASSES = ("benign", "malignant")
SUBTYPES = {  # code -> (tumour class, folder / class name)
    "A": ("benign", "adenosis"),
    "F": ("benign", "fibroadenoma"),
    "PT": ("benign", "phyllodes_tumor"),
    "TA": ("benign", "tubular_adenoma"),
    "DC": ("malignant", "ductal_carcinoma"),
    "LC": ("malignant", "lobular_carcinoma"),
    "MC": ("malignant", "mucinous_carcinoma"),
    "PC": ("malignant", "papillary_carcinoma"),
}
SUBTYPE_CLASSES = tuple(name for _, name in SUBTYPES.values())
MAGNIFICATIONS = (40, 100, 200, 400)
TASKS = ("binary", "subtype")
PATIENT_KEYS = ("number", "slide")

INDEX_COLUMNS = ["image", "tumor", "subtype", "patient", "slide", "magnification", "seq"]


class DataError(UserError):
    """A dataset problem the user must fix; the message names the path and what to do."""


@dataclass(frozen=True)
class ParsedName:
    tumor: str  # "benign" | "malignant"
    subtype: str  # code, e.g. "DC"
    slide: str  # "<yy>-<slide id>", e.g. "14-22549AB"
    magnification: int
    seq: int

    def patient(self, key: str = "number") -> str:
        """Patient id under ``key`` (see :func:`patient_id`)."""
        return patient_id(self.slide, key)

    def class_name(self, task: str) -> str:
        """The image's class for ``task``: ``benign``/``malignant``, or the subtype's name."""
        return self.tumor if task == "binary" else SUBTYPES[self.subtype][1]


def patient_id(slide: str, key: str = "number") -> str:
    """The patient of a slide ``<yy>-<slide id>``: with ``key="number"`` (the default) its digits only, so the
    lettered slides of one patient number (22549AB, 22549CD, 22549G; 18842 and 18842D) are one person;
    with ``key="slide"`` the slide itself, as the dataset counts its 82 "patients".

    >>> patient_id("14-22549AB"), patient_id("14-22549AB", "slide"), patient_id("14-18842")
    ('14-22549', '14-22549AB', '14-18842')
    """
    if key == "slide":
        return slide
    year, rest = slide.split("-", 1)
    digits = re.match(r"\d*", rest).group(0)
    return f"{year}-{digits}" if digits else slide


def parse_name(name: str) -> ParsedName | None:
    """Parse a BreaKHis file name; ``None`` when it does not follow the grammar.

    >>> parse_name("SOB_B_A-14-22549AB-40-001.png")
    ParsedName(tumor='benign', subtype='A', slide='14-22549AB', magnification=40, seq=1)
    """
    m = FILE_NAME.match(name)
    if m is None:
        return None
    code = m["subtype"].upper()
    if code not in SUBTYPES:
        return None
    tumor = "benign" if m["tumor"].upper() == "B" else "malignant"
    if SUBTYPES[code][0] != tumor:
        return None
    return ParsedName(tumor, code, f"{m['year']}-{m['slide'].upper()}", int(m["magnification"]), int(m["seq"]))


def parse_any_name(name: str) -> ParsedName | None:
    """:func:`parse_name` for a file of any image format (a BreaKHis image saved as JPEG or TIFF keeps its labels).

    >>> parse_any_name("some/dir/SOB_M_DC-14-2523-400-010.jpg").subtype
    'DC'
    """
    return parse_name(Path(name).stem + ".png")


def class_names(task: str) -> tuple[str, ...]:
    if task not in TASKS:
        raise DataError(f"data.task={task!r} is not a task; use one of {', '.join(TASKS)}.")
    return BINARY_CLASSES if task == "binary" else SUBTYPE_CLASSES


@dataclass
class Index:
    """Every parsable image of a tree, one row each, plus the files that were left out and why."""

    root: Path
    frame: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)

    @property
    def images(self) -> list[str]:
        """The images' paths relative to ``root``, sorted."""
        return self.frame["image"].tolist()

    def labels(self, task: str) -> pd.Series:
        """Integer class index per image for ``task`` (``binary``: 0 benign, 1 malignant)."""
        names = class_names(task)
        column = self.frame["tumor"] if task == "binary" else self.frame["subtype"].map(lambda c: SUBTYPES[c][1])
        return column.map({n: i for i, n in enumerate(names)}).astype(int)

    def summary(self) -> dict:
        f = self.frame
        return {
            "root": str(self.root),
            "images": len(f),
            "patients": int(f["patient"].nunique()),
            "slides": int(f["slide"].nunique()),
            "per_class": f["tumor"].value_counts().sort_index().to_dict(),
            "per_magnification": {int(k): int(v) for k, v in f["magnification"].value_counts().sort_index().items()},
            "skipped": len(self.skipped),
        }


def build_index(
    root: str | Path,
    magnification: str | int = "all",
    patient_key: str = "number",
    check_images: bool = True,
) -> Index:
    """Walk a BreaKHis tree and index every PNG by its file name.

    ``magnification`` keeps only ``40``/``100``/``200``/``400`` (or ``all``). Files whose names do not
    parse are listed in ``Index.skipped`` and logged; ``check_images`` reads each PNG header so a
    file that is not an image fails here, with its path, instead of mid-training.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.root={str(root)!r} is not a directory. Point data.root at your BreaKHis_v1 folder "
            "(or leave it null to use the built-in synthetic dataset)."
        )
    mags = _magnifications(magnification)
    if patient_key not in PATIENT_KEYS:
        raise DataError(f"data.patient_key={patient_key!r} is not valid; use one of {', '.join(PATIENT_KEYS)}.")

    pngs = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".png" and p.is_file())
    if not pngs:
        raise DataError(f"data.root={str(root)!r} holds no PNG images. Expected the BreaKHis_v1 tree "
                        "(…/histology_slides/breast/{benign,malignant}/SOB/<subtype>/<slide>/<mag>X/*.png).")
    rows, skipped = [], []
    for path in pngs:
        rel = path.relative_to(root).as_posix()
        parsed = parse_name(path.name)
        if parsed is None:
            skipped.append((rel, "file name does not follow SOB_<B|M>_<subtype>-<yy>-<slide>-<mag>-<seq>.png"))
            continue
        if parsed.magnification not in mags:
            continue
        if check_images:
            _check_readable(path)
        rows.append((rel, parsed.tumor, parsed.subtype, parsed.patient(patient_key), parsed.slide,
                     parsed.magnification, parsed.seq))
    if skipped:
        shown = "\n  ".join(f"{p}: {why}" for p, why in skipped[:20])
        more = f"\n  … and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        log.warning("%d PNG file(s) under %s were not indexed:\n  %s%s", len(skipped), root, shown, more)
    if not rows:
        if skipped and len(skipped) == len(pngs):
            raise DataError(
                f"No PNG under data.root={str(root)!r} has a BreaKHis file name "
                f"(e.g. SOB_B_A-14-22549AB-40-001.png); first one seen: {skipped[0][0]}."
            )
        raise DataError(f"No image under data.root={str(root)!r} matches data.magnification={magnification!r}.")
    frame = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    _warn_patients_with_two_subtypes(frame)
    return Index(root=root, frame=frame, skipped=skipped)


def _magnifications(value: str | int) -> tuple[int, ...]:
    if str(value).lower() == "all":
        return MAGNIFICATIONS
    try:
        mag = int(str(value).upper().rstrip("X"))
    except ValueError:
        mag = -1
    if mag not in MAGNIFICATIONS:
        raise DataError(f"data.magnification={value!r} is not valid; use all, 40, 100, 200 or 400.")
    return (mag,)


def _check_readable(path: Path) -> None:
    try:
        Image.open(path).close()  # reads the header only: cheap, catches non-images and empty files
    except Exception as err:  # PIL raises many types for broken files
        raise DataError(f"Cannot read image {path}: {err}. Replace or remove the file and run again.") from err


def _warn_patients_with_two_subtypes(frame: pd.DataFrame) -> None:
    n = frame.groupby("patient")["subtype"].nunique()
    for patient in n[n > 1].index:
        subtypes = sorted(frame.loc[frame["patient"] == patient, "subtype"].unique())
        log.warning("Patient %s has images of several subtypes (%s); patient splits keep them together.",
                    patient, ", ".join(subtypes))
