"""Time histo-app from upload to result in a real headless Chromium, against the Predictor alone; prints a table.

    .venv/bin/python scripts/bench_app.py [--runs a,b] [--models v1_b0,v2_b0] [--size 224] [--n 1,20]
                                          [--repeats 3] [--shots <dir>]

The app serves a soft-voting ensemble of ``--runs`` (default: untrained runs of ``--models`` at ``--size``:
speed does not depend on the weights) on CPU. For each count in ``--n`` the page uploads that many real
BreaKHis sample images (700x460; synthetic ones when the sample is absent), presses Analyse and waits for
the first image's verdict, which comes after every image was predicted and the first one's Grad-CAM drawn.
The baseline is the same Predictor called in-process on the same files (what histo-predict does), so the
difference is the page: upload, the Grad-CAM of the shown image, drawing. ``--shots`` keeps a 1280 px
screenshot of each result. Needs Playwright and Debian's /usr/bin/chromium (see tests/browser.py).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "scripts")]

from bench_predict import _images, untrained_run  # noqa: E402
from browser import chromium, free_port, wait_for_http  # noqa: E402

from histo.predict import Predictor  # noqa: E402


def page_seconds(page, url: str, files: list[str], shot: Path | None) -> float:
    """Seconds from choosing ``files`` in the upload box to the first one's verdict on a fresh page."""
    page.goto(url)
    page.wait_for_selector("#histo-analyse", timeout=300_000)
    started = time.perf_counter()
    page.set_input_files("#histo-upload input[type=file]", files)
    page.click("#histo-analyse")
    page.wait_for_selector(f"#histo-verdict .histo-image-name:text-is('{Path(files[0]).name}')", timeout=600_000)
    seconds = time.perf_counter() - started
    if shot is not None:
        page.screenshot(path=str(shot), full_page=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="", help="comma-separated run directories (default: untrained --models)")
    parser.add_argument("--models", default="v1_b0,v2_b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", default="1,20", help="comma-separated image counts per upload")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shots", type=Path, default=None, help="keep a screenshot of each result here")
    args = parser.parse_args()
    counts = [int(n) for n in args.n.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = ([Path(r) for r in args.runs.split(",")] if args.runs else
                [untrained_run(tmp / m, m, args.size) for m in args.models.split(",")])
        paths = _images(None, tmp, 0)
        predictor = Predictor.from_runs(runs, device="cpu")
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "histo.app", f"runs=[{','.join(map(str, runs))}]",
                                   f"server.port={port}", "device=cpu", f"hydra.run.dir={tmp / 'app'}"],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{port}/"
        rows = []
        try:
            wait_for_http(url, server)
            with chromium(width=1280, height=1000) as page:
                page_seconds(page, url, paths[-1:], None)  # warm-up: first request, kernels
                for n in counts:
                    files = paths[:n]
                    app, direct = [], []
                    for r in range(args.repeats):
                        shot = args.shots / f"app_{n}.png" if args.shots and r == 0 else None
                        if shot:
                            shot.parent.mkdir(parents=True, exist_ok=True)
                        app.append(page_seconds(page, url, files, shot))
                        started = time.perf_counter()
                        predictor.run(files, num_workers=0)
                        direct.append(time.perf_counter() - started)
                    rows.append((n, statistics.median(direct), statistics.median(app)))
        finally:
            server.terminate()
            server.wait(timeout=60)

    members = ", ".join(m.name for m in predictor.members)
    print(f"# histo-app on CPU: soft voting of {members} at {predictor.members[0].input.image_size} px, "
          f"{args.repeats} repeats (medians)\n")
    print("| images | Predictor alone (s) | app, upload to result (s) | app overhead (s) |")
    print("|---|---|---|---|")
    for n, direct, app in rows:
        print(f"| {n} | {direct:.2f} | {app:.2f} | {app - direct:.2f} |")


if __name__ == "__main__":
    main()
