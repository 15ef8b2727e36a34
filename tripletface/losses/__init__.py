"""Triplet losses with online mining and a cross-batch memory bank.

The stack, one module per stage: ``distances`` (squared L2, L2, cosine) -> ``masks``
(label masks, built once) -> ``miners`` (batch-all, batch-hard, semi-hard, explicit) ->
``triplet`` (per-triplet hinge or soft margin, the Keras losses) -> ``reducers``
(reduction and mining stats); ``memory_bank`` (XBM queue), ``contrastive`` (XBM's pair
loss, the memory bank's other form) and ``collapse`` (warning check) sit beside it.

Example::

    from tripletface.losses import get_loss, MemoryBank
    loss_obj = get_loss(cfg.loss)                        # from a LossConfig
    loss, stats = loss_obj.compute_with_stats(labels, embeddings)

Importing this package loads Keras and registers its Keras classes (``TripletLoss``,
``OnlineTripletLoss``, ``ContrastiveLoss``, ``MemoryBank``, ``MarginSoftmaxHead``), so a
``.keras`` file compiled with one of these losses loads after it. The command line imports
it only inside the commands that train or evaluate (``tripletface --help`` loads no Keras).
"""

from __future__ import annotations

from tripletface.config.choice_lists import LOSS_NAMES
from tripletface.losses.collapse import is_collapsed
from tripletface.losses.contrastive import ContrastiveLoss, contrastive_loss
from tripletface.losses.distances import (
    DISTANCES,
    CosineDistance,
    Distance,
    L2Distance,
    SquaredL2Distance,
    get_distance,
)
from tripletface.losses.margin_softmax import MarginSoftmaxHead
from tripletface.losses.masks import label_masks
from tripletface.losses.memory_bank import EMPTY_LABEL, MemoryBank
from tripletface.losses.miners import MINERS, MinedTriplets
from tripletface.losses.reducers import STAT_NAMES
from tripletface.losses.triplet import (
    MININGS,
    OnlineTripletLoss,
    TripletLoss,
    explicit_triplet_loss,
    online_triplet_loss,
    split_triplets,
    triplet_margin_loss,
)

__all__ = [
    "TripletLoss",
    "OnlineTripletLoss",
    "ContrastiveLoss",
    "MemoryBank",
    "MarginSoftmaxHead",
    "EMPTY_LABEL",
    "get_loss",
    "custom_objects",
    "is_collapsed",
    "online_triplet_loss",
    "contrastive_loss",
    "explicit_triplet_loss",
    "triplet_margin_loss",
    "split_triplets",
    "label_masks",
    "Distance",
    "SquaredL2Distance",
    "L2Distance",
    "CosineDistance",
    "DISTANCES",
    "get_distance",
    "MinedTriplets",
    "MINERS",
    "MININGS",
    "STAT_NAMES",
    "LOSS_NAMES",
]


def custom_objects() -> dict:
    """The registered Keras classes of this package, by name."""
    return {cls.__name__: cls for cls in (TripletLoss, OnlineTripletLoss, ContrastiveLoss, MemoryBank,
                                          MarginSoftmaxHead)}


def get_loss(loss_cfg):
    """The loss object a :class:`~tripletface.config.LossConfig` asks for.

    ``name == "triplet"`` gives :class:`TripletLoss` (explicit triplets); ``batch_all``,
    ``batch_hard`` and ``semi_hard`` give :class:`OnlineTripletLoss` with that mining.
    ``contrastive`` gives :class:`ContrastiveLoss` (margin: ``contrastive_margin``). The memory
    bank (``memory_bank_size``) is a separate object: ``MemoryBank(size, dim)``.
    """
    name = getattr(loss_cfg, "name", None)
    if name not in LOSS_NAMES:
        raise ValueError(f"loss.name must be one of {'|'.join(LOSS_NAMES)}, received: {name!r}")
    kwargs = {"margin": loss_cfg.margin, "distance": loss_cfg.distance, "soft_margin": loss_cfg.soft_margin}
    if name == "triplet":
        return TripletLoss(**kwargs)
    if name == "contrastive":
        return ContrastiveLoss(margin=loss_cfg.contrastive_margin)
    return OnlineTripletLoss(mining=name, **kwargs)
