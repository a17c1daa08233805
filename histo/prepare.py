"""Build the image caches training reads: ``histo-prepare data.root=<BreaKHis_v1> [models=all|[v1_b0,v2_s]]
[sizes=[96]]`` (or ``python -m histo.prepare ...``).

``data``, ``split`` and ``stain`` are the training config groups, so ``histo-prepare data.root=D
stain=vahadane stain.target=auto`` builds exactly the caches that ``histo-train data.root=D
stain=vahadane stain.target=auto model=...`` looks for (:mod:`histo.data.cache`). Each image is
decoded and stain-normalized once for all the sizes asked; caches that are already valid are kept.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from histo import config_option, group_options
from histo.command import UserError, hydra_command
from histo.config_check import check_prepare_config
from histo.data.cache import ImageCache, ensure
from histo.data.datamodule import load_data, loader_workers
from histo.stain.methods import fit_from_config

log = logging.getLogger("histo.prepare")


def model_sizes(models=None, sizes=()) -> dict[int, list[str]]:
    """Image size -> the models (options of the ``model`` group) that need it, plus the extra ``sizes``.
    ``models=None`` means all models when no ``sizes`` are given, and none when they are."""
    available = group_options("model")
    if models is None:
        models = [] if sizes else "all"
    names = available if models == "all" else [str(m) for m in ([models] if isinstance(models, str) else models)]
    out: dict[int, list[str]] = {}
    for name in names:
        if name not in available:
            raise UserError(f"models: {name!r} is not a model; use all or a list of {', '.join(available)}.")
        out.setdefault(int(config_option("model", name).image_size), []).append(name)
    for size in sizes or ():
        out.setdefault(int(size), []).append(f"{size}px")
    if not out:
        raise UserError("Nothing to prepare: give models=all, models=[v1_b0,...] or sizes=[...].")
    return dict(sorted(out.items()))


def prepare(cfg: DictConfig) -> dict[int, tuple[ImageCache, str]]:
    """Make sure a valid cache exists for each size; returns size -> (cache, what happened)."""
    check_prepare_config(cfg)
    wanted = model_sizes(cfg.models, cfg.sizes)
    data = load_data(cfg.data, cfg.split, cfg.paths.synthetic_dir)
    stain = fit_from_config(cfg.stain, data.index.root, data.split.images("train"))
    workers = loader_workers(cfg.data)
    images = data.index.images
    caches = ensure(cfg.data.cache_dir, data.index, wanted, cfg.data.interpolation, stain, workers,
                    rebuild=cfg.rebuild)
    print(table(caches, wanted))
    if stain is not None:
        unchanged = next(iter(caches.values()))[0].unchanged(images)
        print(f"Stain normalization ({stain.method}, target {stain.target.fingerprint}) left {sum(unchanged.values())} "
              f"of {len(images)} images unchanged{': ' + str(unchanged) if unchanged else ''}; each cache's index "
              "lists them (column stain).")
    print("Training with data.cache=auto (the default) and the same data.*, split.* and stain.* settings reads them.")
    return caches


def table(caches: dict[int, tuple[ImageCache, str]], wanted: dict[int, list[str]]) -> str:
    lines = ["| size | models | images | MB | status | path |", "|---|---|---|---|---|---|"]
    for size, (cache, status) in caches.items():
        mb = cache.array_path.stat().st_size / 2**20
        lines.append(f"| {size} | {', '.join(wanted[size])} | {len(cache)} | {mb:.1f} | {status} | {cache.directory} |")
    return "\n".join(lines)


@hydra_command("prepare", prog="histo-prepare")
def main(cfg: DictConfig) -> None:
    prepare(cfg)


if __name__ == "__main__":
    main()
