"""Stacking on logits: a logistic regression on the members' val logits, its strength chosen by CV on val.

Inputs per image: for the binary task each member's log-odds (logit_malignant - logit_benign, the
only thing softmax sees); for more classes each member's logits centred on their mean. The L2
strength C is chosen from a grid by the out-of-fold val log loss over patient-grouped folds
(:mod:`histo.ensemble.folds`), then the model is refitted on all of val and applied to test.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, softmax
from sklearn.linear_model import LogisticRegression


def stack_features(logits: np.ndarray) -> np.ndarray:
    """(members, images, classes) logits -> (images, features) inputs of the meta-classifier.

    >>> stack_features(np.array([[[0.0, 2.0]], [[1.0, -1.0]]])).tolist()   # binary: per-member log-odds
    [[2.0, -2.0]]
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[2] == 2:
        return (logits[:, :, 1] - logits[:, :, 0]).T
    centred = logits - logits.mean(axis=2, keepdims=True)
    return centred.transpose(1, 0, 2).reshape(logits.shape[1], -1)


def fit(features: np.ndarray, labels: np.ndarray, c: float) -> dict:
    """Fit the meta-classifier; returns its parameters (plain lists, what :func:`predict` and the fitted file need)."""
    model = LogisticRegression(C=c, max_iter=5000).fit(features, labels)
    return {"coef": model.coef_.tolist(), "intercept": model.intercept_.tolist(), "classes": model.classes_.tolist()}


def predict(params: dict, features: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over all ``n_classes`` (a class absent from the fitting rows gets 0), as scikit-learn's
    ``predict_proba``: the logistic function of the decision value for two fitted classes, softmax for more.

    >>> params = {"coef": [[2.0]], "intercept": [0.0], "classes": [0, 1]}
    >>> predict(params, np.array([[0.0], [1.0]]), 2).round(3).tolist()
    [[0.5, 0.5], [0.119, 0.881]]
    """
    decision = np.asarray(features, dtype=np.float64) @ np.asarray(params["coef"], dtype=np.float64).T
    decision = decision + np.asarray(params["intercept"], dtype=np.float64)
    classes = np.asarray(params["classes"], dtype=int)
    if len(classes) == 2:
        positive = expit(decision[:, 0])
        proba = np.stack([1 - positive, positive], axis=1)
    else:
        proba = softmax(decision, axis=1)
    out = np.zeros((len(proba), n_classes))
    out[:, classes] = proba
    return out
