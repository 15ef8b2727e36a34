"""An auxiliary margin-softmax head (CosFace; Wang et al., CVPR 2018) beside the triplet loss.

The triplet loss stays the method: this head only adds a classification signal over the
training identities, which reaches every identity every few hundred steps where triplets
only compare the P identities of a batch. The head's class weights are used in training
only; the saved embedding model does not contain them.

For embedding ``e`` and class weight ``w_c`` (both L2-normalised), the logits are
``scale * (cos(e, w_c) - margin * [c == label])`` and the loss is their softmax cross-entropy,
averaged over the batch. Computed in float32 whatever the mixed-precision policy.

Example::

    head = MarginSoftmaxHead(num_classes=index.num_identities, margin=0.35, scale=30.0)
    loss = triplet_loss + 0.5 * head(embeddings, labels)
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["MarginSoftmaxHead"]


@keras.saving.register_keras_serializable(package="tripletface")
class MarginSoftmaxHead(keras.layers.Layer):
    """CosFace loss over ``num_classes`` identities: ``head(embeddings, labels) -> scalar``.

    Args:
        num_classes: number of training identities (labels are in ``[0, num_classes)``).
        margin: additive cosine margin, in [0, 1).
        scale: logit scale (> 0).
    """

    def __init__(self, num_classes, margin=0.35, scale=30.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, received: {num_classes!r}")
        if not 0 <= margin < 1:
            raise ValueError(f"margin must be in [0, 1), received: {margin!r}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, received: {scale!r}")
        self.num_classes = num_classes
        self.margin = float(margin)
        self.scale = float(scale)

    def build(self, embeddings_shape, labels_shape=None):
        self.kernel = self.add_weight(name="class_weights", shape=(int(embeddings_shape[-1]), self.num_classes),
                                      initializer="glorot_normal", trainable=True)

    def logits(self, embeddings, labels):
        e = ops.cast(embeddings, "float32")
        e = e / ops.sqrt(ops.maximum(ops.sum(e * e, axis=-1, keepdims=True), 1e-12))
        w = self.kernel / ops.sqrt(ops.maximum(ops.sum(self.kernel * self.kernel, axis=0, keepdims=True), 1e-12))
        cosine = ops.matmul(e, w)
        onehot = ops.one_hot(ops.cast(labels, "int32"), self.num_classes, dtype="float32")
        return self.scale * (cosine - self.margin * onehot)

    def call(self, embeddings, labels):
        logits = self.logits(embeddings, labels)
        return ops.mean(keras.losses.sparse_categorical_crossentropy(ops.cast(labels, "int32"), logits,
                                                                   from_logits=True))

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "margin": self.margin, "scale": self.scale})
        return config
