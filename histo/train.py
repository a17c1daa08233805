"""Train one model and write its prediction files: ``python -m histo.train [overrides]`` (``histo-train``).

The run directory ends up with ``split.csv``, ``checkpoints/``, ``predictions/{val,test}.csv`` and
``run.json`` (see :mod:`histo.evaluation.run_dir`).
"""

from __future__ import annotations

import logging
import platform
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from histo import CONF_DIR, tracking
from histo.data import device_augment
from histo.data.cache import cache_for_run
from histo.data.datamodule import BreakHisDataModule, load_data, loader_workers
from histo.evaluation import metrics
from histo.evaluation.prediction_writer import PredictionWriter
from histo.evaluation.run_dir import PREDICTED_SPLITS, RunDir
from histo.models import Classifier
from histo.stain.methods import fit_from_config, stain_record

log = logging.getLogger("histo.train")
# Lightning notes that the module's batch hook wins over the datamodule's: that is the design here.
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer` in `LightningModule`.*")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def train(cfg: DictConfig) -> dict:
    """Fit, predict val and test with the best checkpoint, and write run.json; returns the record
    (empty for a fast_dev_run, which writes no prediction files)."""
    started = time.time()
    pl.seed_everything(cfg.seed, workers=True)
    run = RunDir(cfg.paths.output_dir)
    data = load_data(cfg.data, cfg.split, cfg.paths.synthetic_dir)
    data.split.write(run.split_path)
    log.info("Data: %s", data.index.summary())
    log.info("Split %s (%s): %s", data.split.strategy, data.split.fingerprint, data.split.counts())
    stain = fit_from_config(cfg.stain, data.index.root, data.split.images("train"))
    stain_fit = stain_record(OmegaConf.to_container(cfg.stain, resolve=True), stain, run.path)
    num_workers = loader_workers(cfg.data)
    cache = cache_for_run(cfg.data, data.index, cfg.model.image_size, stain, num_workers)
    if cache is not None and stain is not None:
        stain_fit["unchanged"] = cache.unchanged(data.index.frame["image"])  # images it passed through, by reason
    augment = OmegaConf.to_container(cfg.augment, resolve=True)
    batch_augment = device_augment.from_config(augment)  # augment.run_on=device: the module augments the batch

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
    model = Classifier(
        timm_name=cfg.model.timm_name,
        class_names=list(data.class_names),
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
    writer = PredictionWriter(run.path)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None] + [writer]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    loggers = tracking.with_training_log(loggers, run)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    config = OmegaConf.to_container(cfg, resolve=True)
    tracking.log_config(trainer.loggers, config)

    try:
        trainer.fit(model, datamodule=datamodule)
        if trainer.fast_dev_run:
            log.info("fast_dev_run: a smoke test, so no prediction files and no run.json are written.")
            return {}
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.predict(model, datamodule=datamodule, ckpt_path=best or None, return_predictions=False)
        if not trainer.is_global_zero:
            return {}
        scores = {split: metrics.evaluate(run.read_predictions(split)) for split in PREDICTED_SPLITS}
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
                **_leak(data.split.test_patients_in_train(data.index.frame), cfg.data.patient_key),
            },
            "data": data.summary(),
            "stain": stain_fit,
            "image_cache": cache.describe() if cache is not None else None,
            "checkpoint": str(_relative(best, run.path)) if best else None,
            "best_val_acc": _float(trainer.checkpoint_callback.best_model_score) if best else None,
            "epochs": trainer.current_epoch,
            "trainer": {"world_size": trainer.world_size, "precision": str(trainer.precision),
                        "accelerator": type(trainer.accelerator).__name__},
            "predictions": {split: str(run.predictions_path(split).relative_to(run.path)) for split in PREDICTED_SPLITS},
            "metrics": scores,
            "config": config,
            "versions": _versions(),
            "wall_time_s": round(time.time() - started, 1),
        }
        run.write_record(record)
        tracking.log_results(trainer.loggers, record, run.path)
        _report(run, record)
        return record
    finally:
        _finish_wandb()


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


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    record = train(cfg)
    metric = cfg.get("optimized_metric")
    if metric and record:
        split, name = metric.split("/", 1)  # e.g. val/balanced_accuracy
        return record["metrics"][split]["overall"][name]
    return None


if __name__ == "__main__":
    main()
