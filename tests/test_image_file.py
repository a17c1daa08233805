"""Reading image files and in-memory images as RGB uint8: one decoder for every stage, clear reasons when not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from histo.data.image_file import ImageReadError, read_rgb, to_rgb


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    smooth = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (160, 120), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(smooth)


def test_formats_and_modes_decode_to_the_same_rgb(rgb, tmp_path):
    for name in ("a.png", "a.tif", "a.bmp"):
        Image.fromarray(rgb).save(tmp_path / name)
        assert np.array_equal(read_rgb(tmp_path / name), rgb), name
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "alpha.png")
    cv2.imwrite(str(tmp_path / "sixteen.png"), (rgb.astype(np.uint16) * 257)[:, :, ::-1])
    for name in ("alpha.png", "sixteen.png"):
        assert np.array_equal(read_rgb(tmp_path / name), rgb), name
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    gray = read_rgb(tmp_path / "gray.png")
    assert gray.shape == rgb.shape and (gray[:, :, 0] == gray[:, :, 2]).all()
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    assert np.abs(read_rgb(tmp_path / "a.jpg").astype(int) - rgb).mean() < 3


def test_in_memory_images_convert_as_files_do(rgb, tmp_path):
    assert np.array_equal(to_rgb(Image.fromarray(rgb).convert("RGBA")), rgb)
    assert np.array_equal(to_rgb(rgb.astype(np.uint16) * 257), rgb)
    palette = Image.fromarray(rgb).convert("P")
    palette.save(tmp_path / "p.png")
    assert np.array_equal(to_rgb(palette), read_rgb(tmp_path / "p.png"))
    assert to_rgb(rgb[:, :, 0]).shape == rgb.shape
    with pytest.raises(ImageReadError, match="expected uint8 or uint16 pixels, got float64"):
        to_rgb(rgb / 255.0)
    with pytest.raises(ImageReadError, match=r"got shape \(120, 160, 2\)"):
        to_rgb(rgb[:, :, :2])


def test_unreadable_files_give_a_reason_naming_the_file(rgb, tmp_path):
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:-200])  # cv2.imread would return this grey-filled without an error
    Image.fromarray(rgb).save(tmp_path / "a.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "a.png").read_bytes()[:500])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    cases = {"cut.jpg": "truncated", "cut.png": "truncated", "empty.png": "empty",
             "text.png": "not an image", "missing.png": "cannot be opened"}
    for name, reason in cases.items():
        with pytest.raises(ImageReadError, match=reason) as error:
            read_rgb(tmp_path / name)
        assert str(tmp_path / name) in str(error.value) and reason in error.value.reason
    with pytest.raises(ImageReadError, match=r"too large \(160 x 120 pixels; the limit is 1,000\)"):
        read_rgb(tmp_path / "a.png", max_pixels=1000)


def test_stain_normalization_reads_images_without_the_training_dataset():
    """Image reading is its own module: histo.stain no longer imports histo.data.dataset, whose transforms
    import histo.stain (the import cycle issue 15 names)."""
    code = "import sys, histo.stain.methods; print('histo.data.dataset' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]
