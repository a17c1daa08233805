"""A report a person would rather look at than read:
``python -m histo.report runs='[<run or ensemble dir>,...]' out=<dir>`` (``histo-report``).

See conf/report.yaml for every option and :mod:`histo.report.stage` for what is written.
"""

from __future__ import annotations

import matplotlib
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from histo.command import hydra_command

matplotlib.use("Agg")


def report(cfg: DictConfig, out: str):
    """Run the report stage for a composed ``report`` config, writing into ``out``."""
    from histo.report.gallery import GallerySettings
    from histo.report.stage import run_report

    runs = [cfg.runs] if isinstance(cfg.runs, str) else list(cfg.runs or [])
    explain = cfg.explain if isinstance(cfg.explain, str) or cfg.explain is None else OmegaConf.to_container(cfg.explain)
    return run_report(
        runs, out, split=cfg.split, title=cfg.title, compare_to=cfg.compare_to, explain=explain,
        rank_by=cfg.rank_by, ensemble_members=cfg.ensemble_members, gallery=GallerySettings(**cfg.gallery),
        data_root=cfg.data_root, resamples=cfg.bootstrap.resamples, level=cfg.bootstrap.level, seed=cfg.seed,
    )


@hydra_command("report", prog="histo-report")
def main(cfg: DictConfig) -> None:
    report(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
