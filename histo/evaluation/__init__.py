"""Prediction files, run directories and metrics: what every stage after training reads."""
