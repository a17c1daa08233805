"""Predict new images: ``python -m histo.predict runs='[<run>,...]' images=<folder>`` (``histo-predict``).

See conf/predict.yaml for every option and :mod:`histo.predict.stage` for what is written.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from histo import CONF_DIR
from histo.ensemble.members import EnsembleError
from histo.explain.errors import ExplainError
from histo.predict.errors import PredictError
from histo.predict.stage import run_predict

log = logging.getLogger("histo.predict")


def predict(cfg: DictConfig, out: str):
    """Run the predict stage for a composed ``predict`` config, writing into ``out``."""
    container = OmegaConf.to_container(cfg, resolve=True)
    return run_predict(
        container["images"], out, runs=container["runs"], ensemble=cfg.ensemble, method=cfg.method,
        calibrated=cfg.calibrated, tta=cfg.tta, device=cfg.device, precision=str(cfg.precision),
        batch_size=cfg.batch_size, num_workers=cfg.num_workers, max_pixels=cfg.max_pixels, cam=cfg.cam,
        cam_method=cfg.cam_method, cam_layer=cfg.cam_layer, progress=cfg.progress,
        resamples=cfg.bootstrap.resamples, level=cfg.bootstrap.level, seed=cfg.seed,
    )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        predict(cfg, HydraConfig.get().runtime.output_dir)
    except (PredictError, EnsembleError, ExplainError) as error:
        log.error("%s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
