"""Train one model and write its prediction files: ``python -m histo.train [overrides]`` (``histo-train``).

The run directory ends up with ``split.csv``, ``checkpoints/``, ``predictions/{val,test}.csv`` and,
last, ``run.json`` (see :mod:`histo.evaluation.run_dir`). ``resume=true`` continues an interrupted
run in its directory, ``overwrite=true`` replaces a finished one (:mod:`histo.run_start`).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from dataclasses import dataclass

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from histo import resume, run_start, tracking
from histo.command import hydra_command
from histo.config_check import check_train_config
from histo.data import device_augment
from histo.data.breakhis import DataError, class_names
from histo.data.cache import ImageCache, cache_for_run
from histo.data.datamodule import BreakHisDataModule, Data, load_data, loader_workers
from histo.evaluation.prediction_writer import PredictionWriter
from histo.evaluation.run_dir import RunDir
from histo.models import Classifier
from histo.run_record import run_record
from histo.stain.methods import fit_from_config, stain_record
from histo.stain.normalizer import StainNormalizer

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
    """:func:`train` once the run holds its directory."""
    config = OmegaConf.to_container(cfg, resolve=True)
    checkpoint, resumed = resume.resume_from(run, config) if claimed.mode == "resume" else (None, {})
    pl.seed_everything(cfg.seed, workers=True)
    augment = OmegaConf.to_container(cfg.augment, resolve=True)
    model = _model(cfg, augment)  # first: weights that cannot be downloaded or read fail before any data work
    inputs = _prepare_data(cfg, run, resumed)
    datamodule = _datamodule(cfg, inputs, augment)
    trainer = _trainer(cfg, run, config, datamodule, resumed)

    claimed.training_started()
    trainer.fit(model, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
    if trainer.fast_dev_run:
        log.info("fast_dev_run: a smoke test, so no prediction files and no run.json are written.")
        return {}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.predict(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True, return_predictions=False)
    if not trainer.is_global_zero:
        return {}
    record = run_record(cfg, config, run, inputs, trainer, best, resumed, started)
    run.write_record(record)  # last: from now on the directory holds a finished run
    tracking.log_results(trainer.loggers, record, run.path)
    _log_summary(run, record)
    return record


@dataclass(frozen=True)
class TrainingData:
    """What a run trains and predicts on, made ready before fitting."""

    data: Data  # the indexed dataset and its split (written to split.csv)
    degenerate: list[str]  # the split's missing classes, allowed by allow_degenerate=true
    stain: StainNormalizer | None  # fitted on the train split; normalizes every split
    stain_record: dict  # what run.json records under "stain"
    cache: ImageCache | None  # the images at the model's size, stain-normalized
    num_workers: int  # loader processes


def _model(cfg: DictConfig, augment: dict) -> Classifier:
    """The classifier the model and optim configs describe; ``augment.run_on=device`` makes it augment the batch."""
    batch_augment = device_augment.from_config(augment)
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
    return model


def _prepare_data(cfg: DictConfig, run: RunDir, resumed: dict) -> TrainingData:
    """Index and split the data (a resumed run must split as before), write split.csv, fit the stain
    normalizer on the train split and find or build the image cache."""
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
    return TrainingData(data, degenerate, stain, stain_fit, cache, num_workers)


def _datamodule(cfg: DictConfig, inputs: TrainingData, augment: dict) -> BreakHisDataModule:
    return BreakHisDataModule(
        inputs.data,
        image_size=cfg.model.image_size,
        interpolation=cfg.data.interpolation,
        augment=augment,
        batch_size=cfg.data.batch_size,
        num_workers=inputs.num_workers,
        pin_memory=cfg.data.pin_memory,
        persistent_workers=cfg.data.persistent_workers,
        stain=inputs.stain,
        cache=inputs.cache,
    )


def _trainer(cfg: DictConfig, run: RunDir, config: dict, datamodule: BreakHisDataModule, resumed: dict) -> pl.Trainer:
    """The trainer with its callbacks (last checkpoint first, prediction files last) and loggers (always
    the CSV training log; a resumed run appends to it)."""
    last = resume.LastCheckpoint(run.path / "checkpoints", config, datamodule.data.split.fingerprint,
                                 cfg.last_checkpoint_every_n_steps)
    writer = PredictionWriter(run.path, datamodule)
    callbacks = [last, *(instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None), writer]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    loggers = tracking.with_training_log(loggers, run)
    if resumed:
        resume.continue_csv_log(loggers, resumed.get("epochs_completed", 0))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    tracking.log_config(trainer.loggers, config)
    return trainer


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


def _log_summary(run: RunDir, record: dict) -> None:
    """The test metrics and where the prediction files and run.json are, for the person who started the run."""
    test = record["metrics"]["test"]["overall"]
    lines = [f"  {k:<26}{v:.4f}" if isinstance(v, float) else f"  {k:<26}{v}" for k, v in test.items()]
    log.info(
        "Test metrics of %s (split %s, %s):\n%s\nPrediction files: %s\nRun record: %s",
        record["model"], record["split"]["strategy"], record["split"]["fingerprint"], "\n".join(lines),
        run.path / "predictions", run.record_path,
    )


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
