"""histo: config-driven experiments for histopathology image classification."""

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # the Hydra configs (repository's conf/)


def group_options(group: str) -> list[str]:
    """The options of config group ``group``, sorted, as Hydra's config repository lists them (that of the
    running command, or of ``conf/``), with those of its subgroups as ``<subgroup>/<option>``
    (``experiment=paper/v1_b0``). Names starting with ``_`` are parts that options share
    (``conf/model/_efficientnet``, ``conf/experiment/paper/_recipe``), not options: they are left out."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def listed(loader, prefix: str = "") -> list[str]:
        path = f"{group}/{prefix}".rstrip("/")
        names = [f"{prefix}{name}" for name in loader.get_group_options(path) if not name.startswith("_")]
        for subgroup in loader.list_groups(path):
            names += listed(loader, f"{prefix}{subgroup}/")
        return names

    running = GlobalHydra.instance()
    if running.is_initialized():  # inside a Hydra command or compose: its repository (Hydra allows one at a time)
        return sorted(listed(running.config_loader()))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return sorted(listed(GlobalHydra.instance().config_loader()))


def config_option(group: str, name: str):
    """``conf/<group>/<name>.yaml`` merged over the shared parts its ``defaults`` name (e.g. conf/model's
    ``_efficientnet``), as Hydra composes it, for scripts that read one option without composing a command."""
    from omegaconf import OmegaConf

    folder = Path(CONF_DIR) / group
    option = OmegaConf.load(folder / f"{name}.yaml")
    parts = [OmegaConf.load(folder / f"{d}.yaml") for d in option.pop("defaults", []) if d != "_self_"]
    return OmegaConf.merge(*parts, option)
