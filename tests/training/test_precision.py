"""train.mixed_precision=auto: what ``resolve_precision`` picks for the hardware and the backbone."""

from __future__ import annotations

import pytest

from tripletface.training import precision as T
from tripletface.training import trainer as TR


@pytest.fixture
def cpu_only(monkeypatch):
    import tensorflow as tf

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])


def test_auto_on_a_bf16_cpu_keeps_depthwise_backbones_in_float32(cpu_only, monkeypatch, capsys):
    monkeypatch.setattr(T, "cpu_supports_bf16", lambda: True)
    assert T.resolve_precision("auto", "resnet50") == "mixed_bfloat16"
    assert T.resolve_precision("auto", "small_cnn") == "mixed_bfloat16"
    assert T.resolve_precision("auto") == "mixed_bfloat16"
    for backbone in ("mobilenet", "efficientnet"):
        assert T.resolve_precision("auto", backbone) == "float32"
        assert f"{backbone} trains slower in bfloat16" in capsys.readouterr().err
    # an explicit request is obeyed
    assert T.resolve_precision("bfloat16", "mobilenet") == "mixed_bfloat16"


def test_auto_without_bf16_falls_back_to_float32_with_a_message(cpu_only, monkeypatch, capsys):
    monkeypatch.setattr(T, "cpu_supports_bf16", lambda: False)
    assert T.resolve_precision("auto", "resnet50") == "float32"
    assert "no bfloat16 support" in capsys.readouterr().err


# --------------------------------------------------------------------------- mixed bfloat16: what stays float32

HEAD_LAYERS = ("preprocess", "gap", "embedding", "l2_normalize")


@pytest.fixture
def bf16_model():
    import keras

    from tripletface.model.build import build_embedding_model

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(3)
        model = build_embedding_model("small_cnn", 16, (64, 64), width=0.25, dropout=0.1)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


def _probe(model):
    import keras

    names = ("stage3_conv1", "stage3_relu1", "gap", "embedding", "l2_normalize")
    return keras.Model(model.input, [model.get_layer(n).output for n in names])


def test_mixed_bfloat16_keeps_the_head_and_normalisation_in_float32(bf16_model, tmp_path):
    import numpy as np

    from tripletface.model.io import load_model, save_model

    model = bf16_model
    assert all(v.dtype == "float32" for v in model.weights)  # the variables: float32 master weights
    for name in HEAD_LAYERS + ("dropout",):
        assert model.get_layer(name).compute_dtype == "float32", name
    convs = [layer for layer in model.layers if layer.name.startswith("stage")]
    assert convs and all(layer.compute_dtype == "bfloat16" for layer in convs)  # the backbone: bfloat16
    x = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    conv, relu, gap, emb, out = _probe(model)(x)
    assert (conv.dtype, relu.dtype) == ("bfloat16", "bfloat16")
    assert (gap.dtype, emb.dtype, out.dtype) == ("float32", "float32", "float32")
    # the saved model keeps each layer's policy and computes the same
    loaded = load_model(save_model(model, tmp_path / "bf16.keras"))
    for layer in model.layers[1:]:  # after the InputLayer
        assert loaded.get_layer(layer.name).dtype_policy.name == layer.dtype_policy.name, layer.name
    np.testing.assert_allclose(loaded(x).numpy(), out.numpy(), atol=1e-6)


def test_mixed_bfloat16_loss_receives_float32_embeddings_without_loss_scaling(bf16_model):
    import keras
    import numpy as np
    import tensorflow as tf

    from tripletface.config import Config
    from tripletface.losses import get_loss

    seen = []

    class Recording:
        def __init__(self, loss):
            self.loss = loss

        def __getattr__(self, name):
            return getattr(self.loss, name)

        def compute_with_stats(self, labels, embeddings, **kw):
            seen.append(embeddings.dtype)
            return self.loss.compute_with_stats(labels, embeddings, **kw)

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        trainer = TR.make_trainer(bf16_model, Recording(get_loss(Config().loss)))
        optimizer = TR.make_optimizer(Config().train, 10)
        trainer.compile(optimizer=optimizer, jit_compile=False)
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 255, (8, 64, 64, 3)).astype("float32")
        labels = np.repeat(np.arange(4, dtype="int32"), 2)
        hist = trainer.fit(tf.data.Dataset.from_tensors((images, labels)).repeat(), epochs=1, steps_per_epoch=2,
                           verbose=0, shuffle=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert seen and all(d == "float32" for d in seen)
    assert bf16_model.get_layer("embedding").compute_dtype == "float32"  # projected in float32 too
    # bfloat16 has float32's exponent range: no loss scaling (only mixed_float16 wraps the optimizer)
    assert not isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert trainer.optimizer.scale_loss(tf.constant(2.0)).numpy() == 2.0
    assert np.isfinite(hist.history["loss"]).all()
