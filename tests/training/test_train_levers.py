"""Training-step levers (issue 14): fused BatchNorm and XLA give the step Keras computes, and
training with them on checkpoints and resumes as before."""

import json

import numpy as np
import pytest

from tripletface.cli.main import main


def _trainer(loss_name="semi_hard", fused=False, jit=False, bank=None, seed=0):
    import keras

    from tripletface.model.build import build_embedding_model
    from tripletface.config import LossConfig
    from tripletface.losses import MemoryBank, get_loss
    from tripletface.training.trainer import fuse_batch_norm, make_trainer

    keras.utils.set_random_seed(seed)
    embedder = build_embedding_model("small_cnn", 16, (32, 32), width=0.25)
    switched = fuse_batch_norm(embedder) if fused else 0
    memory = MemoryBank(bank, 16) if bank else None
    trainer = make_trainer(embedder, get_loss(LossConfig(name=loss_name)), memory)
    # plain SGD: a weight moves by the gradient's rounding only (Adam's normalised step would turn
    # a sign flip of a near-zero gradient into a full learning-rate difference)
    trainer.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=jit)
    return trainer, embedder, switched


def _batch():
    import tensorflow as tf

    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = np.repeat(np.arange(4, dtype=np.int32), 4)
    return tf.data.Dataset.from_tensors((x, y)).repeat()


def _two_steps(**kw):
    trainer, embedder, switched = _trainer(**kw)
    losses = [trainer.fit(_batch(), epochs=1, steps_per_epoch=1, verbose=0, shuffle=False).history["loss"][0]
              for _ in range(2)]  # one step each: the loss on the initial weights, then after one update
    bn = [w for w in embedder.weights if "moving" in w.path]
    return losses, embedder.get_weights(), bn, switched


@pytest.mark.parametrize("lever", [{"fused": True}, {"jit": True}, {"fused": True, "jit": True},
                                   {"jit": True, "bank": 32}])
def test_lever_step_gives_keras_loss_weights_and_batchnorm_statistics(lever):
    """Two steps on a fixed batch: the loss (after the first update too), the trained weights and
    the moving BatchNorm statistics match the plain Keras step within float rounding. With
    batch_all, whose every triplet counts: a miner that picks one negative (semi-hard) may pick
    another one on a near tie once the gradients are rounded differently (see the next test)."""
    lever = {"loss_name": "batch_all", **lever}
    base = {k: v for k, v in lever.items() if k in ("bank", "loss_name")}
    want_loss, want_w, want_bn, _ = _two_steps(**base)
    loss, weights, bn, switched = _two_steps(**lever)
    if lever.get("fused"):
        assert switched == 8  # every BatchNorm of small_cnn
    assert loss[0] == pytest.approx(want_loss[0], rel=1e-5, abs=1e-7)
    assert loss[1] == pytest.approx(want_loss[1], rel=1e-3)  # after one update: rounded gradients, maybe another mined negative
    assert want_loss[0] > 0  # a real loss, not two zeros agreeing
    for a, b in zip(weights, want_w):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-5)  # XLA sums in another order
    for a, b in zip(bn, want_bn):  # the moving statistics moved, and the same way
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert not np.allclose(np.asarray(bn[0]), 0.0)


@pytest.mark.parametrize("lever", [{"fused": True}, {"jit": True}, {"jit": True, "bank": 32}])
def test_lever_step_gives_the_keras_semi_hard_loss_on_a_fixed_batch(lever):
    want, _, want_bn, _ = _two_steps(**{k: v for k, v in lever.items() if k == "bank"})
    got, _, bn, _ = _two_steps(**lever)
    assert got[0] == pytest.approx(want[0], rel=1e-5, abs=1e-7) and want[0] > 0
    assert got[1] == pytest.approx(want[1], rel=1e-3)
    for a, b in zip(bn, want_bn):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_fused_batch_norm_leaves_inference_and_the_saved_config_unchanged():
    from tripletface.model.build import build_embedding_model
    from tripletface.training.trainer import fuse_batch_norm

    plain = build_embedding_model("small_cnn", 16, (32, 32), width=0.25)
    fused = build_embedding_model("small_cnn", 16, (32, 32), width=0.25)
    fused.set_weights(plain.get_weights())
    assert fuse_batch_norm(fused) == 8
    assert fuse_batch_norm(fused) == 0  # already switched: not wrapped twice
    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(fused(x, training=False), plain(x, training=False), atol=1e-6)
    np.testing.assert_allclose(fused(x, training=True), plain(x, training=True), atol=1e-5)
    assert fused.get_config() == plain.get_config()  # what a save writes


def test_training_with_jit_and_fused_batch_norm_checkpoints_and_resumes(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    base = ["train", "--preset", "smoke", "--quiet", "--set", "data.source=synthetic", f"CHECKPOINT_DIR={ckpt}",
            f"TENSORBOARD_LOGDIR={tmp_path / 'logs'}", "train.jit_compile=true", "train.fused_batch_norm=true"]
    assert main([*base, "EPOCHS=1"]) == 0, capsys.readouterr().err
    assert main([*base, "EPOCHS=2"]) == 0
    err = capsys.readouterr().err
    assert "resumed from" in err and "at epoch 1" in err, err
    rows = [json.loads(line) for line in (ckpt / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["step"] == 6 and all(np.isfinite(r["loss"]) for r in rows)  # smoke: 3 steps an epoch
    from tripletface.model.io import load_model

    assert load_model(ckpt / "model.keras").output_shape[-1] == 32


def test_lever_config_keys():
    from tripletface.config import ConfigError, load_config

    cfg = load_config("lfw-cpu")
    assert cfg.train.fused_batch_norm is True and cfg.train.jit_compile is False
    assert load_config("lfw-cpu", overrides=["train.jit_compile=true"]).train.jit_compile is True
    with pytest.raises(ConfigError, match="train.jit_compile"):
        load_config(overrides=["train.jit_compile=maybe"])


def test_bench_train_lever_names(repo_root):
    import argparse
    import sys

    sys.path.insert(0, str(repo_root / "benchmarks"))
    import bench_train

    lever = bench_train.parse_lever("fused_bn+jit+spe4")
    assert (lever["fused_bn"], lever["jit"], lever["spe"], lever["nchw"]) == (True, True, 4, False)
    assert bench_train.parse_lever("keras")["fused_bn"] is False
    with pytest.raises(argparse.ArgumentTypeError, match="unknown lever 'xla'"):
        bench_train.parse_lever("fused_bn+xla")


@pytest.mark.parametrize("fused", [True, False])
def test_build_trainer_builds_what_train_runs(fused):
    """build_trainer (train() and every benchmark build their trainer with it) follows the config:
    the fused BatchNorm pass on or off, the optimizer's schedule over epochs × steps, loss scaling
    under mixed_float16 only, and jit_compile."""
    import keras

    from tripletface.config import load_config
    from tripletface.training.trainer import build_embedder, build_trainer

    cfg = load_config(preset="smoke", overrides={"train.fused_batch_norm": fused, "train.lr_schedule": "cosine"})
    embedder = build_embedder(cfg, weights=None)

    def walk(m):
        for layer in getattr(m, "layers", ()):
            yield layer
            yield from walk(layer)

    def decay_steps(opt):
        return keras.optimizers.serialize(opt)["config"]["learning_rate"]["config"]["decay_steps"]

    bn = [la for la in walk(embedder) if isinstance(la, keras.layers.BatchNormalization)]
    trainer, optimizer = build_trainer(cfg, embedder)
    assert bn and all(("call" in vars(la)) == fused for la in bn)
    assert trainer.embedder is embedder and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert decay_steps(optimizer) == cfg.train.epochs * cfg.train.steps_per_epoch
    assert trainer.jit_compile is False
    _, scaled = build_trainer(cfg, build_embedder(cfg, weights=None), total_steps=7, policy="mixed_float16")
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    assert decay_steps(scaled.inner_optimizer) == 7


def test_mining_schedule_switches_to_batch_hard_at_its_step():
    """loss.hard_from: the loss the trainer computes is the semi-hard one before the switch step
    (hard_from × total steps) and the batch-hard one from it on, on the same batch."""
    import tensorflow as tf

    from tripletface import losses as L
    from tripletface.config import load_config
    from tripletface.training.trainer import build_embedder, build_trainer

    cfg = load_config(preset="smoke", overrides={"loss.name": "semi_hard", "loss.hard_from": 0.5})
    embedder = build_embedder(cfg, weights=None)
    trainer, optimizer = build_trainer(cfg, embedder, total_steps=10)
    rng = np.random.default_rng(1)
    emb = tf.constant(rng.normal(size=(16, 32)).astype("float32"))
    labels = tf.constant(np.repeat(np.arange(4), 4))
    semi = float(L.online_triplet_loss(labels, emb, "semi_hard")[0])
    hard = float(L.online_triplet_loss(labels, emb, "batch_hard")[0])
    assert semi != pytest.approx(hard)
    seen = {}
    for step in (0, 4, 5, 9):
        optimizer.iterations.assign(step)
        seen[step] = float(trainer._loss(labels, emb, tf.constant(False))[0])
    assert seen[0] == pytest.approx(semi) and seen[4] == pytest.approx(semi)
    assert seen[5] == pytest.approx(hard) and seen[9] == pytest.approx(hard)
    # without the schedule the trainer keeps one miner
    plain, opt = build_trainer(load_config(preset="smoke", overrides={"loss.name": "semi_hard"}),
                               build_embedder(cfg, weights=None), total_steps=10)
    opt.iterations.assign(9)
    assert float(plain._loss(labels, emb, tf.constant(False))[0]) == pytest.approx(semi)


@pytest.mark.parametrize("overrides, message", [
    ({"loss.name": "batch_hard", "loss.hard_from": 0.5}, "switches a semi_hard or batch_all miner"),
    ({"loss.hard_from": 1.0}, "loss.hard_from"),
    ({"loss.name": "contrastive", "loss.contrastive_margin": 1.0}, "loss.contrastive_margin"),
])
def test_mining_schedule_and_contrastive_config_errors(overrides, message):
    from tripletface.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(preset="smoke", overrides=overrides)
