"""Label masks, built once per batch and shared by every miner.

Anchors are the batch (B rows). Candidates (positives and negatives) are the batch
itself, optionally followed by cross-batch memory entries (M = B + memory size). A
candidate is

* a *positive* of anchor a when it has a's label, is valid, and is not a itself
  (self-pairs exist only in the first B columns: column j < B is batch row j);
* a *negative* of anchor a when it has another label and is valid.

Feed P×K batches (P identities × K >= 2 images) so every anchor has positives.
"""

from __future__ import annotations

from keras import ops

__all__ = ["as_labels", "self_mask", "label_masks"]


def as_labels(labels):
    """Any integer-valued labels (int or float dtype, shape (B,) or (B, 1)) -> int64 (B,)."""
    labels = ops.reshape(ops.convert_to_tensor(labels), (-1,))
    return ops.cast(labels, "int64")


def self_mask(num_anchors, num_candidates):
    """(B, M) bool, True at [i, i]: anchor i paired with its own batch row."""
    return ops.equal(ops.arange(num_anchors)[:, None], ops.arange(num_candidates)[None, :])


def label_masks(labels, candidate_labels=None, candidate_valid=None):
    """Positive and negative masks of anchors (``labels``) against candidates.

    Args:
        labels: (B,) integer labels of the anchors (the batch).
        candidate_labels: (M,) labels of the candidates, whose first B entries are the
            batch; None means the batch alone (M = B).
        candidate_valid: (M,) bool, False for candidates to ignore (memory slots not yet
            filled); None means all valid.

    Returns:
        ``(positive, negative)``, two (B, M) bool tensors.
    """
    labels = as_labels(labels)
    candidate_labels = labels if candidate_labels is None else as_labels(candidate_labels)
    same = ops.equal(labels[:, None], candidate_labels[None, :])
    eye = self_mask(ops.shape(labels)[0], ops.shape(candidate_labels)[0])
    positive = ops.logical_and(same, ops.logical_not(eye))
    negative = ops.logical_not(same)
    if candidate_valid is not None:
        valid = ops.cast(ops.reshape(candidate_valid, (1, -1)), "bool")
        positive = ops.logical_and(positive, valid)
        negative = ops.logical_and(negative, valid)
    return positive, negative
