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

Importing this package loads no Keras: the Keras classes (``TripletLoss``,
``OnlineTripletLoss``, ``MemoryBank``) are defined and registered on first access;
:func:`custom_objects` does it explicitly (call it before loading a ``.keras`` file
compiled with one of these losses); importing this package after Keras is loaded
registers them as well.
"""

from __future__ import annotations

import importlib
import sys

from tripletface.losses.collapse import is_collapsed
from tripletface.losses.contrastive import contrastive_loss
from tripletface.losses.distances import (
    DISTANCES,
    CosineDistance,
    Distance,
    L2Distance,
    SquaredL2Distance,
    get_distance,
)
from tripletface.losses.masks import label_masks
from tripletface.losses.memory_bank import EMPTY_LABEL
from tripletface.losses.miners import MINERS, MinedTriplets
from tripletface.losses.reducers import STAT_NAMES
from tripletface.losses.triplet import (
    MININGS,
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

# loss.name values: explicit triplets, an online miner, or XBM's contrastive pair loss.
LOSS_NAMES = ("triplet",) + MININGS + ("contrastive",)

# Keras classes, defined lazily by their module.
_LAZY = {
    "TripletLoss": "tripletface.losses.triplet",
    "OnlineTripletLoss": "tripletface.losses.triplet",
    "ContrastiveLoss": "tripletface.losses.contrastive",
    "MemoryBank": "tripletface.losses.memory_bank",
    "MarginSoftmaxHead": "tripletface.losses.margin_softmax",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def custom_objects() -> dict:
    """Define and register the Keras classes; returns them by name."""
    return {name: __getattr__(name) for name in _LAZY}


def _register_if_keras_loaded() -> None:
    """Register the classes now if Keras is already loaded (then it costs nothing), so that
    ``import tripletface.losses`` before ``keras.saving.load_model`` is enough."""
    if "keras" in sys.modules:
        custom_objects()


_register_if_keras_loaded()


def get_loss(loss_cfg):
    """The loss object a :class:`~tripletface.config.config.LossConfig` asks for.

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
        return __getattr__("TripletLoss")(**kwargs)
    if name == "contrastive":
        return __getattr__("ContrastiveLoss")(margin=loss_cfg.contrastive_margin)
    return __getattr__("OnlineTripletLoss")(mining=name, **kwargs)
