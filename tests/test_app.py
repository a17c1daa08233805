"""histo-app end to end in a real headless Chromium: an upload shows histo-predict's class and probabilities
and offers its CSV, a corrupt file gets a message and the next upload still works, and the page fetches
nothing from outside the machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from browser import chromium, free_port, screenshot_dir, wait_for_http

from histo.app.views import DIGITS
from histo.predict.stage import run_predict


@pytest.fixture(scope="module")
def app(trained_runs, tmp_path_factory):
    """histo-app on the two fixture runs, on a free port; stopped after the module."""
    port = free_port()
    out = tmp_path_factory.mktemp("app")
    process = subprocess.Popen(
        [sys.executable, "-m", "histo.app", f"runs=[{trained_runs[0]},{trained_runs[1]}]", f"server.port={port}",
         "device=cpu", "cam_layer=blocks.2", f"hydra.run.dir={out}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def _sample(real_root: Path, tumor: str) -> Path:
    return sorted((real_root / "histology_slides" / "breast" / tumor).rglob("*.png"))[0]


def _shown(page) -> dict:
    """What the verdict and the members' bars say, as numbers."""
    verdict = page.locator("#histo-verdict")
    probs = {el.get_attribute("data-class"): float(el.locator("b").inner_text())
             for el in verdict.locator(".histo-prob").all()}
    members = {(el.get_attribute("data-member"), el.get_attribute("data-class")): float(el.inner_text())
               for el in page.locator("#histo-bars .histo-bar-value").all()}
    return {"pred": verdict.locator(".histo-class").get_attribute("data-pred"), "probs": probs, "members": members}


def _analyse(page, files: list[Path], expect: str) -> None:
    page.set_input_files("#histo-upload input[type=file]", [str(f) for f in files])
    page.click("#histo-analyse")
    page.wait_for_selector(expect, timeout=180_000)


def _expected(table: pd.DataFrame, row: int) -> dict:
    r = table.iloc[row]
    members = {(m, c): round(r[f"{m}.prob_{c}"], DIGITS) for m in ("v1_b0", "v2_b0") for c in ("benign", "malignant")}
    return {"pred": r["pred"], "probs": {c: round(r[f"prob_{c}"], DIGITS) for c in ("benign", "malignant")},
            "members": members}


def test_upload_shows_histo_predict_numbers_and_survives_a_corrupt_file(app, trained_runs, real_root, tmp_path):
    malignant, benign = _sample(real_root, "malignant"), _sample(real_root, "benign")
    expected = run_predict([str(malignant), str(benign)], tmp_path / "predict", runs=trained_runs, device="cpu",
                           num_workers=0, resamples=0, progress=False).table
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(malignant.read_bytes()[:5000])
    shots = screenshot_dir(tmp_path, "app")
    outside = []
    with chromium(width=1280, height=1000) as page:
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((app, "data:", "blob:")) else None)
        page.goto(app)
        page.wait_for_selector("#histo-analyse", timeout=120_000)
        assert "not be used for diagnosis" in page.inner_text("#histo-notice")

        _analyse(page, [malignant], f"#histo-verdict .histo-image-name:text-is('{malignant.name}')")
        assert _shown(page) == _expected(expected, 0)
        with page.expect_download() as download:
            page.click("#histo-download")
        offered = pd.read_csv(download.value.path())
        written = pd.read_csv(tmp_path / "predict" / "predictions.csv")
        assert offered["image"].tolist() == [malignant.name]
        pd.testing.assert_frame_equal(offered.drop(columns="image"), written.iloc[:1].drop(columns="image"))
        page.screenshot(path=str(shots / "malignant.png"), full_page=True)

        page.reload()
        page.wait_for_selector("#histo-analyse", timeout=120_000)
        _analyse(page, [corrupt], "#histo-status .histo-problems")
        assert "corrupt.png" in page.inner_text("#histo-status") and "truncated" in page.inner_text("#histo-status")
        page.screenshot(path=str(shots / "corrupt.png"), full_page=True)
        _analyse(page, [benign], f"#histo-verdict .histo-image-name:text-is('{benign.name}')")
        assert _shown(page) == _expected(expected, 1)
        page.screenshot(path=str(shots / "benign.png"), full_page=True)
    assert outside == []
