"""Face verification metrics on pair distances: accuracy, k-fold accuracy, ROC, EER, TAR@FAR.

Everything here works on plain arrays, never on a model: ``distances`` (one per pair,
**smaller = more alike**) and ``issame`` (True for a matched pair). Producing the
embeddings is the caller's job; this module only makes the match decision and scores it.

Decision rule
    A pair is predicted *same* when ``distance < threshold`` (strict), as in insightface
    ``calculate_accuracy``. Every threshold this module returns is finite and reproduces
    the reported numbers exactly with :func:`accuracy_at`. The distance is the one metric we
    store, :data:`tripletface.evaluation.metric.METRIC` (Euclidean on L2-normalised embeddings).

Protocol
    :func:`kfold_accuracy` follows the LFW protocol as insightface ``calculate_roc`` does:
    for each fold the threshold is picked on the *other* folds and the held-out fold is
    scored with it; the mean and std (ddof=0) over folds are reported.

Pairs that could not be scored
    A pair whose distance is NaN (no face found, unreadable image) is never dropped:
    :func:`score_with_failures` gives a matched pair distance +inf and a mismatched pair
    -inf, so every finite threshold gets it wrong, and reports how many there were.
    :func:`verification_metrics` does that and computes every number at once.

Example::

    d = metric.pair_distances(emb_a, emb_b)        # NaN rows -> NaN distance
    m = verification_metrics(d, issame, fold_ids=folds)
    m["accuracy_mean"], m["auc"], m["eer"], m["tar_at_far"][1e-3]

    filled, n_unscored = score_with_failures(d, issame)   # the parts, one by one
    kfold_accuracy(filled, issame, fold_ids=folds)["per_fold"]
    threshold_at_far(filled, issame, 1e-3)                 # a float; far_point() for details
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from tripletface.evaluation.metric import METRIC
from tripletface.evaluation.thresholds import sweep

__all__ = [
    "FarPoint",
    "accuracy_at",
    "best_threshold",
    "kfold_accuracy",
    "roc_metrics",
    "roc_points",
    "threshold_at_far",
    "far_point",
    "score_with_failures",
    "verification_metrics",
    "triplet_metrics",
]


class FarPoint(NamedTuple):
    """An operating point chosen for a target false accept rate.

    ``threshold``: decide same when distance < threshold; ``tar``: true accept rate there;
    ``far``: the false accept rate actually achieved (<= the target when ``reachable``);
    ``reachable``: False when the target is below 1 / number of impostor pairs, so the data
    cannot measure it — the point is then the one with zero false accepts, an estimate.
    """

    threshold: float
    tar: float
    far: float
    reachable: bool


# ----------------------------------------------------------------------------- checks


def _check(distances, issame, allow_nan: bool = False) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(distances, dtype=np.float64)
    s = np.asarray(issame)
    if d.ndim != 1:
        raise ValueError(f"distances must be 1-D, received shape: {d.shape}")
    if s.shape != d.shape:
        raise ValueError(f"issame must have the shape of distances {d.shape}, received: {s.shape}")
    if d.size == 0:
        raise ValueError("distances must not be empty, received 0 pairs")
    if s.dtype != bool:
        if not np.isin(s, (0, 1)).all():
            raise ValueError(f"issame must be boolean (or 0/1), received values: {np.unique(s)[:5]}")
        s = s.astype(bool)
    if not allow_nan and np.isnan(d).any():
        raise ValueError(
            f"distances contain {int(np.isnan(d).sum())} NaN values; "
            "count unscorable pairs as wrong with score_with_failures() first"
        )
    return d, s


def _check_threshold(threshold) -> float:
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"threshold must be finite, received: {threshold}")
    return t


# ----------------------------------------------------------------------------- accuracy


def accuracy_at(distances, issame, threshold: float) -> float:
    """Fraction of pairs decided right with ``same = distance < threshold``."""
    d, s = _check(distances, issame)
    t = _check_threshold(threshold)
    return float(np.mean((d < t) == s))


def best_threshold(distances, issame) -> tuple[float, float]:
    """The threshold with the best accuracy on these pairs, and that accuracy.

    Exact: every distinct decision is tried (midpoints between sorted distinct distances,
    plus both ends) in O(n log n). Ties go to the smallest threshold (fewest false accepts).
    """
    d, s = _check(distances, issame)
    thresholds, ta, fa = sweep(d, s)
    n_diff = int((~s).sum())
    correct = ta + (n_diff - fa)
    i = int(np.argmax(correct))
    return float(thresholds[i]), float(correct[i] / d.size)


def _fold_indices(n: int, folds: int | None, fold_ids) -> list[tuple[np.ndarray, np.ndarray]]:
    if fold_ids is not None:
        ids = np.asarray(fold_ids)
        if ids.shape != (n,):
            raise ValueError(f"fold_ids must have one entry per pair ({n}), received shape: {ids.shape}")
        labels = np.unique(ids)
        if labels.size < 2:
            raise ValueError(f"fold_ids must name at least 2 folds, received: {labels.tolist()}")
        return [(np.flatnonzero(ids != f), np.flatnonzero(ids == f)) for f in labels]
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or not 2 <= folds <= n:
        raise ValueError(f"folds must be an integer in [2, number of pairs={n}], received: {folds!r}")
    from sklearn.model_selection import KFold

    # Contiguous, unshuffled folds of (almost) equal size: the pairs file order is the fold order.
    return list(KFold(n_splits=int(folds), shuffle=False).split(np.arange(n)))


def kfold_accuracy(distances, issame, folds: int | None = 10, fold_ids=None) -> dict:
    """LFW-protocol accuracy: threshold picked on the other folds, scored on the held-out one.

    Folds are ``fold_ids`` (one label per pair, e.g. :attr:`Pair.fold` — LFW has 10, our dev
    file 5) when given, else ``folds`` contiguous folds of equal size in the given order.

    Returns ``{"mean", "std", "per_fold", "thresholds", "fold_sizes", "n_folds"}``: the mean
    and population std (ddof=0, as insightface) of the per-fold accuracies, and per fold the
    held-out accuracy, the threshold used and the number of held-out pairs.
    """
    d, s = _check(distances, issame)
    accuracies, thresholds, sizes = [], [], []
    for train, test in _fold_indices(d.size, folds, fold_ids):
        t, _ = best_threshold(d[train], s[train])
        accuracies.append(accuracy_at(d[test], s[test], t))
        thresholds.append(t)
        sizes.append(int(test.size))
    acc = np.asarray(accuracies)
    return {
        "mean": float(acc.mean()),
        "std": float(acc.std()),
        "per_fold": [float(a) for a in accuracies],
        "thresholds": [float(t) for t in thresholds],
        "fold_sizes": sizes,
        "n_folds": len(sizes),
    }


# ----------------------------------------------------------------------------- ROC


def _both_classes(s: np.ndarray) -> tuple[int, int]:
    n_same, n_diff = int(s.sum()), int((~s).sum())
    if n_same == 0 or n_diff == 0:
        raise ValueError(
            f"ROC metrics need matched and mismatched pairs, received {n_same} matched and {n_diff} mismatched"
        )
    return n_same, n_diff


def _far_point(thresholds, ta, fa, n_same: int, n_diff: int, far: float) -> FarPoint:
    far = float(far)
    if not 0.0 < far <= 1.0:
        raise ValueError(f"far must be in (0, 1], received: {far}")
    allowed = math.floor(far * n_diff + 1e-9)  # false accepts allowed; 1e-9 absorbs 0.29*100 = 28.99...
    reachable = allowed >= 1
    ok = np.flatnonzero(fa <= allowed)
    # fa and ta grow with the threshold: the last admissible threshold has the highest TAR.
    # If ±inf pairs make even the smallest threshold exceed the target, report it, unreachable.
    i = int(ok[-1]) if ok.size else 0
    reachable = reachable and ok.size > 0
    return FarPoint(float(thresholds[i]), float(ta[i] / n_same), float(fa[i] / n_diff), bool(reachable))


def far_point(distances, issame, far: float) -> FarPoint:
    """The operating point with the highest TAR whose false accept rate is at most ``far``.

    Returns a :class:`FarPoint` ``(threshold, tar, far, reachable)``; ``reachable`` is False
    when ``far < 1 / number of mismatched pairs`` (the data cannot resolve it: the point
    with zero false accepts is returned as an estimate).
    """
    d, s = _check(distances, issame)
    n_same, n_diff = _both_classes(s)
    thresholds, ta, fa = sweep(d, s)
    return _far_point(thresholds, ta, fa, n_same, n_diff, far)


def threshold_at_far(distances, issame, far: float) -> float:
    """The largest threshold whose false accept rate is at most ``far`` (so the highest TAR).

    Only the threshold; :func:`far_point` also gives the TAR, the FAR achieved and whether
    the target was reachable with this many mismatched pairs.
    """
    return far_point(distances, issame, far).threshold


def roc_points(distances, issame) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve ``(fpr, tpr)`` from ``sklearn.metrics.roc_curve`` with score = -distance.

    NaN distances are filled as in :func:`score_with_failures`; ±inf distances rank as the worst
    possible pairs (matched ones last, mismatched ones first).
    """
    from sklearn.metrics import roc_curve

    d, s = score_with_failures(distances, issame)[0], _check(distances, issame, allow_nan=True)[1]
    _both_classes(s)
    finite = d[np.isfinite(d)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    scores = -np.where(d == np.inf, hi + 1.0, np.where(d == -np.inf, lo - 1.0, d))
    fpr, tpr, _ = roc_curve(s, scores, drop_intermediate=False)
    return fpr, tpr


def roc_metrics(distances, issame, far_targets=(1e-3, 1e-2)) -> dict:
    """AUC, EER and TAR at the given FARs.

    Returns ``{"auc", "eer", "eer_threshold", "tar_at_far", "far_reachable", "min_far",
    "n_genuine", "n_impostor"}`` where ``tar_at_far[far] = (tar, threshold)`` and
    ``far_reachable[far]`` is False when ``far < min_far = 1 / n_impostor`` (the TAR is then
    the one at zero false accepts, an estimate — never silently presented as measured).

    AUC comes from ``sklearn.metrics.roc_curve``/``auc`` on ``-distance``. The EER is where
    the false accept and false reject rates cross, linearly interpolated between the two
    operating points around the crossing; ``eer_threshold`` is the nearer of those two.
    ±inf distances (see :func:`score_with_failures`) rank as the worst possible pairs.
    """
    from sklearn.metrics import auc as sk_auc

    d, s = _check(distances, issame)
    n_same, n_diff = _both_classes(s)
    fpr, tpr = roc_points(d, s)

    thresholds, ta, fa = sweep(d, s)
    far = fa / n_diff
    frr = 1.0 - ta / n_same
    gap = frr - far  # decreasing with the threshold
    i = int(np.argmax(gap <= 0)) if (gap <= 0).any() else gap.size - 1
    if i == 0 or gap[i] > 0:
        eer, j = (far[i] + frr[i]) / 2.0, i
    else:
        w = gap[i - 1] / (gap[i - 1] - gap[i])
        eer = far[i - 1] + w * (far[i] - far[i - 1])
        j = i if -gap[i] <= gap[i - 1] else i - 1

    tar_at_far, reachable = {}, {}
    for target in far_targets:
        p = _far_point(thresholds, ta, fa, n_same, n_diff, target)
        tar_at_far[float(target)] = (p.tar, p.threshold)
        reachable[float(target)] = p.reachable
    return {
        "auc": float(sk_auc(fpr, tpr)),
        "eer": float(eer),
        "eer_threshold": float(thresholds[j]),
        "tar_at_far": tar_at_far,
        "far_reachable": reachable,
        "min_far": 1.0 / n_diff,
        "n_genuine": n_same,
        "n_impostor": n_diff,
    }


# ----------------------------------------------------------------------------- failures


def score_with_failures(distances, issame) -> tuple[np.ndarray, int]:
    """Make unscorable pairs (NaN distance) count as wrong instead of dropping them.

    Matched pairs get +inf (never accepted), mismatched pairs -inf (always accepted), so
    every finite threshold — all this module returns — decides them wrong; every function
    here accepts the filled array. Returns ``(filled distances, number of NaN pairs)``.
    """
    d, s = _check(distances, issame, allow_nan=True)
    nan = np.isnan(d)
    filled = np.where(nan, np.where(s, np.inf, -np.inf), d)
    return filled, int(nan.sum())


def verification_metrics(
    distances,
    issame,
    folds: int | None = 10,
    fold_ids=None,
    far_targets=(1e-3, 1e-2),
) -> dict:
    """All verification numbers for pairs some of which may be unscorable (NaN distance).

    Unscorable pairs count as wrong (see :func:`score_with_failures`), never dropped. Returns a
    flat, JSON-friendly dict (after :func:`tripletface.evaluation.report.to_jsonable`)::

        metric, n_pairs, n_unscored, n_genuine, n_impostor,
        accuracy_mean, accuracy_std, fold_accuracies, fold_thresholds, fold_sizes, n_folds,
        threshold, accuracy            # best threshold on all pairs, and its accuracy
        auc, eer, eer_threshold, tar_at_far {far: (tar, threshold)}, far_reachable, min_far
    """
    d, n_unscored = score_with_failures(distances, issame)
    _, s = _check(d, issame)
    kf = kfold_accuracy(d, s, folds=folds, fold_ids=fold_ids)
    threshold, accuracy = best_threshold(d, s)
    roc = roc_metrics(d, s, far_targets=far_targets)
    return {
        "metric": METRIC,
        "n_pairs": int(d.size),
        "n_unscored": n_unscored,
        "n_genuine": roc["n_genuine"],
        "n_impostor": roc["n_impostor"],
        "accuracy_mean": kf["mean"],
        "accuracy_std": kf["std"],
        "fold_accuracies": kf["per_fold"],
        "fold_thresholds": kf["thresholds"],
        "fold_sizes": kf["fold_sizes"],
        "n_folds": kf["n_folds"],
        "threshold": threshold,
        "accuracy": accuracy,
        "auc": roc["auc"],
        "eer": roc["eer"],
        "eer_threshold": roc["eer_threshold"],
        "tar_at_far": roc["tar_at_far"],
        "far_reachable": roc["far_reachable"],
        "min_far": roc["min_far"],
    }


# ----------------------------------------------------------------------------- triplets


def triplet_metrics(d_ap, d_an, margin: float, threshold: float | None = None) -> dict:
    """The original design's test metrics on triplets (anchor, positive, negative).

    ``d_ap``/``d_an``: anchor-positive and anchor-negative distances, in the units of the
    loss's margin (e.g. squared L2 for the default loss); ``threshold`` in the same units
    (:meth:`tripletface.losses.Distance.from_euclidean` maps a model's stored Euclidean
    threshold there). Returns ``{"loss", "precision", "recall", "accuracy", "threshold",
    "ranking_accuracy", "n_triplets", "optimistic_threshold", "optimistic_precision",
    "optimistic_recall", "optimistic_accuracy"}``:

    * ``loss``: mean hinge ``max(d_ap - d_an + margin, 0)``;
    * the (a, p) pairs are positives, the (a, n) pairs negatives, a pair is predicted
      positive when its distance < ``threshold``: ``precision``, ``recall`` and ``accuracy``
      at the given threshold (chosen elsewhere: the model's stored one); all ``None`` when
      ``threshold`` is None. Precision is 0 when nothing is predicted positive;
    * ``optimistic_*``: the same at the best-accuracy threshold picked on these very pairs,
      an upper bound (tuned on the data it scores), never a measured decision quality;
    * ``ranking_accuracy``: fraction of triplets with ``d_ap < d_an``.
    """
    from sklearn.metrics import precision_score, recall_score

    ap = np.asarray(d_ap, dtype=np.float64)
    an = np.asarray(d_an, dtype=np.float64)
    if ap.ndim != 1 or ap.shape != an.shape or ap.size == 0:
        raise ValueError(f"d_ap and d_an must be non-empty 1-D arrays of one shape, received: {ap.shape} and {an.shape}")
    margin = float(margin)
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be finite and >= 0, received: {margin}")
    d = np.concatenate([ap, an])
    s = np.concatenate([np.ones(ap.size, bool), np.zeros(an.size, bool)])
    d, s = _check(d, s)

    def at(t):
        predicted = d < t
        return {"precision": float(precision_score(s, predicted, zero_division=0)),
                "recall": float(recall_score(s, predicted, zero_division=0)),
                "accuracy": float(np.mean(predicted == s)), "threshold": float(t)}

    given = (at(_check_threshold(threshold)) if threshold is not None
             else dict.fromkeys(("precision", "recall", "accuracy", "threshold")))
    best = at(best_threshold(d, s)[0])
    return {
        "loss": float(np.maximum(ap - an + margin, 0.0).mean()),
        **given,
        "ranking_accuracy": float(np.mean(ap < an)),
        "n_triplets": int(ap.size),
        **{f"optimistic_{k}": v for k, v in best.items()},
    }
