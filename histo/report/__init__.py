"""Reports: metrics with CIs, learning curves, confusion matrices, ROC, per-magnification, per-subtype and
per-patient views and a gallery of misclassified images, from runs and ensemble outputs.

``python -m histo.report runs='[<run or ensemble dir>,...]' out=<dir>`` (``histo-report``); see
:mod:`histo.report.stage` for what is written.
"""
