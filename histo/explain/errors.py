"""The error type of the explain stage (a run whose input cannot be rebuilt raises
:class:`histo.evaluation.run_inputs.RunInputError`, which every stage shares)."""

from histo.command import UserError


class ExplainError(UserError):
    """Runs, images or options that cannot be explained; the message names the key or path and what to do."""
