"""The ensemble methods by name, each turning validated members into one :class:`Combination`.

==============  ==========================================================================  ==========
method          what                                                                        fitted on
==============  ==========================================================================  ==========
soft            mean of the members' softmax probabilities                                  nothing
hard            majority of the members' argmax, ties broken by the soft mean               nothing
weighted        weighted mean, weights >= 0 summing to 1, minimising log loss               val
stack           logistic regression on the members' logits, C chosen by grouped CV          val
greedy          Caruana et al. 2004 forward selection with replacement, by log loss         val
feature_stack   MLP (128, 32, BN, dropout 0.2) on concatenated penultimate features        val
==============  ==========================================================================  ==========

Nothing is fitted or selected on test labels: a method sees test logits only to predict them.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from histo.ensemble import averaging, feature_stack, greedy, stacking, weighted
from histo.ensemble.folds import Folds, out_of_fold
from histo.ensemble.members import EnsembleError, Members
from histo.evaluation import calibration

FITTED = ("weighted", "stack", "greedy", "feature_stack")
DESCRIPTIONS = {
    "soft": "mean of the members' softmax probabilities",
    "hard": "majority of the members' argmax, ties broken by the soft mean; scores are vote shares",
    "weighted": "weighted mean of probabilities, weights >= 0 summing to 1 fitted on val by log loss",
    "stack": "logistic regression on the members' val logits, C chosen by cross-validation on val",
    "greedy": "forward selection with replacement on val by log loss (Caruana et al. 2004)",
    "feature_stack": "MLP on the members' concatenated penultimate features, fitted on val, early stopping on a "
                     "val hold-out fold",
}

SCORES = {  # what a method's output is, for metrics.evaluate(score=...): probabilities unless listed
    "hard": "vote_share",
}

VAL_USED = {  # which val predictions a method reports (and a temperature is fitted on)
    "soft": "val",
    "hard": "val",
    "weighted": "val, out-of-fold predictions",
    "stack": "val, out-of-fold predictions",
    "greedy": "val, out-of-fold predictions",
    "feature_stack": "val hold-out fold (early stopping)",
}


@dataclass(frozen=True)
class Combination:
    """One method's output: test probabilities, val probabilities of images it was not fitted on, and the
    fitted parameters that :mod:`histo.ensemble.fitted` saves so that new images get the same combination."""

    method: str
    test: np.ndarray  # (test images, classes)
    val: np.ndarray  # (len(val_rows), classes): out-of-fold for fitted methods, the hold-out for feature_stack
    val_rows: np.ndarray  # rows of the val prediction file that ``val`` covers
    details: dict  # JSON-ready: weights, choices, folds
    params: dict = field(default_factory=dict)  # JSON-ready: what applying the fit needs (histo.ensemble.fitted)
    tensors: dict = field(default_factory=dict)  # name -> torch tensor (feature_stack's network), saved as safetensors

    def test_logits(self) -> np.ndarray:
        """Log-probabilities, written as the logits of the method's prediction file (softmax gives ``test`` back)."""
        return np.log(np.clip(self.test, 1e-300, None))

    def val_logits(self) -> np.ndarray:
        return np.log(np.clip(self.val, 1e-300, None))


def combine(method: str, members: Members, folds: Folds | None, seed: int, settings: dict | None = None) -> Combination:
    """Run ``method`` (one of :data:`METHODS`) on ``members``; fitted methods need the val ``folds``."""
    if method not in METHODS:
        raise EnsembleError(f"Unknown ensemble method {method!r}; use some of {', '.join(METHODS)}.")
    if method in FITTED and folds is None:
        raise ValueError(f"Method {method} is fitted on val and needs val folds.")
    check_settings(method, settings)
    return METHODS[method](members, folds, seed, **(settings or {}))


def check_settings(method: str, settings: dict | None) -> None:
    """Refuse options ``settings.<method>`` that ``method`` does not take, naming the valid ones."""
    unknown = sorted(set(settings or {}) - set(setting_names(method)))
    if unknown:
        raise EnsembleError(f"settings.{method} has unknown options {', '.join(unknown)}; "
                            f"valid: {', '.join(setting_names(method)) or 'none'}.")


def setting_names(method: str) -> list[str]:
    """The options a method takes from ``settings.<method>`` of the config."""
    if method == "feature_stack":
        return [f.name for f in dataclasses.fields(feature_stack.Settings)]
    return list(inspect.signature(METHODS[method]).parameters)[3:]  # after (members, folds, seed)


def _soft(members: Members, folds, seed) -> Combination:
    val = members.probabilities("val")
    return Combination(
        "soft", averaging.soft(members.probabilities("test")), averaging.soft(val), np.arange(val.shape[1]),
        {"members": members.names},
    )


def _hard(members: Members, folds, seed) -> Combination:
    val = members.probabilities("val")
    return Combination(
        "hard", averaging.hard(members.probabilities("test")), averaging.hard(val), np.arange(val.shape[1]),
        {"members": members.names},
    )


def _weighted(members: Members, folds: Folds, seed) -> Combination:
    val, test, labels = members.probabilities("val"), members.probabilities("test"), members.labels("val")
    weights = weighted.fit_weights(val, labels)
    oof = out_of_fold(
        folds, val.shape[1], val.shape[2],
        lambda fit, held: weighted.mix(val[:, held], weighted.fit_weights(val[:, fit], labels[fit])),
    )
    details = {
        "weights": _by_member(members, weights),
        "val_log_loss_out_of_fold": calibration.log_loss(labels, oof),
        **folds.describe(),
    }
    return Combination("weighted", weighted.mix(test, weights), oof, np.arange(len(labels)), details,
                       {"weights": weights.tolist()})


def _stack(members: Members, folds: Folds, seed, Cs=(0.01, 0.1, 1.0, 10.0, 100.0)) -> Combination:
    x_val = stacking.stack_features(members.logits("val"))
    x_test = stacking.stack_features(members.logits("test"))
    labels, n_classes = members.labels("val"), len(members.class_names)

    def oof_for(c):
        return out_of_fold(
            folds, len(labels), n_classes,
            lambda fit, held: stacking.predict(stacking.fit(x_val[fit], labels[fit], c), x_val[held], n_classes),
        )

    candidates = {float(c): oof_for(float(c)) for c in Cs}
    losses = {c: calibration.log_loss(labels, oof) for c, oof in candidates.items()}
    best_c = min(losses, key=lambda c: (losses[c], c))  # ties: the stronger regularisation
    model = stacking.fit(x_val, labels, best_c)
    coef = model["coef"]
    details = {
        "C": best_c,
        "val_log_loss_out_of_fold_by_C": {str(c): v for c, v in losses.items()},
        "inputs": "per-member log-odds" if n_classes == 2 else "per-member centred logits",
        "coefficients": _by_member(members, np.asarray(coef[0])) if n_classes == 2 else coef,
        "intercept": model["intercept"],
        **folds.describe(),
    }
    return Combination("stack", stacking.predict(model, x_test, n_classes), candidates[best_c], np.arange(len(labels)),
                       details, {"C": best_c, **model})


def _greedy(members: Members, folds: Folds, seed, rounds: int = 25) -> Combination:
    val, test, labels = members.probabilities("val"), members.probabilities("test"), members.labels("val")
    counts = greedy.select(val, labels, rounds)

    def fit_predict(fit, held):
        picked = greedy.select(val[:, fit], labels[fit], rounds)
        return weighted.mix(val[:, held], picked / picked.sum())

    oof = out_of_fold(folds, val.shape[1], val.shape[2], fit_predict)
    details = {
        "picks": {name: int(k) for name, k in zip(members.names, counts, strict=True)},
        "weights": _by_member(members, counts / counts.sum()),
        "rounds": int(rounds),
        "val_log_loss_out_of_fold": calibration.log_loss(labels, oof),
        **folds.describe(),
    }
    return Combination("greedy", weighted.mix(test, counts / counts.sum()), oof, np.arange(len(labels)), details,
                       {"weights": (counts / counts.sum()).tolist(), "picks": counts.tolist()})


def _feature_stack(members: Members, folds: Folds, seed, **settings) -> Combination:
    options = feature_stack.Settings(**{k: tuple(v) if k == "hidden" else v for k, v in settings.items()})
    val_parts = [m.features("val") for m in members]
    x_val = np.concatenate(val_parts, axis=1)
    x_test = np.concatenate([m.features("test") for m in members], axis=1)
    labels, n_classes = members.labels("val"), len(members.class_names)
    fit_rows, holdout = folds.splits[0]
    model = feature_stack.fit(x_val[fit_rows], labels[fit_rows], x_val[holdout], labels[holdout], n_classes, options,
                              seed)
    details = {
        "features": int(x_val.shape[1]),
        "hidden": list(options.hidden),
        "dropout": options.dropout,
        "epochs": model.epochs,
        "best_epoch": model.best_epoch,
        "holdout_images": len(holdout),
        "holdout_log_loss": model.holdout_log_loss,
        "holdout": f"fold 1 of: {folds.note}",
        "grouping": folds.grouping,
    }
    params = {"feature_sizes": [part.shape[1] for part in val_parts], "hidden": list(options.hidden),
              "dropout": options.dropout, "n_classes": n_classes}
    return Combination("feature_stack", model.predict(x_test), model.predict(x_val[holdout]), holdout, details,
                       params, model.tensors())


def _by_member(members: Members, values: np.ndarray) -> dict[str, float]:
    return {name: float(v) for name, v in zip(members.names, values, strict=True)}


METHODS: dict[str, Callable[..., Combination]] = {
    "soft": _soft,
    "hard": _hard,
    "weighted": _weighted,
    "stack": _stack,
    "greedy": _greedy,
    "feature_stack": _feature_stack,
}
