from __future__ import annotations

import math

import numpy as np
import pytest

from qtbench.harness.core import metrics as M


def test_topk_with_ties_prefers_lower_index():
    logits = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    labels = np.array([1, 1])
    # row 0: tie between 0 and 1 → argmax is 0 → wrong; row 1: tie between 1 and 2 → 1 → right
    assert M.topk_accuracy(logits, labels, 1) == 0.5
    assert M.topk_accuracy(logits, labels, 2) == 1.0
    assert M.topk_accuracy(logits, labels, 5) == 1.0  # k capped at the class count


def test_kl_cosine_sqnr_on_hand_computed_values():
    ref = np.array([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    q = np.array([[0.0, 0.0]])  # softmax = [1/2, 1/2]
    expected_kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert M.kl_divergence(ref, q) == pytest.approx(expected_kl, abs=1e-12)
    assert M.kl_divergence(ref, ref) == pytest.approx(0.0, abs=1e-15)
    a, b = np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 1.0], [2.0, 2.0]])
    assert M.logit_cosine(a, b) == pytest.approx(0.5)
    assert M.logit_cosine(np.zeros((1, 2)), np.zeros((1, 2))) == 1.0
    ref2, q2 = np.array([[3.0, 4.0]]), np.array([[3.0, 3.0]])  # signal 25, noise 1
    assert M.sqnr_db(q2, ref2) == pytest.approx(10 * math.log10(25))
    assert M.sqnr_db(ref2, ref2) == math.inf
    assert M.max_abs_error(q2, ref2) == 1.0


def test_ece_with_a_single_sample_bin():
    # confidences 0.9 (correct) and 0.6 (wrong) land in different bins
    probs = np.array([[0.9, 0.1], [0.6, 0.4]])
    labels = np.array([0, 1])
    ece, mce = M.ece_mce(probs, labels)
    assert ece == pytest.approx(0.5 * 0.1 + 0.5 * 0.6)
    assert mce == pytest.approx(0.6)


def test_ece_all_correct_and_bin_edges():
    probs = np.array([[1.0, 0.0], [1.0, 0.0], [0.8, 0.2]])
    ece, _ = M.ece_mce(probs, np.array([0, 0, 0]))
    assert ece == pytest.approx((0.2) / 3)  # the 0.8 bin: acc 1 vs conf 0.8; the 1.0 bin is perfect
    bins = M.calibration_bins(np.array([[1 / 15 * 2, 0.0]]), np.array([0]))  # exactly on an edge: (1/15, 2/15]
    assert bins["count"][1] == 1


def test_nll_and_brier():
    logits = np.array([[0.0, math.log(3.0)]])
    assert M.nll(logits, np.array([1])) == pytest.approx(-math.log(0.75))
    assert M.brier(M.softmax(logits), np.array([1])) == pytest.approx(0.25**2 + 0.25**2)


def test_quality_without_references_is_nan_not_invented():
    q = M.quality(np.eye(3), None, None)
    assert all(math.isnan(v) for v in q.values())
    q = M.quality(np.eye(3), np.eye(3), np.arange(3))
    assert q["top1"] == 1.0 and q["top1_agreement"] == 1.0 and q["kl_fp"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="labels must lie"):
        M.quality(np.eye(3), None, np.array([0, 1, 7]))
