"""Building the embedding model: backbone -> global average pooling -> Dense -> L2 normalisation.

Input: float pixels in [0, 255], shape (H, W, 3), aligned faces (see ``tripletface.faces.align``).
The model starts with a :class:`~tripletface.model.layers.FacePreprocess` layer that maps pixels
to what the backbone expects *and* carries the model's metadata (alignment settings, image size,
decision threshold), so a saved ``.keras`` file holds everything inference needs to
preprocess exactly as training did. Every custom layer is registered and serializable
(:mod:`tripletface.model.layers`): the model loads with ``safe_mode=True`` (no Lambda layers);
saving, loading and the metadata are :mod:`tripletface.model.io`.

Example::

    model = build_embedding_model("mobilenet", embedding_dim=128, input_size=(112, 112))
    emb = model(np.zeros((2, 112, 112, 3), "float32"))  # (2, 128), unit rows
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from tripletface.config.choice_lists import BACKBONES
from tripletface.errors import ModelError, first_line
from tripletface.model.layers import FacePreprocess, L2Normalize

__all__ = ["BACKBONES", "PREPROCESS_MODES", "build_embedding_model", "all_layers"]

# What each backbone expects of its input, applied by FacePreprocess.
#   caffe:   RGB->BGR, minus ImageNet channel means (keras.applications.resnet50)
#   raw:     0..255 as is (EfficientNet rescales and normalises inside the model)
#   tf:      scale to [-1, 1] (MobileNetV2, small_cnn)
PREPROCESS_MODES = {"resnet50": "caffe", "efficientnet": "raw", "mobilenet": "tf", "small_cnn": "tf"}


def all_layers(model):
    """Every layer inside ``model``, nested models' layers included (depth first, ``model`` itself not).

    The public ``layers`` walked recursively, in place of Keras' private ``_flatten_layers``: on
    the embedding model of each backbone both give the same set of layers (measured: small_cnn 29,
    MobileNetV2 160, EfficientNet-B0 243, ResNet50 181; BatchNormalization 8, 52, 49, 53).
    """
    for layer in getattr(model, "layers", ()):
        yield layer
        yield from all_layers(layer)


def _small_cnn(inputs, width: float):
    """A plain VGG-style CNN (4 stages of two 3x3 convs + BN + ReLU): small, fast, for CPU runs."""
    x = inputs
    for i, ch in enumerate((32, 64, 128, 256)):
        ch = max(8, int(ch * width))
        for j in range(2):
            strides = 2 if (j == 0 and i > 0) else 1
            x = keras.layers.Conv2D(ch, 3, strides=strides, padding="same", use_bias=False,
                                    name=f"stage{i}_conv{j}")(x)
            x = keras.layers.BatchNormalization(name=f"stage{i}_bn{j}")(x)
            x = keras.layers.ReLU(name=f"stage{i}_relu{j}")(x)
    return x


# Keras' MobileNetV2 builds its BatchNormalization layers with momentum 0.999: the moving
# statistics inference uses forget their initial (mean 0, variance 1) values over ~1000s of
# steps. Trained from scratch for a few hundred steps, inference then normalises with the
# wrong statistics and every face maps to nearly the same point (measured: the ablation's
# mobilenet row scored 0.505, inference-mode embeddings 1e-7 apart, training-mode 0.2 apart).
# From scratch we use Keras' default 0.99 (statistics settle in ~300 steps); pretrained
# weights bring their statistics and keep the architecture's value.
_SCRATCH_BN_MOMENTUM = 0.99


def _fast_batch_norm_statistics(base) -> None:
    for layer in all_layers(base):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.momentum > _SCRATCH_BN_MOMENTUM:
            layer.momentum = _SCRATCH_BN_MOMENTUM


def _check_weights(backbone: str, weights):
    if weights in (None, "imagenet"):
        if weights == "imagenet" and backbone == "small_cnn":
            raise ValueError("weights='imagenet' is not available for backbone 'small_cnn', received: 'imagenet'")
        return weights
    if isinstance(weights, (str, os.PathLike)):
        if not Path(weights).is_file():
            raise ModelError(f"{weights}: weights file not found")
        return str(weights)
    raise ValueError(f"weights must be 'imagenet', None or a file path, received: {weights!r}")


def build_embedding_model(backbone: str = "resnet50", embedding_dim: int = 128, input_size=(224, 224),
                          weights=None, dropout: float = 0.0, width: float = 1.0, metadata: dict | None = None,
                          greyscale: bool = False):
    """Build the embedding model.

    Args:
        backbone: "resnet50" (the original design), "efficientnet" (B0), "mobilenet" (V2) or
            "small_cnn" (a plain CNN sized for CPU training from scratch).
        embedding_dim: size of the embedding (Dense units).
        input_size: (height, width) of the aligned face input.
        weights: "imagenet" (downloaded by Keras; needs internet), None (random init) or the
            path of a local backbone weights file (Keras applications' "notop" .h5 format).
        dropout: dropout rate before the Dense layer.
        width: width multiplier (MobileNetV2 alpha; small_cnn channels).
        metadata: JSON-serialisable dict stored in the model (alignment settings etc.).
        greyscale: the model turns its input grey first (training and inference alike).

    Returns:
        A functional ``keras.Model`` mapping (B, H, W, 3) pixels in [0, 255] to (B, embedding_dim)
        unit-length float32 embeddings.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, received: {backbone!r}")
    if int(embedding_dim) <= 0:
        raise ValueError(f"embedding_dim must be > 0, received: {embedding_dim}")
    h, w = (int(input_size), int(input_size)) if isinstance(input_size, int) else map(int, input_size)
    if h < 32 or w < 32:
        raise ValueError(f"input_size must be at least 32x32, received: {input_size}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), received: {dropout}")
    weights = _check_weights(backbone, weights)
    meta = dict(metadata or {})
    meta.update({"backbone": backbone, "embedding_dim": int(embedding_dim), "image_size": [h, w],
                 "preprocess": PREPROCESS_MODES[backbone], "greyscale": bool(greyscale)})
    inputs = keras.Input((h, w, 3), name="image")
    # Under a mixed policy (mixed_bfloat16, mixed_float16) only the backbone computes in the low
    # precision: the preprocessing (exact channel means), the head (pooling, Dense projection) and
    # the L2 normalisation run in float32, so the loss receives float32 embeddings projected in
    # float32. Under the float32 policy the explicit dtype changes nothing.
    x = FacePreprocess(PREPROCESS_MODES[backbone], metadata=meta, greyscale=greyscale, name="preprocess",
                       dtype="float32")(inputs)
    if backbone == "small_cnn":
        x = _small_cnn(x, width)
    else:
        apps = keras.applications
        ctor = {"resnet50": apps.ResNet50, "efficientnet": apps.EfficientNetB0, "mobilenet": apps.MobileNetV2}[backbone]
        kw = {"alpha": width} if backbone == "mobilenet" else {}
        try:
            base = ctor(include_top=False, weights=weights, input_shape=(h, w, 3), **kw)
        except (OSError, ValueError) as e:
            raise ModelError(f"{backbone} weights {weights!r}: {first_line(e)}") from None
        if weights is None:
            _fast_batch_norm_statistics(base)
        x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap", dtype="float32")(x)  # casts the backbone's output
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout", dtype="float32")(x)
    x = keras.layers.Dense(int(embedding_dim), name="embedding", dtype="float32")(x)
    outputs = L2Normalize(name="l2_normalize", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"tripletface_{backbone}")
