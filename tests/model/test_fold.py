"""BatchNorm folded into the convolutions (tripletface.model.fold): the same embeddings on real faces."""

from __future__ import annotations

import numpy as np
import pytest

from deploy_support import aligned_lfw_faces, min_pairwise_distance


@pytest.fixture(scope="module")
def faces(lfw_dir):
    return aligned_lfw_faces(lfw_dir, 6, at_least=8)


def _model_on_faces(backbone: str, faces: np.ndarray, size: int = 112):
    """An untrained model whose BatchNorm statistics are those of ``faces`` and whose BatchNorm
    scales and offsets are not the identity, as after training."""
    import keras

    from tripletface.model.build import all_layers, build_embedding_model

    keras.utils.set_random_seed(5)
    model = build_embedding_model(backbone, 32, (size, size), width=0.5 if backbone == "small_cnn" else 1.0)
    bns = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    rng = np.random.default_rng(1)
    for layer in bns:
        layer.momentum = 0.0
        c = layer.gamma.shape[0]
        layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
        layer.beta.assign(rng.normal(0.0, 0.2, c).astype("float32"))
    model(_resized(faces, size), training=True)  # moving statistics := these faces' statistics
    for layer in bns:
        layer.momentum = 0.99
    return model


def _resized(faces, size):
    from tripletface.inference.embedder import resize_images

    return resize_images(faces, (size, size))


def _bn_count(model) -> int:
    import keras

    from tripletface.model.build import all_layers

    return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in all_layers(model))


@pytest.mark.parametrize("backbone,size,pairs", [("small_cnn", 64, 8), ("mobilenet", 112, 52), ("resnet50", 112, 53)])
def test_folded_model_embeds_real_faces_as_the_original(backbone, size, pairs, faces):
    from tripletface.model.fold import fold_batch_norm

    model = _model_on_faces(backbone, faces, size)
    before = [w.copy() for w in model.get_weights()]
    x = _resized(faces, size)
    ref = model(x, training=False).numpy()
    folded = fold_batch_norm(model)
    assert (folded.folded, folded.kept) == (pairs, 0)
    assert _bn_count(model) == pairs and _bn_count(folded.model) == 0
    got = folded.model(x, training=False).numpy()
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert min_pairwise_distance(ref) > 100 * 1e-4  # the faces are told apart: the check can fail
    assert folded.model.count_params() < model.count_params()
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # the original is untouched


def test_folded_model_saves_and_loads(faces, tmp_path):
    from tripletface.model.fold import fold_batch_norm
    from tripletface.model.io import get_metadata, load_model, save_model

    model = _model_on_faces("small_cnn", faces, 64)
    folded = fold_batch_norm(model).model
    x = _resized(faces, 64)
    loaded = load_model(save_model(folded, tmp_path / "folded.keras"))
    assert _bn_count(loaded) == 0 and get_metadata(loaded) == get_metadata(model)
    np.testing.assert_allclose(loaded(x).numpy(), folded(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(loaded(x).numpy(), model(x, training=False).numpy(), atol=1e-4)


def test_only_batch_norm_directly_after_a_lone_convolution_is_folded():
    import keras

    from tripletface.model.fold import fold_batch_norm

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inp)
    bn_a = keras.layers.BatchNormalization(name="bn_a")(a)  # folded
    b = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="b")(bn_a)
    bn_b = keras.layers.BatchNormalization(name="bn_b")(b)  # kept: after the activation
    c = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False, name="c")(bn_b)
    bn_c = keras.layers.BatchNormalization(name="bn_c")(c)  # folded (depthwise, multiplier 2)
    d = keras.layers.Conv2D(8, 1, name="d")(bn_c)
    bn_d = keras.layers.BatchNormalization(name="bn_d")(d)  # kept: d's output is also read by the Add
    s = keras.layers.Add(name="add")([bn_d, d])
    bn_s = keras.layers.BatchNormalization(name="bn_s")(s)  # kept: after an addition
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(bn_s))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            for v, lo, hi in ((layer.gamma, 0.5, 1.5), (layer.beta, -1, 1), (layer.moving_mean, -1, 1),
                              (layer.moving_variance, 0.2, 2)):
                v.assign(rng.uniform(lo, hi, n).astype("float32"))
    folded = fold_batch_norm(model)
    assert (folded.folded, folded.kept) == (2, 3)
    names = {layer.name for layer in folded.model.layers}
    assert {"bn_b", "bn_d", "bn_s"} <= names and not {"bn_a", "bn_c"} & names
    x = rng.uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(folded.model(x).numpy(), model(x, training=False).numpy(), atol=1e-5)


def test_embedder_folds_a_loaded_model_but_not_a_live_one(faces, tmp_path, monkeypatch):
    from tripletface.model import fold
    from tripletface.model.io import save_model
    from tripletface.inference.embedder import Embedder

    calls = []
    real = fold.fold_batch_norm
    monkeypatch.setattr(fold, "fold_batch_norm", lambda m: calls.append(m) or real(m))

    model = _model_on_faces("small_cnn", faces, 64)
    path = save_model(model, tmp_path / "m.keras")
    loaded = Embedder.load(str(path), flip_tta=False)
    assert loaded.fold_batch_norm and not Embedder.load(str(path), fold_batch_norm=False).fold_batch_norm
    live = Embedder(model, flip_tta=False)  # a model that may still train: never a stale folded copy
    assert not live.fold_batch_norm
    ref = live.embed_aligned(faces)
    assert not calls
    np.testing.assert_allclose(loaded.embed_aligned(faces), ref, atol=1e-4)
    assert calls == [loaded.model]  # folded once, at the first forward pass
    loaded.embed_aligned(faces[:2])
    assert len(calls) == 1
    assert loaded.fingerprint == live.fingerprint  # the fingerprint is the stored model's
    model.set_weights([w * 0.5 if w.ndim == 4 else w for w in model.get_weights()])
    assert np.abs(live.embed_aligned(faces) - ref).max() > 1e-3  # the live model's new weights are used
