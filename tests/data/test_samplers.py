"""P×K and random-triplet batches on real LFW crops, their one-line input errors, and the dispatch
of build_train_dataset on the config."""

import os

import numpy as np
import pytest

from tripletface.config import AugmentConfig, Config
from tripletface.data.images import check_images, load_images
from tripletface.data.index import index_folder
from tripletface.data.samplers import build_train_dataset, make_pk_dataset, make_triplet_dataset
from tripletface.errors import InputError

from crops_support import FULL_AUG, NO_AUG, N_MULTI, SIZE, copy_tree, take


def test_pk_batches_have_p_distinct_identities_k_each_and_labels_match_the_files(index):
    p, k = 4, 3
    ds = make_pk_dataset(index, p, k, SIZE, NO_AUG, seed=3)
    cached = load_images(index.paths, SIZE)  # the decoded files
    label_of = {x.tobytes(): int(l) for x, l in zip(cached, index.labels)}
    for images, labels in take(ds, 4):
        assert images.shape == (p * k, *SIZE, 3) and images.dtype == np.float32
        assert labels.dtype == np.int32 and labels.shape == (p * k,)
        groups = labels.reshape(p, k)
        assert (groups == groups[:, :1]).all(), "rows are identity-major, K per identity"
        assert len(set(groups[:, 0])) == p, "P distinct identities"
        assert all(index.counts()[groups[:, 0]] >= 2), "only identities with 2+ images are anchors"
        for image, label in zip(images, labels):
            assert label_of[image.tobytes()] == label
        # without replacement when the identity has K images or more
        for row in range(p):
            rows = images[row * k:(row + 1) * k].reshape(k, -1)
            n_distinct = len({r.tobytes() for r in rows})
            assert n_distinct == min(k, index.counts()[groups[row, 0]])


def test_identity_with_fewer_than_k_images_uses_all_of_them(index):
    two = int(np.flatnonzero(index.counts() == 2)[0])
    files = load_images([p for p, l in zip(index.paths, index.labels) if l == two], SIZE)
    ds = make_pk_dataset(index, N_MULTI, 4, SIZE, NO_AUG, seed=0)  # P = all anchors: every batch has it
    images, labels = take(ds, 1)[0]
    mine = images[labels == two]
    assert len(mine) == 4
    seen = {m.tobytes() for m in mine}
    assert seen == {f.tobytes() for f in files}


def test_fixed_seed_same_batches_other_seed_different_cache_or_not(index):
    a = take(make_pk_dataset(index, 3, 2, SIZE, FULL_AUG, seed=11), 3)
    b = take(make_pk_dataset(index, 3, 2, SIZE, FULL_AUG, seed=11, cache=False), 3)
    c = take(make_pk_dataset(index, 3, 2, SIZE, FULL_AUG, seed=12), 3)
    for (ia, la), (ib, lb) in zip(a, b):
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_allclose(ia, ib, atol=1e-3)  # decode per file == in-memory cache
    assert any(not np.array_equal(la, lc) for (_, la), (_, lc) in zip(a, c))
    for images, _ in a:
        assert images.min() >= 0 and images.max() <= 255


def test_augmentation_is_fresh_each_batch(index):
    # the same identity+image drawn twice is augmented differently (cache holds un-augmented images)
    ds = make_pk_dataset(index, N_MULTI, 2, SIZE, AugmentConfig(flip=False, rotation=15.0, brightness=0.3),
                         seed=1)
    plain = make_pk_dataset(index, N_MULTI, 2, SIZE, NO_AUG, seed=1)
    (ia, la), (ip, lp) = take(ds, 1)[0], take(plain, 1)[0]
    np.testing.assert_array_equal(la, lp)
    assert all(np.abs(x - y).mean() > 0.5 for x, y in zip(ia, ip))


def test_p_larger_than_the_data_is_an_input_error(index):
    with pytest.raises(InputError, match=rf"P=11 .*{N_MULTI} identities with 2\+ images"):
        make_pk_dataset(index, N_MULTI + 1, 2, SIZE, NO_AUG, seed=0)
    with pytest.raises(ValueError, match="k must be >= 2"):
        make_pk_dataset(index, 2, 1, SIZE, NO_AUG, seed=0)


def test_unreadable_image_is_named_before_training(tmp_path, crops):
    root = copy_tree(crops, tmp_path / "train")
    victim = sorted((root / sorted(os.listdir(root))[2]).iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:60])  # truncated
    idx = index_folder(root)
    with pytest.raises(InputError, match=rf"{victim.name}: unreadable image"):
        make_pk_dataset(idx, 2, 2, SIZE, NO_AUG, seed=0, cache=True)
    with pytest.raises(InputError, match=victim.name):
        check_images(idx)
    victim.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        check_images(idx)


def test_random_triplets_order_and_identity_checks(index):
    b = 6
    ds = make_triplet_dataset(index, b, SIZE, NO_AUG, seed=2)
    negatives = set()
    for images, labels in take(ds, 8):
        assert images.shape == (3 * b, *SIZE, 3) and labels.shape == (3 * b,)
        a, p, n = labels[:b], labels[b:2 * b], labels[2 * b:]
        assert (a == p).all() and (n != a).all()
        assert all(index.counts()[a] >= 2)
        for i in range(b):  # anchor and positive are different images
            assert not np.array_equal(images[i], images[b + i])
        negatives.update(n.tolist())
    singles = set(np.flatnonzero(index.counts() == 1).tolist())
    assert singles & negatives, "single-image identities serve as negatives"
    again = take(make_triplet_dataset(index, b, SIZE, FULL_AUG, seed=2), 2)
    twice = take(make_triplet_dataset(index, b, SIZE, FULL_AUG, seed=2), 2)
    for (x1, y1), (x2, y2) in zip(again, twice):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x2)


@pytest.mark.parametrize("sampling, n", [("pk", 8), ("triplets", 12)])
def test_build_train_dataset_dispatches_on_the_config(index, sampling, n):
    cfg = Config()
    cfg.model.image_size = SIZE
    cfg.data.batch_size, cfg.data.k, cfg.data.sampling = (8 if sampling == "pk" else 4), 2, sampling
    (images, labels), = take(build_train_dataset(cfg, index), 1)
    assert images.shape == (n, *SIZE, 3) and labels.shape == (n,)
    cfg.data.source = "synthetic"
    (images, labels), = take(build_train_dataset(cfg, None), 1)
    assert images.shape == (n, *SIZE, 3)


def test_build_train_dataset_triplets_file_needs_a_file(index):
    cfg = Config()
    cfg.model.image_size = SIZE
    cfg.data.sampling = "triplets_file"
    with pytest.raises(InputError, match="data.triplets_file"):
        build_train_dataset(cfg, index)
