"""scripts/gpu_check.py: its dry run measures every part on a CPU; its runner survives a failing part and skips
what does not fit in the budget, saying so."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
PARTS = ["environment", "data", "training", "loader", "stain", "predict", "compile", "projection"]


def gpu_check_module():
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPTS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_measures_every_part(tmp_path):
    out = tmp_path / "report" / "gpu_check.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    text, results = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert {name: r["status"] for name, r in results.items()} == dict.fromkeys(PARTS, "done"), text
    assert "FAILED" not in text and "not measured" not in text
    assert text in done.stdout and "**Dry run**" in text

    assert results["data"]["images"] == 64 and results["data"]["prepare_rate"] > 0
    training = results["training"]["models"]
    assert results["training"]["configs"] == ["fp32", "bf16-mixed", "bf16-mixed + channels_last"]
    for model in ("v1_b0", "v2_b0"):
        for config in results["training"]["configs"]:
            assert training[model][config]["rate"] > 0 and training[model][config]["eval_rate"] > 0
        assert f"| {model} | 32 |" in text
    loader = results["loader"]["rows"]
    assert list(loader) == ["in-memory batches (no loader work: the baseline)", "image cache, num_workers=0",
                            "image cache, num_workers=2"]
    assert all(r["rate"] > 0 and 0 <= r["wait_share"] < 1 and r["utilisation"] is None for r in loader.values())
    stain = {(r["library"], r["method"]): r for r in results["stain"]["rows"]}
    peer = importlib.util.find_spec("torch_staintools") is not None  # in the bench extra, not in dev
    assert set(stain) == {("histo", "vahadane"), ("histo", "macenko"), ("histo", "reinhard"),
                          *([("torch-staintools", "vahadane"), ("torch-staintools", "macenko")] if peer else [])}
    assert all(r["rate"] > 0 for r in stain.values())
    assert not peer or stain["torch-staintools", "vahadane"]["cached_rate"] > 0
    predict = results["predict"]
    assert predict["precisions"] == ["fp32", "bf16-mixed"] and predict["images"] == 6
    assert predict["workers"] == (2 if (os.cpu_count() or 1) >= 2 else 0)  # the most of DRY.workers the cores allow
    for model in ("v1_b0", "v2_b0"):
        assert all(predict["models"][model][p]["rate"] > 0 for p in predict["precisions"])
        assert predict["forward_only_rate"][model] > 0
    predict_rows = text.split("## histo-predict images/s")[1].split("\n## ")[0]
    assert all(f"| {model} | 32 | " in predict_rows for model in ("v1_b0", "v2_b0")), predict_rows
    compiled = results["compile"]["models"]
    assert not results["compile"]["killed"] and results["compile"]["exit_code"] == 0
    assert all(compiled[m][mode]["rate"] > 0 for m in ("v1_b0", "v2_b0") for mode in ("False", "True"))
    assert "| fp32 | make paper | incomplete: 2 of 10 models measured (" in text  # the dry run trains two of ten


def test_runner_reports_a_failure_and_skips_parts_out_of_budget(tmp_path):
    gpu_check = gpu_check_module()

    def fails(ctx, budget):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def works(ctx, budget):
        return gpu_check.Section(["worked"], {"budget_left": budget.left()})

    parts = [gpu_check.Part("first", fails, 1), gpu_check.Part("second", works, 1), gpu_check.Part("third", works, 1)]
    ctx = gpu_check.Context(torch.device("cpu"), gpu_check.DRY, tmp_path)
    reports = []

    def report(done, running):
        reports.append((list(done), running))

    plenty = time.monotonic() - gpu_check.START + gpu_check.RESERVE_S + 90
    done = gpu_check.run_parts(parts, ctx, plenty, report)
    assert [ctx.results[p]["status"] for p in ("first", "second", "third")] == ["failed", "done", "done"]
    assert [(len(d), r.name if r else None) for d, r in reports] == [(0, "first"), (1, "second"), (2, "third"),
                                                                   (3, None)]
    assert 25 < ctx.results["second"]["budget_s"] <= 46 and ctx.results["third"]["budget_s"] > 80  # shares of what is left
    text = gpu_check.markdown(done, ctx, plenty)
    assert "FAILED: RuntimeError: CUDA error: an illegal memory access" in text and text.count("worked") == 2
    cut = gpu_check.markdown(reports[1][0], ctx, plenty, running=reports[1][1])
    assert "## Second\n\nDid not finish" in cut and "## Third" not in cut

    spent = time.monotonic() - gpu_check.START
    gpu_check.run_parts(parts, ctx, spent, report)
    assert [ctx.results[p]["status"] for p in ("first", "second", "third")] == ["skipped"] * 3
    assert "Skipped: no time left" in gpu_check.markdown(reports[-1][0], ctx, spent)


def test_watchdog_fires_at_its_deadline_unless_the_check_ends_first():
    gpu_check = gpu_check_module()
    fired, never = threading.Event(), threading.Event()
    with gpu_check.Watchdog(time.monotonic() + 0.05, fired.set):
        assert fired.wait(5)
    with gpu_check.Watchdog(time.monotonic() + 0.5, never.set):
        pass
    time.sleep(0.8)
    assert not never.is_set()


def test_gpu_utilisation_falls_back_to_nvidia_smi_and_is_sampled(tmp_path, monkeypatch):
    """Without NVML in torch, the GPU's utilisation comes from nvidia-smi, asked for the GPU that
    CUDA_VISIBLE_DEVICES maps torch's index to."""
    gpu_check = gpu_check_module()
    calls = tmp_path / "calls"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho 87\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    query, source = gpu_check.utilisation_query(torch.device("cuda", 1))
    assert source.startswith("nvidia-smi") and query() == 87.0
    assert "--query-gpu=utilization.gpu --format=csv,noheader,nounits -i 5" in calls.read_text()
    with gpu_check.Utilisation(query, period=0.01) as sampled:
        time.sleep(0.3)
    assert sampled.samples and sampled.mean(0.0, time.perf_counter()) == 87.0
    assert sampled.mean(time.perf_counter(), time.perf_counter() + 1) is None  # no sample in that window
    assert gpu_check.utilisation_query(torch.device("cpu"))[0] is None
