"""Shared fixtures: a small synthetic BreaKHis tree, the real sample when present, two trained runs, and one
`make paper-smoke` output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import REAL_SAMPLE, REPO, SMALL_SPEC, train_config

from histo.data.synthetic import write_dataset


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A synthetic BreaKHis tree: 16 patients (2 per subtype), 2 images per magnification, 64x42 px."""
    return write_dataset(tmp_path_factory.mktemp("data") / "BreaKHis_v1", SMALL_SPEC)


@pytest.fixture(scope="session")
def real_root() -> Path:
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"the real BreaKHis sample is not at {REAL_SAMPLE}")
    return REAL_SAMPLE



@pytest.fixture(scope="session")
def trained_runs(synthetic_root, tmp_path_factory) -> list[Path]:
    """Two finished one-epoch runs (V1-B0 and V2-B0) on the same patient split, with features saved.

    For tests of every stage after training (ensemble, explain, report): read-only, do not modify.
    """
    from histo.train import train

    runs = []
    for model in ("v1_b0", "v2_b0"):
        out = tmp_path_factory.mktemp(f"run_{model}")
        cfg = train_config(out, synthetic_root, f"model={model}", "split=patient", "trainer.max_epochs=1",
                           "predict.features=true")
        train(cfg)
        runs.append(out)
    return runs


@pytest.fixture(scope="session")
def paper_smoke(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`make paper-smoke` run once (minutes): its output directory and the finished process. Read-only."""
    out = tmp_path_factory.mktemp("paper") / "smoke"
    result = subprocess.run(["make", "-C", str(REPO), "paper-smoke", f"OUT={out}"], capture_output=True, text=True,
                            timeout=3600)  # minutes on a quiet machine; generous for a busy one
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result
