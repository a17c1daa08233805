"""Write the synthetic BreaKHis tree: ``histo-synth out=<dir> [patients_per_subtype=2 ...]``."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from histo.command import hydra_command
from histo.data.breakhis import build_index
from histo.data.synthetic import SyntheticSpec, write_dataset

log = logging.getLogger("histo.synth")


@hydra_command("synth", prog="histo-synth")
def main(cfg: DictConfig) -> None:
    spec = SyntheticSpec(**{k: v for k, v in cfg.items() if k not in ("out", "overwrite", "workers")})
    root = write_dataset(cfg.out, spec, overwrite=cfg.overwrite, workers=cfg.workers)
    log.info("Synthetic BreaKHis at %s: %s", root, build_index(root, check_images=False).summary())
    log.info("Train on it with: python -m histo.train data.root=%s", root)


if __name__ == "__main__":
    main()
