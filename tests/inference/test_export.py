"""Export: each format embeds real aligned LFW faces as the Keras model does (preprocessing inside)."""

import json

import numpy as np
import pytest

from deploy_support import aligned_lfw_faces, make_face_model, min_pairwise_distance
from inference_support import error_lines, run_cli


@pytest.fixture(scope="module")
def faces(lfw_dir):
    return aligned_lfw_faces(lfw_dir, 5, at_least=6)


@pytest.fixture(scope="module")
def model_path(faces, tmp_path_factory):
    return make_face_model(tmp_path_factory.mktemp("export") / "model.keras", faces)


@pytest.fixture(scope="module")
def embedder(model_path):
    from tripletface.inference.embedder import Embedder

    return Embedder.load(str(model_path))


def _inputs(faces):
    """The same faces at 112 (the crop size), 64 (the model's own size) and 90 (anything else)."""
    import cv2

    return {size: faces if size == 112 else np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                                                       for f in faces]) for size in (112, 64, 90)}


def _check_parity(got, ref, spread, cos_tol):
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    cos = np.sum(got.astype(np.float64) * ref, axis=1)
    assert cos.min() >= 1 - cos_tol, cos.min()
    # and far closer to its own reference than any other face is: the check can fail
    err = np.linalg.norm(got - ref, axis=1).max()
    assert err < 0.05 * spread, (err, spread)


@pytest.mark.parametrize("fmt,name", [("savedmodel", "face_sm"), ("tflite", "face.tflite"), ("onnx", "face.onnx")])
def test_export_matches_the_keras_model_on_real_aligned_faces(fmt, name, faces, embedder, tmp_path):
    from tripletface.inference.export import export_model, load_exported, metadata_path

    out = export_model(embedder, tmp_path / name, fmt)
    runner = load_exported(out)
    assert runner.format == fmt
    for size, images in _inputs(faces).items():
        ref = embedder.embed_aligned(images)  # Keras model + training resize + flip TTA
        spread = min_pairwise_distance(ref)
        assert spread > 0.05, "test model does not tell the faces apart"
        _check_parity(runner.embed(images), ref, spread, 1e-4)
    meta = json.loads(metadata_path(out, fmt).read_text())
    assert meta["output"]["shape"] == ["N", 16] and meta["image_size"] == [64, 64]
    assert meta["threshold"] == pytest.approx(0.5) and meta["flip_tta"] is True
    assert meta["model_fingerprint"] == embedder.fingerprint and meta["alignment"]["template"] == "arcface"
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(props["tripletface"])["model_fingerprint"] == embedder.fingerprint


def test_export_without_flip_tta_is_the_bare_keras_model(faces, embedder, tmp_path):
    from tripletface.inference.embedder import resize_images
    from tripletface.inference.export import export_model, load_exported

    runner = load_exported(export_model(embedder, tmp_path / "bare", "savedmodel", flip_tta=False))
    x = resize_images(faces, (64, 64))
    ref = np.asarray(embedder.model(x, training=False), np.float64)
    _check_parity(runner.embed(faces), ref, min_pairwise_distance(ref), 1e-4)
    assert runner.metadata["flip_tta"] is False
    with_tta = embedder.embed_aligned(faces)  # flip TTA changes the numbers: the flag reaches the graph
    assert np.abs(with_tta - ref).max() > 1e-3


def test_export_folds_batch_norm_unless_told_not_to(model_path, faces, embedder, tmp_path, capsys):
    import tensorflow as tf

    from tripletface.inference.embedder import resize_images
    from tripletface.inference.export import export_model, load_exported

    ref = np.asarray(embedder.model(resize_images(faces, (64, 64)), training=False), np.float64)
    folded = export_model(embedder, tmp_path / "folded", "savedmodel", flip_tta=False)
    rc, stdout, err = run_cli(capsys, "export", "--model", model_path, "--format", "savedmodel", "--no-flip-tta",
                              "--no-fold-batch-norm", tmp_path / "kept")
    assert rc == 0, err
    assert "0 BatchNorm layers folded" in stdout
    kept = tmp_path / "kept"
    counts = {}
    for out in (folded, kept):
        runner = load_exported(out)
        _check_parity(runner.embed(faces), ref, min_pairwise_distance(ref), 1e-6)
        saved_variables = tf.train.list_variables(str(out / "variables" / "variables"))
        counts[out.name] = (runner.metadata["batch_norm_folded"], len(saved_variables))
    # small_cnn: 8 conv -> BN pairs; each fold drops BN's 4 variables and gives the conv a bias
    assert counts["folded"][0] == 8 and counts["kept"][0] == 0
    assert counts["kept"][1] - counts["folded"][1] == 8 * 3


# Quantised TFLite: stated tolerances (min cosine to the float model on real faces).
QUANT_COSINE = {"float16": 1e-3, "int8": 2e-2}


@pytest.mark.parametrize("quantize", ["float16", "int8"])
def test_quantized_tflite_stays_close_and_is_smaller(quantize, faces, embedder, tmp_path):
    from tripletface.inference.export import export_model, load_exported

    plain = export_model(embedder, tmp_path / "plain.tflite", "tflite")
    quant = export_model(embedder, tmp_path / f"{quantize}.tflite", "tflite", quantize=quantize)
    runner = load_exported(quant)
    ref = embedder.embed_aligned(faces)
    got = runner.embed(faces)
    cos = np.sum(got.astype(np.float64) * ref, axis=1)
    assert cos.min() >= 1 - QUANT_COSINE[quantize], cos.min()
    assert np.linalg.norm(got - ref, axis=1).max() < 0.5 * min_pairwise_distance(ref)
    ratio = quant.stat().st_size / plain.stat().st_size
    assert ratio < {"float16": 0.7, "int8": 0.45}[quantize], ratio
    assert runner.metadata["quantize"] == quantize


def test_export_cli_and_its_errors(model_path, faces, tmp_path, capsys):
    from tripletface.inference.export import load_exported

    out = tmp_path / "cli.onnx"
    rc, stdout, err = run_cli(capsys, "export", "--model", model_path, "--format", "onnx", out)
    assert rc == 0, err
    assert f"wrote {out}" in stdout and out.is_file() and (tmp_path / "cli.onnx.json").is_file()
    assert load_exported(out).embed(faces[:2]).shape == (2, 16)
    rc, _, err = run_cli(capsys, "export", "--model", model_path, "--format", "onnx", out)
    assert rc == 2 and "already exists" in error_lines(err)[0]
    rc, _, err = run_cli(capsys, "export", "--model", model_path, "--format", "onnx", "--quantize", "int8",
                         tmp_path / "q.onnx")
    assert rc == 2 and "tflite only" in error_lines(err)[0]
    rc, _, err = run_cli(capsys, "export", "--model", model_path, "--format", "tflite", tmp_path / "x.onnx")
    assert rc == 2 and "must end in .tflite" in error_lines(err)[0]
    assert not (tmp_path / "x.onnx").exists() and not list(tmp_path.glob(".x.onnx.*"))
    rc, _, err = run_cli(capsys, "export", "--model", tmp_path / "missing.keras", "--format", "tflite",
                         tmp_path / "y.tflite")
    assert rc == 5 and "model file not found" in error_lines(err)[0]


def test_exported_runner_checks_its_input(embedder, tmp_path):
    from tripletface.errors import InputError, ModelError
    from tripletface.inference.export import export_model, load_exported

    with pytest.raises(ModelError, match="not found"):
        load_exported(tmp_path / "nothing.onnx")
    (tmp_path / "other.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="not an exported model"):
        load_exported(tmp_path / "other.bin")
    runner = load_exported(export_model(embedder, tmp_path / "m.tflite", "tflite"))
    with pytest.raises(ValueError, match="uint8"):
        runner.embed(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        runner.embed(np.zeros((1, 64, 64), np.uint8))
    assert runner.embed(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0, 16)
    with pytest.raises(ValueError, match="fmt must be one of"):
        export_model(embedder, tmp_path / "z", "pb")
