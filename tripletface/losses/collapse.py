"""Embedding collapse: every embedding at (nearly) the same point.

A collapsed model has a triplet loss stuck at the margin and both mean distances near
0; the trainer checks :func:`is_collapsed` on the mining stats and logs a warning.
"""

from __future__ import annotations

import math

__all__ = ["is_collapsed"]


def is_collapsed(stats, threshold=1e-3) -> bool:
    """True when mean positive *and* mean negative distance are both below ``threshold``.

    Args:
        stats: mapping with ``pos_dist`` and ``neg_dist`` (numbers or scalar tensors, e.g.
            the stats of ``compute_with_stats`` or epoch logs), optionally
            ``valid_triplets``: a batch without any triplet (distances reported as 0) is
            not a collapse.
        threshold: distance under which the embeddings count as collapsed (> 0).
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
    return pos < threshold and neg < threshold
