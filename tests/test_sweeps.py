"""Sweeps: multirun directories, the SLURM plugin through its local launcher, Optuna, histo-compare."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from helpers import FAST, compose_config

from histo.compare import main as compare_main
from histo.evaluation.run_dir import RunDir

TINY = [*FAST, "debug=limit", "trainer.max_epochs=1"]


def sweep(root, out, *overrides):
    result = subprocess.run(
        [sys.executable, "-m", "histo.train", "-m", *TINY, f"data.root={root}", f"hydra.sweep.dir={out}", *overrides],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sorted(p.parent for p in out.rglob("run.json"))


@pytest.fixture(scope="module")
def seed_sweep(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return out, sweep(synthetic_root, out, "seed=1,2")


def test_multirun_gives_each_run_its_own_directory(seed_sweep):
    out, runs = seed_sweep
    assert [r.name for r in runs] == ["0_v1_b0", "1_v1_b0"]
    records = [RunDir(r).record() for r in runs]
    assert [r["seed"] for r in records] == [1, 2]
    assert records[0]["split"]["fingerprint"] == records[1]["split"]["fingerprint"]


def test_histo_compare_tables_the_runs(seed_sweep, capsys):
    out, _ = seed_sweep
    assert compare_main([str(out), "--sort", "auroc"]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "compare.csv")
    assert sorted(table["seed"]) == [1, 2]
    assert "data.root" not in table.columns  # only the overrides that differ between runs
    assert table["auroc"].is_monotonic_decreasing
    assert (table["auroc_low"] <= table["auroc"]).all() and (table["auroc"] <= table["auroc_high"]).all()
    assert printed.count("_v1_b0 |") == 2 and "| seed |" in printed
    with pytest.raises(SystemExit):
        compare_main([str(out), "--sort", "loss"])


def test_histo_compare_refuses_a_directory_without_runs(tmp_path, capsys):
    assert compare_main([str(tmp_path)]) == 2
    assert "No training run under" in capsys.readouterr().err


def test_a_sweep_over_finished_runs_is_refused_and_resume_true_keeps_them(seed_sweep, synthetic_root):
    out, runs = seed_sweep
    records = [RunDir(r).record_path.read_bytes() for r in runs]
    again = subprocess.run([sys.executable, "-m", "histo.train", "-m", *TINY, f"data.root={synthetic_root}",
                            f"hydra.sweep.dir={out}", "seed=1,2"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already holds finished runs (0_v1_b0, 1_v1_b0)" in again.stderr
    assert sweep(synthetic_root, out, "seed=1,2", "resume=true") == runs  # completes the sweep: nothing to do
    assert [RunDir(r).record_path.read_bytes() for r in runs] == records


def test_submitit_local_launcher_runs_a_two_job_sweep(synthetic_root, tmp_path):
    """The SLURM plugin's local launcher: the same job-array code path, on this machine."""
    runs = sweep(synthetic_root, tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                 "model=v1_b0,v2_b0")
    assert [RunDir(r).record()["model"] for r in runs] == ["v1_b0", "v2_b0"]
    assert list(tmp_path.glob(".submitit/*/*_log.out"))  # submitit ran them as jobs


def test_slurm_and_optuna_configs_compose(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from histo import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        slurm = compose("train", ["hydra/launcher=slurm"], return_hydra_config=True)
        optuna = compose("train", ["hparams_search=optuna"], return_hydra_config=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
    assert slurm.hydra.launcher.array_parallelism == 10 and slurm.hydra.launcher.gpus_per_node == 1
    assert optuna.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert optuna.optimized_metric == "val/balanced_accuracy" and optuna.hydra.sweeper.direction == "maximize"
    assert compose_config("train", [], tmp_path).get("optimized_metric") is None
