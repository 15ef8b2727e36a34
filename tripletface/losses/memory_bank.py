"""Cross-batch memory (XBM, Wang et al. 2020): a queue of recent embeddings and labels.

Embeddings drift slowly once training has warmed up, so the embeddings of the last
few hundred batches are still good mining candidates: the loss uses the batch as
anchors and *batch + memory* as positive and negative candidates (pass
``memory=bank.contents()`` to ``compute_with_stats``). Memory entries carry no
gradient.

The bank is a ring buffer in non-trainable variables, so ``tf.train.Checkpoint``
saves and restores it with the rest of the training state::

    bank = MemoryBank(size=1024, dim=128)
    loss, stats = loss_obj.compute_with_stats(labels, emb, memory=bank.contents())
    bank.enqueue(emb, labels)      # after the step; oldest entries are overwritten

Slots not yet written hold the label :data:`EMPTY_LABEL` and are never used as
candidates (:meth:`MemoryBank.valid_mask` gives the same information from ``filled``).
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["EMPTY_LABEL", "MemoryBank"]

# The label of a memory slot that holds no embedding yet (int64 minimum: no real label).
EMPTY_LABEL = -(2**63)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be an integer > 0, received: {value!r}")


def _empty_labels(shape, dtype=None):
    return ops.full(shape, EMPTY_LABEL, dtype="int64")


@keras.saving.register_keras_serializable(package="tripletface")
class MemoryBank(keras.layers.Layer):
    """Ring buffer of the last ``size`` embeddings (float32) and their labels (int64).

    Args:
        size: number of entries kept (> 0).
        dim: embedding dimension (> 0).

    Variables (all non-trainable): ``embeddings`` (size, dim), ``labels`` (size,),
    ``pointer`` (next slot to write), ``filled`` (slots written so far, <= size).
    """

    def __init__(self, size, dim, **kwargs):
        _check_positive_int("size", size)
        _check_positive_int("dim", dim)
        kwargs.setdefault("trainable", False)
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.size = size
        self.dim = dim
        self.embeddings = self.add_weight(shape=(size, dim), initializer="zeros", dtype="float32",
                                          trainable=False, name="embeddings")
        self.labels = self.add_weight(shape=(size,), initializer=_empty_labels, dtype="int64",
                                      trainable=False, name="labels")
        self.pointer = self.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False,
                                       name="pointer")
        self.filled = self.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False,
                                      name="filled")
        self.built = True

    def enqueue(self, embeddings, labels):
        """Write a batch ((N, dim) embeddings, (N,) integer labels) over the oldest
        entries, without gradient. With N > size only the last ``size`` rows are kept."""
        if embeddings.shape[-1] is not None and embeddings.shape[-1] != self.dim:
            raise ValueError(f"embeddings must have {self.dim} columns (the bank's dim), "
                             f"received shape: {tuple(embeddings.shape)}")
        emb = ops.stop_gradient(ops.cast(embeddings, "float32"))[-self.size:]
        lab = ops.cast(ops.reshape(labels, (-1,)), "int64")[-self.size:]
        n = ops.cast(ops.shape(emb)[0], "int64")
        slots = ops.mod(ops.convert_to_tensor(self.pointer) + ops.arange(n, dtype="int64"), self.size)
        self.embeddings.assign(ops.scatter_update(self.embeddings, slots[:, None], emb))
        self.labels.assign(ops.scatter_update(self.labels, slots[:, None], lab))
        self.pointer.assign(ops.mod(self.pointer + n, self.size))
        self.filled.assign(ops.minimum(self.filled + n, self.size))

    def valid_mask(self):
        """(size,) bool: slots that hold an embedding."""
        return ops.less(ops.arange(self.size, dtype="int64"), ops.convert_to_tensor(self.filled))

    def contents(self, with_valid=False):
        """``(embeddings (size, dim) float32, labels (size,) int64)``, plus the
        :meth:`valid_mask` when ``with_valid``; unfilled slots have :data:`EMPTY_LABEL`."""
        emb = ops.cast(ops.convert_to_tensor(self.embeddings), "float32")
        lab = ops.convert_to_tensor(self.labels)
        if with_valid:
            return emb, lab, self.valid_mask()
        return emb, lab

    def reset(self):
        """Empty the bank."""
        self.embeddings.assign(ops.zeros((self.size, self.dim), "float32"))
        self.labels.assign(_empty_labels((self.size,)))
        self.pointer.assign(0)
        self.filled.assign(0)

    def call(self, inputs=None):
        return self.contents()

    def get_config(self):
        config = super().get_config()
        config.update({"size": self.size, "dim": self.dim})
        return config
