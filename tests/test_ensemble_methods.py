"""Combination methods on small hand-computed arrays: averaging, voting, weights, greedy, stacking, folds, MLP;
and the method registry, whose every entry must be complete and agree with the config and the README."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import REPO
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from histo import CONF_DIR
from histo.ensemble import averaging, feature_stack, greedy, stacking, weighted
from histo.ensemble.folds import val_folds
from histo.ensemble.methods import DEFAULT, METHODS, REGISTRY, selected
from histo.evaluation import metrics


def _ensemble_config():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="ensemble")


@pytest.mark.parametrize("method", REGISTRY, ids=lambda m: m.name)
def test_every_registered_method_is_declared_completely(method):
    assert method.description and method.val_used
    assert method.fitted_on in ("nothing", "val") and method.fitted == (method.fitted_on == "val")
    assert method.score in metrics.SCORES
    assert callable(method.combine) and callable(method.apply)
    options = _ensemble_config().settings.get(method.name) or {}
    assert set(options) <= set(method.setting_names()), f"conf/ensemble.yaml settings.{method.name}"
    rows = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith(f"| {method.name} | ")]
    assert len(rows) == 1, f"README.md's method table needs one row for {method.name}"
    assert rows[0].split("|")[-2].strip().startswith(method.fitted_on), "README.md's 'fitted on' column"


def test_the_config_default_and_all_come_from_the_registry():
    assert len(METHODS) == len(REGISTRY)  # no two entries of one name
    assert selected(_ensemble_config().methods) == list(DEFAULT) == [m.name for m in REGISTRY if m.default]
    assert selected("all") == [m.name for m in REGISTRY] and selected(["soft"]) == ["soft"]
    settings = _ensemble_config().settings
    assert set(settings) <= set(METHODS), "conf/ensemble.yaml has settings for a method not in the registry"


def test_soft_is_the_mean_of_probabilities():
    probs = np.array([[[0.2, 0.8], [0.6, 0.4]], [[0.4, 0.6], [0.9, 0.1]]])
    np.testing.assert_allclose(averaging.soft(probs), [[0.3, 0.7], [0.75, 0.25]])


def test_hard_vote_majority_and_tie():
    # image 1: two of three say malignant although the soft mean says benign -> malignant
    # image 2: one says malignant, two say benign -> benign
    three = np.array([
        [[0.45, 0.55], [0.4, 0.6]],
        [[0.45, 0.55], [0.7, 0.3]],
        [[0.99, 0.01], [0.8, 0.2]],
    ])
    assert averaging.soft(three)[0].argmax() == 0
    assert averaging.hard(three).argmax(axis=1).tolist() == [1, 0]
    # a tie between two members goes to the class with the higher soft mean
    tie = np.array([[[0.4, 0.6], [0.45, 0.55]], [[0.9, 0.1], [0.2, 0.8]]])
    # image 1: votes 1-1, soft (0.65, 0.35) -> benign; image 2: votes 0-2 -> malignant
    assert averaging.hard(tie).argmax(axis=1).tolist() == [0, 1]
    # the output is the vote share (nudged by at most 1e-6 to break the tie), not a made-up probability
    np.testing.assert_allclose(averaging.hard(tie), [[0.5, 0.5], [0, 1]], atol=1e-6)
    np.testing.assert_allclose(averaging.hard(three), [[1 / 3, 2 / 3], [2 / 3, 1 / 3]], atol=1e-6)
    np.testing.assert_allclose(averaging.hard(tie).sum(axis=1), 1.0)


def test_weighted_puts_all_weight_on_a_dominating_member():
    # member 0 gives the true class 0.8 on both images, member 1 only 0.6: any mix is worse than member 0 alone
    probs = np.array([[[0.2, 0.8], [0.8, 0.2]], [[0.4, 0.6], [0.6, 0.4]]])
    w = weighted.fit_weights(probs, np.array([1, 0]))
    np.testing.assert_allclose(w, [1.0, 0.0], atol=1e-6)


def test_weighted_interior_optimum_by_hand():
    # true-class probabilities a = (0.9, 0.3), b = (0.5, 0.5); loss -[log(0.5 + 0.4w) + log(0.5 - 0.2w)]
    # derivative 0.4 / (0.5 + 0.4w) = 0.2 / (0.5 - 0.2w) -> 0.2 - 0.08w = 0.1 + 0.08w -> w = 0.625
    probs = np.array([[[0.1, 0.9], [0.3, 0.7]], [[0.5, 0.5], [0.5, 0.5]]])
    labels = np.array([1, 0])
    w = weighted.fit_weights(probs, labels)
    np.testing.assert_allclose(w, [0.625, 0.375], atol=1e-5)
    np.testing.assert_allclose(weighted.mix(probs, w).sum(axis=1), 1.0)


def test_greedy_selects_with_replacement():
    p1 = np.array([[0.1, 0.9], [0.8, 0.2]])
    p2 = np.array([[0.8, 0.2], [0.1, 0.9]])
    p3 = np.full((2, 2), 0.5)
    probs, labels = np.stack([p1, p2, p3]), np.array([1, 1])
    assert greedy.select(probs, labels, rounds=1).tolist() == [0, 0, 1]  # the best single member
    assert greedy.select(probs, labels, rounds=4).tolist() == [1, 1, 2]  # member 3 picked twice
    many = greedy.select(probs, labels, rounds=60)
    assert many[0] == many[1] and many[2] < many[0]  # towards A + B at equal weight
    # a useless member is never picked
    bad = np.array([[0.9, 0.1], [0.9, 0.1]])
    assert greedy.select(np.stack([p1, bad]), labels, rounds=10)[1] == 0


def _informative_logits(rng, labels, n_noise=1):
    good = np.where(labels == 1, 2.0, -2.0) + rng.normal(0, 1.0, len(labels))
    members = [np.c_[np.zeros(len(labels)), good]]
    members += [np.c_[np.zeros(len(labels)), rng.normal(0, 2.0, len(labels))] for _ in range(n_noise)]
    return np.stack(members)


def test_stack_trusts_the_informative_member():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    x = stacking.stack_features(_informative_logits(rng, labels))
    model = stacking.fit(x, labels, c=1.0)
    assert model["coef"][0][0] > 0.5 and abs(model["coef"][0][1]) < 0.2
    probs = stacking.predict(model, x, 2)
    assert (probs.argmax(axis=1) == labels).mean() > 0.9


def test_stack_features_for_more_classes_are_centred_logits():
    logits = np.array([[[1.0, 2.0, 3.0]], [[0.0, 0.0, 3.0]]])
    np.testing.assert_allclose(stacking.stack_features(logits), [[-1, 0, 1, -1, -1, 2]])


def test_val_folds_group_patients_and_fall_back_to_images():
    labels = np.array([0] * 12 + [1] * 12)
    patients = np.repeat([f"p{i}" for i in range(8)], 3)  # 4 benign, 4 malignant patients
    folds = val_folds(labels, patients, n_splits=5, seed=0)
    assert folds.grouping == "patient" and len(folds.splits) == 4
    for fit, held in folds.splits:
        assert set(patients[fit]).isdisjoint(patients[held])
        assert set(labels[fit]) == {0, 1}
    # one patient per class: patient-grouped folds cannot keep both classes in training -> images
    folds = val_folds(labels, np.repeat(["a", "b"], 12), n_splits=3, seed=0)
    assert folds.grouping == "image" and len(folds.splits) == 3 and "too few" in folds.note
    with pytest.raises(ValueError, match="too few images"):
        val_folds(np.array([0, 0, 1]), np.array(["a", "b", "c"]), n_splits=5, seed=0)


def test_feature_stack_learns_and_is_deterministic():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)
    features = rng.normal(0, 1, (120, 10)).astype(np.float32)
    features[:, 0] += 3 * labels  # one informative feature
    settings = feature_stack.Settings(max_epochs=60, patience=10, batch_size=32)
    fit, hold = np.arange(90), np.arange(90, 120)
    a = feature_stack.fit(features[fit], labels[fit], features[hold], labels[hold], 2, settings, seed=3)
    b = feature_stack.fit(features[fit], labels[fit], features[hold], labels[hold], 2, settings, seed=3)
    pa, pb = a.predict(features), b.predict(features)
    np.testing.assert_array_equal(pa, pb)
    assert (pa[hold].argmax(axis=1) == labels[hold]).mean() > 0.85
    assert 1 <= a.best_epoch <= a.epochs <= 60
    net = feature_stack.mlp(10, 2)
    assert [type(m).__name__ for m in net][:4] == ["Linear", "BatchNorm1d", "ReLU", "Dropout"]
    assert [m.out_features for m in net if hasattr(m, "out_features")] == [128, 32, 2]
