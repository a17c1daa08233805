"""A report a person would rather look at than read:
``python -m histo.report runs='[<run or ensemble dir>,...]' out=<dir>`` (``histo-report``).

See conf/report.yaml for every option and :mod:`histo.report.stage` for what is written.
"""

from __future__ import annotations

import logging
import sys

import hydra
import matplotlib
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from histo import CONF_DIR
from histo.explain.errors import ExplainError
from histo.report.sources import ReportError

matplotlib.use("Agg")
log = logging.getLogger("histo.report")


def report(cfg: DictConfig, out: str):
    """Run the report stage for a composed ``report`` config, writing into ``out``."""
    from histo.report.stage import run_report

    runs = [cfg.runs] if isinstance(cfg.runs, str) else list(cfg.runs or [])
    explain = cfg.explain if isinstance(cfg.explain, str) or cfg.explain is None else OmegaConf.to_container(cfg.explain)
    return run_report(
        runs, out, split=cfg.split, title=cfg.title, compare_to=cfg.compare_to, explain=explain,
        rank_by=cfg.rank_by, ensemble_members=cfg.ensemble_members, gallery_max=cfg.gallery.max_images,
        thumbnail=cfg.gallery.thumbnail, data_root=cfg.data_root, resamples=cfg.bootstrap.resamples,
        level=cfg.bootstrap.level, seed=cfg.seed,
    )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="report")
def main(cfg: DictConfig) -> None:
    try:
        report(cfg, HydraConfig.get().runtime.output_dir)
    except (ReportError, ExplainError) as error:
        log.error("%s", error)
        sys.exit(1)


if __name__ == "__main__":
    main()
