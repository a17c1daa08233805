"""Combine finished runs: ``python -m histo.ensemble runs='[<run>,<run>]' [methods=...] [out=<dir>]`` (``histo-ensemble``).

Or pick the members by model name from a multirun directory: ``members=v1|v2|all sweep_dir=<dir>``.
See conf/ensemble.yaml for every option and :mod:`histo.ensemble.stage` for what is written.
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from histo.command import hydra_command
from histo.ensemble.members import EnsembleError, runs_of_models
from histo.ensemble.methods import selected
from histo.ensemble.stage import run_ensemble


def ensemble(cfg: DictConfig, out: str) -> dict:
    """Run the ensemble stage for a composed ``ensemble`` config, writing into ``out``."""
    runs = _as_list(cfg.runs)
    if cfg.models:
        if not cfg.sweep_dir:
            raise EnsembleError(f"models={list(cfg.models)} picks runs from a multirun directory: set sweep_dir=<dir>.")
        runs += [str(p) for p in runs_of_models(cfg.sweep_dir, _as_list(cfg.models))]
    elif cfg.sweep_dir:
        raise EnsembleError("sweep_dir is set but no models to pick from it: add members=v1|v2|all or models='[...]'.")
    settings = OmegaConf.to_container(cfg.settings, resolve=True) if cfg.get("settings") else {}
    return run_ensemble(
        runs, out, methods=selected(cfg.methods), name=cfg.name, calibrate=cfg.calibrate, compare_to=cfg.compare_to,
        rank_by=cfg.rank_by, seed=cfg.seed, resamples=cfg.bootstrap.resamples, level=cfg.bootstrap.level,
        folds=cfg.cv.folds, settings=settings,
    )


def _as_list(value) -> list:
    """A list option given as one value (``runs=<dir>``, ``methods=soft``) is a list of one."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


@hydra_command("ensemble", prog="histo-ensemble")
def main(cfg: DictConfig) -> None:
    ensemble(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
