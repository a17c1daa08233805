"""The stain methods by name (:data:`METHODS`, each class's ``@register``), and a fitted normalizer from a
stain config (``conf/stain/*.yaml``).

A config names the method, its settings, and where the target comes from: ``target`` (an image,
or ``auto``) or ``target_file`` (a saved fit). Everything else in the config is the method's
settings, passed to its constructor.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from histo.command import UserError
from histo.data.breakhis import DataError
from histo.data.image_file import read_rgb
from histo.stain.normalizer import METHODS, StainError, StainNormalizer
from histo.stain.target import StainTarget

log = logging.getLogger(__name__)

NOT_SETTINGS = ("method", "target", "target_file")  # config keys that are not a method's settings
NONE = "none"  # the stain option that means no normalizer (None): conf/stain/none.yaml
TARGET_FILE = "stain_target.json"
AUTO = "auto"


def make_normalizer(method: str, **options) -> StainNormalizer:
    """An unfitted normalizer; ``options`` are the method's settings (a ``conf/stain`` option's keys)."""
    if method == NONE:
        raise ValueError(f"stain.method={NONE} means no normalizer (fit_from_config returns None for it); "
                         f"make_normalizer takes one of {', '.join(METHODS)}.")
    if method not in METHODS:
        raise ValueError(f"stain.method={method!r} is not valid; use one of {', '.join(METHODS)}.")
    problems = unknown_settings(method, options)
    if problems:
        raise UserError(f"{'; '.join(problems)}.")
    return METHODS[method](**options)


def unknown_settings(method: str, options: Mapping) -> list[str]:
    """One message per key of ``options`` (a stain config) that is not a setting of ``method``."""
    known = settings(method)
    return [f"stain.{key}={value}: not a setting of stain method {method}; its settings: {', '.join(known)} "
            f"(conf/stain/{method}.yaml)" for key, value in options.items() if key not in (*known, *NOT_SETTINGS)]


def settings(method: str) -> list[str]:
    """The settings a method's constructor takes: its own, then those every normalizer has."""
    names: list[str] = []
    for cls in METHODS[method].__mro__:
        init = vars(cls).get("__init__")
        for param in inspect.signature(init).parameters.values() if init else ():
            if param.name != "self" and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) \
                    and param.name not in names:
                names.append(param.name)
    return names


def fit_from_config(cfg: Mapping, root: str | Path | None = None, candidates: Sequence[str] = ()) -> StainNormalizer | None:
    """The fitted normalizer a stain config describes; None for ``method: none``.

    ``target``: an image path (absolute, relative to the working directory, or relative to ``root``,
    the dataset), or ``auto``: the first of ``candidates`` (paths relative to ``root``, e.g. the
    training images, in sorted order) that has enough tissue. ``target_file``: a saved fit instead.
    """
    cfg = dict(cfg)
    method = cfg.get("method", NONE)
    if method == NONE:
        return None
    normalizer = make_normalizer(method, **{k: v for k, v in cfg.items() if k not in NOT_SETTINGS})
    target, target_file = cfg.get("target"), cfg.get("target_file")
    if target and target_file:
        raise ValueError("Set one of stain.target and stain.target_file, not both.")
    if target_file:
        return normalizer.set_target(StainTarget.load(target_file))
    if target == AUTO:
        return _fit_auto(normalizer, Path(root) if root else Path("."), candidates)
    if target:
        path = resolve_image(target, root)
        return normalizer.fit(read_rgb(path), source=[str(path)])
    raise ValueError(
        f"stain.method={method} needs a target: stain.target=<image path> (absolute, or relative to data.root), "
        f"stain.target=auto (the first training image with enough tissue), or stain.target_file=<a saved "
        f"{TARGET_FILE}, e.g. from an earlier run>."
    )


def stain_record(cfg: Mapping, normalizer: StainNormalizer | None, out_dir: str | Path) -> dict:
    """Save the fitted target as ``<out_dir>/stain_target.json`` and return what run.json records
    under "stain": the config, the file name and the fitted values."""
    record = dict(cfg)
    if normalizer is not None and normalizer.target is not None:
        normalizer.target.save(Path(out_dir) / TARGET_FILE)
        record["saved_target"] = TARGET_FILE
        record["fingerprint"] = normalizer.target.fingerprint
        record["fitted"] = normalizer.target.to_dict()
    return record


def normalizer_from_record(record: Mapping | None, run_dir: str | Path) -> StainNormalizer | None:
    """The normalizer a run fitted, rebuilt from what :func:`stain_record` wrote (None for ``none``).

    The saved target holds the fitted values and the normalizer's settings at fit time, so the
    rebuilt normalizer maps images exactly as the run's did.
    """
    record = dict(record or {})
    method = record.get("method", NONE)
    if method in (None, NONE):
        return None
    saved = Path(run_dir) / (record.get("saved_target") or TARGET_FILE)
    if not saved.is_file():
        raise StainError(f"The run in {run_dir} used stain.method={method} but its fitted target {saved} is missing.")
    target = StainTarget.load(saved)
    if target.method != method:
        raise StainError(f"{saved} is a {target.method} target but the run's stain.method is {method}.")
    return make_normalizer(target.method, **target.options).set_target(target)


def resolve_image(path: str | Path, root: str | Path | None = None) -> Path:
    """An image path as given, or relative to ``root``; a clear error when it is neither."""
    candidates = [Path(path).expanduser()] + ([Path(root) / path] if root else [])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = " or ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"Stain target image {path} not found (looked at {where}); fix stain.target.")


def _fit_auto(normalizer: StainNormalizer, root: Path, candidates: Sequence[str]) -> StainNormalizer:
    for image in sorted(candidates):
        try:
            normalizer.fit(read_rgb(root / image), source=[str(image)])
        except (StainError, DataError):  # too little tissue, or not readable: the next one
            continue
        log.info("stain.target=auto: fitted the %s target on %s", normalizer.method, image)
        return normalizer
    raise StainError(f"stain.target=auto: none of the {len(candidates)} training images has enough tissue "
                     "to fit a stain target; set stain.target=<image path>.")
