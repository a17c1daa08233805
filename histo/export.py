"""Export a run for serving: ``python -m histo.export run=<run dir> format=onnx`` (``histo-export``).

See conf/export.yaml for the options and :mod:`histo.predict.export` for the model file and its sidecar.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from histo import CONF_DIR
from histo.predict.errors import PredictError
from histo.predict.export import FORMATS, export_run

log = logging.getLogger("histo.export")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    images = OmegaConf.to_container(cfg, resolve=True)["images"]
    out = cfg.out or Path(HydraConfig.get().runtime.output_dir) / f"{Path(cfg.run).name}{FORMATS.get(cfg.format, '')}"
    try:
        export_run(cfg.run, cfg.format, out, images)
    except PredictError as error:
        log.error("%s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
