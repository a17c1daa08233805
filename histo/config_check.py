"""One check of a composed config, before any work: every bad value is named with its key and what is allowed.

``histo-train data.batch_size=-4 model.image_size=0`` then stops at once with one line,
``data.batch_size=-4: must be an integer >= 1; model.image_size=0: must be an integer >= 32 ...``,
instead of failing inside ``trainer.fit`` or after building a 224 px image cache. The checks cover
the keys of the config groups a command composes (data, split, model, augment, optim, stain,
trainer) and the run's own keys; keys a group does not have are not checked.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from histo import CONF_DIR
from histo.command import UserError
from histo.data.breakhis import MAGNIFICATIONS, PATIENT_KEYS, TASKS
from histo.data.cache import MODES as CACHE_MODES
from histo.data.device_augment import PLACES
from histo.data.splits import STRATEGIES
from histo.data.transforms import BORDERS, INTERPOLATIONS
from histo.evaluation.metrics import METRICS
from histo.models.module import OPTIMIZERS, SCHEDULERS
from histo.stain.methods import AUTO, METHODS, NONE, unknown_settings
from histo.stain.normalizer import ON_FAILURE

MIN_IMAGE_SIZE = 32  # EfficientNets downsample 32x: smaller inputs leave no spatial map
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", 32, 16, 64, "32", "16", "bf16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
_ABSENT = object()


class ConfigError(UserError):
    """Config values that cannot work; the message names each key and the values allowed."""


def check_train_config(cfg: DictConfig) -> None:
    """Check a composed ``conf/train.yaml``; raise :class:`ConfigError` listing every problem."""
    checks = _Checks(cfg)
    checks.top_level_keys("train")
    checks.integer("seed", 0, 2**32 - 1)
    checks.boolean("resume", "overwrite", "allow_degenerate", "predict.features")
    checks.integer("last_checkpoint_every_n_steps", 1, none=True)
    if checks.value("resume") is True and checks.value("overwrite") is True:
        checks.problems.append("resume=true and overwrite=true: choose one (continue the run, or train it anew)")
    metric = checks.value("optimized_metric")
    if metric is not None and (not isinstance(metric, str) or metric.partition("/")[::2] not in
                               {(s, m) for s in ("val", "test") for m in METRICS}):
        checks.problems.append(f"optimized_metric={metric}: must be null or val/<metric> with a metric of "
                               f"{', '.join(METRICS)}")
    _check_data(checks)
    _check_split(checks)
    _check_model(checks)
    _check_augment(checks)
    _check_optim(checks)
    _check_stain(checks)
    _check_trainer(checks)
    checks.raise_problems()


def check_prepare_config(cfg: DictConfig) -> None:
    """Check a composed ``conf/prepare.yaml`` (the training groups it shares, and its own keys)."""
    checks = _Checks(cfg)
    checks.boolean("rebuild")
    sizes = checks.value("sizes")
    if sizes is not _ABSENT and sizes is not None:
        bad = [s for s in (sizes if OmegaConf.is_list(sizes) else [sizes]) if not _is_int(s) or s < MIN_IMAGE_SIZE]
        if bad:
            checks.problems.append(f"sizes={OmegaConf.to_container(sizes) if OmegaConf.is_list(sizes) else sizes}: "
                                   f"each size must be an integer >= {MIN_IMAGE_SIZE} (pixels)")
    _check_data(checks)
    _check_split(checks)
    _check_stain(checks)
    checks.raise_problems()


def _check_data(checks: _Checks) -> None:
    checks.integer("data.batch_size", 1)
    checks.integer("data.num_workers", 0, none=True)
    checks.choice("data.task", TASKS)
    magnification = checks.value("data.magnification")
    if magnification is not _ABSENT and str(magnification).lower().rstrip("x") not in ("all", *map(str, MAGNIFICATIONS)):
        checks.problems.append(f"data.magnification={magnification}: must be one of all, "
                               f"{', '.join(map(str, MAGNIFICATIONS))}")
    checks.choice("data.patient_key", PATIENT_KEYS)
    checks.choice("data.interpolation", tuple(INTERPOLATIONS))
    checks.choice("data.cache", CACHE_MODES)
    checks.boolean("data.persistent_workers")
    checks.boolean("data.pin_memory", none=True)
    checks.existing("data.root", "dir", "your BreaKHis_v1 folder (or null for the built-in synthetic dataset)")


def _check_split(checks: _Checks) -> None:
    if checks.value("split.file") not in (None, _ABSENT):
        checks.existing("split.file", "file", "a split CSV (image,split), e.g. another run's split.csv")
        return  # the file decides; strategy, ratios and folds are not used
    strategy = checks.value("split.strategy")
    checks.choice("split.strategy", STRATEGIES)
    checks.integer("split.seed", 0)
    checks.number("split.val_ratio", 0, 1, low_open=True, high_open=True)
    fold_keys = ("split.folds", "split.fold")  # patient_kfold's own: conf/split/patient_kfold.yaml sets them
    if strategy == "patient_kfold":
        missing = [k for k in fold_keys if checks.value(k) is _ABSENT]
        if missing:
            checks.problems.append(f"split.strategy=patient_kfold needs {' and '.join(missing)}: choose "
                                   "split=patient_kfold, which sets them, rather than overriding split.strategy")
        checks.integer("split.folds", 2)
        folds = checks.value("split.folds")
        if _is_int(folds) and folds >= 2:
            checks.integer("split.fold", 0, folds - 1)
        return
    for key in fold_keys:
        if checks.value(key) is not _ABSENT:
            checks.problems.append(f"{key}={checks.value(key)}: only split=patient_kfold reads it, "
                                   f"split.strategy={strategy} would ignore it; drop it or choose split=patient_kfold")
    checks.number("split.test_ratio", 0, 1, low_open=True, high_open=True)
    val, test = checks.value("split.val_ratio"), checks.value("split.test_ratio")
    if _is_number(val) and _is_number(test) and 0 < val < 1 and 0 < test < 1 and val + test >= 1:
        checks.problems.append(f"split.val_ratio={val} and split.test_ratio={test}: must sum to less than 1 "
                               "(the rest is train)")


def _check_model(checks: _Checks) -> None:
    checks.integer("model.image_size", MIN_IMAGE_SIZE, why="the EfficientNets downsample 32x")
    checks.number("model.drop_rate", 0, 1, high_open=True)
    checks.integer("model.frozen_layers", 0)
    checks.boolean("model.pretrained", "model.freeze_bn", "model.channels_last", "model.compile")
    checks.existing("model.weights", "file", "a local weights file (.pth, .bin or .safetensors)")


def _check_augment(checks: _Checks) -> None:
    checks.choice("augment.run_on", PLACES)
    checks.choice("augment.border", tuple(BORDERS))
    checks.choice("augment.interpolation", tuple(INTERPOLATIONS))
    checks.number("augment.hflip", 0, 1)
    checks.number("augment.vflip", 0, 1)
    checks.number("augment.rotate", 0, 180)
    checks.number("augment.translate", 0, 1)


def _check_optim(checks: _Checks) -> None:
    checks.choice("optim.optimizer", OPTIMIZERS)
    checks.choice("optim.scheduler", SCHEDULERS)
    checks.number("optim.backbone_lr", 0, low_open=True)
    checks.number("optim.head_lr", 0, low_open=True)
    checks.number("optim.weight_decay", 0)
    checks.number("optim.warmup_epochs", 0)


def _check_stain(checks: _Checks) -> None:
    method = checks.value("stain.method")
    checks.choice("stain.method", (NONE, *METHODS))
    checks.choice("stain.on_failure", ON_FAILURE)
    if method not in METHODS:  # none (no normalizer), or an error reported above
        return
    checks.problems += unknown_settings(method, checks.value("stain"))
    target, target_file = checks.value("stain.target"), checks.value("stain.target_file")
    if target and target_file:
        checks.problems.append("stain.target and stain.target_file are both set: choose one")
    elif not target and not target_file:
        checks.problems.append(f"stain.method={method} needs a target: stain.target=<image> (absolute, or relative "
                               "to data.root), stain.target=auto or stain.target_file=<a saved stain_target.json>")
    elif target_file:
        checks.existing("stain.target_file", "file", "a stain_target.json saved by a run or by histo-stain")
    elif target != AUTO:
        root = checks.value("data.root")
        places = [Path(str(target)).expanduser()] + ([Path(str(root)).expanduser() / str(target)] if root else [])
        if root and not any(p.is_file() for p in places):  # with the synthetic dataset, it is not written yet
            checks.problems.append(f"stain.target={target}: no such image (looked at "
                                   f"{' and '.join(map(str, places))}); give an image path or auto")


def _check_trainer(checks: _Checks) -> None:
    checks.integer("trainer.max_epochs", 1, allow=(-1,), why="-1: no limit, with trainer.max_steps")
    checks.integer("trainer.max_steps", 1, allow=(-1,))
    checks.integer("trainer.min_epochs", 0, none=True)
    checks.integer("trainer.log_every_n_steps", 1)
    checks.integer("trainer.num_sanity_val_steps", -1)
    checks.integer("trainer.check_val_every_n_epoch", 1, none=True)
    checks.integer("trainer.accumulate_grad_batches", 1)
    checks.choice("trainer.precision", PRECISIONS)
    checks.choice("trainer.accelerator", ACCELERATORS)
    deterministic = checks.value("trainer.deterministic")
    if deterministic not in (_ABSENT, None, True, False, "warn"):
        checks.problems.append(f"trainer.deterministic={deterministic}: must be true, false or warn")
    if deterministic in (True, "warn") and checks.value("trainer.benchmark") is True:
        checks.problems.append("trainer.deterministic=true with trainer.benchmark=true: cuDNN benchmarking picks "
                               "kernels by timing, which is not reproducible; leave trainer.benchmark unset")
    for key in ("limit_train_batches", "limit_val_batches", "limit_predict_batches", "overfit_batches"):
        value = checks.value(f"trainer.{key}")
        if value is _ABSENT or value is None:
            continue
        if not ((_is_int(value) and value >= 0) or (_is_number(value) and 0 <= value <= 1)):
            checks.problems.append(f"trainer.{key}={value}: must be a number of batches (an integer >= 0) "
                                   "or a share of them (0.0 to 1.0)")
    max_epochs, max_steps = checks.value("trainer.max_epochs"), checks.value("trainer.max_steps")
    if max_epochs == -1 and max_steps in (_ABSENT, None, -1):
        checks.problems.append("trainer.max_epochs=-1 needs trainer.max_steps=<n>: otherwise training never ends")


class _Checks:
    """Collects the problems of one config; each check names the key, the value and what is allowed."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.problems: list[str] = []

    def value(self, key: str):
        return OmegaConf.select(self.cfg, key, default=_ABSENT, throw_on_missing=False)

    def top_level_keys(self, config_name: str) -> None:
        """Keys the primary config and its groups do not define, e.g. ``+ckpt_path=...``, would be ignored."""
        primary = OmegaConf.load(Path(CONF_DIR) / f"{config_name}.yaml")
        groups = {next(iter(d)) for d in primary.get("defaults", []) if isinstance(d, (dict, DictConfig))}
        known = {str(k) for k in primary if k != "defaults"} | {g.split(" ")[-1].lstrip("/") for g in groups}
        for key in self.cfg:
            if str(key) in known or str(key) == "hydra":
                continue
            if key == "ckpt_path":
                self.problems.append("ckpt_path is not a histo setting (it would be ignored): continue an interrupted "
                                     "run with resume=true hydra.run.dir=<its directory>, or start from other "
                                     "weights with model.weights=<file>")
            else:
                self.problems.append(f"{key} is not a setting of histo-{config_name} (a typo?); the top-level "
                                     f"settings are {', '.join(sorted(known))}")

    def integer(self, key: str, low: int | None = None, high: int | None = None, *, none: bool = False,
                allow: tuple = (), why: str = "") -> None:
        value = self.value(key)
        if value is _ABSENT or (none and value is None) or (value in allow and _is_int(value)):
            return
        if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
            bound = (f"from {low} to {high}" if low is not None and high is not None
                     else f">= {low}" if low is not None else f"<= {high}" if high is not None else "")
            extra = [f"{a}" for a in allow] + (["null"] if none else [])
            self.problems.append(f"{key}={value}: must be an integer {bound}".rstrip()
                                 + (f" (or {', '.join(extra)})" if extra else "") + (f"; {why}" if why else ""))

    def number(self, key: str, low: float | None = None, high: float | None = None, *, low_open: bool = False,
               high_open: bool = False) -> None:
        value = self.value(key)
        if value is _ABSENT:
            return
        ok = _is_number(value) and (low is None or (value > low if low_open else value >= low)) and (
            high is None or (value < high if high_open else value <= high))
        if not ok:
            lower = "" if low is None else f"{'(' if low_open else '['}{low}"
            upper = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
            self.problems.append(f"{key}={value}: must be a number in {lower}, {upper}")

    def choice(self, key: str, options: tuple) -> None:
        value = self.value(key)
        if value is not _ABSENT and value not in options:
            shown = ", ".join(dict.fromkeys(str(o) for o in options))
            self.problems.append(f"{key}={value}: must be one of {shown}")

    def boolean(self, *keys: str, none: bool = False) -> None:
        for key in keys:
            value = self.value(key)
            if value is not _ABSENT and not isinstance(value, bool) and not (none and value is None):
                self.problems.append(f"{key}={value}: must be true or false{' (or null)' if none else ''}")

    def existing(self, key: str, kind: str, what: str) -> None:
        value = self.value(key)
        if value in (_ABSENT, None, ""):
            return
        path = Path(str(value)).expanduser()
        if not (path.is_dir() if kind == "dir" else path.is_file()):
            self.problems.append(f"{key}={value}: no such {'directory' if kind == 'dir' else 'file'}; give {what}")

    def raise_problems(self) -> None:
        if self.problems:
            raise ConfigError("; ".join(self.problems) + ".")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
