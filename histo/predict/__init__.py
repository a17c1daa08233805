"""The predict stage: trained runs or a fitted ensemble applied to new images (histo-predict, the app, export)."""

from histo.predict.errors import PredictError
from histo.predict.predictor import PredictionResult, Predictor

__all__ = ["PredictError", "PredictionResult", "Predictor"]
