"""Grad-CAM montages: ``python -m histo.explain runs='[<run>,...]' images=misclassified out=<dir>`` (``histo-explain``).

See conf/explain.yaml for every option and :mod:`histo.explain.stage` for what is written.
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from histo.command import hydra_command
from histo.explain.stage import run_explain


def explain(cfg: DictConfig, out: str) -> dict:
    """Run the explain stage for a composed ``explain`` config, writing into ``out``."""
    runs = [cfg.runs] if isinstance(cfg.runs, str) else list(cfg.runs or [])
    target = str(cfg.target).lower()  # `target=true` reaches here as the YAML boolean True
    images = cfg.images if isinstance(cfg.images, str) else OmegaConf.to_container(cfg.images, resolve=True)
    return run_explain(
        runs, out, images=images, n=cfg.n, split=cfg.split, misclassified_by=cfg.misclassified_by,
        method=cfg.method, layer=cfg.layer, target=target, data_root=cfg.data_root, device=cfg.device,
        batch_size=cfg.batch_size, image_weight=cfg.image_weight, seed=cfg.seed, max_images=cfg.max_images,
    )


@hydra_command("explain", prog="histo-explain")
def main(cfg: DictConfig) -> None:
    explain(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
