"""The tf.data pipeline on real LFW crops: index, identity split, P×K and triplet batches,
triplets files, one-line input errors, decode-once equality of train and eval paths, synthetic data."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tripletface.data import dataset as D
from tripletface.config.config import AugmentConfig, Config
from tripletface.errors import InputError

SIZE = (64, 64)
NO_AUG = AugmentConfig(flip=False, rotation=0.0, brightness=0.0)
FULL_AUG = AugmentConfig(flip=True, rotation=10.0, brightness=0.2, contrast=0.3, color_jitter=0.3,
                         gaussian_blur=0.5, motion_blur=0.5, cutout=0.5)
N_MULTI = 10  # identities with 2+ images in the test folder


# --------------------------------------------------------------------------- data

def _lfw_source(request) -> Path:
    try:  # the shared fixture, when tests/conftest.py provides it
        found = Path(request.getfixturevalue("lfw_dir"))
    except (pytest.FixtureLookupError, pytest.fail.Exception):
        env = os.environ.get("TRIPLETFACE_DATA")
        found = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    for cand in (found / "lfw-dev", found):
        if (cand / "Andre_Agassi").is_dir():
            return cand
    pytest.skip(f"LFW images not found under {found} (set TRIPLETFACE_DATA to the folder holding lfw-dev)")


def _crop(src: Path, dst: Path, size: int) -> None:
    from PIL import Image

    img = Image.open(src).convert("L").crop((61, 61, 189, 189)).resize((size, size), Image.BILINEAR)
    img.save(dst)


@pytest.fixture(scope="module")
def crops(request, tmp_path_factory) -> Path:
    """train/<identity>/<image>: 10 identities with 2-5 face crops (PNG 64x64, one identity as
    the original 250x250 JPEGs), 2 single-image identities, plus a hidden file and a text file."""
    src = _lfw_source(request)
    root = tmp_path_factory.mktemp("crops") / "train"
    names = sorted(os.listdir(src))
    multi = [n for n in names if len(os.listdir(src / n)) >= 3][:N_MULTI - 1]
    two = next(n for n in names if len(os.listdir(src / n)) == 2)
    singles = [n for n in names if len(os.listdir(src / n)) == 1][:2]
    for n in multi + [two] + singles:
        (root / n).mkdir(parents=True)
        files = sorted(os.listdir(src / n))[:5]
        for f in files:
            if n == multi[0]:
                shutil.copy(src / n / f, root / n / f)  # original JPEG: exercises the resize path
            else:
                _crop(src / n / f, root / n / (Path(f).stem + ".png"), SIZE[0])
    (root / multi[1] / ".hidden.png").write_bytes(b"not an image")
    (root / multi[1] / "notes.txt").write_text("ignored")
    return root


@pytest.fixture(scope="module")
def index(crops):
    return D.index_folder(crops)


def _copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- index

def test_index_labels_match_folders_and_skip_non_images(index, crops):
    assert index.num_identities == N_MULTI + 2
    assert len(index.anchor_identities()) == N_MULTI
    assert sorted(index.names) == sorted(p.name for p in crops.iterdir())
    for path, label in zip(index.paths, index.labels):
        assert Path(path).parent.name == index.names[label]
        assert Path(path).suffix in (".png", ".jpg") and not Path(path).name.startswith(".")
    counts = index.counts()
    assert sorted(counts)[:3] == [1, 1, 2] and counts.sum() == len(index.paths)


def test_index_errors_are_one_line_and_name_the_problem(tmp_path, crops, index):
    with pytest.raises(InputError, match="does not exist"):
        D.index_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        D.index_folder(tmp_path / "empty")
    one = tmp_path / "one"
    shutil.copytree(crops / index.names[int(index.anchor_identities()[0])], one / "Only_Person")
    with pytest.raises(InputError, match=r"1 identity with 2 or more images") as err:
        D.index_folder(one)
    assert "\n" not in str(err.value)
    loose = tmp_path / "loose"
    loose.mkdir()
    for f in list((one / "Only_Person").iterdir())[:2]:
        shutil.copy(f, loose / f.name)
    with pytest.raises(InputError, match="one folder per identity"):
        D.index_folder(loose)


# --------------------------------------------------------------------------- split

def test_split_is_identity_disjoint_deterministic_and_only_holds_out_multi_image_identities(index):
    train, val = D.split_by_identity(index, 0.3, seed=5)
    assert set(train.names).isdisjoint(val.names)
    assert set(train.names) | set(val.names) == set(index.names)
    assert val.num_identities == 3 and (val.counts() >= 2).all()
    assert len(train) + len(val) == len(index)
    # relabelled 0..m-1, labels still match the folders
    for sub in (train, val):
        assert set(sub.labels) == set(range(sub.num_identities))
        assert all(Path(p).parent.name == sub.names[l] for p, l in zip(sub.paths, sub.labels))
    again = D.split_by_identity(index, 0.3, seed=5)[1]
    assert again.names == val.names
    others = {D.split_by_identity(index, 0.3, seed=s)[1].names for s in range(6)}
    assert len(others) > 1
    train0, val0 = D.split_by_identity(index, 0.0, seed=5)
    assert len(val0) == 0 and train0 is index
    with pytest.raises(ValueError, match="val_fraction"):
        D.split_by_identity(index, 1.0, seed=0)
    with pytest.raises(InputError, match="keep 2 for training"):
        D.split_by_identity(index, 0.9, seed=0)


# --------------------------------------------------------------------------- P×K

def _take(ds, n):
    out = []
    for images, labels in ds.take(n):
        out.append((images.numpy(), labels.numpy()))
    return out


def test_pk_batches_have_p_distinct_identities_k_each_and_labels_match_the_files(index):
    p, k = 4, 3
    ds = D.make_pk_dataset(index, p, k, SIZE, NO_AUG, seed=3)
    cached = D.load_images(index.paths, SIZE)  # the decoded files
    label_of = {x.tobytes(): int(l) for x, l in zip(cached, index.labels)}
    for images, labels in _take(ds, 4):
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
    files = D.load_images([p for p, l in zip(index.paths, index.labels) if l == two], SIZE)
    ds = D.make_pk_dataset(index, N_MULTI, 4, SIZE, NO_AUG, seed=0)  # P = all anchors: every batch has it
    images, labels = _take(ds, 1)[0]
    mine = images[labels == two]
    assert len(mine) == 4
    seen = {m.tobytes() for m in mine}
    assert seen == {f.tobytes() for f in files}


def test_fixed_seed_same_batches_other_seed_different_cache_or_not(index):
    a = _take(D.make_pk_dataset(index, 3, 2, SIZE, FULL_AUG, seed=11), 3)
    b = _take(D.make_pk_dataset(index, 3, 2, SIZE, FULL_AUG, seed=11, cache=False), 3)
    c = _take(D.make_pk_dataset(index, 3, 2, SIZE, FULL_AUG, seed=12), 3)
    for (ia, la), (ib, lb) in zip(a, b):
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_allclose(ia, ib, atol=1e-3)  # decode per file == in-memory cache
    assert any(not np.array_equal(la, lc) for (_, la), (_, lc) in zip(a, c))
    for images, _ in a:
        assert images.min() >= 0 and images.max() <= 255


def test_augmentation_is_fresh_each_batch(index):
    # the same identity+image drawn twice is augmented differently (cache holds un-augmented images)
    ds = D.make_pk_dataset(index, N_MULTI, 2, SIZE, AugmentConfig(flip=False, rotation=15.0, brightness=0.3),
                           seed=1)
    plain = D.make_pk_dataset(index, N_MULTI, 2, SIZE, NO_AUG, seed=1)
    (ia, la), (ip, lp) = _take(ds, 1)[0], _take(plain, 1)[0]
    np.testing.assert_array_equal(la, lp)
    assert all(np.abs(x - y).mean() > 0.5 for x, y in zip(ia, ip))


def test_p_larger_than_the_data_is_an_input_error(index):
    with pytest.raises(InputError, match=rf"P=11 .*{N_MULTI} identities with 2\+ images"):
        D.make_pk_dataset(index, N_MULTI + 1, 2, SIZE, NO_AUG, seed=0)
    with pytest.raises(ValueError, match="k must be >= 2"):
        D.make_pk_dataset(index, 2, 1, SIZE, NO_AUG, seed=0)


def test_unreadable_image_is_named_before_training(tmp_path, crops):
    root = _copy_tree(crops, tmp_path / "train")
    victim = sorted((root / sorted(os.listdir(root))[2]).iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:60])  # truncated
    idx = D.index_folder(root)
    with pytest.raises(InputError, match=rf"{victim.name}: unreadable image"):
        D.make_pk_dataset(idx, 2, 2, SIZE, NO_AUG, seed=0, cache=True)
    with pytest.raises(InputError, match=victim.name):
        D.check_images(idx)
    victim.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        D.check_images(idx)


# --------------------------------------------------------------------------- explicit triplets

def test_random_triplets_order_and_identity_checks(index):
    b = 6
    ds = D.make_triplet_dataset(index, b, SIZE, NO_AUG, seed=2)
    negatives = set()
    for images, labels in _take(ds, 8):
        assert images.shape == (3 * b, *SIZE, 3) and labels.shape == (3 * b,)
        a, p, n = labels[:b], labels[b:2 * b], labels[2 * b:]
        assert (a == p).all() and (n != a).all()
        assert all(index.counts()[a] >= 2)
        for i in range(b):  # anchor and positive are different images
            assert not np.array_equal(images[i], images[b + i])
        negatives.update(n.tolist())
    singles = set(np.flatnonzero(index.counts() == 1).tolist())
    assert singles & negatives, "single-image identities serve as negatives"
    again = _take(D.make_triplet_dataset(index, b, SIZE, FULL_AUG, seed=2), 2)
    twice = _take(D.make_triplet_dataset(index, b, SIZE, FULL_AUG, seed=2), 2)
    for (x1, y1), (x2, y2) in zip(again, twice):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x2)


def _write_triplets(path: Path, index, rows_extra=(), header=True):
    by = {}
    for pth, l in zip(index.paths, index.labels):
        by.setdefault(int(l), []).append(os.path.relpath(pth, index.root))
    multi = [l for l in by if len(by[l]) >= 2]
    lines = ["anchor,positive,negative"] if header else []
    for i, l in enumerate(multi):
        other = multi[(i + 1) % len(multi)]
        lines.append(f"{by[l][0]},{by[l][1]},{by[other][0]}")
    lines.extend(rows_extra)
    path.write_text("\n".join(lines) + "\n")
    return len(multi)


def test_triplets_file_parsing_and_dataset(tmp_path, index):
    f = tmp_path / "triplets.csv"
    n = _write_triplets(f, index)
    triplets = D.read_triplets_file(f, root=index.root)
    assert len(triplets) == n and all(len(t) == 3 for t in triplets)
    assert D.read_triplets_file(f, root=index.root) == triplets
    g = tmp_path / "noheader.csv"
    _write_triplets(g, index, header=False)
    assert D.read_triplets_file(g, root=index.root) == triplets

    ds = D.make_triplets_file_dataset(triplets, 4, SIZE, NO_AUG, seed=0, index=index)
    for images, labels in _take(ds, 3):
        assert images.shape == (12, *SIZE, 3)
        assert (labels[:4] == labels[4:8]).all() and (labels[8:] != labels[:4]).all()
    # one ordered pass without augmentation == the files through the eval path
    once = list(D.make_triplets_file_dataset(triplets, 4, SIZE, None, index=index, repeat=False))
    assert sum(len(l) for _, l in once) == 3 * n
    first_images, _ = once[0]
    expected = D.load_images([triplets[0][0], triplets[0][1], triplets[0][2]], SIZE)
    np.testing.assert_array_equal(first_images.numpy()[[0, 4, 8]], expected)
    # an index without some identities drops their triplets (no leakage from validation)
    train, val = D.split_by_identity(index, 0.3, seed=1)
    kept = list(D.make_triplets_file_dataset(triplets, 2, SIZE, None, index=train, repeat=False))
    assert 0 < sum(len(l) for _, l in kept) < 3 * n


@pytest.mark.parametrize("line, message", [
    ("a.png,b.png", r":\d+: expected 3 comma-separated image paths"),
    ("x/missing.png,x/missing2.png,y/z.png", r":\d+: anchor image not found"),
])
def test_bad_triplets_file_names_file_and_line(tmp_path, index, line, message):
    f = tmp_path / "bad.csv"
    n = _write_triplets(f, index, rows_extra=[line])
    with pytest.raises(InputError, match=rf"bad\.csv:{n + 2}: " + message.split(":", 2)[-1].lstrip(r"\d+: ")):
        D.read_triplets_file(f, root=index.root)


def test_triplets_file_identity_errors(tmp_path, index):
    ident = int(index.anchor_identities()[0])
    mine = [os.path.relpath(p, index.root) for p, l in zip(index.paths, index.labels) if l == ident]
    a, b = mine[:2]
    other = next(os.path.relpath(p, index.root) for p, l in zip(index.paths, index.labels) if l != ident)
    f = tmp_path / "t.csv"
    f.write_text(f"{a},{b},{b}\n")
    with pytest.raises(InputError, match=r"t\.csv:1: negative is from the anchor's identity"):
        D.read_triplets_file(f, root=index.root)
    f.write_text(f"{a},{other},{b}\n")
    with pytest.raises(InputError, match=r"t\.csv:1: anchor and positive are in different identity folders"):
        D.read_triplets_file(f, root=index.root)
    with pytest.raises(InputError, match="does not exist"):
        D.read_triplets_file(tmp_path / "none.csv", root=index.root)


# --------------------------------------------------------------------------- eval path

def test_eval_path_equals_train_path_without_augmentation(index):
    size = (48, 40)  # differs from the crops (64 PNG, 250 JPEG): exercises the resize on both paths
    anchors = set(index.anchor_identities()[:2].tolist())
    rows = [i for i, l in enumerate(index.labels) if l in anchors]
    paths = [index.paths[i] for i in rows]
    eval_images = np.concatenate([b.numpy() for b in D.make_eval_dataset(paths, size, batch_size=3)])
    assert eval_images.shape == (len(paths), *size, 3) and eval_images.dtype == np.float32
    np.testing.assert_array_equal(eval_images, D.load_images(paths, size))
    assert eval_images.min() >= 0 and eval_images.max() <= 255
    # the training batches (cached, no augmentation; P = every anchor identity, K >= their counts)
    # hold exactly these arrays, with the files' labels
    k = int(index.counts().max())
    train_images, train_labels = _take(D.make_pk_dataset(index, N_MULTI, k, size, NO_AUG, seed=0), 1)[0]
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
    a = D.decode_image(tf.io.read_file(str(tmp_path / "a.pgm"))).numpy()
    b = D.decode_image(tf.io.read_file(str(tmp_path / "b.pgm"))).numpy()
    assert a.shape == (5, 7, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a[..., 0], grey)
    np.testing.assert_array_equal(a[..., 2], grey)
    np.testing.assert_array_equal(b[..., 1], np.round(deep.astype(np.float64) * 255 / 65535).astype(np.uint8))


# --------------------------------------------------------------------------- validation pairs/triplets

def test_val_pairs_half_matched_and_correct(index):
    a, b, same = D.make_val_pairs(index, 40, seed=4)
    assert len(a) == len(b) == len(same) == 40 and same.sum() == 20
    labels = index.labels
    np.testing.assert_array_equal(labels[a] == labels[b], same)
    assert (a[same] != b[same]).all()
    assert not (same[:20].all() and not same[20:].any()), "pairs are shuffled, not blocked"
    again = D.make_val_pairs(index, 40, seed=4)
    for x, y in zip((a, b, same), again):
        np.testing.assert_array_equal(x, y)
    t_a, t_p, t_n = D.make_val_triplets(index, 30, seed=4)
    assert (labels[t_a] == labels[t_p]).all() and (t_a != t_p).all() and (labels[t_n] != labels[t_a]).all()


# --------------------------------------------------------------------------- synthetic and dispatch

def test_synthetic_batches_have_the_pk_structure_and_are_learnable():
    ds = D.make_synthetic_dataset(4, 3, SIZE, n_identities=8, seed=0)
    (images, labels), = _take(ds, 1)
    assert images.shape == (12, *SIZE, 3) and images.dtype == np.float32 and labels.dtype == np.int32
    groups = labels.reshape(4, 3)
    assert (groups == groups[:, :1]).all() and len(set(groups[:, 0])) == 4
    assert images.min() >= 0 and images.max() <= 255
    flat = images.reshape(12, -1)
    d = np.linalg.norm(flat[:, None] - flat[None], axis=2)
    same = labels[:, None] == labels[None]
    off_diag = ~np.eye(12, dtype=bool)
    assert d[same & off_diag].mean() < 0.7 * d[~same].mean()
    (again, _), = _take(D.make_synthetic_dataset(4, 3, SIZE, n_identities=8, seed=0), 1)
    np.testing.assert_array_equal(images, again)
    (trip, tl), = _take(D.make_synthetic_triplet_dataset(5, SIZE, n_identities=8, seed=0), 1)
    assert trip.shape == (15, *SIZE, 3) and (tl[:5] == tl[5:10]).all() and (tl[10:] != tl[:5]).all()
    with pytest.raises(InputError, match="P=9"):
        D.make_synthetic_dataset(9, 2, SIZE, n_identities=8, seed=0)


@pytest.mark.parametrize("sampling, n", [("pk", 8), ("triplets", 12)])
def test_build_train_dataset_dispatches_on_the_config(index, sampling, n):
    cfg = Config()
    cfg.model.image_size = SIZE
    cfg.data.batch_size, cfg.data.k, cfg.data.sampling = (8 if sampling == "pk" else 4), 2, sampling
    (images, labels), = _take(D.build_train_dataset(cfg, index), 1)
    assert images.shape == (n, *SIZE, 3) and labels.shape == (n,)
    cfg.data.source = "synthetic"
    (images, labels), = _take(D.build_train_dataset(cfg, None), 1)
    assert images.shape == (n, *SIZE, 3)


def test_build_train_dataset_triplets_file_needs_a_file(index):
    cfg = Config()
    cfg.model.image_size = SIZE
    cfg.data.sampling = "triplets_file"
    with pytest.raises(InputError, match="data.triplets_file"):
        D.build_train_dataset(cfg, index)


def test_quality_filter_drops_blurred_and_turned_crops_by_the_manifest(tmp_path):
    """data.min_blur / data.max_pose: the crops crop scored below the bar go, identities left empty go,
    unscored images stay."""
    rows, paths, labels = [], [], []
    spec = {"a": [(100, 0.0), (10, 0.0), (100, 0.5)], "b": [(5, 0.1)], "c": [(80, -0.35), (90, 0.05)]}
    for label, (name, crops) in enumerate(sorted(spec.items())):
        for j, (blur, pose) in enumerate(crops):
            rows.append({"source": f"{name}/{j}.jpg", "status": "ok", "output": f"{name}/{j}.png",
                         "blur": blur, "pose": pose})
            paths.append(str(tmp_path / name / f"{j}.png"))
            labels.append(label)
    paths.append(str(tmp_path / "c" / "added_later.png"))  # not in the manifest
    labels.append(2)
    index = D.FaceIndex(tuple(paths), np.array(labels), ("a", "b", "c"))

    kept, dropped = D.quality_filter(index, rows, tmp_path, min_blur=50, max_pose=0.3)
    expect = [p for p, (blur, pose) in zip(paths, [c for n in sorted(spec) for c in spec[n]])
              if blur >= 50 and abs(pose) <= 0.3] + [paths[-1]]
    assert list(kept.paths) == expect and dropped == 4
    assert kept.names == ("a", "c")  # b lost its only crop
    assert [kept.names[i] for i in kept.labels] == ["a", "c", "c"]
    # a 0 threshold is off
    assert D.quality_filter(index, rows, tmp_path, min_blur=50)[1] == 2
    assert D.quality_filter(index, rows, tmp_path, max_pose=0.3)[1] == 2
    assert D.quality_filter(index, rows, tmp_path)[0].paths == index.paths
    # data.min_face_size: the face crop measured in the original photo
    for row, size in zip(rows, (120, 60, 120, 40, 95, 80)):
        row["face_size"] = size
    kept, dropped = D.quality_filter(index, rows, tmp_path, min_face_size=80)
    assert dropped == 2 and kept.names == ("a", "c") and paths[1] not in kept.paths
    assert [kept.names[i] for i in kept.labels] == ["a", "a", "c", "c", "c"]
