"""Training end to end: real images, checkpoints, TensorBoard, resume after SIGKILL, NaN guard, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from train_support import tiny_train_dir
from tripletface.cli.main import main

SMOKE = ["--preset", "smoke", "--quiet"]


def _run_cli(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_train_on_real_faces_writes_model_checkpoints_and_tensorboard(lfw_dir, tmp_path, capsys):
    train_dir = tiny_train_dir(lfw_dir, tmp_path / "train")
    ckpt, logs = tmp_path / "ckpt", tmp_path / "logs"
    rc, out, err = _run_cli(["train", *SMOKE, "--set", f"TRAIN_DIR={train_dir}", f"CHECKPOINT_DIR={ckpt}",
                             f"TENSORBOARD_LOGDIR={logs}", "data.val_fraction=0.25", "data.val_pairs=40"], capsys)
    assert rc == 0, err
    assert f"saved model: {ckpt / 'model.keras'}" in out
    from tripletface.model.io import get_metadata, load_model

    model = load_model(ckpt / "model.keras")
    meta = get_metadata(model)
    assert meta["image_size"] == [64, 64] and "alignment" in meta and 0 < meta["threshold"] < 2.1
    rows = [json.loads(line) for line in (ckpt / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("loss", "active_fraction", "pos_dist", "neg_dist", "val_accuracy", "val_precision", "val_recall",
                "val_triplet_loss", "learning_rate"):
        assert key in rows[-1] and np.isfinite(rows[-1][key]), key
    assert sorted(p.name for p in (ckpt / "state").glob("ckpt-*.index")) == ["ckpt-1.index", "ckpt-2.index"]
    # TensorBoard has the mining statistics and validation metrics
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {}
    for events in logs.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags.setdefault(events.parent.name, set()).update(acc.Tags().get("tensors", []), acc.Tags().get("scalars", []))
    assert {"epoch_loss", "epoch_active_fraction", "epoch_pos_dist", "epoch_learning_rate"} <= tags["train"]
    # Keras writes val_* entries to the validation run without the prefix; the validation triplet loss
    # (random triplets) is its own chart, not drawn over the mined training loss as if comparable
    assert {"epoch_accuracy", "epoch_precision", "epoch_recall", "epoch_triplet_loss"} <= tags["validation"]
    assert "epoch_loss" not in tags.get("validation", set())


def _train_cmd(ckpt: Path, *extra):
    return [sys.executable, "-m", "tripletface", "train", *SMOKE, "--set", "data.source=synthetic",
            f"CHECKPOINT_DIR={ckpt}", f"TENSORBOARD_LOGDIR={ckpt / 'logs'}", *extra]


def test_sigkill_mid_training_then_resume_continues_from_last_epoch(tmp_path):
    ckpt = tmp_path / "ckpt"
    cmd = _train_cmd(ckpt, "EPOCHS=6", "STEPS_PER_EPOCH=15")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpt / "state" / "ckpt-2.index").exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(int(p.stem.split("-")[1]) for p in (ckpt / "state").glob("ckpt-*.index"))
    assert done and max(done) < 6, "training finished before it could be killed"
    assert not (ckpt / "model.keras").exists()
    last = max(done)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"at epoch {last} (step {last * 15})" in r.stderr
    assert "resumed from" in r.stderr
    rows = [json.loads(line) for line in (ckpt / "history.jsonl").read_text().splitlines()]
    epochs = [row["epoch"] for row in rows]
    assert epochs[-(6 - last):] == list(range(last + 1, 7)), epochs  # continued, not restarted
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(ckpt / "state"))
    step_keys = [k for k in reader.get_variable_to_shape_map() if "iteration" in k]
    assert step_keys and reader.get_tensor(step_keys[0]) == 6 * 15


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    r = subprocess.run(_train_cmd(ckpt, "EPOCHS=1"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    good = (ckpt / "state" / "ckpt-1.data-00000-of-00001").read_bytes()
    (ckpt / "model.keras").unlink()
    r = subprocess.run(_train_cmd(ckpt, "EPOCHS=3", "LEARNING_RATE=1e38"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 6, r.stderr[-2000:]
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")][-1]
    assert "epoch 2" in line and "global step" in line and "ckpt-1" in line
    assert sorted(p.name for p in (ckpt / "state").glob("ckpt-*.index")) == ["ckpt-1.index"]
    assert (ckpt / "state" / "ckpt-1.data-00000-of-00001").read_bytes() == good
    assert not (ckpt / "model.keras").exists()


@pytest.mark.parametrize("case", ["empty", "single_identity", "p_too_large", "corrupt_image", "unknown_backbone",
                                  "missing", "quality_without_manifest"])
def test_bad_training_input_is_one_line_error_before_training(lfw_dir, tmp_path, capsys, case):
    train_dir = tmp_path / "train"
    extra = []
    if case == "empty":
        train_dir.mkdir()
    elif case == "single_identity":
        tiny_train_dir(lfw_dir, train_dir, n_ids=1)
    elif case == "p_too_large":
        tiny_train_dir(lfw_dir, train_dir, n_ids=3)  # smoke: P = 16 / 4 = 4 > 3 identities
        extra = ["data.val_fraction=0"]
    elif case == "corrupt_image":
        tiny_train_dir(lfw_dir, train_dir, n_ids=6)
        bad = next(train_dir.iterdir()) / "broken.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    elif case == "unknown_backbone":
        tiny_train_dir(lfw_dir, train_dir, n_ids=6)
        extra = ["model.backbone=vgg99"]
    elif case == "quality_without_manifest":  # raw photos: no crop manifest to score them
        tiny_train_dir(lfw_dir, train_dir, n_ids=6)
        extra = ["data.min_blur=50"]
    rc, out, err = _run_cli(["train", *SMOKE, "--set", f"TRAIN_DIR={train_dir}",
                             f"CHECKPOINT_DIR={tmp_path / 'ckpt'}", *extra], capsys)
    assert rc != 0
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    expect = {"empty": "train", "single_identity": "identit", "p_too_large": "P", "corrupt_image": "broken.jpg",
              "unknown_backbone": "vgg99", "missing": "train",
              "quality_without_manifest": "manifest.jsonl"}[case]
    assert expect in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "ckpt" / "model.keras").exists()


def test_train_py_runs_the_seed_preset(tmp_path, monkeypatch, capsys):
    """`python train.py` is the original design: the seed preset's values reach the trainer."""
    import runpy

    from tripletface.cli import main as cli
    from tripletface.training import loop as T

    seen = []
    monkeypatch.setattr(T, "train", lambda cfg, fresh=False, verbose=1: seen.append(cfg) or {"model_path": "m"})
    monkeypatch.setattr(cli, "import_tensorflow_quietly", lambda: None)
    monkeypatch.chdir(tmp_path)
    root = Path(__file__).resolve().parents[2]
    monkeypatch.setattr(sys, "argv", ["train.py", "--set", f"TRAIN_DIR={tmp_path / 'faces'}"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(root / "train.py"), run_name="__main__")
    assert e.value.code == 0 and len(seen) == 1
    cfg = seen[0]
    assert (cfg.data.batch_size, cfg.train.steps_per_epoch, cfg.train.validation_steps, cfg.train.epochs) == \
        (256, 50, 10, 10)
    assert cfg.model.image_size == (224, 224) and cfg.model.backbone == "resnet50"
    assert cfg.loss.margin == pytest.approx(0.2) and cfg.train.learning_rate == pytest.approx(1e-4)
    assert (cfg.loss.name, cfg.data.sampling, cfg.crop.size) == ("triplet", "triplets", 224)
    assert cfg.data.train_dir == str(tmp_path / "faces")  # the command line reaches it too


@pytest.mark.parametrize("policy", ["bfloat16"])
def test_mixed_precision_training_runs(tmp_path, policy):
    r = subprocess.run(_train_cmd(tmp_path / "ckpt", "EPOCHS=1", f"train.mixed_precision={policy}"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    from tripletface.model.io import load_model

    m = load_model(tmp_path / "ckpt" / "model.keras")
    out = m(np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")).numpy()
    assert out.dtype == np.float32 and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-4)


# --------------------------------------------------------------------------- the stored threshold

@pytest.fixture(scope="module")
def trained_on_faces(lfw_dir, tmp_path_factory):
    """One smoke training on real faces with held-out validation identities: (config, train()'s result)."""
    from tripletface.config import load_config
    from tripletface.training.loop import train

    tmp = tmp_path_factory.mktemp("trained")
    train_dir = tiny_train_dir(lfw_dir, tmp / "train")
    cfg = load_config("smoke", overrides=[f"TRAIN_DIR={train_dir}", f"CHECKPOINT_DIR={tmp / 'ckpt'}",
                                          f"TENSORBOARD_LOGDIR={tmp / 'logs'}", "data.val_fraction=0.25",
                                          "data.val_pairs=40"])
    return cfg, train(cfg, verbose=0)


def test_stored_threshold_decides_the_validation_pairs_through_compare_as_measured(trained_on_faces):
    """The threshold is chosen through the inference path (Embedder, flip averaging as stored), so
    `compare` on the validation pairs, pair by pair, reproduces the stored accuracy."""
    from tripletface.evaluation import verification as V
    from tripletface.cli.compare import compare
    from tripletface.inference.embedder import Embedder

    _, result = trained_on_faces
    emb = Embedder.load(result["model_path"])
    meta = emb.metadata
    assert meta["flip_tta"] is True and emb.flip_tta
    assert meta["calibration"]["flip_tta"] is True  # the mode the threshold was chosen in
    pairs = result["validation_pairs"]
    assert len(pairs) == 40
    rows = [compare(emb, a, b, aligned=True) for a, b, _ in pairs]
    same = np.array([s for _, _, s in pairs])
    accuracy = float(np.mean([r["same"] == s for r, s in zip(rows, same)]))
    assert accuracy == pytest.approx(meta["calibration"]["accuracy"], abs=1e-12)
    # the stored threshold is the best one on the very distances compare measures (flip-averaged)
    t, best = V.best_threshold(np.array([r["distance"] for r in rows]), same)
    assert meta["threshold"] == pytest.approx(t, abs=1e-5) and best == pytest.approx(accuracy)
    assert rows[0]["threshold"] == meta["threshold"]


def test_train_again_after_its_last_epoch_saves_the_same_usable_model(trained_on_faces, capsys):
    from tripletface.model.io import get_metadata, load_model
    from tripletface.inference.embedder import Embedder
    from tripletface.training.loop import train

    cfg, result = trained_on_faces
    first = load_model(result["model_path"])
    meta = get_metadata(first)
    weights = first.get_weights()
    again = train(cfg, verbose=0)  # e.g. after model.keras could not be written: the user reruns
    assert "already trained 2/2 epochs" in capsys.readouterr().err
    second = load_model(again["model_path"])
    meta2 = get_metadata(second)
    assert meta2["threshold"] == pytest.approx(meta["threshold"], abs=1e-9)
    assert meta2["calibration"]["accuracy"] == meta["calibration"]["accuracy"]
    assert meta2["epochs_trained"] == 2
    for a, b in zip(weights, second.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert Embedder.load(again["model_path"]).decision_threshold()[0] == meta2["threshold"]  # compare can decide


# --------------------------------------------------------------------------- resume guard

def test_resume_with_other_state_settings_is_a_one_line_error_naming_the_keys(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    base = ["train", *SMOKE, "--set", "data.source=synthetic", f"CHECKPOINT_DIR={ckpt}",
            f"TENSORBOARD_LOGDIR={tmp_path / 'logs'}"]
    rc, _, err = _run_cli([*base, "EPOCHS=1"], capsys)
    assert rc == 0, err
    assert json.loads((ckpt / "state" / "made_with.json").read_text())["model.embedding_dim"] == 32
    rc, _, err = _run_cli([*base, "EPOCHS=2", "model.embedding_dim=16", "loss.name=semi_hard"], capsys)
    assert rc == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "model.embedding_dim 32 (now 16)" in lines[0] and "loss.name" in lines[0] and "--fresh" in lines[0]
    assert "model.backbone" not in lines[0]  # only the keys that differ
    # a setting that leaves the state as it is (more epochs) still resumes
    rc, _, err = _run_cli([*base, "EPOCHS=2"], capsys)
    assert rc == 0 and "resumed from" in err, err
    # --fresh starts over with the new settings
    rc, _, err = _run_cli([*base, "EPOCHS=1", "model.embedding_dim=16", "--fresh"], capsys)
    assert rc == 0, err
    from tripletface.model.io import load_model

    assert load_model(ckpt / "model.keras").output_shape[-1] == 16
    assert json.loads((ckpt / "state" / "made_with.json").read_text())["model.embedding_dim"] == 16


# --------------------------------------------------------------------------- validation metrics

class _FixedEmbedder:
    """Stands in for an Embedder: fixed unit vectors per path."""

    def __init__(self, vectors):
        self.vectors = vectors

    def embed_files(self, paths, aligned=False):
        assert aligned
        return np.stack([self.vectors[p] for p in paths]), []


@pytest.mark.parametrize("kind", ["squared_l2", "l2", "cosine"])
def test_validation_triplet_loss_uses_the_loss_distance_and_the_pairs_threshold(kind):
    from tripletface.evaluation import verification as V
    from tripletface.training.validation import validate

    rng = np.random.default_rng(0)
    v = rng.normal(size=(12, 8))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    paths = [f"img{i}" for i in range(12)]
    pairs = (np.arange(0, 6), np.arange(6, 12), np.array([True, False] * 3))
    trip = (np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7]), np.array([8, 9, 10, 11]))
    val = {"paths": paths, "pairs": pairs, "triplets": trip}
    m = validate(val, _FixedEmbedder(dict(zip(paths, v))), margin=0.3, loss_distance=kind)
    e = lambda a, b: np.linalg.norm(v[a] - v[b], axis=1)  # noqa: E731
    to_loss = {"squared_l2": np.square, "l2": lambda d: d, "cosine": lambda d: 1 - (2 - d ** 2) / 2}[kind]
    ap, an = to_loss(e(trip[0], trip[1])), to_loss(e(trip[0], trip[2]))
    assert m["val_triplet_loss"] == pytest.approx(np.maximum(ap - an + 0.3, 0).mean(), abs=1e-6)
    assert "val_loss" not in m  # not plotted beside the mined training loss
    # precision/recall at the threshold chosen on the pairs, not one picked on these triplets
    t, _ = V.best_threshold(e(*pairs[:2]), pairs[2])
    want = V.triplet_metrics(ap, an, 0.3, threshold=to_loss(t))
    assert m["val_threshold"] == pytest.approx(t)
    assert (m["val_precision"], m["val_recall"]) == pytest.approx((want["precision"], want["recall"]))


# --------------------------------------------------------------------------- memory bank warm-up, optimizer

def test_memory_bank_is_not_filled_before_its_start_step_in_train_step():
    import keras
    import tensorflow as tf

    from tripletface.model.build import build_embedding_model
    from tripletface.config import LossConfig
    from tripletface.losses import MemoryBank, get_loss
    from tripletface.training.trainer import make_trainer

    keras.utils.set_random_seed(0)
    embedder = build_embedding_model("small_cnn", 8, (32, 32), width=0.25)
    bank = MemoryBank(64, 8)
    trainer = make_trainer(embedder, get_loss(LossConfig(name="batch_all")), bank, memory_start_step=2)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    trainer.optimizer.build(embedder.trainable_variables)
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensors((x, np.repeat(np.arange(4), 2))).repeat()
    filled = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            filled.append(int(bank.filled.numpy()))

    trainer.fit(ds, epochs=1, steps_per_epoch=4, callbacks=[Record()], verbose=0, shuffle=False)
    assert filled == [0, 0, 8, 16]  # steps 0 and 1 are the warm-up: nothing enqueued
    assert int(trainer.optimizer.iterations.numpy()) == 4


def test_adamw_weight_decay_zero_is_zero_and_batchnorm_and_biases_are_not_decayed():
    import tensorflow as tf

    from tripletface.model.build import build_embedding_model
    from tripletface.config import TrainConfig
    from tripletface.training.trainer import make_optimizer

    embedder = build_embedding_model("small_cnn", 8, (32, 32), width=0.25)
    variables = embedder.trainable_variables
    assert {"gamma", "beta", "bias", "kernel"} <= {v.name for v in variables}

    def changed_by_one_step(weight_decay):
        for v in variables:  # every weight non-zero, so a decay would show
            v.assign(tf.fill(v.shape, 0.5))
        opt = make_optimizer(TrainConfig(optimizer="adamw", weight_decay=weight_decay, learning_rate=0.1), 10)
        opt.apply_gradients([(tf.zeros_like(v), v) for v in variables])  # Adam's step is 0: only the decay acts
        return {v.path: v.name for v in variables if not np.allclose(v.numpy(), 0.5)}

    assert changed_by_one_step(0.0) == {}  # an explicit 0 is no decay
    decayed = changed_by_one_step(0.01)
    assert decayed and set(decayed.values()) == {"kernel"}  # BatchNorm gamma/beta and biases kept
