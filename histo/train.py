"""Train one model and write its prediction files: ``python -m histo.train [overrides]`` (``histo-train``).

The run directory ends up with ``split.csv``, ``checkpoints/``, ``predictions/{val,test}.csv`` and,
last, ``run.json`` (see :mod:`histo.evaluation.run_dir`). ``resume=true`` continues an interrupted
run in its directory, ``overwrite=true`` replaces a finished one (:mod:`histo.run_start`).
"""

from __future__ import annotations

import logging
import platform
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from histo import resume, run_start, tracking
from histo.command import hydra_command
from histo.config_check import check_train_config
from histo.data import device_augment
from histo.data.breakhis import DataError, class_names
from histo.data.cache import cache_for_run
from histo.data.datamodule import BreakHisDataModule, load_data, loader_workers
from histo.evaluation import metrics, predictions
from histo.evaluation.prediction_writer import PredictionWriter
from histo.evaluation.run_dir import PREDICTED_SPLITS, RunDir
from histo.models import Classifier
from histo.stain.methods import fit_from_config, stain_record

log = logging.getLogger("histo.train")
# Lightning notes that the module's batch hook wins over the datamodule's: that is the design here.
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer` in `LightningModule`.*")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def train(cfg: DictConfig) -> dict:
    """Fit, predict val and test with the best checkpoint, and write run.json last; returns the record
    (empty for a fast_dev_run, which writes no prediction files). The config is checked before any
    work (:mod:`histo.config_check`); :mod:`histo.run_start` says how the run takes its directory and
    :mod:`histo.resume` how ``resume=true`` continues an interrupted run."""
    started = time.time()
    check_train_config(cfg)
    run = RunDir(cfg.paths.output_dir)
    with run_start.claim(run, cfg.resume, cfg.overwrite) as claimed:
        if claimed.mode == "finished":
            log.info("resume=true: %s is a finished run; nothing to resume.", run.path)
            return run.record()
        try:
            return _train(cfg, run, claimed, started)
        finally:
            _finish_wandb()


def _train(cfg: DictConfig, run: RunDir, claimed: run_start.Claim, started: float) -> dict:
    config = OmegaConf.to_container(cfg, resolve=True)
    checkpoint, resumed = resume.resume_from(run, config) if claimed.mode == "resume" else (None, {})
    pl.seed_everything(cfg.seed, workers=True)
    augment = OmegaConf.to_container(cfg.augment, resolve=True)
    batch_augment = device_augment.from_config(augment)  # augment.run_on=device: the module augments the batch
    # The model first: weights that cannot be downloaded or read fail before any data work.
    model = Classifier(
        timm_name=cfg.model.timm_name,
        class_names=list(class_names(cfg.data.task)),
        image_size=cfg.model.image_size,
        model_name=cfg.model.name,
        drop_rate=cfg.model.drop_rate,
        freeze_bn=cfg.model.freeze_bn,
        frozen_layers=cfg.model.frozen_layers,
        pretrained=cfg.model.pretrained,
        weights=cfg.model.weights,
        channels_last=cfg.model.channels_last,
        device_augment=batch_augment.to_dict() if batch_augment else None,
        compile=cfg.model.compile,
        **cfg.optim,
    )
    model.save_features = cfg.predict.features
    data = load_data(cfg.data, cfg.split, cfg.paths.synthetic_dir)
    log.info("Data: %s", data.index.summary())
    log.info("Split %s (%s): %s", data.split.strategy, data.split.fingerprint, data.split.counts())
    degenerate = _degenerate(data, cfg.allow_degenerate)
    if resumed:
        resume.check_split(resumed, data.split.fingerprint, run)
    data.split.write(run.split_path)
    stain = fit_from_config(cfg.stain, data.index.root, data.split.images("train"))
    stain_fit = stain_record(OmegaConf.to_container(cfg.stain, resolve=True), stain, run.path)
    num_workers = loader_workers(cfg.data)
    cache = cache_for_run(cfg.data, data.index, cfg.model.image_size, stain, num_workers)
    if cache is not None and stain is not None:
        stain_fit["unchanged"] = cache.unchanged(data.index.images)  # images it passed through, by reason

    datamodule = BreakHisDataModule(
        data,
        image_size=cfg.model.image_size,
        interpolation=cfg.data.interpolation,
        augment=augment,
        batch_size=cfg.data.batch_size,
        num_workers=num_workers,
        pin_memory=cfg.data.pin_memory,
        persistent_workers=cfg.data.persistent_workers,
        stain=stain,
        cache=cache,
    )
    last = resume.LastCheckpoint(run.path / "checkpoints", config, data.split.fingerprint,
                                 cfg.last_checkpoint_every_n_steps)
    writer = PredictionWriter(run.path)
    callbacks = [last, *(instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None), writer]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    loggers = tracking.with_training_log(loggers, run)
    if resumed:
        resume.continue_csv_log(loggers, resumed.get("epochs_completed", 0))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    tracking.log_config(trainer.loggers, config)

    claimed.training_started()
    trainer.fit(model, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
    if trainer.fast_dev_run:
        log.info("fast_dev_run: a smoke test, so no prediction files and no run.json are written.")
        return {}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.predict(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True, return_predictions=False)
    if not trainer.is_global_zero:
        return {}
    scores = {split: metrics.evaluate(predictions.read(run.predictions_path(split))) for split in PREDICTED_SPLITS}
    record = {
        "model": cfg.model.name,
        "family": cfg.model.family,
        "timm_name": cfg.model.timm_name,
        "image_size": cfg.model.image_size,
        "seed": cfg.seed,
        "experiment": cfg.name,
        "task": data.task,
        "class_names": list(data.class_names),
        "split": {
            **OmegaConf.to_container(cfg.split, resolve=True),
            "strategy": data.split.strategy,
            "fingerprint": data.split.fingerprint,
            "file": run.split_path.name,
            "counts": data.split.counts(),
            **_leak(data.split.test_patients_in_train(data.index), cfg.data.patient_key),
        },
        "data": data.summary(),
        "degenerate": degenerate,
        "stain": stain_fit,
        "image_cache": cache.describe() if cache is not None else None,
        "checkpoint": str(_relative(best, run.path)) if best else None,
        "best_val_acc": _float(trainer.checkpoint_callback.best_model_score) if best else None,
        "epochs": trainer.current_epoch,
        "resumed_after_epochs": resumed.get("epochs_completed") if resumed else None,
        "trainer": {"world_size": trainer.world_size, "precision": str(trainer.precision),
                    "accelerator": type(trainer.accelerator).__name__,
                    "deterministic": cfg.trainer.get("deterministic", False)},
        "predictions": {split: str(run.predictions_path(split).relative_to(run.path)) for split in PREDICTED_SPLITS},
        "metrics": scores,
        "config": config,
        "versions": _versions(),
        "wall_time_s": round(time.time() - started, 1),
        "files": run.file_digests(),  # rows and sha256 of each prediction file: every reader checks them
    }
    run.write_record(record)  # last: from now on the directory holds a finished run
    tracking.log_results(trainer.loggers, record, run.path)
    _report(run, record)
    return record


def _degenerate(data, allowed: bool) -> list[str]:
    """The split's missing classes; an error unless ``allow_degenerate=true`` (then recorded and warned)."""
    problems = data.missing_classes()
    if problems and not allowed:
        text = "; ".join(problems)
        raise DataError(
            f"{text[0].upper()}{text[1:]}: balanced accuracy, AUROC and the other metrics would be "
            "meaningless. Use more data or other split settings (split.seed, split.val_ratio, split.test_ratio, "
            "split=image), or train anyway with allow_degenerate=true (recorded in run.json, flagged in every table)."
        )
    for problem in problems:
        log.warning("allow_degenerate=true: %s; the metrics of this run are flagged as degenerate.", problem)
    return problems


def _leak(counts: dict[str, int], key: str) -> dict:
    """run.json's leak counts: under the run's own patient key, and under each key."""
    return {"test_patients_in_train": counts[key], "test_patients_in_train_by_key": counts}


def _report(run, record: dict) -> None:
    test = record["metrics"]["test"]["overall"]
    lines = [f"  {k:<26}{v:.4f}" if isinstance(v, float) else f"  {k:<26}{v}" for k, v in test.items()]
    log.info(
        "Test metrics of %s (split %s, %s):\n%s\nPrediction files: %s\nRun record: %s",
        record["model"], record["split"]["strategy"], record["split"]["fingerprint"], "\n".join(lines),
        run.path / "predictions", run.record_path,
    )


def _relative(path, base):
    try:
        return Path(path).resolve().relative_to(Path(base).resolve())
    except ValueError:
        return Path(path)


def _float(value) -> float | None:
    return None if value is None else float(value)


def _versions() -> dict:
    names = ("histo", "torch", "torchvision", "timm", "pytorch-lightning", "torchmetrics", "albumentations",
             "hydra-core", "numpy", "pandas", "scikit-learn")
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _finish_wandb() -> None:
    """Close the W&B run so the next run of a multirun starts its own."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


@hydra_command("train", prog="histo-train")
def main(cfg: DictConfig) -> float | None:
    record = train(cfg)
    metric = cfg.get("optimized_metric")
    if metric and record:
        split, name = metric.split("/", 1)  # e.g. val/balanced_accuracy
        return record["metrics"][split]["overall"][name]
    return None


if __name__ == "__main__":
    main()
