"""The error type of the explain stage (histo-report meets it too: it reads runs through histo.explain.inputs)."""

from histo.command import UserError


class ExplainError(UserError):
    """Runs, images or options that cannot be explained; the message names the key or path and what to do."""
