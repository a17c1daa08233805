"""The JSON files the stages write (run.json, metrics.json): strict JSON that every reader accepts."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np


def strict(value):
    """NaN and infinities become null, numpy scalars plain numbers, keys strings.

    >>> strict({"a": float("nan"), 1: [np.float32(0.5), np.int64(3), np.bool_(True)]})
    {'a': None, '1': [0.5, 3, True]}
    """
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str | Path, document, indent: int = 2) -> Path:
    """Write ``document`` as strict JSON (objects it cannot encode are written as strings), atomically:
    a reader sees the old file or the new one, never part of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(strict(document), indent=indent, default=str, allow_nan=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
