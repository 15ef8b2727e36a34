"""One image path: a crop gives the same pixels to training (cached or streamed), to validation,
to ``embed --aligned`` / ``evaluate --aligned`` (the Embedder) and to the service, for PNG and JPEG
crops made by ``crop`` from real LFW photos; one extension list; the streamed (uncached) training
set reads nothing at set-up and names an unreadable file at the step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tripletface.data.images import image_error, load_images
from tripletface.data.index import IMAGE_EXTENSIONS, index_folder
from tripletface.data.pipeline import ImageSource
from tripletface.data.samplers import make_pk_dataset
from tripletface.config import AugmentConfig, load_config
from tripletface.errors import InputError

NO_AUG = AugmentConfig(flip=False, rotation=0.0, brightness=0.0)
PEOPLE = ("Abdullah_Gul", "Adrien_Brody", "Al_Sharpton")
PER_ID = 3


@pytest.fixture(scope="module", params=["png", "jpg"])
def crop_dir(request, lfw_dir, tmp_path_factory) -> Path:
    """``crop`` output (crop.image_format = png | jpg) for 3 LFW identities x 3 photos."""
    from tripletface.faces.crop import crop_folder

    src = tmp_path_factory.mktemp("photos")
    for name in PEOPLE:
        (src / name).mkdir()
        for f in sorted((lfw_dir / name).glob("*.jpg"))[:PER_ID]:
            (src / name / f.name).write_bytes(f.read_bytes())
    out = tmp_path_factory.mktemp(f"crops_{request.param}")
    cfg = load_config(overrides={"crop.image_format": request.param, "crop.workers": 2}).crop
    summary = crop_folder(src, out, cfg, progress=False)
    assert summary.counts["ok"] >= 2 * len(PEOPLE), summary.line()
    files = sorted(out.glob(f"*/*.{request.param}"))
    assert files and all(f.suffix == f".{request.param}" for f in files)
    return out


def _train_images(index, size, cache):
    """Every image of ``index`` as the P×K training set yields it (no augmentation): {bytes: label}."""
    k = int(index.counts().max())
    ds = make_pk_dataset(index, index.num_identities, k, size, NO_AUG, seed=0, cache=cache)
    images, labels = next(iter(ds))
    return {x.tobytes(): int(l) for x, l in zip(images.numpy(), labels.numpy())}


@pytest.mark.parametrize("size", [(112, 112), (64, 64)])  # the crop's size, and a resize
def test_a_crop_gives_training_and_inference_the_same_pixels(crop_dir, size):
    from tripletface.inference.embedder import resize_images
    from tripletface.data.decode import read_image
    from tripletface.serve.uploads import decode_upload

    index = index_folder(crop_dir)
    assert len(index) >= 2 * len(PEOPLE)
    # inference: embed --aligned, evaluate --aligned, compare, identify read with read_image, then resize
    inference = resize_images(np.stack([read_image(p) for p in index.paths]), size)
    for p in index.paths:  # the service decodes the uploaded bytes to the same pixels
        np.testing.assert_array_equal(decode_upload(Path(p).read_bytes()), read_image(p))
    expected = {x.tobytes(): int(l) for x, l in zip(inference, index.labels)}
    assert len(expected) == len(index)
    for cache in (True, False):  # the in-memory cache and the streamed files
        assert _train_images(index, size, cache) == expected, f"cache={cache}"
    np.testing.assert_array_equal(load_images(index.paths, size), inference)  # training's validation


def test_embed_aligned_of_a_crop_equals_the_embedding_of_its_training_pixels(crop_dir, tmp_path):
    from inference_support import make_model

    from tripletface.inference.embedder import Embedder

    index = index_folder(crop_dir)
    emb = Embedder.load(str(make_model(tmp_path / "m.keras")), flip_tta=False)
    train = load_images(index.paths, emb.image_size)  # what the training pipeline feeds the model
    from_files, failures = emb.embed_files(list(index.paths), aligned=True)
    assert failures == []
    np.testing.assert_array_equal(from_files, emb.embed_aligned(train))


def test_one_extension_list_tiff_crops_are_indexed(tmp_path):
    from PIL import Image

    from tripletface.data import decode as imageio

    assert IMAGE_EXTENSIONS == {"." + e for e in imageio.IMAGE_EXTENSIONS}
    rng = np.random.default_rng(0)
    for name in ("ann", "bob"):
        (tmp_path / name).mkdir()
        for i, ext in enumerate(("tif", "tiff", "png")):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.{ext}")
    index = index_folder(tmp_path)
    assert sorted(Path(p).suffix for p in index.paths) == [".png", ".png", ".tif", ".tif", ".tiff", ".tiff"]
    images = load_images(index.paths, (16, 16))
    np.testing.assert_array_equal(images[0], np.asarray(Image.open(index.paths[0]), np.float32))


def _tiny_crops(root: Path, n_ids: int = 4, per_id: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(n_ids):
        (root / f"id{i}").mkdir(parents=True)
        for j in range(per_id):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"id{i}" / f"{j}.png")
    return root


def test_streamed_training_set_reads_nothing_at_set_up_and_names_a_bad_file_at_the_step(tmp_path, monkeypatch):
    import tensorflow as tf

    from tripletface.data import decode as imageio

    root = _tiny_crops(tmp_path / "train")
    victim = root / "id2" / "1.png"
    victim.write_bytes(victim.read_bytes()[:60])  # truncated
    index = index_folder(root)
    calls = []
    real = imageio.read_image
    monkeypatch.setattr(imageio, "read_image", lambda *a, **kw: calls.append(a[0]) or real(*a, **kw))
    ds = make_pk_dataset(index, 4, 2, (32, 32), NO_AUG, seed=0, cache=False)  # every image in every batch
    assert calls == [], "no decode pass over the files at set-up"
    with pytest.raises(tf.errors.OpError) as raised:
        next(iter(ds))
    assert calls, "files are read when sampled"
    err = image_error(raised.value)
    assert isinstance(err, InputError)
    assert str(err).startswith(f"{victim}: unreadable image (") and "\n" not in str(err)
    assert image_error(ValueError("something else")) is None


def test_what_does_not_fit_the_cache_is_streamed_with_the_same_pixels(tmp_path, capsys):
    root = _tiny_crops(tmp_path / "train")
    index = index_folder(root)
    source = ImageSource(index.paths, (32, 32), cache=True, max_cache_bytes=3 * 32 * 32 * 3 + 5)
    assert source.n_cached == 3 and not source.cached
    assert "3 of 8" in capsys.readouterr().err
    full = ImageSource(index.paths, (32, 32), cache=True)
    assert full.cached
    for i in range(len(index)):
        np.testing.assert_array_equal(source.load(i).numpy(), full.load(i).numpy())
    a = _train_images(index, (32, 32), cache=True)
    ds = make_pk_dataset(index, 4, 2, (32, 32), NO_AUG, seed=0, max_cache_bytes=32 * 32 * 3)
    images, labels = next(iter(ds))
    assert {x.tobytes(): int(l) for x, l in zip(images.numpy(), labels.numpy())} == a


def test_train_names_an_unreadable_streamed_file_on_one_line(tmp_path, capsys):
    from tripletface.cli.main import main

    root = _tiny_crops(tmp_path / "train")
    victim = root / "id1" / "0.png"
    victim.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rc = main(["train", "--preset", "smoke", "--quiet", "--set", f"TRAIN_DIR={root}",
               f"CHECKPOINT_DIR={tmp_path / 'ckpt'}", f"TENSORBOARD_LOGDIR={tmp_path / 'logs'}",
               "data.cache=false", "data.val_fraction=0", "model.image_size=[32,32]"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"{victim}: unreadable image" in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "ckpt" / "model.keras").exists()
