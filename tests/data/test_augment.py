"""Train-branch augmentations: off is the identity, each op changes the image within range,
the order is fixed and documented, seeds make results reproducible, and it runs in tf.data."""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from tripletface.data import augment as A
from tripletface.config import AugmentConfig

SIZE = (64, 64)
ALL_OFF = dict(flip=False, rotation=0.0, brightness=0.0, contrast=0.0, color_jitter=0.0,
               gaussian_blur=0.0, motion_blur=0.0, cutout=0.0)
# one setting per op, strong enough to see, probabilities 1 so the op always runs
ONE_ON = {"flip": True, "rotation": 20.0, "brightness": 0.3, "contrast": 0.5, "color_jitter": 0.6,
          "gaussian_blur": 1.0, "motion_blur": 1.0, "cutout": 1.0, "greyscale": 1.0}


def only(**kwargs) -> AugmentConfig:
    return AugmentConfig(**{**ALL_OFF, **kwargs})


def _face_image() -> np.ndarray:
    """A real face (greyscale as RGB) when the LFW copy is there, else a textured pattern."""
    env = os.environ.get("TRIPLETFACE_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    for cand in (root / "lfw-dev" / "Andre_Agassi" / "Andre_Agassi_0001.jpg",
                 root / "Andre_Agassi" / "Andre_Agassi_0001.jpg"):
        if cand.is_file():
            from PIL import Image

            img = Image.open(cand).convert("RGB").crop((61, 61, 189, 189)).resize(SIZE, Image.BILINEAR)
            return np.asarray(img, dtype=np.float32)
    yy, xx = np.mgrid[0:SIZE[0], 0:SIZE[1]]
    grey = 127.5 + 100 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 20 * (xx > 32)
    return np.repeat(np.clip(grey, 0, 255)[..., None], 3, axis=2).astype(np.float32)


def _colour_image() -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE[0], 0:SIZE[1]].astype(np.float32)
    return np.stack([xx * 4, yy * 4, np.full_like(xx, 128.0)], axis=2).clip(0, 255).astype(np.float32)


def run(cfg, image, seed=(1, 2)):
    import tensorflow as tf

    fn = tf.function(A.build_augment(cfg, image.shape[:2]))
    return fn(tf.constant(image), tf.constant(seed, tf.int64)).numpy()


def test_order_is_fixed_and_documented():
    assert A.AUGMENT_ORDER == ("flip", "rotation", "brightness", "contrast", "color_jitter",
                               "gaussian_blur", "motion_blur", "cutout", "greyscale")
    doc = A.__doc__
    positions = [doc.index(f"``{name}``") for name in A.AUGMENT_ORDER]
    assert positions == sorted(positions), "the module docstring lists the ops out of order"
    # enabled_ops reports the run order, not the order they were switched on in
    assert A.enabled_ops(only(cutout=0.5, flip=True, gaussian_blur=0.2)) == ("flip", "gaussian_blur", "cutout")
    assert A.enabled_ops(None) == ()
    # every op has a config field
    assert set(A.AUGMENT_ORDER) <= {f.name for f in dataclasses.fields(AugmentConfig)}


@pytest.mark.parametrize("cfg", [None, only()], ids=["none", "all_off"])
def test_all_off_is_identity(cfg):
    image = _face_image()
    fn = A.build_augment(cfg, SIZE)
    out = np.asarray(fn(image, np.array([3, 4])))
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("name", A.AUGMENT_ORDER)
def test_each_op_changes_the_image_and_keeps_shape_and_range(name):
    image = _colour_image() if name in ("color_jitter", "greyscale") else _face_image()
    cfg = only(**{name: ONE_ON[name]})
    outs = [run(cfg, image, seed=(7, s)) for s in range(4)]
    for out in outs:
        assert out.shape == image.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 255.0
    changes = [float(np.abs(out - image).mean()) for out in outs]
    assert max(changes) > 1.0, f"{name} left the image unchanged: mean |diff| {changes}"
    if name == "flip":
        # each output is either the image or its mirror, and both occur over the seeds
        mirrored = [np.array_equal(out, image[:, ::-1]) for out in outs]
        same = [np.array_equal(out, image) for out in outs]
        assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)


def test_color_jitter_leaves_greyscale_alone():
    grey = _face_image()
    assert np.array_equal(grey[..., 0], grey[..., 1])
    out = run(only(color_jitter=0.8), grey)
    assert np.abs(out - grey).max() < 1e-2


def test_rotation_fills_borders_by_reflection_not_black():
    white = np.full((*SIZE, 3), 200.0, np.float32)
    out = run(only(rotation=30.0), white, seed=(0, 1))
    np.testing.assert_allclose(out, 200.0, atol=1e-3)  # a constant image stays constant: no black corners


def test_brightness_shift_is_bounded():
    mid = np.full((*SIZE, 3), 128.0, np.float32)
    deltas = [float((run(only(brightness=0.2), mid, seed=(0, s)) - mid).mean()) for s in range(6)]
    assert all(abs(d) <= 0.2 * 255 + 1e-3 for d in deltas)
    assert len({round(d, 3) for d in deltas}) > 1


def test_cutout_square_has_configured_size_and_mean_fill():
    image = _face_image()
    out = run(only(cutout=1.0, cutout_size=0.25), image, seed=(5, 5))
    changed = np.any(out != image, axis=2)
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    side = round(0.25 * SIZE[0])
    assert rows.size <= side + 1 and cols.size <= side + 1 and changed.sum() > 0
    np.testing.assert_allclose(out[changed], image.mean(), atol=1e-3)


def test_same_seed_same_result_different_seed_different():
    image = _face_image()
    cfg = AugmentConfig(contrast=0.3, color_jitter=0.3, gaussian_blur=0.5, motion_blur=0.5, cutout=0.5)
    a, b = run(cfg, image, seed=(1, 9)), run(cfg, image, seed=(1, 9))
    c = run(cfg, image, seed=(1, 10))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.5


def test_composition_equals_ops_applied_one_by_one_in_the_documented_order():
    # range-preserving ops, so clipping at the end equals clipping after each op
    image = _face_image()
    seed = (11, 3)
    names = ("flip", "rotation", "gaussian_blur", "motion_blur", "cutout")
    composed = run(only(**{n: ONE_ON[n] for n in names}), image, seed)
    step = image
    for n in names:  # each op draws from its own sub-seed, so it sees the same randomness alone
        step = run(only(**{n: ONE_ON[n]}), step, seed)
    np.testing.assert_allclose(composed, step, atol=1e-3)
    # and the order matters: cutout before rotation gives another image
    reverse = image
    for n in reversed(names):
        reverse = run(only(**{n: ONE_ON[n]}), reverse, seed)
    assert np.abs(reverse - composed).mean() > 0.5


def test_runs_in_parallel_tf_data_map_reproducibly():
    import tensorflow as tf

    image = tf.constant(_face_image())
    fn = A.build_augment(AugmentConfig(contrast=0.3, color_jitter=0.3, gaussian_blur=0.5,
                                       motion_blur=0.5, cutout=0.5), SIZE)

    def batches():
        ds = tf.data.Dataset.range(16).map(lambda i: fn(image, tf.stack([tf.constant(42, tf.int64), i])),
                                           num_parallel_calls=tf.data.AUTOTUNE)
        return np.concatenate([b.numpy() for b in ds.batch(8)])

    first, second = batches(), batches()
    assert first.shape == (16, *SIZE, 3)
    np.testing.assert_array_equal(first, second)
    assert len({round(float(x.mean()), 2) for x in first}) > 8  # per-element seeds differ


@pytest.mark.parametrize("field, value", [("rotation", -1.0), ("brightness", float("nan")), ("gaussian_blur", 1.5),
                                          ("cutout", 2.0), ("rotation", 200.0)])
def test_bad_settings_are_rejected_with_their_name(field, value):
    with pytest.raises(ValueError, match=f"augment.{field}"):
        A.build_augment(only(**{field: value}), SIZE)
    with pytest.raises(ValueError, match="cutout_size"):
        A.build_augment(only(cutout=0.5, cutout_size=0.0), SIZE)
    with pytest.raises(ValueError, match="image_size"):
        A.build_augment(only(), (0, 64))
