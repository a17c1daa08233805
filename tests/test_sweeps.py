"""Sweeps: multirun directories, the SLURM plugin through its local launcher, Optuna, histo-compare."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from helpers import FAST, compose_config
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from histo import CONF_DIR
from histo.compare import main as compare
from histo.evaluation.run_dir import RunDir

TINY = [*FAST, "debug=limit", "trainer.max_epochs=1"]


def compare_main(root, *overrides) -> int:
    """``histo-compare root=<root> <overrides>`` in this process; its exit status."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("compare", [f"root={root}", *overrides])
    try:
        compare(cfg)
    except SystemExit as exit_:
        return exit_.code
    return 0


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
    assert compare_main(out, "sort=auroc", "sort_split=test") == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "compare.csv")
    assert sorted(table["seed"]) == [1, 2]
    assert "data.root" not in table.columns  # only the overrides that differ between runs
    assert table["auroc"].is_monotonic_decreasing
    inside = (table["auroc_low"] <= table["auroc"]) & (table["auroc"] <= table["auroc_high"])
    assert inside[table["auroc_low"].notna()].all()  # no interval (NaN): withheld, or every resample alike
    assert printed.count("_v1_b0 |") == 2 and "| seed |" in printed
    assert compare_main(out, "sort=loss") == 2
    assert capsys.readouterr().err.startswith("histo-compare: sort=loss is not a metric; use one of accuracy,")


def test_histo_compare_refuses_a_directory_without_runs(tmp_path, capsys):
    assert compare_main(tmp_path) == 2
    assert "No training run under" in capsys.readouterr().err


def test_a_sweep_over_finished_runs_is_refused_and_resume_true_keeps_them(seed_sweep, synthetic_root):
    out, runs = seed_sweep
    records = [RunDir(r).record_path.read_bytes() for r in runs]
    again = subprocess.run([sys.executable, "-m", "histo.train", "-m", *TINY, f"data.root={synthetic_root}",
                            f"hydra.sweep.dir={out}", "seed=1,2"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already holds finished runs (0_v1_b0, 1_v1_b0)" in again.stderr
    assert sweep(synthetic_root, out, "seed=1,2", "resume=true") == runs  # completes the sweep: nothing to do
    assert [RunDir(r).record_path.read_bytes() for r in runs] == records


def test_submitit_local_launcher_runs_a_two_job_sweep(synthetic_root, tmp_path, capsys):
    """The SLURM plugin's local launcher: the same job-array code path, on this machine."""
    runs = sweep(synthetic_root, tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                 "model=v1_b0,v2_b0")
    assert [RunDir(r).record()["model"] for r in runs] == ["v1_b0", "v2_b0"]
    assert list(tmp_path.glob(".submitit/*/*_log.out"))  # submitit ran them as jobs

    # histo-compare of a model sweep: the model column once, although `model` is the override that differs
    assert compare_main(tmp_path) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("| run | model | n_images |") and header.count("| model |") == 1
    assert list(pd.read_csv(tmp_path / "compare.csv").columns[:4]) == ["run", "model", "state", "n_images"]


def test_slurm_and_optuna_configs_compose(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        slurm = compose("train", ["hydra/launcher=slurm"], return_hydra_config=True)
        optuna = compose("train", ["hparams_search=optuna"], return_hydra_config=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
    assert slurm.hydra.launcher.array_parallelism == 10 and slurm.hydra.launcher.gpus_per_node == 1
    assert optuna.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert optuna.optimized_metric == "val/balanced_accuracy" and optuna.hydra.sweeper.direction == "maximize"
    assert compose_config("train", [], tmp_path).get("optimized_metric") is None


def test_histo_compare_sorts_by_val_unless_asked(tmp_path, capsys):
    # Sorting by test picks the winner on the numbers it then reports; the default ranks by val.
    from histo.evaluation.run_comparison import comparison
    for name, val, test in [("a", 0.9, 0.6), ("b", 0.7, 0.8), ("c", 0.8, 0.7)]:
        scores = {split: {"overall": {"n_images": 10, "balanced_accuracy": v}} for split, v in (("val", val), ("test", test))}
        RunDir(tmp_path / name).write_record({"model": "v1_b0", "metrics": scores})
    assert comparison(tmp_path)["run"].tolist() == ["a", "c", "b"]
    assert comparison(tmp_path, sort_split="test")["run"].tolist() == ["b", "c", "a"]
    assert compare_main(tmp_path) == 0
    assert "sorted by val balanced_accuracy" in (tmp_path / "compare.md").read_text()
    assert compare_main(tmp_path, "sort_split=test") == 0
    assert pd.read_csv(tmp_path / "compare.csv")["run"].tolist() == ["b", "c", "a"]
