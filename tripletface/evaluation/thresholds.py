"""The threshold sweep: every distinct decision on a set of distances, and the accepts at each.

A pair is accepted (decided *same*) when ``distance < threshold``. :func:`candidate_thresholds`
gives one finite threshold per distinct decision; :func:`sweep` counts the true and false
accepts at each in O(n log n). :mod:`tripletface.evaluation.verification` picks its best-accuracy,
TAR@FAR and EER points from them, and :mod:`tripletface.inference.open_set` its FPIR threshold.
"""

from __future__ import annotations

import numpy as np

__all__ = ["candidate_thresholds", "sweep"]


def candidate_thresholds(d: np.ndarray) -> np.ndarray:
    """Every distinct decision on ``d`` as one finite threshold, ascending.

    The smallest finite distance (nothing finite is accepted), the midpoints between
    consecutive distinct finite distances, and just above the largest (all finite accepted).
    ±inf distances are never candidates, so they are decided the same at every threshold.
    """
    u = np.unique(d[np.isfinite(d)])
    if u.size == 0:
        return np.zeros(1)
    mids = u[:-1] + (u[1:] - u[:-1]) / 2.0
    return np.concatenate([u[:1], mids, [np.nextafter(u[-1], np.inf)]])


def sweep(d: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, true accepts, false accepts) at every candidate threshold, O(n log n)."""
    # Not sklearn.metrics.roc_curve (already used for roc_points and the AUC). With
    # drop_intermediate=False it gives the same (TA, FA) points (checked on 3000 and 1e6 pairs
    # with tied distances), but: its thresholds are the distances themselves under "accept when
    # d <= t", where ours are midpoints under "d < t", so every fold threshold, the EER and
    # TAR@FAR thresholds and the one calibrate stores would change; it refuses the ±inf that
    # score_with_failures gives unscored pairs (ValueError, sklearn 1.9.1); and it is slower:
    # 8.4 ms against 0.7 ms here on 3000 pairs (kfold_accuracy sweeps once per fold), 316 ms
    # against 298 ms on 1e6.
    order = np.argsort(d, kind="stable")
    d_sorted = d[order]
    same_cum = np.concatenate([[0], np.cumsum(s[order])])  # same_cum[k]: matched among the k smallest
    thresholds = candidate_thresholds(d)
    below = np.searchsorted(d_sorted, thresholds, side="left")  # pairs with d < t
    true_accepts = same_cum[below]
    false_accepts = below - true_accepts
    return thresholds, true_accepts, false_accepts
