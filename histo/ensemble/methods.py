"""The ensemble methods: one :class:`Method` declaration each in :data:`REGISTRY`, from which everything
else derives (histo-ensemble's choices and default list, metrics.json's descriptions, which val
predictions a method reports, how histo-predict applies a fitted method, the tests that loop over them).

Adding a method is one entry in :data:`REGISTRY` with its two functions (and a row in README.md's method
table, which a test checks). Nothing is fitted or selected on test labels: a method sees test logits only
to predict them.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from histo.ensemble import averaging, feature_stack, greedy, stacking, weighted
from histo.ensemble.feature_stack import FittedMLP
from histo.ensemble.folds import Folds, out_of_fold
from histo.ensemble.members import EnsembleError, Members
from histo.evaluation import calibration, predictions

if TYPE_CHECKING:
    from histo.ensemble.fitted import FittedEnsemble

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


@dataclass(frozen=True)
class Method:
    """One ensemble method, declared once: what it is, what it is fitted on, and its two functions."""

    name: str
    description: str  # metrics.json's "description" of the method
    fitted_on: str  # "nothing" | "val": fitted methods need the val folds
    val_used: str  # which val predictions it reports (and a temperature is fitted on)
    combine: Callable[..., Combination]  # (members, folds, seed, **settings) -> Combination
    apply: Callable[..., np.ndarray]  # (FittedEnsemble, member logits (M, N, C), member features) -> (N, C)
    score: str = "probability"  # what its output is, for metrics.evaluate(score=...)
    needs_features: bool = False  # combines the members' penultimate features (runs with predict.features=true)
    default: bool = True  # among histo-ensemble's default methods (methods=default)
    settings: type | None = None  # dataclass of its settings.<name> options; None: combine's keyword arguments

    @property
    def fitted(self) -> bool:
        return self.fitted_on != "nothing"

    def setting_names(self) -> list[str]:
        """The options it takes from ``settings.<name>`` of the config."""
        if self.settings is not None:
            return [f.name for f in dataclasses.fields(self.settings)]
        return list(inspect.signature(self.combine).parameters)[3:]  # after (members, folds, seed)


def combine(method: str, members: Members, folds: Folds | None, seed: int, settings: dict | None = None) -> Combination:
    """Run ``method`` (one of :data:`METHODS`) on ``members``; fitted methods need the val ``folds``."""
    if method not in METHODS:
        raise EnsembleError(f"Unknown ensemble method {method!r}; use some of {', '.join(METHODS)}.")
    if METHODS[method].fitted and folds is None:
        raise ValueError(f"Method {method} is fitted on val and needs val folds.")
    check_settings(method, settings)
    return METHODS[method].combine(members, folds, seed, **(settings or {}))


def check_settings(method: str, settings: dict | None) -> None:
    """Refuse options ``settings.<method>`` that ``method`` does not take, naming the valid ones."""
    names = METHODS[method].setting_names()
    unknown = sorted(set(settings or {}) - set(names))
    if unknown:
        raise EnsembleError(f"settings.{method} has unknown options {', '.join(unknown)}; "
                            f"valid: {', '.join(names) or 'none'}.")


def selected(methods) -> list[str]:
    """The method names of a ``methods`` option: ``default`` (:data:`DEFAULT`), ``all``, one name or a list."""
    if methods is None or methods == "default":
        return list(DEFAULT)
    if methods == "all":
        return list(METHODS)
    return [methods] if isinstance(methods, str) else list(methods)


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


def _probabilities(logits: np.ndarray) -> np.ndarray:
    return predictions.softmax(logits)


def _apply_soft(fitted: FittedEnsemble, logits, features) -> np.ndarray:
    return averaging.soft(_probabilities(logits))


def _apply_hard(fitted: FittedEnsemble, logits, features) -> np.ndarray:
    return averaging.hard(_probabilities(logits))


def _apply_weights(fitted: FittedEnsemble, logits, features) -> np.ndarray:
    return weighted.mix(_probabilities(logits), fitted.params["weights"])


def _apply_stack(fitted: FittedEnsemble, logits, features) -> np.ndarray:
    return stacking.predict(fitted.params, stacking.stack_features(logits), len(fitted.class_names))


def _apply_feature_stack(fitted: FittedEnsemble, logits, features) -> np.ndarray:
    p = fitted.params
    sizes = [np.asarray(f).shape[1] for f in features]
    if sizes != list(p["feature_sizes"]):
        raise EnsembleError(f"{fitted.path}: the members give features of sizes {sizes}, the MLP was fitted on "
                            f"{p['feature_sizes']}.")
    mlp = FittedMLP.from_tensors(fitted.tensors, p["hidden"], p["dropout"], p["n_classes"])
    return mlp.predict(np.concatenate([np.asarray(f, dtype=np.float32) for f in features], axis=1))


OUT_OF_FOLD = "val, out-of-fold predictions"
REGISTRY: tuple[Method, ...] = (
    Method("soft", "mean of the members' softmax probabilities", "nothing", "val", _soft, _apply_soft),
    Method("hard", "majority of the members' argmax, ties broken by the soft mean; scores are vote shares",
           "nothing", "val", _hard, _apply_hard, score="vote_share"),
    Method("weighted", "weighted mean of probabilities, weights >= 0 summing to 1 fitted on val by log loss",
           "val", OUT_OF_FOLD, _weighted, _apply_weights),
    Method("stack", "logistic regression on the members' val logits, C chosen by cross-validation on val",
           "val", OUT_OF_FOLD, _stack, _apply_stack),
    Method("greedy", "forward selection with replacement on val by log loss (Caruana et al. 2004)",
           "val", OUT_OF_FOLD, _greedy, _apply_weights),
    Method("feature_stack", "MLP on the members' concatenated penultimate features, fitted on val, early stopping "
           "on a val hold-out fold", "val", "val hold-out fold (early stopping)", _feature_stack,
           _apply_feature_stack, needs_features=True, default=False, settings=feature_stack.Settings),
)
METHODS: dict[str, Method] = {m.name: m for m in REGISTRY}
DEFAULT: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.default)  # histo-ensemble's methods=default
