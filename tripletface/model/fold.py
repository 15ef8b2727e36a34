"""Fold inference-mode BatchNormalization into the convolution before it.

In inference a BatchNormalization layer is an affine map per channel,
``y = (x - mean) / sqrt(var + eps) * gamma + beta``. When ``x`` is the output of a
convolution ``x = conv(u, w) + b`` that nothing else reads, the two collapse into one
convolution with

    w' = w * gamma / sigma,    b' = (b - mean) * gamma / sigma + beta,    sigma = sqrt(var + eps)

(per output channel; for a depthwise convolution, per input channel x multiplier). The
result is the same function up to float rounding, one layer and two element-wise passes
fewer per pair. Keras has no built-in fold, so :func:`fold_batch_norm` rebuilds the model
(``keras.models.clone_model``, nested backbones included) with each such pair replaced by the
folded convolution, and copies every other layer's weights unchanged.

Folded: a BatchNormalization whose input is the output of a ``Conv1D/2D/3D`` or
``DepthwiseConv1D/2D`` with no activation, on the channel axis, where both layers are called
once and the convolution's output feeds nothing else. Kept (left as they are): every other
BatchNormalization, e.g. one after a pooling, an addition or an activation.

What each backbone has (all its BatchNormalization layers follow a convolution): small_cnn 8
Conv2D -> BN; ResNet50 53 Conv2D (with bias) -> BN; MobileNetV2 35 Conv2D + 17 DepthwiseConv2D
-> BN; EfficientNet-B0 49 (its squeeze-excite convolutions have no BN).

The folded model is for inference only (no BatchNormalization left to train) and is never
saved in place of the training model; :class:`~tripletface.inference.embedder.Embedder` and
``tripletface export`` fold on the fly.

Example::

    folded = fold_batch_norm(model)
    folded.model(x)      # == model(x, training=False) within float rounding
    folded.folded, folded.kept
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Folded", "fold_batch_norm"]


class Folded(NamedTuple):
    model: object  # the new keras.Model
    folded: int  # BatchNormalization layers folded into their convolution
    kept: int  # BatchNormalization layers left as they are (not directly after a convolution)


def _conv_kinds():
    import keras

    plain = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    depthwise = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
    return plain, depthwise


# Private Keras graph APIs, kept because Keras 3 has no public way to read a functional graph's
# nodes: which layer feeds which (``KerasTensor._keras_history.operation``), how many times a layer
# is called and how many layers read a tensor (``Functional._nodes_by_depth``, ``Node.operation``,
# ``Node.input_tensors``), and a call's ``training=`` argument (``Node.arguments.kwargs``); the
# public ``layer.input``/``layer.output`` only describe a layer's first call. ``Functional`` itself
# is not exported (``keras.Model(inputs, outputs)`` returns one). tests/model/test_keras_graph_api.py
# pins every one of them, so a Keras upgrade that moves them fails there, by name.
def _functional_models(model):
    """``model`` and every Functional model nested in it (each once)."""
    from keras.src.models.functional import Functional

    seen, out, todo = set(), [], [model]
    while todo:
        m = todo.pop()
        if id(m) in seen or not isinstance(m, Functional):
            continue
        seen.add(id(m))
        out.append(m)
        todo.extend(layer for layer in m.layers if isinstance(layer, Functional))
    return out


def _pairs(model) -> tuple[dict, int]:
    """``({id(bn): (conv, bn)}, number of BN layers kept)`` over ``model`` and its nested models."""
    import keras

    plain, depthwise = _conv_kinds()
    pairs, kept = {}, 0
    for m in _functional_models(model):
        nodes = [n for depth in m._nodes_by_depth.values() for n in depth if n.operation is not None]
        calls, readers = {}, {}
        for n in nodes:
            calls[id(n.operation)] = calls.get(id(n.operation), 0) + 1
            for t in n.input_tensors:
                readers[id(t)] = readers.get(id(t), 0) + 1
        outputs = {id(t) for t in m.outputs}
        for n in nodes:
            bn = n.operation
            if not isinstance(bn, keras.layers.BatchNormalization):
                continue
            ok = False
            if calls[id(bn)] == 1 and len(n.input_tensors) == 1 and not n.arguments.kwargs.get("training"):
                x = n.input_tensors[0]
                conv = x._keras_history.operation
                if (isinstance(conv, plain + depthwise) and calls.get(id(conv)) == 1 and readers[id(x)] == 1
                        and id(x) not in outputs and conv.get_config().get("activation") == "linear"):
                    rank = len(x.shape)
                    channel = rank - 1 if conv.data_format == "channels_last" else 1
                    axis = bn.axis[0] if isinstance(bn.axis, (list, tuple)) else bn.axis
                    ok = int(axis) % rank == channel
            if ok:
                pairs[id(bn)] = (conv, bn)
            else:
                kept += 1
    return pairs, kept


def _folded_weights(conv, bn, depthwise: bool) -> list[np.ndarray]:
    """The kernel and bias of ``conv`` followed by ``bn`` (inference mode), computed in float64."""
    kernel = np.asarray(conv.kernel.numpy(), np.float64)
    out_ch = kernel.shape[-2] * kernel.shape[-1] if depthwise else kernel.shape[-1]
    bias = np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias else np.zeros(out_ch)
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    var = np.asarray(bn.moving_variance.numpy(), np.float64)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones(out_ch)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros(out_ch)
    factor = gamma / np.sqrt(var + bn.epsilon)
    if depthwise:  # kernel (..., in, multiplier): output channel i * multiplier + m
        kernel = kernel * factor.reshape(kernel.shape[-2:])
    else:
        kernel = kernel * factor
    new_bias = (bias - mean) * factor + beta
    dtype = conv.kernel.dtype
    return [kernel.astype(dtype), new_bias.astype(dtype)]


def fold_batch_norm(model) -> Folded:
    """A new model computing ``model(x, training=False)`` with every BatchNormalization that
    directly follows a convolution folded into that convolution (see the module docstring).

    ``model`` is left untouched; the new model has its own weights (a copy). A model with no
    foldable pair comes back as an equal copy with ``folded == 0``.
    """
    import keras

    plain, depthwise = _conv_kinds()
    pairs, kept = _pairs(model)
    bn_of_conv = {id(conv): bn for conv, bn in pairs.values()}
    copies = []  # (original layer, new layer)

    def clone(layer):
        if id(layer) in pairs:
            return layer  # never called: call() below passes its input through
        config = layer.get_config()
        if id(layer) in bn_of_conv:
            config["use_bias"] = True
        new = layer.__class__.from_config(config)
        copies.append((layer, new))
        return new

    def call(layer, *args, **kwargs):
        if id(layer) in pairs:
            return args[0]
        return layer(*args, **kwargs)

    new_model = keras.models.clone_model(model, clone_function=clone, call_function=call, recursive=True)
    for old, new in copies:
        bn = bn_of_conv.get(id(old))
        if bn is not None:
            new.set_weights(_folded_weights(old, bn, isinstance(old, depthwise)))
        elif old.weights:
            new.set_weights(old.get_weights())
    return Folded(new_model, len(pairs), kept)
