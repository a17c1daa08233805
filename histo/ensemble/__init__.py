"""The ensemble stage: combine finished runs' prediction files and score them (``python -m histo.ensemble``)."""
