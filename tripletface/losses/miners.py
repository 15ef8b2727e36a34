"""Triplet miners: which (anchor, positive, negative) triplets the loss sees.

Every miner takes an *oriented* distance matrix ``dist`` (B, M) — smaller is closer,
see :meth:`Distance.oriented` — and the label masks ``positive``/``negative`` (B, M)
from :func:`tripletface.losses.masks.label_masks`, and returns a :class:`MinedTriplets`
of three tensors of one shape: ``d_ap`` and ``d_an`` (float32) and ``mask`` (bool, the
triplets that exist and are considered). Entries outside ``mask`` hold 0, never a
sentinel, so arithmetic on them is finite and their gradient is exactly 0.

=============  ===========  ==========================================================
miner          shape        one triplet per
=============  ===========  ==========================================================
batch_all      (B, M, M)    valid (a, p, n): every positive with every negative
batch_hard     (B,)         anchor: its farthest positive and its nearest negative
semi_hard      (B, M)       (a, p) pair: nearest negative farther than p (tfa rule)
explicit       (B,)         given (anchor, positive, negative) rows
=============  ===========  ==========================================================

batch_all builds (B, M, M) intermediates: for B = 256 and no memory that is 64 MiB
per float32 tensor, and it grows with the square of the memory bank; with a large
bank prefer batch_hard or semi_hard (both O(B·M) memory).
"""

from __future__ import annotations

from typing import NamedTuple

from keras import ops

__all__ = ["MinedTriplets", "batch_all", "batch_hard", "semi_hard", "explicit", "MINERS"]

# Stands for "no candidate" inside min/max reductions and sorts; only ever selected away by a
# ``where`` before any arithmetic, so it can never leak into a loss or a gradient.
_FAR = 3.0e38


class MinedTriplets(NamedTuple):
    """Mined triplets, all three of one shape. ``mask``: triplets considered."""

    d_ap: object
    d_an: object
    mask: object


def _zero_outside(x, mask):
    return ops.where(mask, x, ops.zeros_like(x))


def batch_all(dist, positive, negative) -> MinedTriplets:
    """Every valid triplet: shape (B, M, M), [a, p, n]."""
    d_ap = dist[:, :, None]
    d_an = dist[:, None, :]
    mask = ops.logical_and(positive[:, :, None], negative[:, None, :])
    shape = ops.shape(mask)
    d_ap = ops.broadcast_to(d_ap, shape)
    d_an = ops.broadcast_to(d_an, shape)
    return MinedTriplets(_zero_outside(d_ap, mask), _zero_outside(d_an, mask), mask)


def batch_hard(dist, positive, negative) -> MinedTriplets:
    """Per anchor, its hardest positive (largest distance) and hardest negative
    (smallest distance), as in Hermans et al. 2017. Shape (B,); an anchor without a
    positive or without a negative is not considered."""
    hardest_pos = ops.max(ops.where(positive, dist, -_FAR), axis=1)
    hardest_neg = ops.min(ops.where(negative, dist, _FAR), axis=1)
    mask = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    return MinedTriplets(_zero_outside(hardest_pos, mask), _zero_outside(hardest_neg, mask), mask)


def _batched_searchsorted(sorted_rows, values, side):
    """Row-wise searchsorted: (B, M) sorted rows, (B, Q) values -> (B, Q) int32 indices.

    ``keras.ops.searchsorted`` takes 1-D sequences only; ``keras.ops.vectorized_map``
    turns it into one batched op (on TensorFlow a single UpperBound/LowerBound, no loop).
    """
    return ops.vectorized_map(lambda row: ops.searchsorted(row[0], row[1], side=side), (sorted_rows, values))


def semi_hard(dist, positive, negative) -> MinedTriplets:
    """Semi-hard negatives with the semantics of ``tfa.losses.TripletSemiHardLoss``.

    For each anchor-positive pair (a, p): the negative n with the smallest d(a, n) that
    is still *strictly greater* than d(a, p); if there is none, the negative with the
    largest d(a, n). Shape (B, M), one triplet per pair. A pair whose anchor has no
    negative at all is not considered (tfa would compare with the anchor's own 0
    distance there; this happens only when the whole batch is one identity).

    Each anchor's negative distances are sorted once and every positive distance is
    looked up in them (O(B·M log M) time, O(B·M) memory, unlike tfa's (B², B) tiling),
    so a large memory bank stays affordable.
    """
    sorted_neg = ops.sort(ops.where(negative, dist, _FAR), axis=1)  # (B, M), non-negatives last
    num_neg = ops.sum(ops.cast(negative, "int32"), axis=1, keepdims=True)  # (B, 1)
    # per (a, p): how many negatives are <= d(a, p); the next one is the nearest farther one
    not_farther = ops.cast(_batched_searchsorted(sorted_neg, dist, side="right"), "int32")
    has_farther = ops.less(not_farther, num_neg)
    last = ops.shape(dist)[1] - 1
    nearest_farther = ops.take_along_axis(sorted_neg, ops.minimum(not_farther, last), axis=1)
    farthest = ops.take_along_axis(sorted_neg, ops.maximum(num_neg - 1, 0), axis=1)  # (B, 1)
    d_an = ops.where(has_farther, nearest_farther, ops.broadcast_to(farthest, ops.shape(dist)))
    mask = ops.logical_and(positive, ops.greater(num_neg, 0))
    return MinedTriplets(_zero_outside(dist, mask), _zero_outside(d_an, mask), mask)


def explicit(d_ap, d_an) -> MinedTriplets:
    """Given triplets: (B,) anchor-positive and anchor-negative distances, all considered."""
    return MinedTriplets(d_ap, d_an, ops.ones_like(d_ap, dtype="bool"))


# Online miners, by the ``loss.name`` that selects them.
MINERS = {"batch_all": batch_all, "batch_hard": batch_hard, "semi_hard": semi_hard}
