"""Grad-CAM of trained runs: CAM computation, the runs' exact evaluation input, montages and an index page.

``python -m histo.explain runs='[<run>,...]' images=misclassified out=<dir>`` (``histo-explain``);
see :mod:`histo.explain.stage` for what is written.
"""
