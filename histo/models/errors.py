"""The error of a model that cannot be built or loaded."""

from __future__ import annotations

from histo.command import UserError


class ModelError(UserError):
    """A model that cannot be built; the message names the config key and what to do."""
