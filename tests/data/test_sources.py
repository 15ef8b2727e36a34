"""Several training folders at once: namespaced identities, per-source split, weighted P×K
sampling, checked exclusion lists, greyscale options, the margin-softmax head, and a real
training run on two folders of LFW crops whose model records both sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tripletface.data.filters import exclude_identities
from tripletface.data.index import identity_weights, index_folder, index_folders, source_weights, split_by_identity
from tripletface.data.samplers import make_pk_dataset
from tripletface.config import AugmentConfig, ConfigError, load_config
from tripletface.errors import InputError


def _png(path: Path, value: int, size: int = 32) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _folder(root: Path, ids: dict[str, int]) -> Path:
    """root/<identity>/<n>.png for each identity with its image count."""
    for j, (name, n) in enumerate(ids.items()):
        for i in range(n):
            _png(root / name / f"{i}.png", 1000 * j + i + hash(root.name) % 997)
    return root


@pytest.fixture()
def two_sources(tmp_path):
    a = _folder(tmp_path / "x" / "train", {f"person_{i}": 3 for i in range(6)} | {"only_a": 1})
    b = _folder(tmp_path / "y" / "train", {f"person_{i}": 2 for i in range(12)})
    return a, b


def test_identities_are_namespaced_by_source(two_sources):
    a, b = two_sources
    index = index_folders([a, b])
    assert index.sources == ("x/train", "y/train")  # the shortest suffix that tells them apart
    assert index.num_identities == 7 + 12  # person_0..5 of a and b are different people
    assert "x/train/person_0" in index.names and "y/train/person_0" in index.names
    src = index.source_ids()
    assert [int((src == s).sum()) for s in (0, 1)] == [7, 12]
    for label, name in enumerate(index.names):
        files = [p for p, l in zip(index.paths, index.labels) if l == label]
        folder = Path(files[0]).parent
        assert name == f"{folder.parent.parent.name}/{folder.parent.name}/{folder.name}"
    summary = index.source_summary()
    assert summary == [{"name": "x/train", "images": 19, "identities": 7, "identities_2plus": 6},
                       {"name": "y/train", "images": 24, "identities": 12, "identities_2plus": 12}]
    # one folder: the plain index, names unprefixed
    assert index_folders([a]).names == index_folder(a).names and index_folder(a).sources == ()


def test_the_same_folder_twice_is_an_error(two_sources):
    a, _ = two_sources
    with pytest.raises(InputError, match="listed twice"):
        index_folders([a, a])


def test_exclusion_lists_are_checked_and_work_per_source(two_sources):
    index = index_folders(list(two_sources))
    kept, n = exclude_identities(index, ["person_1"])  # a folder name: every source that has it
    assert n == 2 and not any(name.endswith("/person_1") for name in kept.names)
    kept, n = exclude_identities(index, ["y/train/person_2"])  # one source only
    assert n == 1 and "x/train/person_2" in kept.names and "y/train/person_2" not in kept.names
    with pytest.raises(InputError, match="'nobody' .*is in no training folder.*--allow-missing"):
        exclude_identities(index, ["person_3", "nobody"], what="exclusion list f.txt")
    kept, n = exclude_identities(index, ["person_3", "nobody"], allow_missing=True)
    assert n == 2 and kept.num_identities == index.num_identities - 2


def test_validation_holds_out_identities_of_every_source(two_sources):
    index = index_folders(list(two_sources))
    train, val = split_by_identity(index, 0.2, seed=3)
    assert set(train.names).isdisjoint(val.names)
    assert sorted(set(val.source_ids().tolist())) == [0, 1]
    assert len(train) + len(val) == len(index)
    # sources and their ids survive the split
    assert train.sources == val.sources == index.sources
    for part in (train, val):
        for name, s in zip(part.names, part.source_ids()):
            assert name.startswith(part.sources[s] + "/")


def test_source_weights_default_to_identities_and_steer_pk_sampling(two_sources):
    index = index_folders(list(two_sources))
    np.testing.assert_allclose(source_weights(index), [6 / 18, 12 / 18])
    np.testing.assert_allclose(identity_weights(index), np.full(18, 1 / 18))  # default: every identity alike
    with pytest.raises(InputError, match="2 training folders"):
        source_weights(index, [1.0])
    weights = identity_weights(index, [3.0, 1.0])  # source x three times source y
    anchors = index.anchor_identities()
    src = index.source_ids()[anchors]
    np.testing.assert_allclose([weights[src == 0].sum(), weights[src == 1].sum()], [0.75, 0.25])
    ds = make_pk_dataset(index, p=4, k=2, image_size=(32, 32), seed=5, weights=weights)
    counts = np.zeros(2)
    for _, labels in ds.take(150):
        ids = np.unique(labels.numpy())
        assert len(ids) == 4  # P distinct identities
        counts += np.bincount(index.source_ids()[ids], minlength=2)
    share = counts[0] / counts.sum()
    # without replacement from 6 vs 12 identities the share of x is a little under 0.75; uniform would be 1/3
    assert 0.6 < share < 0.78, share


def test_source_balance_sources_gives_each_folder_an_equal_share(two_sources):
    """data.source_balance=sources (faces-cpu's): every source with 2+-image identities gets the same
    share however many folders and identities each has; a source without such identities gets none;
    explicit data.source_weights still win."""
    index = index_folders(list(two_sources))
    np.testing.assert_allclose(source_weights(index, (), "sources"), [0.5, 0.5])
    weights = identity_weights(index, (), "sources")
    src = index.source_ids()[index.anchor_identities()]
    np.testing.assert_allclose([weights[src == 0].sum(), weights[src == 1].sum()], [0.5, 0.5])
    np.testing.assert_allclose(weights[src == 0], 0.5 / 6)  # 6 identities share x's half, 12 share y's
    np.testing.assert_allclose(source_weights(index, [3.0, 1.0], "sources"), [0.75, 0.25])
    only_x = index.subset(np.flatnonzero(index.source_ids() == 0))  # y's identities all excluded
    assert only_x.num_sources == 2
    np.testing.assert_allclose(source_weights(only_x, (), "sources"), [1.0, 0.0])
    with pytest.raises(InputError, match="data.source_balance must be one of identities, sources"):
        source_weights(index, (), "folders")
    with pytest.raises(ConfigError, match="data.source_balance"):
        load_config(overrides=["data.source_balance=folders"])
    assert load_config(preset="faces-cpu").data.source_balance == "sources"
    assert load_config(preset="lfw-cpu").data.source_balance == "identities"
    # what training logs and records: P×K follows the balance; random triplets draw identities alike
    from tripletface.training.sources import sampling_shares

    shares, where = sampling_shares(load_config(preset="faces-cpu").data, index)
    np.testing.assert_allclose(shares, [0.5, 0.5])
    assert where == "of each P×K batch"
    triplets = load_config(preset="faces-cpu", overrides=["data.sampling=triplets", "loss.name=triplet"])
    shares, where = sampling_shares(triplets.data, index)
    np.testing.assert_allclose(shares, [6 / 18, 12 / 18])
    assert where == "of the anchors (triplets: every identity alike)"


def test_train_dirs_from_repeated_set_and_yaml(tmp_path):
    cfg = load_config(overrides=["TRAIN_DIR=a", "TRAIN_DIR=b"])
    assert cfg.data.dirs == ("a", "b")
    cfg = load_config(overrides=["data.train_dirs=[a, b]", "data.train_dirs=c"])
    assert cfg.data.dirs == ("a", "b", "c")
    assert load_config(overrides=["TRAIN_DIR=only"]).data.dirs == ("only",)
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  train_dir: [p, q]\n  source_weights: [1, 2]\n")
    cfg = load_config(config_file=f)
    assert cfg.data.dirs == ("p", "q") and cfg.data.source_weights == (1, 2)
    with pytest.raises(ConfigError, match="data.source_weights"):
        load_config(overrides=["data.source_weights=1,-2"])


def test_random_greyscale_augmentation():
    import tensorflow as tf

    from tripletface.data.augment import build_augment

    rng = np.random.default_rng(0)
    image = tf.constant(rng.uniform(0, 255, (32, 32, 3)).astype(np.float32))
    always = build_augment(AugmentConfig(flip=False, rotation=0, brightness=0, greyscale=1.0), (32, 32))
    out = always(image, tf.constant([1, 2], tf.int64)).numpy()
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-4)
    np.testing.assert_allclose(out[..., 0], tf.image.rgb_to_grayscale(image).numpy()[..., 0], atol=1e-3)
    half = build_augment(AugmentConfig(flip=False, rotation=0, brightness=0, greyscale=0.5), (32, 32))
    grey = [np.allclose(*(lambda o: (o[..., 0], o[..., 2]))(half(image, tf.constant([s, 0], tf.int64)).numpy()))
            for s in range(200)]
    assert 0.35 < np.mean(grey) < 0.65


def test_greyscale_model_embeds_a_colour_face_as_its_grey_version(tmp_path):
    import tensorflow as tf

    from tripletface.model.build import build_embedding_model
    from tripletface.model.io import get_metadata, load_model, save_model

    model = build_embedding_model("small_cnn", 16, (32, 32), width=0.25, greyscale=True)
    rng = np.random.default_rng(1)
    colour = rng.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    grey = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(colour)).numpy()
    # the same up to float rounding (the luma weights sum to 0.9999, as tf.image.rgb_to_grayscale's)
    np.testing.assert_allclose(model(colour).numpy(), model(grey).numpy(), atol=1e-3)
    plain = build_embedding_model("small_cnn", 16, (32, 32), width=0.25)
    plain.set_weights(model.get_weights())
    assert not np.allclose(plain(colour).numpy(), model(colour).numpy(), atol=1e-3)
    path = save_model(model, tmp_path / "g.keras")  # the option survives a save
    again = load_model(path)
    np.testing.assert_allclose(again(colour).numpy(), model(colour).numpy(), atol=1e-5)
    assert get_metadata(again)["greyscale"] is True


def test_margin_softmax_head_matches_a_plain_computation(tmp_path):
    import keras

    from tripletface.losses import MarginSoftmaxHead

    rng = np.random.default_rng(2)
    emb = rng.standard_normal((6, 8)).astype(np.float32)
    labels = np.array([0, 1, 2, 2, 4, 1])
    head = MarginSoftmaxHead(5, margin=0.3, scale=16.0)
    loss = float(head(emb, labels))
    w = head.kernel.numpy()
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=0, keepdims=True)
    expected = []
    for i in range(6):  # a plain loop: CosFace logits, softmax cross-entropy
        logits = [16.0 * (e[i] @ w[:, c] - (0.3 if c == labels[i] else 0.0)) for c in range(5)]
        expected.append(-logits[labels[i]] + np.log(np.sum(np.exp(logits))))
    assert loss == pytest.approx(np.mean(expected), rel=1e-4)
    cfg = head.get_config()
    clone = MarginSoftmaxHead.from_config(cfg)
    assert (clone.num_classes, clone.margin, clone.scale) == (5, 0.3, 16.0)
    with pytest.raises(ValueError, match="num_classes"):
        MarginSoftmaxHead(1)
    # gradients reach the embeddings and the class weights
    import tensorflow as tf

    x = tf.Variable(emb)
    with tf.GradientTape() as tape:
        value = head(x, labels)
    grads = tape.gradient(value, [x, head.kernel])
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)
    del keras


@pytest.mark.lfw
def test_training_on_two_crop_folders_records_both_sources(lfw_dir, tmp_path, capsys):
    """Two folders of real LFW photos (disjoint people), trained together with the margin-softmax
    head and an exclusion list: the model file records each source, the excluded identities are
    neither trained nor validated on, TensorBoard logs each source's share."""
    from tripletface.data import samplers
    from tripletface.model.io import get_metadata, load_model
    from tripletface.cli.main import main

    people = sorted((d for d in lfw_dir.iterdir() if d.is_dir() and len(list(d.iterdir())) >= 4),
                    key=lambda d: d.name)[:24]
    roots = [tmp_path / "lfw_part", tmp_path / "celeba_part"]
    for i, d in enumerate(people):
        dest = roots[i % 2] / d.name
        dest.mkdir(parents=True)
        for f in sorted(d.iterdir())[:4]:
            (dest / f.name).symlink_to(f)
    excluded = [people[0].name, people[1].name]
    (tmp_path / "holdout.txt").write_text("\n".join(excluded) + "\n")
    seen = {}
    orig_build, orig_val = samplers.build_train_dataset, None
    import tripletface.training.loop as T

    orig_val = T.prepare_validation

    def spy_build(cfg, index=None):
        seen["train"] = index
        return orig_build(cfg, index)

    def spy_val(val_index, cfg):
        seen["val"] = val_index
        return orig_val(val_index, cfg)

    mp = pytest.MonkeyPatch()
    mp.setattr(samplers, "build_train_dataset", spy_build)
    mp.setattr(T, "prepare_validation", spy_val)
    try:
        rc = main(["train", "--preset", "smoke", "--quiet", "--set", f"TRAIN_DIR={roots[0]}", f"TRAIN_DIR={roots[1]}",
                   f"CHECKPOINT_DIR={tmp_path / 'ckpt'}", f"TENSORBOARD_LOGDIR={tmp_path / 'logs'}",
                   "data.val_fraction=0.2", "data.val_pairs=20", "loss.aux_weight=0.5", "augment.greyscale=0.3",
                   f"data.exclude_identities={tmp_path / 'holdout.txt'}"])
    finally:
        mp.undo()
    out = capsys.readouterr()
    assert rc == 0, out.err
    names = set(seen["train"].names) | set(seen["val"].names)
    assert len(names) == 22 and not any(n.endswith("/" + e) for n in names for e in excluded)
    meta = get_metadata(load_model(tmp_path / "ckpt" / "model.keras"))
    by_name = {s["name"]: s for s in meta["sources"]}
    assert set(by_name) == {"lfw_part", "celeba_part"}
    assert by_name["lfw_part"]["identities"] == 11 and by_name["lfw_part"]["images"] == 44  # person 0 excluded
    assert by_name["celeba_part"]["identities"] == 11 and by_name["celeba_part"]["images"] == 44
    assert "non-commercial" in by_name["celeba_part"]["terms"] and by_name["lfw_part"]["terms"].startswith("LFW")
    assert abs(sum(s["sampling_share"] for s in meta["sources"]) - 1) < 1e-3
    assert "source celeba_part: 44 images of 11 identities" in out.err
    rows = [json.loads(line) for line in (tmp_path / "ckpt" / "history.jsonl").read_text().splitlines()]
    assert 0 < rows[-1]["share_celeba_part"] < 1 and np.isfinite(rows[-1]["aux_loss"])
    assert rows[-1]["share_celeba_part"] + rows[-1]["share_lfw_part"] == pytest.approx(1.0)


def test_train_cli_refuses_an_unknown_excluded_name_unless_allowed(two_sources, tmp_path, capsys):
    from tripletface.cli.main import main

    a, b = two_sources
    listing = tmp_path / "holdout.txt"
    listing.write_text("person_1\nNobody_Here\n")
    args = ["train", "--preset", "smoke", "--quiet", "--set", f"TRAIN_DIR={a}", f"TRAIN_DIR={b}",
            f"CHECKPOINT_DIR={tmp_path / 'ckpt'}", f"TENSORBOARD_LOGDIR={tmp_path / 'logs'}", "data.val_fraction=0.2",
            "data.val_pairs=10", "train.epochs=1", "train.steps_per_epoch=1", f"data.exclude_identities={listing}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'Nobody_Here'" in err and str(listing) in err and "Traceback" not in err
    assert not (tmp_path / "ckpt" / "model.keras").exists()
    assert main(args + ["--allow-missing"]) == 0
    assert "excluded 2 identities" in capsys.readouterr().err
