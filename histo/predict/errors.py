"""The error every predict-stage refusal raises: the message names the run, file or option and what to do."""

from histo.command import UserError


class PredictError(UserError):
    """Prediction cannot start (a run, an ensemble or an option is unusable)."""
