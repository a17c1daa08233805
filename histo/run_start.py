"""How a training run takes its directory (``paths.output_dir``, i.e. ``hydra.run.dir``).

- In use (its ``run.lock`` held by a live process): refused, naming that process.
- Finished (``run.json``): refused, unless ``overwrite=true`` (the old run's outputs are deleted
  first) or ``resume=true`` (nothing left to do: the finished run's record is returned).
- Holding an unfinished run's outputs: refused, unless ``resume=true`` (continue from
  ``checkpoints/last.ckpt``) or ``overwrite=true``.
- ``resume=true`` with nothing to resume (no last checkpoint): refused. In a multirun such a job is
  trained anew instead, so that rerunning a killed sweep with ``resume=true`` completes it.

Only a run's own outputs (:data:`RUN_OUTPUTS`) count and are ever deleted; other files in the
directory are left alone. The run holds the directory's lock while it writes. If the command fails
before training starts, what it wrote is removed again, so a failed command leaves no half-made run
directory behind. :class:`RunDirCheck`, a Hydra callback, makes the same checks (and the config
check) before Hydra writes ``.hydra/`` into the directory, so a refused command does not touch it.
"""

from __future__ import annotations

import copy
import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from pytorch_lightning.utilities import rank_zero_only

from histo.command import UserError, reporting
from histo.config_check import check_train_config
from histo.evaluation import run_lock
from histo.evaluation.run_dir import RunDir
from histo.resume import resume_from

log = logging.getLogger(__name__)

# What a training run writes into its directory (Hydra's .hydra/ and log, and run.lock, are not outputs);
# run.json first: deleting them in this order, the directory stops being a finished run at once.
RUN_OUTPUTS = ("run.json", "split.csv", "stain_target.json", "predictions", "features", "checkpoints", "csv",
               "tensorboard", "wandb")


class RunDirRefused(UserError):
    """The run directory cannot be used as asked; the message says why and what to do."""


@dataclass
class Claim:
    """A run directory taken by this process: ``mode`` is ``fresh``, ``resume`` or ``finished``."""

    run: RunDir
    mode: str
    created: bool  # the directory held no run outputs: what this run writes is removed if it fails before training
    training: bool = False  # set when training starts: from then on a failure keeps what was written

    def training_started(self) -> None:
        self.training = True


def outputs(run: RunDir) -> list[str]:
    """The run outputs present in the directory."""
    return [name for name in RUN_OUTPUTS if (run.path / name).exists()]


def decide(run: RunDir, resume: bool, overwrite: bool, multirun: bool = False, locked: bool = False) -> str:
    """``fresh``, ``resume``, ``overwrite`` or ``finished`` for a run directory, or :class:`RunDirRefused`
    (``locked``: this process holds the directory's lock already)."""
    holder = None if locked else run_lock.holder(run.path)
    if holder is not None:
        raise RunDirRefused(f"{run.path} is in use: another training run ({holder.describe()}) is writing there. "
                            "Wait for it to finish, or train into another directory (hydra.run.dir=<dir>).")
    present = outputs(run) if run.path.is_dir() else []
    if overwrite:
        return "overwrite" if present else "fresh"
    if run.record_path.is_file():
        if resume:
            return "finished"
        raise RunDirRefused(f"{run.path} holds a finished run (run.json). Train into another directory "
                            "(hydra.run.dir=<dir>), or replace it with overwrite=true.")
    if resume:
        if run.last_checkpoint_path.is_file():
            return "resume"
        if multirun:  # a job of a killed sweep that never finished an epoch: train it (anew)
            return "overwrite" if present else "fresh"
        raise RunDirRefused(f"resume=true: nothing to resume in {run.path}: it has no "
                            f"{run.last_checkpoint_path.relative_to(run.path)}"
                            f"{' (its outputs: ' + ', '.join(present) + ')' if present else ''}. Give the interrupted "
                            "run's directory (hydra.run.dir=<run dir>), or train it anew with overwrite=true.")
    if present:
        how = ("continue it with resume=true or replace it with overwrite=true" if run.last_checkpoint_path.is_file()
               else "it left no checkpoint to resume from: replace it with overwrite=true")
        raise RunDirRefused(f"{run.path} holds an unfinished run ({', '.join(present)}); {how}, or train into "
                            "another directory (hydra.run.dir=<dir>).")
    return "fresh"


@contextmanager
def claim(run: RunDir, resume: bool = False, overwrite: bool = False):
    """Take ``run``'s directory for this process (see the module docstring) and yield a :class:`Claim`."""
    if rank_zero_only.rank != 0:  # DDP processes Lightning starts run this command too: rank 0 owns the directory
        yield Claim(run, "resume" if resume and run.last_checkpoint_path.is_file() else "fresh", created=False)
        return
    existed = run.path.is_dir()
    try:
        with run_lock.RunLock(run.path):
            mode = decide(run, resume, overwrite, _multirun(), locked=True)
            if mode == "overwrite":
                log.warning("Deleting the outputs of the run in %s (%s) to train it anew.", run.path,
                            ", ".join(outputs(run)))
                _remove_outputs(run)
                mode = "fresh"
            current = Claim(run, mode, created=mode == "fresh")
            try:
                yield current
            except BaseException:
                if current.created and not current.training:
                    _remove_outputs(run)
                raise
    finally:
        if not existed and run.path.is_dir() and not any(run.path.iterdir()):
            run.path.rmdir()


class RunDirCheck(Callback):
    """Hydra callback of histo-train: check the config and the run directory before Hydra writes into it."""

    def on_run_start(self, config, **kwargs) -> None:
        if rank_zero_only.rank != 0:
            return
        with reporting("histo-train"):
            check_train_config(config)
            run = RunDir(config.hydra.run.dir)
            if decide(run, config.resume, config.overwrite) == "resume":
                resume_from(run, _job_config(config, run.path))  # a refused resume leaves the run's .hydra/ as it was

    def on_multirun_start(self, config, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if config.get("resume") is True or config.get("overwrite") is True or not sweep.is_dir():
            return
        finished = sorted(p.parent.name for p in sweep.glob("*/run.json"))
        if finished:
            with reporting("histo-train"):
                raise RunDirRefused(
                    f"hydra.sweep.dir={sweep} already holds finished runs ({', '.join(finished[:5])}"
                    f"{', ...' if len(finished) > 5 else ''}). resume=true completes the sweep (finished runs are "
                    "kept, interrupted ones continued), overwrite=true trains every job anew."
                )


def _job_config(config: DictConfig, output_dir: Path) -> dict:
    """The resolved config the job in ``output_dir`` will see (``paths.output_dir`` included), as Hydra makes it."""
    config = copy.deepcopy(config)
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(output_dir.resolve())
    HydraConfig.instance().set_config(config)  # Hydra sets it again when the job starts
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return OmegaConf.to_container(task, resolve=True)


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _remove_outputs(run: RunDir) -> None:
    for name in RUN_OUTPUTS:
        path = run.path / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
