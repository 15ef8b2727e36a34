"""The embedding model: shapes, unit norm, backbones, .keras round trip with safe_mode, metadata."""

import numpy as np
import pytest

from tripletface.errors import ModelError
from tripletface.model.build import PREPROCESS_MODES, all_layers, build_embedding_model
from tripletface.model.io import get_metadata, load_model, save_model, update_metadata
from tripletface.model.layers import FacePreprocess, L2Normalize


@pytest.mark.parametrize("backbone, size", [("small_cnn", 64), ("mobilenet", 96), ("efficientnet", 64),
                                            ("resnet50", 64)])
def test_backbones_build_save_and_load_identically(tmp_path, backbone, size):
    model = build_embedding_model(backbone, embedding_dim=16, input_size=(size, size),
                                    metadata={"alignment": {"size": 112, "detector": "mtcnn"}})
    x = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype("float32")
    e = model(x, training=True).numpy()  # training mode: BatchNorm uses batch stats -> non-degenerate
    assert e.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    path = save_model(model, tmp_path / f"{backbone}.keras")
    loaded = load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)
    meta = get_metadata(loaded)
    assert meta["alignment"] == {"size": 112, "detector": "mtcnn"}
    assert meta["backbone"] == backbone and meta["image_size"] == [size, size]
    assert meta["preprocess"] == PREPROCESS_MODES[backbone]


def test_structure_is_backbone_gap_dense_l2():
    model = build_embedding_model("small_cnn", embedding_dim=8, input_size=(32, 32), width=0.25)
    names = [layer.name for layer in model.layers]
    assert names[1] == "preprocess" and names[-3:] == ["gap", "embedding", "l2_normalize"]


def test_metadata_update_survives_save(tmp_path):
    model = build_embedding_model("small_cnn", 8, (32, 32), width=0.25)
    update_metadata(model, threshold=0.9, threshold_source="test")
    loaded = load_model(save_model(model, tmp_path / "m.keras"))
    assert get_metadata(loaded)["threshold"] == pytest.approx(0.9)
    with pytest.raises(TypeError):
        update_metadata(model, bad=object())


def test_preprocess_modes():
    x = np.array([[[[0.0, 127.5, 255.0]]]], "float32")
    np.testing.assert_allclose(FacePreprocess("tf")(x).numpy().ravel(), [-1, 0, 1], atol=1e-6)
    np.testing.assert_allclose(FacePreprocess("caffe")(x).numpy().ravel(),
                               [255 - 103.939, 127.5 - 116.779, 0 - 123.68], atol=1e-4)
    np.testing.assert_allclose(FacePreprocess("raw")(x).numpy().ravel(), [0, 127.5, 255])


def test_l2_normalize_unit_rows_bounded_gradient_at_zero_and_round_trip():
    """Why it is kept over keras.layers.UnitNormalization (see its comment): a zero row gives 0 with
    a gradient bounded by 1/sqrt(epsilon) = 1e6 (UnitNormalization's reaches 1e12), and the class
    serializes under the name saved models carry."""
    import keras
    import tensorflow as tf

    layer = L2Normalize()
    x = np.array([[3.0, 4.0], [0.0, 0.0]], "float32")
    np.testing.assert_allclose(layer(x).numpy(), [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
    assert layer(x.astype("float16")).dtype == "float32"
    v = tf.Variable(x)
    with tf.GradientTape() as tape:
        y = layer(v) * tf.constant([[1.0, -1.0], [1.0, -1.0]])
    grad = tape.gradient(y, v).numpy()
    assert np.all(np.isfinite(grad)) and np.abs(grad[1]).max() == pytest.approx(1e6, rel=1e-3)
    serialized = keras.saving.serialize_keras_object(L2Normalize(epsilon=1e-6, name="n"))
    assert serialized["registered_name"] == "tripletface>L2Normalize"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is L2Normalize and restored.get_config()["epsilon"] == 1e-6


@pytest.mark.parametrize("kwargs, match", [
    ({"backbone": "vgg"}, "backbone"), ({"embedding_dim": -3}, "embedding_dim must be > 0, received: -3"),
    ({"input_size": (16, 16)}, "input_size"), ({"weights": 3}, "weights")])
def test_bad_arguments_name_the_argument(kwargs, match):
    args = {"backbone": "small_cnn", "embedding_dim": 8, "input_size": (32, 32), **kwargs}
    with pytest.raises(ValueError, match=match):
        build_embedding_model(**args)


def test_from_scratch_batch_norm_statistics_settle_in_a_short_run(tmp_path):
    """MobileNetV2's BatchNorm momentum 0.999 leaves inference statistics near their initial
    values for thousands of steps (every face maps to one point after a short from-scratch run);
    from scratch every backbone's BatchNorm uses 0.99, kept through save/load; pretrained
    weights keep the architecture's value."""
    import keras

    def momenta(model):
        return {layer.momentum for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)}

    model = build_embedding_model("mobilenet", 8, (64, 64))
    assert momenta(model) == {0.99}
    assert momenta(load_model(save_model(model, tmp_path / "m.keras"))) == {0.99}
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3))
    base.save_weights(tmp_path / "w.weights.h5")
    assert momenta(build_embedding_model("mobilenet", 8, (64, 64), weights=str(tmp_path / "w.weights.h5"))) == {0.999}
    # a few hundred training-mode batches move the 0.99 moving statistics most of the way
    bn = keras.layers.BatchNormalization(momentum=0.99)
    x = np.random.default_rng(0).normal(5.0, 3.0, (32, 4)).astype("float32")
    for _ in range(300):
        bn(x, training=True)
    assert np.allclose(bn.moving_mean.numpy(), x.mean(0), rtol=0.1)


def test_local_weights_file(tmp_path):
    import keras

    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3))
    w = tmp_path / "mobilenet_notop.weights.h5"
    base.save_weights(w)
    model = build_embedding_model("mobilenet", 8, (96, 96), weights=str(w))
    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)][0]
    np.testing.assert_array_equal(inner.get_weights()[0], base.get_weights()[0])
    with pytest.raises(ModelError, match="not found"):
        build_embedding_model("mobilenet", 8, (96, 96), weights=str(tmp_path / "nope.h5"))


def test_unsafe_and_broken_model_files_are_refused(tmp_path):
    import keras

    inp = keras.Input((4,))
    lam = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2)(inp))
    lam.save(tmp_path / "lambda.keras")
    with pytest.raises(ModelError, match="Lambda"):
        load_model(tmp_path / "lambda.keras")
    good = save_model(build_embedding_model("small_cnn", 8, (32, 32), width=0.25), tmp_path / "g.keras")
    data = good.read_bytes()
    (tmp_path / "trunc.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="trunc.keras"):
        load_model(tmp_path / "trunc.keras")
    (tmp_path / "text.keras").write_text("hello")
    with pytest.raises(ModelError, match="not a .keras model"):
        load_model(tmp_path / "text.keras")
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    plain.save(tmp_path / "plain.keras")
    with pytest.raises(ModelError, match="not a tripletface model"):
        load_model(tmp_path / "plain.keras")
