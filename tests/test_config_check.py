"""Fail fast (issue 13): the composed config is checked before any work, every histo command reports a user
error as one line and exit status 2, and a run on a degenerate split stops unless allow_degenerate=true."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAST, compose_config, train_config

from histo import CONF_DIR
from histo.config_check import ConfigError, check_train_config
from histo.data.breakhis import DataError, build_index
from histo.evaluation.run_dir import RunDir
from histo.train import train

REPO = Path(CONF_DIR).parent


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.batch_size=-4"], "data.batch_size=-4: must be an integer >= 1"),
    (["model.image_size=0"], "model.image_size=0: must be an integer >= 32"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs=abc: must be an integer >= 1"),
    (["trainer.max_epochs=2.5"], "trainer.max_epochs=2.5: must be an integer"),
    (["split.val_ratio=1.5"], r"split.val_ratio=1.5: must be a number in \(0, 1\)"),
    (["split.val_ratio=0.6", "split.test_ratio=0.5"], "must sum to less than 1"),
    (["split=patient_kfold", "split.folds=1"], "split.folds=1: must be an integer >= 2"),
    (["split=patient_kfold", "split.fold=5"], "split.fold=5: must be an integer from 0 to 4"),
    (["split.strategy=patient_kfold"], "split.strategy=patient_kfold needs split.folds and split.fold: choose "
                                       "split=patient_kfold"),
    (["split=image", "+split.fold=1"], "split.fold=1: only split=patient_kfold reads it"),
    (["data.task=tumour"], "data.task=tumour: must be one of binary, subtype"),
    (["optim.optimizer=sgd"], "optim.optimizer=sgd: must be one of adam, adamw"),
    (["trainer.precision=8"], "trainer.precision=8: must be one of 32-true"),
    (["stain=vahadane"], "stain.method=vahadane needs a target: stain.target=<image>"),
    (["stain=macenko", "stain.target=auto", "+stain.sample=10"],
     r"stain.sample=10: not a setting of stain method macenko; its settings: io, alpha, beta, on_failure"),
    (["stain.method=bogus"], "stain.method=bogus: must be one of none, "),  # none, then the registered methods
    (["model.weights=/no/such.pth"], "model.weights=/no/such.pth: no such file"),
    (["trainer.deterministic=maybe"], "trainer.deterministic=maybe: must be true, false or warn"),
    (["+ckpt_path=last.ckpt"], "ckpt_path is not a histo setting"),
    (["+epochs=3"], "epochs is not a setting of histo-train"),
])
def test_bad_values_are_named_with_their_key_and_what_is_allowed(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        check_train_config(compose_config("train", overrides, tmp_path))


def test_every_problem_is_listed_at_once_and_the_defaults_pass(tmp_path):
    check_train_config(compose_config("train", [], tmp_path))
    check_train_config(compose_config("train", ["experiment=paper/v2_s", "trainer=ddp"], tmp_path))
    with pytest.raises(ConfigError) as error:
        check_train_config(compose_config("train", ["data.batch_size=0", "model.image_size=16"], tmp_path))
    assert "data.batch_size=0" in str(error.value) and "model.image_size=16" in str(error.value)
    assert "\n" not in str(error.value)


SCRIPT = """
import contextlib, io, json, sys
from hydra.core.global_hydra import GlobalHydra
import histo.compare, histo.ensemble.__main__, histo.explain.__main__, histo.prepare, histo.report.__main__
import histo.stain.__main__, histo.train, histo.predict.__main__, histo.export, histo.app.__main__
results = []
for module, argv in json.loads(sys.argv[1]):
    GlobalHydra.instance().clear()
    sys.argv, err = [module, *argv], io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = sys.modules[module].main()
        except SystemExit as exit_:
            code = exit_.code
        except Exception as exc:
            code = type(exc).__name__
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


@pytest.mark.slow
def test_every_command_reports_a_user_error_in_one_line_with_status_2(tmp_path):
    runs = tmp_path / "runs"
    commands = [
        ("histo.train", ["data.batch_size=-4", f"hydra.run.dir={tmp_path / 'train'}"]),
        ("histo.train", ["model=v1_b9", f"hydra.run.dir={tmp_path / 'train'}"]),  # Hydra's own error
        ("histo.stain.__main__", []),
        ("histo.prepare", ["models=[v1_b9]"]),
        ("histo.ensemble.__main__", [f"runs=[{runs}]", f"out={tmp_path / 'ensemble'}"]),
        ("histo.report.__main__", [f"out={tmp_path / 'report'}"]),
        ("histo.explain.__main__", [f"out={tmp_path / 'explain'}"]),
        ("histo.compare", [f"root={tmp_path / 'none'}"]),
        ("histo.predict.__main__", [f"runs=[{runs}]", "images=.", f"out={tmp_path / 'predict'}"]),
        ("histo.export", [f"run={runs}", f"hydra.run.dir={tmp_path / 'export'}"]),
        ("histo.app.__main__", [f"runs=[{runs}]", f"hydra.run.dir={tmp_path / 'app'}"]),
    ]
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(commands)], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert [code for code, _ in results] == [2] * len(commands), done.stderr[-3000:]
    (_, train_err), (_, hydra_err), (_, stain_err), (_, prepare_err), *others = results
    assert train_err == "histo-train: data.batch_size=-4: must be an integer >= 1.\n"
    assert "Could not find 'model/v1_b9'" in hydra_err and "v1_b0" in hydra_err
    assert stain_err.startswith("histo-stain: input=<folder> is missing")  # input first, then the target
    assert prepare_err.startswith("histo-prepare: models: 'v1_b9' is not a model")
    progs = ("histo-ensemble", "histo-report", "histo-explain", "histo-compare", "histo-predict", "histo-export",
             "histo-app")
    for (_, err), prog in zip(others, progs, strict=True):
        assert err.startswith(f"{prog}: ") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run, ensemble, report or explain directory left

    full = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(commands[:1])], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1"},
                          timeout=300)
    assert json.loads(full.stdout.strip().splitlines()[-1])[0][0] == "ConfigError"  # the traceback, as Hydra does


@pytest.mark.slow
def test_weights_are_checked_before_any_data_work(synthetic_root, tmp_path):
    """The README's first command offline: the weights error comes first, and nothing is left behind."""
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "histo.train", *FAST, f"data.root={synthetic_root}", "model.pretrained=true",
         "data.cache=auto", f"data.cache_dir={cache}", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("histo-train: Could not download the pretrained weights") and "model.weights=<file>" in last
    assert not cache.exists() and not run_dir.exists()


# ----- degenerate data -----

def subset(root: Path, out: Path, keep) -> Path:
    """A copy of the images of ``root`` for which ``keep(row)`` holds (rows of its index)."""
    for _, row in build_index(root).frame.iterrows():
        if keep(row):
            (out / row["image"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / row["image"], out / row["image"])
    return out


def test_a_dataset_of_one_class_stops_with_a_clear_message(synthetic_root, tmp_path):
    benign = subset(synthetic_root, tmp_path / "benign", lambda row: row["tumor"] == "benign")
    with pytest.raises(DataError, match="has images of one class only \\(benign\\).*allow_degenerate=true"):
        train(train_config(tmp_path / "run", benign))
    assert not (tmp_path / "run").exists()


def test_a_patient_split_with_two_malignant_patients_stops_unless_allowed(synthetic_root, tmp_path):
    index = build_index(synthetic_root).frame
    two = sorted(index.loc[index["tumor"] == "malignant", "patient"].unique())[:2]
    root = subset(synthetic_root, tmp_path / "data", lambda row: row["tumor"] == "benign" or row["patient"] in two)
    with pytest.raises(DataError, match="val split has no malignant images; the test split has no malignant"):
        train(train_config(tmp_path / "run", root, "split=patient"))
    record = train(train_config(tmp_path / "run", root, "split=patient", "allow_degenerate=true", "debug=limit",
                                "trainer.max_epochs=1"))
    assert record["degenerate"] == ["the val split has no malignant images", "the test split has no malignant images"]
    assert RunDir(tmp_path / "run").state().detail.startswith("degenerate (allow_degenerate=true): the val split")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["allow_degenerate"] is True
