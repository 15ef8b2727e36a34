"""Verification metrics: hand-computed cases, brute force over every threshold, scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from tripletface.evaluation import verification as v

# A hand-computed case. Sorted: 0.1 S, 0.2 D, 0.35 S, 0.4 S, 0.5 D, 0.6 S, 0.7 D, 0.9 D
# (S = matched, D = mismatched; 4 of each). Right decisions (S below t + D at/above t):
#   t=0.1 -> 0+4=4   t=0.15 -> 1+4=5   t=0.275 -> 1+3=4   t=0.375 -> 2+3=5
#   t=0.45 -> 3+3=6  t=0.55 -> 3+2=5   t=0.65 -> 4+2=6    t=0.8 -> 4+1=5   t>0.9 -> 4+0=4
# Best accuracy 6/8 = 0.75, first reached at t = 0.45.
HAND_D = np.array([0.1, 0.4, 0.35, 0.6, 0.2, 0.5, 0.7, 0.9])
HAND_S = np.array([True, True, True, True, False, False, False, False])


def brute_best(d, s):
    """Best accuracy over every threshold that can change a decision (and then some)."""
    u = np.unique(d)
    cands = np.concatenate([u - 1e-9, u, u + 1e-9, (u[:-1] + u[1:]) / 2, [u[0] - 1, u[-1] + 1]])
    accs = [np.mean((d < t) == s) for t in cands]
    return max(accs)


def test_accuracy_at_hand_case():
    assert v.accuracy_at(HAND_D, HAND_S, 0.45) == pytest.approx(6 / 8)
    assert v.accuracy_at(HAND_D, HAND_S, 0.3) == pytest.approx(4 / 8)  # accepts 0.1 S and 0.2 D
    assert v.accuracy_at(HAND_D, HAND_S, 0.0) == pytest.approx(4 / 8)  # accepts nothing
    assert v.accuracy_at(HAND_D, HAND_S, 0.4) == pytest.approx(5 / 8)  # strict: 0.4 is rejected


def test_best_threshold_hand_case():
    t, acc = v.best_threshold(HAND_D, HAND_S)
    assert acc == pytest.approx(0.75)
    assert t == pytest.approx(0.45)
    assert v.accuracy_at(HAND_D, HAND_S, t) == pytest.approx(acc)


@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 200
    s = rng.random(n) < 0.5
    d = np.round(np.where(s, rng.normal(0.8, 0.3, n), rng.normal(1.2, 0.3, n)), 2)  # rounding -> ties
    t, acc = v.best_threshold(d, s)
    assert acc == pytest.approx(brute_best(d, s))
    assert v.accuracy_at(d, s, t) == pytest.approx(acc)


def test_best_threshold_one_class_and_constant():
    assert v.best_threshold([0.3, 0.5], [True, True])[1] == 1.0
    assert v.best_threshold([0.3, 0.5], [False, False])[1] == 1.0
    t, acc = v.best_threshold([0.5, 0.5, 0.5], [True, False, True])
    assert acc == pytest.approx(2 / 3) and t > 0.5


def test_kfold_hand_case():
    # fold 0 = {0.1 S, 0.4 S, 0.2 D, 0.9 D}, fold 1 = {0.35 S, 0.6 S, 0.5 D, 0.7 D}
    # Held-out fold 0: on fold 1 (0.35 S, 0.5 D, 0.6 S, 0.7 D) the best t is 0.425 (3/4, first);
    #   fold 0 at 0.425: 0.1 S ok, 0.4 S ok, 0.2 D wrong, 0.9 D ok -> 0.75.
    # Held-out fold 1: on fold 0 (0.1 S, 0.2 D, 0.4 S, 0.9 D) the best t is 0.15 (3/4, first);
    #   fold 1 at 0.15: 0.35 S wrong, 0.6 S wrong, 0.5 D ok, 0.7 D ok -> 0.5.
    # mean 0.625, population std 0.125.
    folds = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    r = v.kfold_accuracy(HAND_D, HAND_S, fold_ids=folds)
    assert r["per_fold"] == pytest.approx([0.75, 0.5])
    assert r["thresholds"] == pytest.approx([0.425, 0.15])
    assert r["mean"] == pytest.approx(0.625)
    assert r["std"] == pytest.approx(0.125)
    assert r["fold_sizes"] == [4, 4] and r["n_folds"] == 2


def test_kfold_contiguous_equals_explicit_ids_and_brute_force():
    rng = np.random.default_rng(7)
    n = 100
    s = np.tile(np.repeat([True, False], 10), 5)  # LFW layout: per fold matched then mismatched
    d = np.round(np.where(s, rng.normal(0.8, 0.3, n), rng.normal(1.1, 0.3, n)), 2)
    r = v.kfold_accuracy(d, s, folds=5)
    ids = np.repeat(np.arange(5), 20)
    assert r == v.kfold_accuracy(d, s, fold_ids=ids)
    # brute force: best threshold on the other folds by trying every distance +- epsilon
    expected = []
    for f in range(5):
        train, test = ids != f, ids == f
        cands = np.sort(np.concatenate([d[train] - 1e-9, d[train] + 1e-9]))
        accs = [np.mean((d[train] < t) == s[train]) for t in cands]
        best = max(accs)
        # any threshold reaching the best on train; the held-out score depends on which, so
        # check ours reaches the best on train and scores the held-out fold with it
        t = r["thresholds"][f]
        assert np.mean((d[train] < t) == s[train]) == pytest.approx(best)
        expected.append(np.mean((d[test] < t) == s[test]))
    assert r["per_fold"] == pytest.approx(expected)
    assert r["mean"] == pytest.approx(np.mean(expected))
    assert r["std"] == pytest.approx(np.std(expected))


def test_kfold_unequal_contiguous_folds():
    d = np.linspace(0, 1, 11)
    s = d < 0.5
    r = v.kfold_accuracy(d, s, folds=3)
    assert r["fold_sizes"] == [4, 4, 3]


@pytest.mark.parametrize("bad", [1, 0, 100, 2.5, True])
def test_kfold_rejects_bad_folds(bad):
    with pytest.raises(ValueError, match="folds"):
        v.kfold_accuracy(HAND_D, HAND_S, folds=bad)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        v.accuracy_at([0.1, np.nan], [True, False], 0.5)
    with pytest.raises(ValueError, match="issame"):
        v.best_threshold([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="issame"):
        v.best_threshold([0.1, 0.2], [2, 0])
    with pytest.raises(ValueError, match="threshold"):
        v.accuracy_at([0.1, 0.2], [True, False], float("nan"))
    with pytest.raises(ValueError, match="fold_ids"):
        v.kfold_accuracy(HAND_D, HAND_S, fold_ids=[0, 1])
    with pytest.raises(ValueError, match="matched and mismatched"):
        v.roc_metrics([0.1, 0.2], [True, True])


@pytest.mark.parametrize("seed", range(4))
def test_auc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 500
    s = rng.random(n) < 0.4
    d = rng.random(n) + 0.3 * (~s)
    if seed % 2:
        d = np.round(d, 1)  # many ties
    m = v.roc_metrics(d, s)
    assert m["auc"] == pytest.approx(roc_auc_score(s, -d), abs=1e-12)
    assert m["n_genuine"] == s.sum() and m["n_impostor"] == (~s).sum()
    fpr, tpr = v.roc_points(d, s)
    sk_fpr, sk_tpr, _ = roc_curve(s, -d, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


@pytest.mark.parametrize("seed", range(4))
def test_tar_at_far_matches_sklearn_roc(seed):
    """TAR@FAR = the highest TPR among ROC points with FPR <= target; threshold reproduces it."""
    rng = np.random.default_rng(seed)
    n = 2000
    s = rng.random(n) < 0.5
    d = np.round(np.where(s, rng.normal(0.8, 0.2, n), rng.normal(1.2, 0.2, n)), 3)
    sk_fpr, sk_tpr, _ = roc_curve(s, -d, drop_intermediate=False)
    for far in (1e-2, 5e-2, 0.1):
        p = v.far_point(d, s, far)
        assert v.threshold_at_far(d, s, far) == p.threshold
        assert p.reachable
        assert p.tar == pytest.approx(sk_tpr[sk_fpr <= far].max())
        assert p.far <= far
        assert np.mean(d[s] < p.threshold) == pytest.approx(p.tar)
        assert np.mean(d[~s] < p.threshold) == pytest.approx(p.far)


def test_eer_constructed_exact_crossing():
    # genuine 0.1 0.2 0.3 0.6, impostor 0.4 0.5 0.7 0.8: at t=0.45 FAR = 1/4 (0.4) = FRR (0.6)
    d = [0.1, 0.2, 0.3, 0.6, 0.4, 0.5, 0.7, 0.8]
    s = [True] * 4 + [False] * 4
    m = v.roc_metrics(d, s)
    assert m["eer"] == pytest.approx(0.25)
    assert m["eer_threshold"] == pytest.approx(0.45)


def test_eer_constructed_interpolated():
    # genuine 0.1 0.2 0.5, impostor 0.3 0.4. t=0.25: FAR 0, FRR 1/3; t=0.35: FAR 1/2, FRR 1/3.
    # FAR = FRR where FAR crosses 1/3 on that segment: EER = 1/3; nearer point t=0.35.
    m = v.roc_metrics([0.1, 0.2, 0.5, 0.3, 0.4], [True, True, True, False, False])
    assert m["eer"] == pytest.approx(1 / 3)
    assert m["eer_threshold"] == pytest.approx(0.35)


def test_eer_separable_is_zero():
    m = v.roc_metrics([0.1, 0.2, 0.8, 0.9], [True, True, False, False])
    assert m["eer"] == 0.0 and m["auc"] == 1.0
    assert 0.2 < m["eer_threshold"] < 0.8


def test_tar_at_far_constructed():
    impostor = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4]
    genuine = [0.1, 0.2, 0.3, 0.55, 0.58, 0.65, 0.9, 1.0]
    d = np.array(genuine + impostor)
    s = np.array([True] * 8 + [False] * 10)
    # FAR 0.1 allows 1 false accept (0.5): largest threshold is just below 0.6 -> 0.59, TAR 5/8
    assert v.threshold_at_far(d, s, 0.1) == pytest.approx(0.59)
    p = v.far_point(d, s, 0.1)
    assert p.threshold == pytest.approx(0.59) and p.tar == pytest.approx(5 / 8)
    assert p.far == pytest.approx(0.1) and p.reachable
    # FAR 0.2 allows 2 (0.5, 0.6): threshold just below the third impostor 0.7, after the
    # genuine 0.65 -> midpoint 0.675, TAR 6/8
    p = v.far_point(d, s, 0.2)
    assert p.threshold == pytest.approx(0.675) and p.tar == pytest.approx(6 / 8)
    # FAR 0.01 < 1/10 impostors: not reachable; the zero-false-accept point, t = 0.4, TAR 3/8
    p = v.far_point(d, s, 0.01)
    assert not p.reachable
    assert p.threshold == pytest.approx(0.4) and p.tar == pytest.approx(3 / 8) and p.far == 0.0
    m = v.roc_metrics(d, s, far_targets=(0.01, 0.1))
    assert m["tar_at_far"][0.1] == pytest.approx((5 / 8, 0.59))
    assert m["tar_at_far"][0.01] == pytest.approx((3 / 8, 0.4))
    assert m["far_reachable"] == {0.01: False, 0.1: True}
    assert m["min_far"] == pytest.approx(0.1)


def test_far_reachability_by_impostor_count():
    rng = np.random.default_rng(0)
    s = np.array([True] * 1000 + [False] * 1000)
    d = rng.random(2000)
    m = v.roc_metrics(d, s, far_targets=(1e-4, 1e-3, 1e-2))
    assert m["far_reachable"] == {1e-4: False, 1e-3: True, 1e-2: True}
    with pytest.raises(ValueError, match="far"):
        v.threshold_at_far(d, s, 0.0)


def test_unscored_pairs_hand_case():
    # fold 0: 0.1 S, NaN S; fold 1: 0.9 D, NaN D. Each fold has one wrong pair whatever the threshold.
    d = np.array([0.1, np.nan, 0.9, np.nan])
    s = np.array([True, True, False, False])
    filled, n = v.score_with_failures(d, s)
    assert n == 2 and filled[1] == np.inf and filled[3] == -np.inf
    np.testing.assert_array_equal(filled[[0, 2]], [0.1, 0.9])
    assert v.kfold_accuracy(filled, s, folds=2)["per_fold"] == pytest.approx([0.5, 0.5])
    m = v.verification_metrics(d, s, folds=2)
    assert m["n_unscored"] == 2 and m["n_pairs"] == 4
    assert m["fold_accuracies"] == pytest.approx([0.5, 0.5])
    assert m["accuracy"] == pytest.approx(0.5)
    for t in (-5.0, 0.0, 0.1, 0.5, 0.95, 5.0, m["threshold"], *m["fold_thresholds"]):
        assert v.accuracy_at(filled[[1, 3]], s[[1, 3]], t) == 0.0


def test_unscored_pairs_are_never_dropped():
    rng = np.random.default_rng(3)
    n = 600
    s = np.tile(np.repeat([True, False], 60), 5)
    d = np.where(s, 0.5, 1.5) + rng.normal(0, 0.05, n)  # separable when scored
    nan = rng.random(n) < 0.05
    d[nan] = np.nan
    ids = np.repeat(np.arange(5), 120)
    m = v.verification_metrics(d, s, fold_ids=ids)
    assert m["n_unscored"] == nan.sum() > 0
    expected = [1 - nan[ids == f].mean() for f in range(5)]  # every scored pair right, NaN pairs wrong
    assert m["fold_accuracies"] == pytest.approx(expected)
    assert m["accuracy"] == pytest.approx(1 - nan.mean())
    assert m["auc"] < 1.0  # unscored pairs rank worst
    assert m["metric"] == "euclidean"


def test_triplet_metrics_hand_case():
    ap = [0.1, 0.5, 0.3]
    an = [0.4, 0.45, 0.9]
    # hinge: max(0.1-0.4+0.2,0)=0, max(0.5-0.45+0.2,0)=0.25, max(0.3-0.9+0.2,0)=0 -> 0.25/3
    # t=0.42: positives 0.1 yes, 0.5 no, 0.3 yes; negatives 0.4 yes (FP), 0.45 no, 0.9 no
    #   TP 2, FP 1, FN 1, TN 2 -> precision 2/3, recall 2/3, accuracy 4/6
    m = v.triplet_metrics(ap, an, margin=0.2, threshold=0.42)
    assert m["loss"] == pytest.approx(0.25 / 3)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["threshold"] == 0.42
    assert m["ranking_accuracy"] == pytest.approx(2 / 3)
    # the threshold picked on these pairs is reported apart, as optimistic, never as precision/recall:
    # sorted 0.1P 0.3P 0.4N 0.45N 0.5P 0.9N -> t=0.35 gives 5/6 (TP 2, FP 0, FN 1)
    for given in (0.42, None):
        m = v.triplet_metrics(ap, an, margin=0.2, threshold=given)
        assert m["optimistic_threshold"] == pytest.approx(0.35)
        assert m["optimistic_accuracy"] == pytest.approx(5 / 6)
        assert m["optimistic_precision"] == pytest.approx(1.0) and m["optimistic_recall"] == pytest.approx(2 / 3)
    # without a threshold chosen elsewhere there is no precision/recall to report
    assert all(m[k] is None for k in ("precision", "recall", "accuracy", "threshold"))
    # nothing predicted positive: precision 0, not a crash
    assert v.triplet_metrics(ap, an, margin=0.2, threshold=0.0)["precision"] == 0.0
    with pytest.raises(ValueError, match="margin"):
        v.triplet_metrics(ap, an, margin=-1)
