"""Stain normalization (Vahadane, Macenko, Reinhard) in batched torch, behind one interface; stain=none is
no normalizer (None).

    normalizer = make_normalizer("vahadane").fit(target_rgb)      # numpy (H, W, 3) uint8, or several
    out = normalizer.transform(batch)                             # uint8 (N, 3, H, W) -> same, any device
    out, reasons = normalizer.normalize(batch, names)             # ... and why an image was left unchanged
    image = normalizer(image_rgb, name=path)                      # one numpy (H, W, 3) uint8 image
    normalizer = fit_from_config(cfg.stain, data_root, train_images)  # what a run's conf/stain says

A fitted target is a :class:`StainTarget` (``normalizer.target``: ``save``/``load``, ``fingerprint``).
:data:`METHODS` (name -> class) holds every ``@register``-ed normalizer: importing this package imports
each of its modules, so a method is complete with its module and its ``conf/stain/<name>.yaml``.
"""

import importlib
import pkgutil

from histo.stain.methods import METHODS, fit_from_config, make_normalizer
from histo.stain.normalizer import REASONS, StainError, StainNormalizer
from histo.stain.target import StainTarget

__all__ = ["METHODS", "REASONS", "StainError", "StainNormalizer", "StainTarget", "fit_from_config", "make_normalizer"]


def _import_modules() -> None:
    """Import every module of the package (not ``__main__``), so that each registers its method."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_modules()
