"""histo: config-driven experiments for histopathology image classification."""

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # the Hydra configs (repository's conf/)


def config_option(group: str, name: str):
    """``conf/<group>/<name>.yaml`` merged over the shared parts its ``defaults`` name (e.g. conf/model's
    ``_efficientnet``), as Hydra composes it, for scripts that read one option without composing a command."""
    from omegaconf import OmegaConf

    folder = Path(CONF_DIR) / group
    option = OmegaConf.load(folder / f"{name}.yaml")
    parts = [OmegaConf.load(folder / f"{d}.yaml") for d in option.pop("defaults", []) if d != "_self_"]
    return OmegaConf.merge(*parts, option)
