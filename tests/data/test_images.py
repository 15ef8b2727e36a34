"""The tf image path: the eval path equals the training path (decode once), PGM files decode."""

import numpy as np

from tripletface.data.images import decode_image, load_images, make_eval_dataset
from tripletface.data.samplers import make_pk_dataset

from crops_support import NO_AUG, N_MULTI, take


def test_eval_path_equals_train_path_without_augmentation(index):
    size = (48, 40)  # differs from the crops (64 PNG, 250 JPEG): exercises the resize on both paths
    anchors = set(index.anchor_identities()[:2].tolist())
    rows = [i for i, l in enumerate(index.labels) if l in anchors]
    paths = [index.paths[i] for i in rows]
    eval_images = np.concatenate([b.numpy() for b in make_eval_dataset(paths, size, batch_size=3)])
    assert eval_images.shape == (len(paths), *size, 3) and eval_images.dtype == np.float32
    np.testing.assert_array_equal(eval_images, load_images(paths, size))
    assert eval_images.min() >= 0 and eval_images.max() <= 255
    # the training batches (cached, no augmentation; P = every anchor identity, K >= their counts)
    # hold exactly these arrays, with the files' labels
    k = int(index.counts().max())
    train_images, train_labels = take(make_pk_dataset(index, N_MULTI, k, size, NO_AUG, seed=0), 1)[0]
    train = {x.tobytes(): int(l) for x, l in zip(train_images, train_labels)}
    for image, row in zip(eval_images, rows):
        assert train.get(image.tobytes()) == index.labels[row]


def test_pgm_files_decode(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    (tmp_path / "a.pgm").write_bytes(b"P5\n# made by a test\n7 5\n255\n" + grey.tobytes())
    deep = rng.integers(0, 65536, (5, 7)).astype(">u2")
    (tmp_path / "b.pgm").write_bytes(b"P5 7 5 65535\n" + deep.tobytes())
    a = decode_image(tf.io.read_file(str(tmp_path / "a.pgm"))).numpy()
    b = decode_image(tf.io.read_file(str(tmp_path / "b.pgm"))).numpy()
    assert a.shape == (5, 7, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a[..., 0], grey)
    np.testing.assert_array_equal(a[..., 2], grey)
    np.testing.assert_array_equal(b[..., 1], np.round(deep.astype(np.float64) * 255 / 65535).astype(np.uint8))
