"""Embedding collapse: every embedding at (nearly) the same point.

A collapsed model has a triplet loss stuck at the margin and both mean distances near
0; the trainer checks :func:`is_collapsed` on each epoch's mining stats and logs a warning.
"""

from __future__ import annotations

import math

__all__ = ["is_collapsed"]


# "Stuck at the margin": every mined triplet active and both mean distances under this fraction of the
# margin. Measured on lfw-dev + celeba-dev (docs/RECIPE.md): the memory bank and batch-hard from mid-run
# drew every embedding into a cap with mined squared distances of 0.003-0.01 (margin 0.2), above the
# absolute threshold, while healthy runs mine at 0.6-0.9 with 55-95 % of the triplets active.
STUCK_FRACTION = 0.1
STUCK_ACTIVE = 0.99


def is_collapsed(stats, threshold=1e-3, margin=None) -> bool:
    """True when the embeddings have collapsed, by either of two signs:

    * the mean positive *and* mean negative distance are both below ``threshold``;
    * with ``margin`` (the hinge margin) and ``active_fraction`` in ``stats``: the loss is stuck
      at the margin, i.e. at least 99 % of the mined triplets are active and both mean
      distances are under a tenth of the margin (the embeddings drew together into a small cap).

    Args:
        stats: mapping with ``pos_dist`` and ``neg_dist`` (numbers or scalar tensors, e.g.
            the stats of ``compute_with_stats`` or epoch logs), optionally
            ``valid_triplets``: a batch without any triplet (distances reported as 0) is
            not a collapse; and ``active_fraction``.
        threshold: distance under which the embeddings count as collapsed (> 0).
        margin: the loss's hinge margin, or None (soft margin) to skip the second sign.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ValueError(f"threshold must be a number > 0, received: {threshold!r}")
    for key in ("pos_dist", "neg_dist"):
        if key not in stats:
            raise ValueError(f"stats must contain {key!r}, received keys: {sorted(stats)}")
    if "valid_triplets" in stats and float(stats["valid_triplets"]) <= 0:
        return False
    pos, neg = float(stats["pos_dist"]), float(stats["neg_dist"])
    if not (math.isfinite(pos) and math.isfinite(neg)):
        return False
    if pos < threshold and neg < threshold:
        return True
    if margin and "active_fraction" in stats:
        bar = STUCK_FRACTION * float(margin)
        return float(stats["active_fraction"]) >= STUCK_ACTIVE and pos < bar and neg < bar
    return False
