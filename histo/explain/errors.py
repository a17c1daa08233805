"""The one error type of the explain and report stages."""


class ExplainError(ValueError):
    """Runs, images or options that cannot be explained or reported; the message names the key or path and what to do."""
