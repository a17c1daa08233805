"""A synthetic BreaKHis: a tree of H&E-like PNGs with valid BreaKHis file names.

Colour comes from Beer-Lambert mixing of a haematoxylin and an eosin optical-density vector that
vary per patient (so stain normalization has something to fix). Malignant tissue has more, larger,
darker and less regular nuclei than benign, a difference a small CNN learns in a few epochs; the
eight subtypes differ more subtly in nucleus size, density and stroma. Everything is seeded: the
same spec writes the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from histo.data.breakhis import MAGNIFICATIONS, SUBTYPES

# Ruifrok & Johnston optical-density vectors (R, G, B), the usual H&E reference.
HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
EOSIN = np.array([0.072, 0.990, 0.105])

# BreaKHis per class x magnification image counts (Spanhol et al. 2016) and patients per subtype.
BREAKHIS_COUNTS = {
    "benign": {40: 625, 100: 644, 200: 623, 400: 588},
    "malignant": {40: 1370, 100: 1437, 200: 1390, 400: 1232},
}
BREAKHIS_PATIENTS = {"A": 4, "F": 10, "PT": 3, "TA": 7, "DC": 38, "LC": 5, "MC": 9, "PC": 6}
BREAKHIS_SUBTYPE_IMAGES = {"A": 444, "F": 1014, "PT": 453, "TA": 569, "DC": 3451, "LC": 626, "MC": 792, "PC": 560}

# Nucleus look per subtype: (size factor, density factor, eosin level of the stroma).
_SUBTYPE_LOOK = {
    "A": (1.0, 1.0, 0.55), "F": (0.9, 0.8, 0.75), "PT": (1.05, 1.2, 0.45), "TA": (1.1, 1.1, 0.6),
    "DC": (1.0, 1.0, 0.5), "LC": (0.85, 1.3, 0.65), "MC": (1.1, 0.7, 0.3), "PC": (1.2, 0.9, 0.55),
}
# Nucleus radius as a share of the image width, per magnification.
_NUCLEUS_RADIUS = {40: 0.008, 100: 0.014, 200: 0.022, 400: 0.038}


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. ``counts="breakhis"`` reproduces the full dataset's per-group image counts
    and patients per subtype (7,909 images); ``"small"`` gives ``patients_per_subtype`` patients with
    ``images_per_magnification`` images at each magnification."""

    patients_per_subtype: int = 2
    images_per_magnification: int = 3
    width: int = 175
    height: int = 115
    seed: int = 0
    counts: str = "small"
    stain_jitter_degrees: float = 8.0

    def __post_init__(self):
        if self.counts not in ("small", "breakhis"):
            raise ValueError(f"counts={self.counts!r}: use small or breakhis.")
        if min(self.patients_per_subtype, self.images_per_magnification) < 1 or min(self.width, self.height) < 8:
            raise ValueError("patients_per_subtype and images_per_magnification must be >= 1, width/height >= 8.")


def write_dataset(out: str | Path, spec: SyntheticSpec = SyntheticSpec(), overwrite: bool = False,
                  workers: int = 0) -> Path:
    """Write the tree under ``out`` (which becomes a ``data.root``) and return it.

    The tree is built in a temporary folder and moved into place, so a reader never sees half a
    dataset; ``out/synthetic.json`` records the spec and each patient's true stain matrix.
    ``workers`` > 0 renders patients in that many processes (the full ``counts="breakhis"`` tree at
    700x460 takes about 20 core-minutes); every image is seeded by itself, so the bytes are the same.
    """
    out = Path(out)
    if (out / "synthetic.json").is_file() and not overwrite:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=out.parent))
    patients = _patients(spec)
    if workers > 0:
        with ProcessPoolExecutor(workers) as pool:  # the platform's default start (fork on Linux: no re-imports)
            list(pool.map(_write_patient, repeat(tmp), repeat(spec), patients))
    else:
        for patient in patients:
            _write_patient(tmp, spec, patient)
    records = [{k: v for k, v in p.items() if k != "images"} for p in patients]
    (tmp / "synthetic.json").write_text(json.dumps({"spec": asdict(spec), "patients": records}, indent=1))
    if out.exists():
        if not overwrite:  # another process finished first
            shutil.rmtree(tmp)
            return out
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _write_patient(tmp: Path, spec: SyntheticSpec, patient: dict) -> None:
    """All images of one patient, under ``tmp``."""
    for mag, n in patient["images"].items():
        folder = tmp / patient["folder"] / f"{mag}X"
        folder.mkdir(parents=True, exist_ok=True)
        for seq in range(1, n + 1):
            name = f"SOB_{patient['tumor'][0].upper()}_{patient['subtype']}-{patient['slide']}-{mag}-{seq:03d}.png"
            Image.fromarray(render(spec, patient, mag, seq)).save(folder / name, compress_level=1)


def _patients(spec: SyntheticSpec) -> list[dict]:
    """Patient records: ids, folder, stain matrix and images per magnification."""
    rng = np.random.default_rng([spec.seed, 7])
    records, used = [], set()
    for code, (tumor, subtype_dir) in SUBTYPES.items():
        n_patients = BREAKHIS_PATIENTS[code] if spec.counts == "breakhis" else spec.patients_per_subtype
        per_mag = _images_per_patient(spec, code, tumor, n_patients)
        for i in range(n_patients):
            slide = _slide_id(rng, used)
            # Both slide-folder spellings exist in the wild: SOB_B_A_14-1234 and SOB_B_A-14-1234.
            sep = "-" if len(records) % 3 == 2 else "_"
            folder = f"histology_slides/breast/{tumor}/SOB/{subtype_dir}/SOB_{tumor[0].upper()}_{code}{sep}{slide}"
            records.append({
                "tumor": tumor, "subtype": code, "slide": slide, "folder": folder,
                "stains": _patient_stains(rng, spec.stain_jitter_degrees).round(6).tolist(),
                "intensity": float(rng.uniform(0.85, 1.15)),
                "images": {mag: int(per_mag[mag][i]) for mag in MAGNIFICATIONS},
            })
    return records


def _images_per_patient(spec: SyntheticSpec, code: str, tumor: str, n_patients: int) -> dict[int, np.ndarray]:
    if spec.counts == "small":
        return {mag: np.full(n_patients, spec.images_per_magnification) for mag in MAGNIFICATIONS}
    # Share each class x magnification total among its subtypes by their image totals, then among patients.
    same_class = [c for c, (t, _) in SUBTYPES.items() if t == tumor]
    result = {}
    for mag in MAGNIFICATIONS:
        subtype_counts = _share(BREAKHIS_COUNTS[tumor][mag], [BREAKHIS_SUBTYPE_IMAGES[c] for c in same_class])
        result[mag] = _share(subtype_counts[same_class.index(code)], [1] * n_patients)
    return result


def _share(total: int, weights: list[float]) -> np.ndarray:
    """Split an integer total in proportion to weights (largest remainder), exactly summing to total."""
    raw = total * np.asarray(weights, dtype=float) / sum(weights)
    out = np.floor(raw).astype(int)
    out[np.argsort(-(raw - out), kind="stable")[: total - out.sum()]] += 1
    return out


def _slide_id(rng: np.random.Generator, used: set) -> str:
    while True:
        suffix = rng.choice(["", "", "", "AB", "CD", "E", "G"])
        slide = f"{rng.choice([14, 15])}-{rng.integers(1000, 30000)}{suffix}"
        if slide not in used:
            used.add(slide)
            return slide


def _patient_stains(rng: np.random.Generator, jitter_degrees: float) -> np.ndarray:
    """A 2x3 matrix (rows H, E) of unit OD vectors, each turned by up to ``jitter_degrees``."""
    rows = []
    for ref in (HEMATOXYLIN, EOSIN):
        v = ref / np.linalg.norm(ref)
        axis = np.cross(v, rng.normal(size=3))
        axis /= np.linalg.norm(axis)
        angle = np.deg2rad(rng.uniform(0.3, 1.0) * jitter_degrees)
        turned = v * np.cos(angle) + np.cross(axis, v) * np.sin(angle)  # Rodrigues, axis ⟂ v
        rows.append(np.abs(turned) / np.linalg.norm(turned))
    return np.stack(rows)


def render(spec: SyntheticSpec, patient: dict, magnification: int, seq: int) -> np.ndarray:
    """One RGB uint8 image of a patient at a magnification (deterministic in its arguments)."""
    rng = np.random.default_rng([spec.seed, zlib.crc32(patient["slide"].encode()), magnification, seq])
    w = spec.width
    # Every other image is 4/460 shorter, as BreaKHis has 700x456 besides 700x460 images.
    h = spec.height - (max(1, round(4 * spec.height / 460)) if seq % 2 == 0 else 0)
    malignant = patient["tumor"] == "malignant"
    size, density, stroma = _SUBTYPE_LOOK[patient["subtype"]]
    h_conc, e_conc = _stroma(rng, h, w, stroma)
    _draw_nuclei(rng, h_conc, e_conc, magnification, size, density, malignant)
    tissue = _smooth_noise(rng, h, w, scale=max(4, w // 6)) > -1.1  # mostly tissue, a few areas of glass
    h_conc *= tissue
    e_conc *= tissue
    stains = np.asarray(patient["stains"])
    od = patient["intensity"] * (h_conc[..., None] * stains[0] + e_conc[..., None] * stains[1])
    rgb = 255.0 * np.exp(-od) + rng.normal(0, 2.0, size=od.shape)
    return np.clip(rgb, 0, 255).round().astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Zero-mean, unit-variance low-frequency noise: a coarse random grid blurred up to size."""
    coarse = rng.normal(size=(max(2, h // scale), max(2, w // scale)))
    img = Image.fromarray(((coarse - coarse.min()) / (np.ptp(coarse) + 1e-9) * 255).astype(np.uint8))
    img = img.resize((w, h), Image.BICUBIC).filter(ImageFilter.GaussianBlur(radius=max(1, scale // 2)))
    arr = np.asarray(img, dtype=float)
    return (arr - arr.mean()) / (arr.std() + 1e-9)


def _stroma(rng: np.random.Generator, h: int, w: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    fibres = _smooth_noise(rng, h, w, scale=3)
    e_conc = np.clip(0.7 * level * (1 + 0.3 * fibres), 0.05, None)
    h_conc = np.clip(0.08 + 0.04 * _smooth_noise(rng, h, w, scale=8), 0, None)
    return h_conc, e_conc


def _draw_nuclei(rng, h_conc, e_conc, magnification, size, density, malignant) -> None:
    h, w = h_conc.shape
    radius = _NUCLEUS_RADIUS[magnification] * w * size * (1.6 if malignant else 1.0)
    radius = max(radius, 1.2)
    coverage = (0.30 if malignant else 0.12) * density
    n = int(coverage * h * w / (np.pi * radius**2))
    darkness = 1.5 if malignant else 1.0
    spread = 0.45 if malignant else 0.12  # pleomorphism
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = radius * np.exp(rng.normal(0, spread))
        ecc = 1 + (rng.uniform(0, 0.8) if malignant else rng.uniform(0, 0.2))
        theta = rng.uniform(0, np.pi)
        y0, y1 = int(max(cy - 2 * r * ecc, 0)), int(min(cy + 2 * r * ecc + 1, h))
        x0, x1 = int(max(cx - 2 * r * ecc, 0)), int(min(cx + 2 * r * ecc + 1, w))
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / (r * ecc)
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / r
        inside = np.clip(1.2 - (u**2 + v**2), 0, 1) ** 0.5  # soft edge
        value = darkness * rng.uniform(0.8, 1.2)
        h_conc[y0:y1, x0:x1] = np.maximum(h_conc[y0:y1, x0:x1], value * inside)
        e_conc[y0:y1, x0:x1] *= 1 - 0.7 * inside
