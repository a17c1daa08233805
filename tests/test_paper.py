"""The paper's printed numbers, stored once as data, agree with their own confusion matrices."""

from __future__ import annotations

import pytest

from histo.evaluation import paper


def test_paper_numbers_reproduce_from_their_confusion_matrices():
    table = paper.paper_results()
    assert {"v1_b0", "v2_s", "v1 soft", "v1 hard", "v2 soft", "v2 hard", "v1 feature_stack",
            "v2 feature_stack"} <= set(table.index)
    with_cm = table.dropna(subset=["tp"])
    assert len(with_cm) == 16
    for key, row in with_cm.iterrows():
        tp, fn, fp, tn = row[["tp", "fn", "fp", "tn"]]
        assert tp + fn == 812 and fp + tn == 370, key  # the paper's test split 1
        assert row["errors"] == fn + fp, key
        assert row["accuracy"] == pytest.approx((tp + tn) / 1182, abs=5e-5), key
        assert row["precision"] == pytest.approx(tp / (tp + fp), abs=5e-5), key
        assert row["recall"] == pytest.approx(tp / (tp + fn), abs=5e-5), key
        assert row["specificity"] == pytest.approx(tn / (tn + fp), abs=5e-5), key
        assert row["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=5e-5), key
        assert row["balanced_accuracy"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2, abs=5e-5), key


def test_paper_keys_match_our_names():
    assert paper.member_key("v2_b1") in paper.paper_results().index
    assert paper.ensemble_key("v2", "soft") in paper.paper_results().index
    assert paper.member_key("v1_b0", "vahadane") in paper.paper_results().index
