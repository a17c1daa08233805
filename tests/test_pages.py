"""The report and the explain index in a real browser (headless Chromium through Playwright): nothing wider
than the window, every picture loaded, every table and figure inside the window.

Chromium is Debian's (``apt-get install chromium``; Playwright's own browser download is not used); the test
skips, saying why, where either is missing. ``HISTO_SCREENSHOTS=<dir>`` also saves screenshots there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import launch

from histo.ensemble.stage import run_ensemble
from histo.report.gallery import GallerySettings
from histo.report.stage import run_report

WIDTHS = (1280, 1920)
LAYOUT = """() => {
  const width = window.innerWidth;
  const outside = [...document.querySelectorAll('table, figure, img, .card, .image')]
    .filter(e => e.getBoundingClientRect().right > width + 0.5)
    .map(e => `${e.tagName.toLowerCase()}.${e.className} (right edge ${Math.round(e.getBoundingClientRect().right)})`);
  const images = [...document.images];
  return {
    scrollWidth: document.documentElement.scrollWidth, innerWidth: width, outside,
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    plotScale: [...document.querySelectorAll('img.plot, img.montage')]
      .map(i => i.getBoundingClientRect().width / i.naturalWidth),
    tables: document.querySelectorAll('table').length,
  };
}"""


@pytest.fixture(scope="session")
def browser():
    """A headless Debian Chromium, driven by Playwright (tests/browser.py)."""
    with launch() as chromium:
        yield chromium


def _open(browser, page_path: Path, width: int, shots: list[tuple[str, str]] = ()) -> dict:
    """Load ``page_path`` at ``width`` px and measure its layout; save the ``shots`` (name, CSS selector)."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        layout = page.evaluate(LAYOUT)
        where = os.environ.get("HISTO_SCREENSHOTS")
        for name, selector in shots if where and width == WIDTHS[0] else ():
            Path(where).mkdir(parents=True, exist_ok=True)
            page.evaluate(f"document.querySelector({selector!r}).scrollIntoView()")
            page.screenshot(path=str(Path(where) / f"{name}.png"))
        return layout
    finally:
        page.close()


def _assert_fits(layout: dict, what: str) -> None:
    assert layout["scrollWidth"] <= layout["innerWidth"], f"{what} scrolls sideways: {layout}"
    assert not layout["outside"], f"{what}: wider than the window: {layout['outside']}"
    assert layout["images"] > 0 and not layout["broken"], f"{what}: images not loaded: {layout['broken']}"


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_paper_smoke_report_and_explain_index_fit_the_window(browser, paper_smoke, width):
    out, _ = paper_smoke
    report = _open(browser, out / "report" / "report.html", width, [
        ("report_top", "h1"), ("report_metrics", "#metrics"), ("report_curves", "#curves"), ("report_roc", "#roc"),
        ("report_magnification", "#magnification"), ("report_patient", "#patient"), ("report_gallery", "#gallery")])
    _assert_fits(report, f"report.html of make paper-smoke (28 rows) at {width} px")
    assert report["tables"] >= 1
    if width == WIDTHS[0]:
        assert min(report["plotScale"]) > 0.99, "a plot is shrunk at 1280 px: its text gets small"
    index = _open(browser, out / "ensembles" / "all" / "explain" / "index.html", width, [("explain_index", "h1")])
    _assert_fits(index, f"explain index.html (10 models) at {width} px")
    assert min(index["plotScale"]) > 0.9, "montages are shrunk: their text gets unreadable"


@pytest.mark.slow
def test_a_three_row_report_fits_the_window(browser, trained_runs, tmp_path):
    ensemble = tmp_path / "ensemble"
    run_ensemble(trained_runs, ensemble, methods=["soft"], name="pair", resamples=0)
    page = run_report([ensemble], tmp_path / "report", resamples=0, gallery=GallerySettings(max_images=4))
    for width in WIDTHS:
        _assert_fits(_open(browser, page, width), f"a 3-row report at {width} px")
