"""The synthetic BreaKHis: valid names, H&E colour from known stains, learnable classes, determinism."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np

from histo.data.breakhis import build_index, parse_name
from histo.data.image_file import read_rgb
from histo.data.synthetic import SyntheticSpec, write_dataset


def digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_same_spec_same_bytes(tmp_path):
    spec = SyntheticSpec(patients_per_subtype=1, images_per_magnification=1, width=40, height=30, seed=5)
    a = digest(write_dataset(tmp_path / "a", spec))
    assert a == digest(write_dataset(tmp_path / "b", spec))
    assert a != digest(write_dataset(tmp_path / "c", SyntheticSpec(**{**vars(spec), "seed": 6})))


def test_parallel_writing_gives_the_same_bytes(tmp_path):
    spec = SyntheticSpec(patients_per_subtype=1, images_per_magnification=1, width=40, height=30, seed=5)
    serial = write_dataset(tmp_path / "serial", spec)
    parallel = write_dataset(tmp_path / "parallel", spec, workers=2)
    assert digest(serial) == digest(parallel) and len(digest(parallel)) == 32
    assert (serial / "synthetic.json").read_bytes() == (parallel / "synthetic.json").read_bytes()


def test_layout_names_and_stains(synthetic_root):
    meta = json.loads((synthetic_root / "synthetic.json").read_text())
    pngs = list(synthetic_root.rglob("*.png"))
    assert all(parse_name(p.name) is not None for p in pngs)
    assert {p.parent.name for p in pngs} == {"40X", "100X", "200X", "400X"}
    assert all(p.relative_to(synthetic_root).parts[:3] == ("histology_slides", "breast", p.parts[-6])
               for p in pngs)
    stains = np.array([p["stains"] for p in meta["patients"]])
    assert stains.shape == (16, 2, 3)
    assert np.allclose(np.linalg.norm(stains, axis=2), 1, atol=1e-5)
    assert len({tuple(s.ravel().round(3)) for s in stains}) == 16  # every patient has its own stains


def test_colour_is_beer_lambert_mixing_of_the_patient_stains(synthetic_root):
    """Optical densities of tissue pixels lie in the plane spanned by the patient's H and E vectors."""
    meta = json.loads((synthetic_root / "synthetic.json").read_text())
    patient = meta["patients"][0]
    image = next(p for p in synthetic_root.rglob("*.png") if patient["slide"] in p.name)
    od = -np.log((read_rgb(image).reshape(-1, 3).astype(float) + 1) / 256)
    od = od[od.sum(axis=1) > 0.6]  # tissue, away from the noise floor
    basis = np.linalg.qr(np.asarray(patient["stains"]).T)[0]
    residual = od - od @ basis @ basis.T
    assert np.median(np.linalg.norm(residual, axis=1) / np.linalg.norm(od, axis=1)) < 0.1


def test_malignant_tissue_has_more_nuclei(synthetic_root):
    index = build_index(synthetic_root)

    def dark_share(tumor):
        paths = index.frame.loc[index.frame["tumor"] == tumor, "image"]
        return np.mean([(read_rgb(synthetic_root / p).mean(axis=2) < 120).mean() for p in paths])

    assert dark_share("malignant") > 2 * dark_share("benign")


def test_histo_synth_command(tmp_path):
    out = tmp_path / "tree"
    result = subprocess.run(
        [sys.executable, "-m", "histo.synth", f"out={out}", "patients_per_subtype=1",
         "images_per_magnification=1", "width=32", "height=24"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(build_index(out).frame) == 8 * 4
    assert "histo.train data.root=" in result.stderr + result.stdout
