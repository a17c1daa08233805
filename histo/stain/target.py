"""A fitted stain target: the few numbers a normalizer maps every image to, saved as small JSON.

A run records it (``stain_target.json`` in the run directory and ``stain.target_fit`` in run.json),
so it can be repeated without the target image: ``stain.target_file=<run>/stain_target.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

FORMAT = "histo.stain_target/1"
OUTPUT_NEUTRAL = ("on_failure",)  # options that decide what happens on failure, not which pixels come out


@dataclass(frozen=True)
class StainTarget:
    """``values``: name -> nested lists of floats, e.g. ``stain_matrix`` (2x3, rows haematoxylin then
    eosin, unit optical-density vectors) and ``max_concentrations`` (their 99th percentiles), or the
    L*a*b* ``means`` and ``stds`` for Reinhard. ``options`` are the normalizer's settings it was
    fitted with, ``source`` what it was fitted on (image paths)."""

    method: str
    values: dict
    options: dict = field(default_factory=dict)
    source: list[str] = field(default_factory=list)

    def tensor(self, name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.tensor(self.values[name], dtype=dtype, device=device)

    @property
    def fingerprint(self) -> str:
        """A short hash of the method, values and the options that change pixels (not the source, not
        ``on_failure``): equal fingerprints map images identically, e.g. a key for a cache of normalized images."""
        pixel_options = {k: v for k, v in self.options.items() if k not in OUTPUT_NEUTRAL}
        content = json.dumps([self.method, self.values, pixel_options], sort_keys=True)
        return hashlib.sha256(content.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    def save(self, path: str | Path) -> Path:
        """Write the JSON file atomically (several DDP processes may write the same bytes)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> StainTarget:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Stain target file {path} does not exist (stain.target_file).")
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a stain target file ({FORMAT}); write one with histo-stain or a run.")
        return cls(data["method"], data["values"], data.get("options", {}), data.get("source", []))
