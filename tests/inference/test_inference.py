"""Embedder, `tripletface compare` (and `python inference.py`), `tripletface embed`.

Models are tiny and untrained: these tests check plumbing, exit codes and messages, and
the numbers that must hold for any weights (unit rows, distance 0 for one image, flip
invariance with test-time flipping, verdict = distance < threshold).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inference_support import THRESHOLD, error_lines, grey_image, make_model, run_cli, text_as_jpg, zero_byte


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Models and broken inputs, made once for this module."""
    d = tmp_path_factory.mktemp("inference")
    return {
        "model": make_model(d / "tiny.keras"),
        "no_threshold": make_model(d / "no_threshold.keras", threshold=None),
        "no_alignment": make_model(d / "no_alignment.keras", alignment=False),
        "grey": grey_image(d / "grey.jpg"),
        "text": text_as_jpg(d / "notes.jpg"),
        "empty": zero_byte(d / "empty.jpg"),
        "missing": d / "does_not_exist.jpg",
        "folder": d,
        "not_a_model": text_as_jpg(d / "fake.keras"),
    }


@pytest.fixture(scope="module")
def embedder(files):
    from tripletface.inference.embedder import Embedder

    return Embedder.load(files["model"])


@pytest.fixture(scope="module")
def faces(lfw_dir):
    """Two photos of one person and one of another."""
    return (lfw_dir / "Zico" / "Zico_0001.jpg", lfw_dir / "Zico" / "Zico_0002.jpg",
            lfw_dir / "Tony_Blair" / "Tony_Blair_0001.jpg")


# --------------------------------------------------------------------------- Embedder


def test_embed_files_nan_rows_and_failures_in_order(embedder, files, faces):
    paths = [faces[0], files["grey"], files["missing"], faces[2], files["text"]]
    vectors, failures = embedder.embed_files(paths)
    assert vectors.shape == (5, 16) and vectors.dtype == np.float32
    ok = np.isfinite(vectors).all(axis=1)
    assert ok.tolist() == [True, False, False, True, False]
    assert np.isnan(vectors[~ok]).all()
    np.testing.assert_allclose(np.linalg.norm(vectors[ok], axis=1), 1.0, atol=1e-5)
    assert [(f.path, f.status) for f in failures] == [
        (str(files["grey"]), "no_face"), (str(files["missing"]), "missing"), (str(files["text"]), "not_an_image")]
    assert [f.no_face for f in failures] == [True, False, False]
    assert failures[0].message.startswith(f"{files['grey']}: no face found")


def test_embed_aligned_unit_rows_and_flip_invariance(files):
    from tripletface.inference.embedder import Embedder

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (3, 80, 72, 3)).astype(np.uint8)  # another size: resized as in training
    with_tta = Embedder.load(files["model"], flip_tta=True)
    e = with_tta.embed_aligned(faces)
    assert e.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    # flip-averaged embeddings are the same for a face and its mirror image ...
    np.testing.assert_allclose(with_tta.embed_aligned(faces[:, :, ::-1]), e, atol=1e-5)
    # ... which plain embeddings of an untrained network are not
    plain = Embedder.load(files["model"], flip_tta=False)
    assert np.abs(plain.embed_aligned(faces[:, :, ::-1]) - plain.embed_aligned(faces)).max() > 1e-4
    with pytest.raises(ValueError, match="images must have shape"):
        with_tta.embed_aligned(faces[0])


def test_resize_matches_training_preprocessing():
    import tensorflow as tf

    from tripletface.data.images import preprocess_image
    from tripletface.inference.embedder import resize_images

    img = np.random.default_rng(1).integers(0, 256, (112, 112, 3)).astype(np.uint8)
    ours = resize_images(img[None], (64, 64))[0]
    training = preprocess_image(tf.constant(img), (64, 64)).numpy()
    np.testing.assert_array_equal(ours, training)
    assert resize_images(img[None], (112, 112)).dtype == np.float32


def test_fingerprint_follows_weights_not_metadata(files, tmp_path):
    from tripletface.model.io import save_model, update_metadata
    from tripletface.inference.embedder import Embedder

    a = Embedder.load(files["model"])
    again = Embedder.load(files["model"])
    assert a.fingerprint == again.fingerprint and len(a.fingerprint) == 16
    update_metadata(again.model, threshold=0.5, threshold_source="test")
    save_model(again.model, tmp_path / "recalibrated.keras")
    assert Embedder.load(tmp_path / "recalibrated.keras").fingerprint == a.fingerprint
    assert Embedder.load(files["no_threshold"]).fingerprint != a.fingerprint


def test_decision_threshold(files):
    from tripletface.inference.embedder import Embedder
    from tripletface.errors import InputError, ModelError

    e = Embedder.load(files["model"])
    assert e.decision_threshold() == (THRESHOLD, "stored in the model")
    assert e.decision_threshold(0.3) == (0.3, "--threshold")
    with pytest.raises(InputError, match="--threshold must be"):
        e.decision_threshold(float("nan"))
    with pytest.raises(ModelError, match="no stored decision threshold"):
        Embedder.load(files["no_threshold"]).decision_threshold()


def test_model_without_alignment_settings_needs_aligned_input(files, faces):
    from tripletface.inference.embedder import Embedder
    from tripletface.errors import ModelError

    e = Embedder.load(files["no_alignment"])
    with pytest.raises(ModelError, match="no alignment settings"):
        e.embed_files([faces[0]])
    vectors, failures = e.embed_files([faces[0]], aligned=True)
    assert not failures and np.isfinite(vectors).all()


def test_default_model_missing_is_a_clean_error(monkeypatch, tmp_path):
    from tripletface.inference import embedder as E
    from tripletface.errors import ModelError

    monkeypatch.setattr(E, "DEFAULT_MODEL", tmp_path / "default.keras")
    with pytest.raises(ModelError, match="no bundled default model"):
        E.resolve_model_path(None)


# --------------------------------------------------------------------------- compare: success


def test_compare_json(capsys, files, faces):
    rc, out, err = run_cli(capsys, "compare", "--model", files["model"], faces[0], faces[1], "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert set(r) >= {"image_a", "image_b", "distance", "threshold", "threshold_source", "metric", "verdict", "model"}
    assert r["image_a"] == str(faces[0]) and r["image_b"] == str(faces[1])
    assert 0.0 <= r["distance"] <= 2.0
    assert r["threshold"] == THRESHOLD and r["metric"] == "euclidean"
    assert r["verdict"] == ("same" if r["distance"] < r["threshold"] else "different")
    assert r["same"] is (r["verdict"] == "same")


def test_compare_same_image_twice_is_same(capsys, files, faces):
    rc, out, _ = run_cli(capsys, "compare", "--model", files["model"], faces[2], faces[2], "--json")
    r = json.loads(out)
    assert rc == 0 and r["distance"] < 1e-5 and r["verdict"] == "same"


def test_compare_text_and_threshold_override(capsys, files, faces):
    rc, out, _ = run_cli(capsys, "compare", "--model", files["model"], faces[0], faces[2], "--threshold", "0")
    assert rc == 0  # exit 0 whatever the verdict
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["distance", "threshold", "verdict"]
    assert "0.0000 (--threshold)" in lines[1]
    assert lines[2].split() == ["verdict:", "different"]  # nothing is < 0


def test_compare_aligned_skips_detection(capsys, files):
    # a flat grey "crop": no face, but --aligned takes it as it is
    rc, out, err = run_cli(capsys, "compare", "--model", files["model"], files["grey"], files["grey"], "--aligned",
                           "--json")
    assert rc == 0, err
    assert json.loads(out)["distance"] < 1e-5


# --------------------------------------------------------------------------- compare: failures


@pytest.mark.parametrize("case, code, reason", [
    ("missing", 3, "file not found"),
    ("folder", 3, "is a directory, not an image file"),
    ("empty", 3, "empty file (0 bytes)"),
    ("text", 3, "not an image (unrecognised file format)"),
    ("grey", 4, "no face found"),
])
@pytest.mark.parametrize("position", ["a", "b"])
def test_compare_bad_image(capsys, files, faces, case, code, reason, position):
    bad = files[case]
    pair = (bad, faces[0]) if position == "a" else (faces[0], bad)
    # a huge threshold: a missed face would otherwise come out 'same'
    rc, out, err = run_cli(capsys, "compare", "--model", files["model"], *pair, "--threshold", "4", "--json")
    assert rc == code
    assert out == ""  # no verdict at all
    assert err.splitlines() == [err.splitlines()[0]] and err.startswith(f"error: {bad}: {reason}")


def test_compare_model_errors(capsys, files, faces):
    for model, needle in [(files["folder"] / "nope.keras", "model file not found"),
                          (files["not_a_model"], "not a .keras model file"),
                          (files["no_threshold"], "no stored decision threshold")]:
        rc, out, err = run_cli(capsys, "compare", "--model", model, faces[0], faces[1])
        assert rc == 5 and out == ""
        assert len(err.splitlines()) == 1 and err.startswith(f"error: {model}: ") and needle in err
    # the threshold can come from the command line instead
    rc, out, _ = run_cli(capsys, "compare", "--model", files["no_threshold"], faces[0], faces[1], "--threshold", "0.5")
    assert rc == 0 and "(--threshold)" in out


def test_compare_bad_threshold(capsys, files, faces):
    rc, out, err = run_cli(capsys, "compare", "--model", files["model"], faces[0], faces[1], "--threshold", "-1")
    assert rc == 2 and out == ""
    assert error_lines(err) == ["error: argument --threshold: must be a number >= 0, received: '-1' "
                                "(see: tripletface compare --help)"]


# --------------------------------------------------------------------------- the original script, end to end


def _script(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "inference.py", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_inference_script(repo_root, files, faces):
    p = _script("--model", files["model"], faces[0], faces[0], cwd=repo_root)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("distance:  0.0000") and lines[2] == "verdict:   same"


def test_inference_script_failures(repo_root, files, faces):
    p = _script("--model", files["model"], faces[0], files["missing"], cwd=repo_root)
    assert p.returncode == 3 and p.stdout == ""
    assert error_lines(p.stderr) == [f"error: {files['missing']}: file not found"]
    p = _script("--model", files["model"], files["grey"], faces[0], "--threshold", "4", cwd=repo_root)
    assert p.returncode == 4 and "same" not in p.stdout
    assert len(error_lines(p.stderr)) == 1 and error_lines(p.stderr)[0].startswith(f"error: {files['grey']}: no face")


# --------------------------------------------------------------------------- embed


def _photo_dir(root: Path, lfw_dir: Path, files) -> Path:
    for name in ("Zico", "Tony_Blair"):
        (root / name).mkdir(parents=True)
        for f in sorted((lfw_dir / name).glob("*.jpg"))[:2]:
            (root / name / f.name).symlink_to(f)
    (root / "Zico" / "broken.jpg").write_text("not an image")
    (root / "Zico" / "grey.jpg").write_bytes(files["grey"].read_bytes())
    (root / "Zico" / ".hidden.jpg").write_text("skipped")
    (root / "readme.txt").write_text("not an image file name: ignored")
    return root


def test_embed_writes_npz_and_failures(capsys, files, lfw_dir, tmp_path):
    from tripletface.inference.embedder import Embedder

    src = _photo_dir(tmp_path / "photos", lfw_dir, files)
    rc, _, err = run_cli(capsys, "embed", "--model", files["model"], src, "--output", tmp_path / "out" / "emb.npz")
    assert rc == 0, err
    with np.load(tmp_path / "out" / "emb.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert sorted(arrays) == ["Tony_Blair/Tony_Blair_0001", "Tony_Blair/Tony_Blair_0002",
                              "Zico/Zico_0001", "Zico/Zico_0002"]
    for v in arrays.values():
        assert v.shape == (16,) and v.dtype == np.float32
        assert abs(np.linalg.norm(v) - 1) < 1e-5
    # the same numbers as the library gives
    vec, _ = Embedder.load(files["model"]).embed_files([lfw_dir / "Zico" / "Zico_0001.jpg"])
    np.testing.assert_allclose(arrays["Zico/Zico_0001"], vec[0], atol=1e-5)

    side = [json.loads(line) for line in (tmp_path / "out" / "emb.failures.jsonl").read_text().splitlines()]
    assert sorted((f["key"], f["status"]) for f in side) == [("Zico/broken", "not_an_image"), ("Zico/grey", "no_face")]
    assert all(f["reason"] and f["path"].startswith(str(src)) for f in side)
    assert "embedded 4 of 6 images" in err


def test_embed_aligned_duplicate_keys_and_nothing_embedded(capsys, files, tmp_path):
    src = tmp_path / "crops" / "Ann"
    src.mkdir(parents=True)
    grey_image(src / "a.jpg", size=64)
    grey_image(src / "a.png", size=64)  # same key "Ann/a": listed, not silently dropped
    out = tmp_path / "crops.npz"
    rc, _, err = run_cli(capsys, "embed", "--model", files["model"], tmp_path / "crops", "--output", out, "--aligned")
    assert rc == 0, err
    with np.load(out, allow_pickle=False) as z:
        assert z.files == ["Ann/a"]
    side = [json.loads(x) for x in (tmp_path / "crops.failures.jsonl").read_text().splitlines()]
    assert [(f["key"], f["status"]) for f in side] == [("Ann/a", "duplicate_key")]

    # raw-photo mode finds no face in grey images: the sidecar says why, and the exit is non-zero
    rc, _, err = run_cli(capsys, "embed", "--model", files["model"], tmp_path / "crops", "--output", out)
    assert rc == 2 and "none of the 2 images could be embedded" in error_lines(err)[0]
    side = [json.loads(x) for x in (tmp_path / "crops.failures.jsonl").read_text().splitlines()]
    assert sorted(f["status"] for f in side) == ["duplicate_key", "no_face"]


def test_embed_input_errors(capsys, files, tmp_path):
    rc, _, err = run_cli(capsys, "embed", "--model", files["model"], tmp_path / "nope", "--output", tmp_path / "x.npz")
    assert rc == 2 and error_lines(err) == [f"error: {tmp_path / 'nope'}: input folder not found"]
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(capsys, "embed", "--model", files["model"], tmp_path / "empty", "--output", tmp_path / "x.npz")
    assert rc == 2 and "no images found" in err
