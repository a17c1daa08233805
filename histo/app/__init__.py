"""The app: a Gradio page over a Predictor (histo-app). See :mod:`histo.app.page`."""
