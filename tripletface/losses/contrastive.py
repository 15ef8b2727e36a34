"""The contrastive loss of the cross-batch memory paper (XBM, Wang et al. 2020), mined online.

Over every (anchor, candidate) pair of a labelled P×K batch, optionally with a memory bank's
entries as extra candidates (no gradient through them), with ``S`` the cosine similarity::

    loss = 1/B · Σ_a [ Σ_{p ∈ pos(a)} (1 − S_ap) + Σ_{n ∈ neg(a), S_an > λ} S_an ]

Every positive pair is pulled together; a negative pair is pushed apart only while its
similarity is above ``λ`` (``margin``, 0.5 as in the paper). It is a pair loss, not a triplet
loss: it needs no negative to be compared with a positive, so every memory entry is a
candidate of its own, which is why the paper pairs it with the memory bank. The triplet
losses (:mod:`tripletface.losses.triplet`) stay this project's method; this is the memory
bank's other form (``loss.name: contrastive``, issue 12).

``stats`` as the triplet losses give them, over pairs instead of triplets: ``active_fraction``
(pairs with a loss > 0), ``pos_dist`` and ``neg_dist`` (mean cosine distance 1 − S of the
positive and of the negative pairs), ``valid_triplets`` (pairs considered).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tripletface.losses.distances import CosineDistance
from tripletface.losses.reducers import masked_mean, masked_sum
from tripletface.losses.triplet import candidate_distances

__all__ = ["contrastive_loss", "ContrastiveLoss"]

def _check_similarity_margin(margin):
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) \
            or not -1.0 <= margin < 1.0:
        raise ValueError(f"margin (a cosine similarity) must be in [-1, 1), received: {margin!r}")


def contrastive_loss(labels, embeddings, margin=0.5, memory=None):
    """The XBM contrastive loss (see the module docstring) and its stats.

    Args:
        labels: (B,) integer identity labels.
        embeddings: (B, D) any float dtype (need not be normalised: S is the cosine).
        margin: λ, the similarity above which a negative pair is penalised, in [-1, 1).
        memory: None, or ``(embeddings (N, D), labels (N,)[, valid (N,)])`` as for
            :func:`~tripletface.losses.triplet.online_triplet_loss`.

    Returns:
        ``(loss, stats)``: float32 scalar and a dict of float32 scalars.
    """
    _check_similarity_margin(margin)
    dist, positive, negative = candidate_distances(labels, embeddings, CosineDistance(), memory)  # 1 − S
    sim = 1.0 - dist
    pushed = ops.logical_and(negative, ops.greater(sim, margin))
    pos_loss = masked_sum(dist, positive)
    neg_loss = masked_sum(sim, pushed)
    anchors = ops.cast(ops.shape(dist)[0], "float32")
    loss = (pos_loss + neg_loss) / ops.maximum(anchors, 1.0)
    considered = ops.logical_or(positive, negative)
    active = ops.logical_or(ops.logical_and(positive, ops.greater(dist, 0.0)), pushed)
    n = ops.sum(ops.cast(considered, "float32"))
    stats = {
        "active_fraction": ops.sum(ops.cast(active, "float32")) / ops.maximum(n, 1.0),
        "pos_dist": masked_mean(dist, positive),
        "neg_dist": masked_mean(dist, negative),
        "valid_triplets": n,
    }
    return loss, {k: ops.stop_gradient(v) for k, v in stats.items()}


@keras.saving.register_keras_serializable(package="tripletface")
class ContrastiveLoss(keras.losses.Loss):
    """The XBM contrastive loss on labelled (P×K) batches: ``y_true`` (B,) integer labels,
    ``y_pred`` (B, D) embeddings.

    Args:
        margin: λ, the cosine similarity above which a negative pair is pushed apart
            (default 0.5), in [-1, 1).
    """

    def __init__(self, margin=0.5, name="contrastive_loss", **kwargs):
        _check_similarity_margin(margin)
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)

    def compute_with_stats(self, labels, embeddings, memory=None):
        """(B,) labels, (B, D) embeddings[, memory] -> (loss, stats); see :func:`contrastive_loss`."""
        return contrastive_loss(labels, embeddings, self.margin, memory=memory)

    def call(self, y_true, y_pred):
        return self.compute_with_stats(y_true, y_pred)[0]

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin})
        return config
