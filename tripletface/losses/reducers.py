"""Reduction of per-triplet losses to one scalar, and what mining saw (the stats).

Two reductions:

* ``mean``: mean over the considered triplets (batch_hard, semi_hard, explicit);
* ``nonzero_mean``: mean over the triplets whose loss is > 0 (batch_all, as in
  Hermans et al. 2017: averaging over all triplets would drown the few active ones).

No considered triplet (or no active one) gives a loss of exactly 0 with zero
gradients: the divisor is at least 1 and masked entries are selected away, never
multiplied.
"""

from __future__ import annotations

from keras import ops

__all__ = ["REDUCTIONS", "masked_sum", "masked_mean", "reduce_losses", "triplet_stats", "STAT_NAMES"]

REDUCTIONS = ("mean", "nonzero_mean")
STAT_NAMES = ("active_fraction", "pos_dist", "neg_dist", "valid_triplets")


def _count(mask):
    return ops.cast(ops.sum(ops.cast(mask, "int32")), "float32")


def masked_sum(values, mask):
    return ops.sum(ops.where(mask, values, ops.zeros_like(values)))


def masked_mean(values, mask):
    """Mean of ``values`` where ``mask``; 0 when the mask is empty."""
    return masked_sum(values, mask) / ops.maximum(_count(mask), 1.0)


def reduce_losses(losses, mask, reduction="mean"):
    """Per-triplet ``losses`` (any shape) -> float32 scalar, over the triplets in ``mask``."""
    if reduction == "mean":
        return masked_mean(losses, mask)
    if reduction == "nonzero_mean":
        return masked_mean(losses, ops.logical_and(mask, ops.greater(losses, 0.0)))
    raise ValueError(f"reduction must be one of {'|'.join(REDUCTIONS)}, received: {reduction!r}")


def triplet_stats(mined, active, distance) -> dict:
    """What mining saw, as float32 scalars (see :data:`STAT_NAMES`).

    Args:
        mined: :class:`~tripletface.losses.miners.MinedTriplets` (oriented distances).
        active: bool tensor like ``mined.mask``: the triplets that violate the margin
            (positive hinge loss; for the soft margin, d_ap > d_an).
        distance: the :class:`~tripletface.losses.distances.Distance`, to report the
            distances in its own direction.

    Returns:
        ``active_fraction`` (active / considered), ``pos_dist`` and ``neg_dist`` (mean
        anchor-positive and anchor-negative distance over the considered triplets) and
        ``valid_triplets`` (how many were considered); all 0 when none was.
    """
    mask = mined.mask
    considered = _count(mask)
    stats = {
        "active_fraction": _count(ops.logical_and(mask, active)) / ops.maximum(considered, 1.0),
        "pos_dist": distance.oriented(masked_mean(mined.d_ap, mask)),
        "neg_dist": distance.oriented(masked_mean(mined.d_an, mask)),
        "valid_triplets": considered,
    }
    return {k: ops.stop_gradient(v) for k, v in stats.items()}
