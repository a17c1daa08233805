"""Export a run for serving: ``python -m histo.export run=<run dir> format=onnx`` (``histo-export``).

See conf/export.yaml for the options and :mod:`histo.predict.export` for the model file and its sidecar.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from histo.command import hydra_command
from histo.predict.export import FORMATS, export_run


@hydra_command("export", prog="histo-export")
def main(cfg: DictConfig) -> None:
    images = OmegaConf.to_container(cfg, resolve=True)["images"]
    out = cfg.out or Path(HydraConfig.get().runtime.output_dir) / f"{Path(cfg.run).name}{FORMATS.get(cfg.format, '')}"
    export_run(cfg.run, cfg.format, out, images)


if __name__ == "__main__":
    main()
