"""The app: ``python -m histo.app runs='[<run>,...]' [examples=<folder>]`` (``histo-app``); prints its URL.

See conf/app.yaml for the options and :mod:`histo.app.page` for the page. Runs offline: Gradio's
analytics and version check are switched off before Gradio is imported, and its assets are local.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from histo.command import hydra_command
from histo.predict import PredictError
from histo.predict.predictor import load_predictor
from histo.predict.sources import SourceError, collect

log = logging.getLogger("histo.app")


def examples(spec, limit: int) -> dict[str, Path]:
    """Display name -> file of up to ``limit`` example images (spread evenly over the sorted files)."""
    if not spec:
        return {}
    try:
        sources, _ = collect(spec)
    except SourceError as error:
        raise PredictError(f"examples: {error}") from error
    files = [s.path for s in sources]
    if len(files) > limit:
        files = [files[round(i * (len(files) - 1) / (limit - 1))] for i in range(limit)] if limit > 1 else files[:1]
    return {f.name: f for f in files}


@hydra_command("app", prog="histo-app")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from histo.app.page import build  # imports gradio: after its environment is set
    from histo.app.views import CSS

    container = OmegaConf.to_container(cfg, resolve=True)
    predictor = load_predictor(container["runs"], cfg.ensemble, cfg.method, cfg.calibrated, cfg.device,
                               str(cfg.precision))
    page = build(predictor, examples(container["examples"], cfg.examples_max), cfg.tta, cfg.cam_method,
                 cfg.cam_layer)
    page.queue(default_concurrency_limit=1)  # one analysis at a time; the next request waits its turn
    log.info("histo-app: %s of %s on %s", predictor.method, ", ".join(predictor.member_names), predictor.device)
    page.launch(server_name=cfg.server.host, server_port=cfg.server.port, share=cfg.server.share, css=CSS,
                max_file_size=cfg.max_file_size, footer_links=[], show_error=True)


if __name__ == "__main__":
    main()
