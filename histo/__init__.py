"""histo: config-driven experiments for histopathology image classification."""

from contextlib import contextmanager
from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # the Hydra configs (repository's conf/)


@contextmanager
def _config_repository():
    """Hydra's config repository: the running command's (Hydra allows one at a time), else one on ``conf/``."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield GlobalHydra.instance()
        return
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield GlobalHydra.instance()


def group_options(group: str) -> list[str]:
    """The options of config group ``group``, sorted, as Hydra's config repository lists them, with those
    of its subgroups as ``<subgroup>/<option>`` (``experiment=paper/v1_b0``). Names starting with ``_`` are
    parts that options share (``conf/model/_efficientnet``, ``conf/experiment/paper/_recipe``), not options:
    they are left out."""

    def listed(loader, prefix: str = "") -> list[str]:
        path = f"{group}/{prefix}".rstrip("/")
        names = [f"{prefix}{name}" for name in loader.get_group_options(path) if not name.startswith("_")]
        for subgroup in loader.list_groups(path):
            names += listed(loader, f"{prefix}{subgroup}/")
        return names

    with _config_repository() as hydra:
        return sorted(listed(hydra.config_loader()))


def config_option(group: str, name: str):
    """One option of a config group as Hydra composes it (its shared parts merged in, e.g. conf/model's
    ``_efficientnet``), for scripts that read one option without composing a command."""
    from hydra import compose

    with _config_repository():
        return compose(config_name=f"{group}/{name}")[group]
