"""histo: config-driven experiments for histopathology image classification."""

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # the Hydra configs (repository's conf/)
