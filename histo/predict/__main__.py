"""Predict new images: ``python -m histo.predict runs='[<run>,...]' images=<folder>`` (``histo-predict``).

See conf/predict.yaml for every option and :mod:`histo.predict.stage` for what is written.
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from histo.command import hydra_command
from histo.predict.stage import run_predict


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


@hydra_command("predict", prog="histo-predict")
def main(cfg: DictConfig) -> None:
    predict(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
