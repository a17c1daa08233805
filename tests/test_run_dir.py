"""Run directory integrity (issue 13): one writer per run directory, a finished run never overwritten unasked,
prediction files checked against run.json by every reader, and histo-compare listing every run with its state."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import FAST, train_config

from histo import CONF_DIR
from histo.ensemble.members import EnsembleError, load_members
from histo.ensemble.stage import run_ensemble
from histo.evaluation.predictions import PredictionFileError
from histo.evaluation.run_comparison import comparison, to_markdown
from histo.evaluation.run_dir import RunDir
from histo.evaluation.run_lock import RunDirBusy, RunLock, holder
from histo.explain.errors import ExplainError
from histo.explain.runs import load_runs
from histo.explain.selection import prediction_frames
from histo.report.gallery import GallerySettings
from histo.report.sources import ReportError, load_rows
from histo.report.stage import run_report
from histo.run_start import RunDirRefused, claim
from histo.train import train

REPO = Path(CONF_DIR).parent
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


# ----- one writer per run directory -----

@pytest.mark.slow
def test_two_trainings_into_one_directory_one_is_refused_the_other_intact(synthetic_root, tmp_path):
    run_dir, go = tmp_path / "run", tmp_path / "go"
    args = [sys.executable, "-m", "histo.train", *FAST, f"data.root={synthetic_root}", f"hydra.run.dir={run_dir}",
            "debug=limit", "trainer.max_epochs=1"]
    first = subprocess.Popen([*args, "+callbacks.wait._target_=helpers.WaitForFile", f"+callbacks.wait.path={go}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    try:
        deadline = time.time() + 300
        while not RunDir(run_dir).last_checkpoint_path.is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)  # the first run is now waiting at the end of its first epoch, holding the lock
        assert first.poll() is None, first.communicate()[1][-2000:]
        before = {p: p.read_bytes() for p in [*run_dir.glob(".hydra/*"), run_dir / "csv" / "metrics.csv"]}
        second = subprocess.run(args, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
        assert second.returncode == 2
        message = second.stderr.strip().splitlines()
        assert len(message) == 1 and "is in use" in message[0] and f"PID {first.pid}" in message[0]
        assert {p: p.read_bytes() for p in before} == before  # the second command did not touch the run
    finally:
        go.touch()
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    run = RunDir(run_dir)
    assert run.state().name == "finished" and not (run_dir / "run.lock").exists()
    metrics = pd.read_csv(run_dir / "csv" / "metrics.csv")  # one header, every row of its width
    assert list(metrics.dropna(subset=["val/accuracy"])["epoch"]) == [0]
    assert "+callbacks.wait.path" in " ".join(yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()))


def test_a_lock_names_its_holder_and_a_dead_writers_lock_is_taken_over(tmp_path, caplog):
    with RunLock(tmp_path) as lock:
        assert holder(tmp_path).pid == os.getpid()
        with pytest.raises(RunDirBusy, match=f"in use: another training run \\(PID {os.getpid()} on .*, started 20"):
            RunLock(tmp_path).acquire()
    assert lock.taken_over is None and holder(tmp_path) is None and not (tmp_path / "run.lock").exists()

    (tmp_path / "run.lock").write_text(json.dumps({"pid": 999999, "host": "old-host", "started": "2020-01-01"}))
    assert holder(tmp_path) is None  # a lock file nobody holds: its writer died (kill -9)
    with RunLock(tmp_path) as lock:
        assert lock.taken_over.pid == 999999
    assert "Took over the stale lock" in caplog.text and "PID 999999 on old-host" in caplog.text


def test_a_finished_run_is_refused_unless_resumed_or_overwritten(trained_runs, synthetic_root, tmp_path):
    run_dir = copy_run(trained_runs[0], tmp_path / "run")
    with pytest.raises(RunDirRefused, match="holds a finished run.*overwrite=true"):
        train(train_config(run_dir, synthetic_root))
    assert train(train_config(run_dir, synthetic_root, "resume=true")) == RunDir(run_dir).record()  # nothing to do
    (run_dir / "notes.txt").write_text("mine")
    with claim(RunDir(run_dir), overwrite=True) as claimed:
        assert claimed.mode == "fresh"
        assert not [p for p in ("run.json", "predictions", "checkpoints", "csv", "split.csv") if (run_dir / p).exists()]
    assert (run_dir / "notes.txt").read_text() == "mine"  # only a run's own outputs are deleted


def test_a_command_that_fails_before_training_leaves_nothing_behind(synthetic_root, tmp_path):
    # fails where the trainer is made: after split.csv and stain_target.json are written
    with pytest.raises(Exception, match="no_such_option"):
        train(train_config(tmp_path / "new", synthetic_root, "stain=reinhard", "stain.target=auto",
                           "+trainer.no_such_option=1"))
    assert not (tmp_path / "new").exists()


# ----- prediction files checked against run.json -----

@pytest.fixture
def runs(trained_runs, tmp_path) -> list[Path]:
    return [copy_run(run, tmp_path / f"run{i}") for i, run in enumerate(trained_runs)]


def cut(path: Path, lines: int) -> None:
    """``head -n <lines>`` in place."""
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:lines]))


def test_a_cut_prediction_file_is_named_by_every_reader(runs):
    recorded = RunDir(runs[1]).record()["files"]["predictions/test.csv"]["rows"]
    cut(runs[1] / "predictions" / "test.csv", 10)
    message = f"test.csv has 9 rows but run.json records {recorded}"
    with pytest.raises(PredictionFileError, match=message):
        RunDir(runs[1]).read_predictions("test")
    with pytest.raises(EnsembleError, match=message):
        load_members(runs)
    with pytest.raises(ReportError, match=message):
        load_rows(runs)
    with pytest.raises(ExplainError, match=message):
        prediction_frames(load_runs(runs), "test")
    state = RunDir(runs[1]).state()
    assert state.name == "broken" and message in state.detail


def test_an_edited_prediction_file_is_refused(runs):
    path = runs[0] / "predictions" / "val.csv"
    frame = pd.read_csv(path)
    frame.loc[0, "logit_benign"] += 1.0
    frame.to_csv(path, index=False, lineterminator="\n")
    with pytest.raises(PredictionFileError, match="val.csv is not the file run.json records .*sha256"):
        RunDir(runs[0]).read_predictions("val")


def test_histo_compare_lists_unfinished_and_broken_runs_with_their_state(runs, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for i, run in enumerate(runs):
        run.rename(sweep / run.name)
        hydra = sweep / run.name / ".hydra"
        hydra.mkdir()
        (hydra / "overrides.yaml").write_text(yaml.safe_dump(["model=v2_b0"] if i else []))
        (hydra / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {
            "model": "v2_b0" if i else "v1_b0"}}}}))
    damaged = copy_run(sweep / "run1", sweep / "run2")
    (damaged / "run.json").write_text('{"model": "v2_b0", "metrics": ')
    interrupted = copy_run(sweep / "run1", sweep / "run3")
    (interrupted / "run.json").unlink()

    frame = comparison(sweep)
    state = dict(zip(frame["run"], frame["state"], strict=True))
    assert state["run0"] == "finished" and state["run1"] == "finished"
    assert state["run2"].startswith(f"broken: {damaged / 'run.json'} is damaged: not valid JSON")
    assert state["run3"].startswith("interrupted: after 1 epoch(s); continue it with resume=true")
    assert set(frame["run"][:2]) == {"run0", "run1"} and frame["accuracy"][2:].isna().all()  # finished first
    assert dict(zip(frame["run"], frame["model"], strict=True))["run0"] == "v1_b0"  # the default model, not blank
    table = to_markdown(frame)
    assert "| run0 | v1_b0 | finished |" in table and "| run3 | v2_b0 | interrupted" in table
    assert table.splitlines()[0].startswith("| run | model | state | n_images |")  # the model override: one column


# ----- degenerate splits -----

def test_a_degenerate_run_is_flagged_in_every_table(runs, tmp_path):
    problem = "the val split has no malignant images"
    for run in runs:
        record = RunDir(run).record()
        RunDir(run).write_record({**record, "degenerate": [problem]})
    table = to_markdown(comparison(tmp_path, sort_by="accuracy"))
    assert f"finished: degenerate (allow_degenerate=true): {problem}" in table
    ensemble = run_ensemble(runs, tmp_path / "ens", methods=["soft"], resamples=0)
    assert all(m["warnings"] for m in ensemble["members"].values())
    assert f"**Warning**: member v1_b0: degenerate (allow_degenerate=true): {problem}" in (
        tmp_path / "ens" / "table.md").read_text()
    run_report([tmp_path / "ens"], tmp_path / "report", resamples=0, gallery=GallerySettings(max_images=0))
    assert f"V1-B0: degenerate (allow_degenerate=true): {problem}" in (tmp_path / "report" / "report.md").read_text()


def test_a_training_log_two_writers_mixed_is_named_by_the_report(runs, tmp_path):
    log = runs[0] / "csv" / "metrics.csv"
    header = log.read_text().splitlines()[0].split(",")
    short, wide = ",".join(["1"] * 10), ",".join(["1"] * len(header))
    log.write_text(f"{','.join(header[:10])}\n{short}\n{wide}\n")  # a 10-field header over wider rows
    with pytest.raises(ReportError, match=f"{log}, the training log of {runs[0]}, cannot be read: .*Expected 10 fields"):
        run_report([runs[0]], tmp_path / "report", resamples=0, gallery=GallerySettings(max_images=0))
