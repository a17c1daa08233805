"""Experiment tracking beyond per-epoch metrics, for whichever loggers a run has (always a CSV log).

Every logger gets the resolved config as hyperparameters and the test metrics (overall, with
their confidence bounds); W&B also gets them as the run summary (so its dashboard table compares
runs without extra work) and the prediction files, split and run.json as a ``predictions``
artifact, which syncs later when the run was offline.
"""

from __future__ import annotations

from pathlib import Path

from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

from histo.evaluation.run_dir import RunDir


def with_training_log(loggers: list[Logger], run: RunDir) -> list[Logger]:
    """``loggers`` plus a CSV logger writing ``run.training_log_path``, unless one of them already does:
    histo-report draws the learning curves from that file, so every run keeps it, whatever ``logger=`` chose."""
    path = run.training_log_path.resolve()
    if any(isinstance(lg, CSVLogger) and (Path(lg.log_dir) / path.name).resolve() == path for lg in loggers):
        return loggers
    return [*loggers, CSVLogger(save_dir=path.parent.parent, name=path.parent.name, version="")]


def log_config(loggers: list[Logger], config: dict) -> None:
    for logger in loggers:
        logger.log_hyperparams({"config": config})


def test_summary(record: dict) -> dict[str, float]:
    """Flat ``test/<metric>`` (and ``test/<metric>_low``/``_high``) values of a run record."""
    scores = record["metrics"]["test"]
    out = {f"test/{k}": v for k, v in scores["overall"].items() if isinstance(v, (int, float))}
    for name, interval in scores.get("ci", {}).get("overall", {}).items():
        out[f"test/{name}_low"], out[f"test/{name}_high"] = interval or (None, None)  # None: too few patients
    return {k: v for k, v in out.items() if v is not None}


def log_results(loggers: list[Logger], record: dict, run_dir: str | Path) -> None:
    """Test metrics to every logger; for W&B also the summary and the prediction-file artifact."""
    summary = test_summary(record)
    for logger in loggers:
        logger.log_metrics(summary)
        if isinstance(logger, WandbLogger):
            _log_wandb(logger, summary, record, Path(run_dir))


def _log_wandb(logger: WandbLogger, summary: dict, record: dict, run_dir: Path) -> None:
    import wandb

    run = logger.experiment
    run.summary.update(summary | {"split/fingerprint": record["split"]["fingerprint"]})
    artifact = wandb.Artifact(
        name=f"predictions-{run.id}",
        type="predictions",
        metadata={"model": record["model"], "split": record["split"]["fingerprint"], "seed": record["seed"]},
    )
    artifact.add_dir(str(run_dir / "predictions"), name="predictions")
    for name in ("run.json", "split.csv"):
        artifact.add_file(str(run_dir / name))
    run.log_artifact(artifact)
