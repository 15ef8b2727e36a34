"""The private Keras graph APIs tripletface.model.fold reads, pinned: a Keras upgrade that moves or
changes one fails here, naming it, rather than as a wrong fold count deep in test_fold."""

from __future__ import annotations

import inspect

import pytest

keras = pytest.importorskip("keras")


def _graph():
    """conv_a -> bn_a (training=False), conv_b called twice, an Add reading both conv_b outputs."""
    inp = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(inp)
    bn_a = keras.layers.BatchNormalization(name="bn_a")(a, training=False)
    conv_b = keras.layers.Conv2D(4, 1, name="conv_b")
    b1, b2 = conv_b(bn_a), conv_b(bn_a)
    out = keras.layers.Add(name="add")([b1, b2])
    return keras.Model(inp, out), a, (b1, b2)


def test_functional_class_is_importable_and_is_what_keras_model_returns():
    try:
        from keras.src.models.functional import Functional
    except ImportError as e:  # pragma: no cover - fails loudly on a Keras that moved it
        pytest.fail(f"keras.src.models.functional.Functional is gone ({e}): update tripletface.model.fold")
    model, _, _ = _graph()
    assert isinstance(model, Functional)
    inp = keras.Input((8, 8, 3))
    nested = keras.Model(inp, model(inp))
    assert isinstance(nested, Functional) and any(isinstance(layer, Functional) for layer in nested.layers)


def test_nodes_by_depth_lists_every_call_with_its_operation_inputs_and_kwargs():
    model, a, (b1, b2) = _graph()
    assert isinstance(model._nodes_by_depth, dict), "Functional._nodes_by_depth is not a dict any more"
    nodes = [n for depth in model._nodes_by_depth.values() for n in depth if n.operation is not None]
    by_name = {}
    for n in nodes:
        by_name.setdefault(n.operation.name, []).append(n)
    assert len(by_name["conv_b"]) == 2  # one node per call: fold counts calls this way
    assert len(by_name["conv_a"]) == len(by_name["bn_a"]) == len(by_name["add"]) == 1
    (bn_node,) = by_name["bn_a"]
    assert list(bn_node.input_tensors) == [a]  # Node.input_tensors: the KerasTensors the call read
    assert bn_node.arguments.kwargs.get("training") is False  # Node.arguments.kwargs: the call's kwargs
    (add_node,) = by_name["add"]
    assert {id(t) for t in add_node.input_tensors} == {id(b1), id(b2)}


def test_keras_history_names_the_layer_that_made_a_tensor():
    model, a, (b1, _) = _graph()
    assert a._keras_history.operation is model.get_layer("conv_a")
    assert b1._keras_history.operation is model.get_layer("conv_b")
    assert model.outputs[0]._keras_history.operation is model.get_layer("add")


def test_layer_attributes_and_clone_model_arguments_fold_reads():
    model, _, _ = _graph()
    conv, bn = model.get_layer("conv_a"), model.get_layer("bn_a")
    assert conv.data_format == "channels_last" and conv.get_config()["activation"] == "linear"
    assert bn.axis in (-1, 3, [3], [-1]) and bn.scale and bn.center
    depthwise = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)
    depthwise.build((None, 8, 8, 3))
    assert tuple(depthwise.kernel.shape) == (3, 3, 3, 2)  # (..., in, multiplier): the fold's layout
    params = inspect.signature(keras.models.clone_model).parameters
    assert {"clone_function", "call_function", "recursive"} <= set(params)
