"""The error of a model that cannot be built or loaded."""

from __future__ import annotations


class ModelError(ValueError):
    """A model that cannot be built; the message names the config key and what to do."""
