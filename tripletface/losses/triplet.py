"""Triplet losses: the per-triplet loss, the whole stack as functions, and the Keras classes.

The stack is distance -> miner -> per-triplet loss -> reduction (see the sibling
modules); swapping the miner or the distance is a constructor argument::

    loss = OnlineTripletLoss(mining="batch_hard", margin=0.2, distance="l2")
    value, stats = loss.compute_with_stats(labels, embeddings)               # P×K batch
    value, stats = loss.compute_with_stats(labels, embeddings, memory=bank.contents())
    model.compile(loss=TripletLoss(margin=0.2))   # y_pred: (3B, D) = anchors; positives; negatives

Per triplet, with d_ap and d_an oriented so smaller is closer:

* hinge: ``max(d_ap - d_an + margin, 0)``
* soft margin (Hermans et al. 2017): ``log1p(exp(d_ap - d_an))`` (the margin is unused).

``stats`` (float32 scalars, no gradient): ``active_fraction`` (considered triplets that
violate the margin), ``pos_dist``, ``neg_dist`` (mean anchor-positive/negative distance
over the considered triplets), ``valid_triplets`` (how many were considered). A batch
without any valid triplet (one identity, or all identities different) gives loss 0 and
zero gradients.

Everything is computed in float32 whatever the embedding dtype; only ``keras.ops`` is
used. :class:`TripletLoss` and :class:`OnlineTripletLoss` are registered Keras objects
(package ``tripletface``).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tripletface.losses.distances import DISTANCES, get_distance
from tripletface.losses.masks import as_labels, label_masks
from tripletface.losses.memory_bank import EMPTY_LABEL
from tripletface.losses.miners import MINERS, explicit
from tripletface.losses.reducers import reduce_losses, triplet_stats

__all__ = [
    "MININGS",
    "triplet_margin_loss",
    "online_triplet_loss",
    "explicit_triplet_loss",
    "split_triplets",
    "candidate_distances",
    "TripletLoss",
    "OnlineTripletLoss",
]

MININGS = tuple(MINERS)
# batch_all averages over the triplets that still have a loss (else the loss vanishes
# as training progresses); the others over every triplet they mined.
_REDUCTION = {"batch_all": "nonzero_mean", "batch_hard": "mean", "semi_hard": "mean"}


# --------------------------------------------------------------------------- arguments

def _check_margin(margin):
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, received: {margin!r}")


def _check_soft_margin(soft_margin):
    if not isinstance(soft_margin, bool):
        raise ValueError(f"soft_margin must be True or False, received: {soft_margin!r}")


def _check_mining(mining):
    if mining not in MINERS:
        raise ValueError(f"mining must be one of {'|'.join(MINERS)}, received: {mining!r}")


def _check_distance_name(distance):
    if not isinstance(distance, str) or distance not in DISTANCES:
        raise ValueError(f"distance must be one of {'|'.join(DISTANCES)}, received: {distance!r}")


# --------------------------------------------------------------------------- functions

def triplet_margin_loss(d_ap, d_an, margin=0.2, soft_margin=False):
    """Per-triplet loss from oriented distances (any matching shapes)."""
    if soft_margin:
        return ops.softplus(d_ap - d_an)  # log1p(exp(x)), overflow-safe
    return ops.relu(d_ap - d_an + margin)


def _finish(mined, distance, margin, soft_margin, reduction):
    """Per-triplet loss -> reduction -> (loss, stats)."""
    losses = triplet_margin_loss(mined.d_ap, mined.d_an, margin, soft_margin)
    loss = reduce_losses(losses, mined.mask, reduction)
    active = ops.greater(mined.d_ap - mined.d_an + (0.0 if soft_margin else margin), 0.0)
    return loss, triplet_stats(mined, active, distance)


def _unpack_memory(memory, dim):
    """``(embeddings, labels)`` or ``(embeddings, labels, valid)`` -> float32, int64, bool."""
    if not isinstance(memory, (tuple, list)) or len(memory) not in (2, 3):
        raise ValueError("memory must be (embeddings, labels) or (embeddings, labels, valid), "
                         f"received: {type(memory).__name__}")
    mem_emb = ops.stop_gradient(ops.cast(ops.convert_to_tensor(memory[0]), "float32"))
    if mem_emb.shape[-1] is not None and dim is not None and mem_emb.shape[-1] != dim:
        raise ValueError(f"memory embeddings must have {dim} columns like the batch, "
                         f"received shape: {tuple(mem_emb.shape)}")
    mem_labels = as_labels(memory[1])
    valid = ops.not_equal(mem_labels, EMPTY_LABEL)
    if len(memory) == 3:
        valid = ops.logical_and(valid, ops.cast(ops.reshape(memory[2], (-1,)), "bool"))
    return mem_emb, mem_labels, valid


def online_triplet_loss(labels, embeddings, mining="semi_hard", margin=0.2, distance="squared_l2",
                        soft_margin=False, memory=None):
    """Triplet loss mined online in a labelled batch, optionally against a memory bank.

    Args:
        labels: (B,) integer identity labels (float dtype holding integers is fine).
        embeddings: (B, D) any float dtype.
        mining: ``batch_all`` | ``batch_hard`` | ``semi_hard``.
        margin: hinge margin (>= 0); unused with ``soft_margin``.
        distance: ``squared_l2`` | ``l2`` | ``cosine`` or a ``Distance``.
        soft_margin: use log1p(exp(d_ap - d_an)) instead of the hinge.
        memory: None, or ``(embeddings (N, D), labels (N,)[, valid (N,)])`` from a
            :class:`~tripletface.losses.memory_bank.MemoryBank`: extra positive and
            negative candidates (no gradient); slots labelled ``EMPTY_LABEL`` or not
            ``valid`` are ignored.

    Returns:
        ``(loss, stats)``: float32 scalar and a dict of float32 scalars.
    """
    _check_mining(mining)
    _check_margin(margin)
    _check_soft_margin(soft_margin)
    dist_fn = get_distance(distance)

    dist, positive, negative = candidate_distances(labels, embeddings, dist_fn, memory)
    mined = MINERS[mining](dist_fn.oriented(dist), positive, negative)
    return _finish(mined, dist_fn, margin, soft_margin, _REDUCTION[mining])


def candidate_distances(labels, embeddings, dist_fn, memory=None):
    """The batch's anchors against its candidates (the batch, then the memory's valid slots).

    Returns ``(dist, positive, negative)``: the (B, M) distance matrix of ``dist_fn`` (not
    oriented) and the label masks of :func:`~tripletface.losses.masks.label_masks`; M = B
    without memory. Every online loss (the miners, the contrastive loss) starts here.
    """
    embeddings = ops.cast(ops.convert_to_tensor(embeddings), "float32")
    labels = as_labels(labels)
    dist = dist_fn.pairwise(embeddings)  # (B, B)
    candidate_labels = candidate_valid = None
    if memory is not None:
        mem_emb, mem_labels, mem_valid = _unpack_memory(memory, embeddings.shape[-1])
        # One code path: candidates = batch then memory; self-pairs only in the batch part.
        dist = ops.concatenate([dist, dist_fn.pairwise(embeddings, mem_emb)], axis=1)
        candidate_labels = ops.concatenate([labels, mem_labels], axis=0)
        candidate_valid = ops.concatenate([ops.ones_like(labels, dtype="bool"), mem_valid], axis=0)
    positive, negative = label_masks(labels, candidate_labels, candidate_valid)
    return dist, positive, negative


def explicit_triplet_loss(anchors, positives, negatives, margin=0.2, distance="squared_l2", soft_margin=False):
    """Triplet loss on given triplets: three (B, D) tensors, row i a triplet.

    Returns ``(loss, stats)`` like :func:`online_triplet_loss`; the loss is the mean over
    the B triplets.
    """
    _check_margin(margin)
    _check_soft_margin(soft_margin)
    dist_fn = get_distance(distance)
    d_ap = dist_fn.oriented(dist_fn.paired(anchors, positives))
    d_an = dist_fn.oriented(dist_fn.paired(anchors, negatives))
    return _finish(explicit(d_ap, d_an), dist_fn, margin, soft_margin, "mean")


def split_triplets(y_pred):
    """(3B, D) stacked ``[anchors; positives; negatives]`` -> three (B, D) tensors."""
    y_pred = ops.convert_to_tensor(y_pred)
    if len(y_pred.shape) != 2:
        raise ValueError(f"triplet embeddings must be 2-D (3B, D), received shape: {tuple(y_pred.shape)}")
    rows = y_pred.shape[0]
    if rows is not None and rows % 3 != 0:
        raise ValueError("triplet embeddings must stack anchors, positives and negatives "
                         f"(3B rows), received {rows} rows")
    b = ops.shape(y_pred)[0] // 3
    return y_pred[:b], y_pred[b:2 * b], y_pred[2 * b:3 * b]


# --------------------------------------------------------------------------- Keras classes

@keras.saving.register_keras_serializable(package="tripletface")
class TripletLoss(keras.losses.Loss):
    """The standard triplet loss on explicit triplets (the original design).

    ``y_pred`` is (3B, D): rows [0, B) anchors, [B, 2B) positives, [2B, 3B)
    negatives; ``y_true`` is ignored.

    Args:
        margin: hinge margin, >= 0 (default 0.2).
        distance: ``squared_l2`` | ``l2`` | ``cosine``.
        soft_margin: log1p(exp(d_ap - d_an)) instead of the hinge.
    """

    def __init__(self, margin=0.2, distance="squared_l2", soft_margin=False, name="triplet_loss", **kwargs):
        _check_margin(margin)
        _check_distance_name(distance)
        _check_soft_margin(soft_margin)
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)
        self.distance = distance
        self.soft_margin = soft_margin

    def compute_with_stats(self, labels, embeddings, memory=None):
        """``labels`` ignored; ``embeddings`` (3B, D) -> (loss, stats)."""
        if memory is not None:
            raise ValueError("memory is not supported by TripletLoss (explicit triplets); "
                             "use OnlineTripletLoss, received memory of type " + type(memory).__name__)
        anchors, positives, negatives = split_triplets(embeddings)
        return explicit_triplet_loss(anchors, positives, negatives, self.margin, self.distance,
                                     self.soft_margin)

    def call(self, y_true, y_pred):
        return self.compute_with_stats(y_true, y_pred)[0]

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "distance": self.distance, "soft_margin": self.soft_margin})
        return config


@keras.saving.register_keras_serializable(package="tripletface")
class OnlineTripletLoss(keras.losses.Loss):
    """Triplet loss mined online in labelled (P×K) batches.

    ``y_true``: (B,) integer labels; ``y_pred``: (B, D) embeddings.

    Args:
        mining: ``batch_all`` | ``batch_hard`` | ``semi_hard`` (the semantics of
            ``tfa.losses.TripletSemiHardLoss``).
        margin: hinge margin, >= 0 (default 0.2).
        distance: ``squared_l2`` | ``l2`` | ``cosine``.
        soft_margin: log1p(exp(d_ap - d_an)) instead of the hinge.
    """

    def __init__(self, mining="semi_hard", margin=0.2, distance="squared_l2", soft_margin=False,
                 name="online_triplet_loss", **kwargs):
        _check_mining(mining)
        _check_margin(margin)
        _check_distance_name(distance)
        _check_soft_margin(soft_margin)
        super().__init__(name=name, **kwargs)
        self.mining = mining
        self.margin = float(margin)
        self.distance = distance
        self.soft_margin = soft_margin

    def compute_with_stats(self, labels, embeddings, memory=None):
        """(B,) labels, (B, D) embeddings[, memory] -> (loss, stats); see
        :func:`online_triplet_loss`."""
        return online_triplet_loss(labels, embeddings, self.mining, self.margin, self.distance,
                                   self.soft_margin, memory=memory)

    def call(self, y_true, y_pred):
        return self.compute_with_stats(y_true, y_pred)[0]

    def get_config(self):
        config = super().get_config()
        config.update({"mining": self.mining, "margin": self.margin, "distance": self.distance,
                       "soft_margin": self.soft_margin})
        return config
