"""Training under tf.distribute: global-batch mining, two CPU workers on localhost, chief-only files."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

# The run both sides train: synthetic P×K data (global batch 16 = 4 identities × 4), a tiny model.
OVERRIDES = ["data.source=synthetic", "model.image_size=32x32", "data.batch_size=16", "data.k=4",
             "loss.name=batch_all", "train.steps_per_epoch=3"]

# One worker process: train() with TF_CONFIG from the environment, then the weights of the model that
# was trained (each worker's own copy: only the chief saves a model) and the history, into OUT.
WORKER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    out, overrides = sys.argv[1], json.loads(sys.argv[2])
    from tripletface.model import build as M
    from tripletface.config import load_config
    from tripletface.training.loop import train

    built = []
    build = M.build_embedding_model
    M.build_embedding_model = lambda *a, **k: built.append(build(*a, **k)) or built[-1]
    result = train(load_config("smoke", overrides=overrides), verbose=0)
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    np.savez(f"{out}/weights{task}.npz", *built[0].get_weights())
    with open(f"{out}/result{task}.json", "w") as f:
        json.dump({"history": result["history"], "resumed_from": result["resumed_from"]}, f)
""")


def _overrides(out: Path, distribute: str, epochs: int) -> list:
    return OVERRIDES + [f"train.epochs={epochs}", f"train.distribute={distribute}",
                        f"train.checkpoint_dir={out / 'ckpt'}", f"train.tensorboard_logdir={out / 'logs'}"]


def _train_here(out: Path, epochs: int) -> dict:
    """One process, no strategy (this test process): the reference run, and resuming."""
    from tripletface.config import load_config
    from tripletface.training.loop import train

    return train(load_config("smoke", overrides=_overrides(out, "none", epochs)), verbose=0)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env(**extra):
    """This environment without TF_CONFIG, CPU only, quiet, the checkout importable; plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", **extra})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _start(script, out, tf_config):
    env = _env(TF_CONFIG=json.dumps(tf_config))
    return subprocess.Popen([sys.executable, str(script), str(out), json.dumps(_overrides(out, "multiworker", 2))],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs, timeout=150):
    deadline = time.time() + timeout
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1, deadline - time.time()))
            logs.append(out)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("training processes did not finish in time:\n" + "\n".join(p.communicate()[0][-3000:]
                                                                               for p in procs))
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return logs


def _weights(path):
    with np.load(path) as z:
        return [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.slow
def test_two_cpu_workers_train_like_one_and_only_the_chief_writes(tmp_path):
    from tripletface.model.io import load_model

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    single, multi = tmp_path / "single", tmp_path / "multi"
    multi.mkdir()
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = [_start(script, multi, {"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(2)]
    ref = _train_here(single, 2)["history"]  # meanwhile, the same run on one worker, here
    _finish(procs)

    # both workers finished with identical weights: they stayed in sync
    w0, w1 = _weights(multi / "weights0.npz"), _weights(multi / "weights1.npz")
    assert len(w0) == len(w1) > 10
    assert all(np.array_equal(a, b) for a, b in zip(w0, w1))
    # the same losses and weights as one worker on the same global batches
    for task in (0, 1):
        hist = json.loads((multi / f"result{task}.json").read_text())["history"]
        for key in ("loss", "pos_dist", "neg_dist", "active_fraction"):
            # the gathered batch is reduced in another order than on one worker: float rounding drifts
            # by up to 7e-4 relative over two epochs on AVX2-only CPUs (1e-4 on AVX-512 ones); a wrong
            # global batch or unsynchronised step differs by far more
            np.testing.assert_allclose(hist[key], ref[key], rtol=2e-3, atol=1e-6, err_msg=key)
    w_ref = load_model(single / "ckpt" / "model.keras").get_weights()
    # the same rounding drift as above: 1e-4 on AVX-512 CPUs, up to 1e-3 on AVX2-only ones (Adam's steps
    # amplify it); the workers' exact agreement and the matching losses are the sharper checks
    assert max(float(np.abs(a - b).max()) for a, b in zip(w0, w_ref)) < 3e-3

    # files: the chief's checkpoints, history and model; no scratch folder of the other worker
    state = multi / "ckpt" / "state"
    assert sorted(p.name for p in state.glob("ckpt-*.index")) == ["ckpt-1.index", "ckpt-2.index"]
    assert not [p for p in state.iterdir() if p.name.startswith(".worker")]
    rows = [json.loads(line) for line in (multi / "ckpt" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    np.testing.assert_allclose(load_model(multi / "ckpt" / "model.keras").get_weights()[0], w0[0])

    # resumable by another worker count: one process continues the two-worker run
    resumed = _train_here(multi, 3)
    assert resumed["resumed_from"] == 2 and len(resumed["history"]["loss"]) == 1
    assert np.isfinite(resumed["history"]["loss"][0])
    assert sorted(p.name for p in state.glob("ckpt-*.index")) == ["ckpt-2.index", "ckpt-3.index"]


MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tripletface.training.distribute import gather_global_batch, scale_loss
    from tripletface.losses import online_triplet_loss

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8)).astype("float32")
    labels = np.repeat(np.arange(4), 4).astype("int32")
    rng.shuffle(labels)  # identities split unevenly over the two halves
    w0 = rng.normal(size=(8, 6)).astype("float32")

    def loss_of(w, xb, yb, gather):
        emb = tf.math.l2_normalize(xb @ w, axis=1)
        if gather:
            yb, emb = gather_global_batch(yb, emb)
        return online_triplet_loss(yb, emb, "semi_hard", 0.2)[0]

    w = tf.Variable(w0)
    with tf.GradientTape() as tape:
        ref = loss_of(w, x, labels, False)
    ref_grad = tape.gradient(ref, w).numpy()

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        wm = tf.Variable(w0)
    ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, labels)).batch(16))
    batch = next(iter(ds))
    out = {}
    for gather in (True, False):
        @tf.function
        def step(xb, yb):
            with tf.GradientTape() as tape:
                loss = loss_of(wm, xb, yb, gather)
                scaled = scale_loss(loss)
            grad = tape.gradient(scaled, wm)
            return loss, tf.distribute.get_replica_context().all_reduce("sum", grad)
        loss, grad = strategy.run(step, args=batch)
        out[gather] = {"loss": [float(v) for v in strategy.experimental_local_results(loss)],
                       "grad": strategy.experimental_local_results(grad)[0].numpy().tolist()}
    from tripletface.training.distribute import sync_batch_norm
    from tripletface.model.build import build_embedding_model
    with strategy.scope():
        model = build_embedding_model("small_cnn", 8, (32, 32), width=0.25)
    synced = sync_batch_norm(model, strategy)
    json.dump({"ref": float(ref), "ref_grad": ref_grad.tolist(), "gathered": out[True], "local": out[False],
               "synced": synced, "all_synced": all(l.synchronized for l in model.layers if hasattr(l, "synchronized"))},
              open(sys.argv[1], "w"))
""")


def test_mining_on_the_gathered_batch_gives_the_one_device_loss_and_gradient(tmp_path):
    script, out = tmp_path / "mirrored.py", tmp_path / "out.json"
    script.write_text(MIRRORED)
    proc = subprocess.run([sys.executable, str(script), str(out)], env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    # each replica mines the whole global batch: the loss of one device, and the summed scaled gradients
    # are the one-device gradient
    np.testing.assert_allclose(r["gathered"]["loss"], [r["ref"]] * 2, rtol=1e-5)
    np.testing.assert_allclose(r["gathered"]["grad"], r["ref_grad"], rtol=1e-4, atol=1e-6)
    # without the gather, each replica sees only its half: different losses (the check above can fail)
    assert max(abs(v - r["ref"]) for v in r["local"]["loss"]) > 1e-3
    # small_cnn's 8 BatchNormalization layers use global-batch statistics under 2 replicas
    assert r["synced"] == 8 and r["all_synced"]


def test_strategy_helpers_on_one_device(tmp_path, monkeypatch):
    import tensorflow as tf

    from tripletface.training import distribute as Dz
    from tripletface.errors import InputError

    strategy = Dz.get_strategy("none")
    assert Dz.num_replicas(strategy) == 1 and Dz.is_chief(strategy)
    assert Dz.worker_dir(tmp_path / "state", strategy) == tmp_path / "state"
    labels, emb = tf.constant([1, 2]), tf.ones((2, 3))
    got_labels, got_emb = Dz.gather_global_batch(labels, emb)
    assert got_labels is labels and got_emb is emb
    assert float(Dz.scale_loss(tf.constant(3.0))) == 3.0
    assert Dz.step_logs({"loss": tf.constant(1.0)})["loss"].shape == ()
    assert Dz.check_global_batch(6, strategy) == 1
    four = types.SimpleNamespace(num_replicas_in_sync=4)
    with pytest.raises(InputError, match="'data.batch_size' must give a global batch divisible by the 4 replicas, "
                                         "received: 6 images"):
        Dz.check_global_batch(6, four)
    from tripletface.model.build import build_embedding_model

    assert Dz.sync_batch_norm(build_embedding_model("small_cnn", 8, (32, 32), width=0.25), strategy) == 0
    with pytest.raises(ValueError, match="name must be one of none|mirrored|multiworker, received: 'tpu'"):
        Dz.get_strategy("tpu")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(InputError, match="TF_CONFIG is not valid JSON"):
        Dz.get_strategy("multiworker")


def test_num_workers_counts_the_chief_and_worker_tasks_from_the_public_cluster_resolver():
    """step_logs' multi-worker test: the chief + worker tasks of the strategy's cluster spec (what
    MultiWorkerMirroredStrategy's private _in_multi_worker_mode counts), read through the public API."""
    import tensorflow as tf

    from tripletface.training import distribute as Dz

    def strategy(cluster):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(tf.train.ClusterSpec(cluster))
        return types.SimpleNamespace(cluster_resolver=resolver)

    assert Dz.num_workers(tf.distribute.get_strategy()) == 1  # the default strategy: no cluster
    assert Dz.num_workers(types.SimpleNamespace()) == 1
    assert Dz.num_workers(strategy({})) == 1  # MultiWorkerMirroredStrategy without TF_CONFIG
    assert Dz.num_workers(strategy({"worker": ["localhost:1"]})) == 1
    assert Dz.num_workers(strategy({"worker": ["localhost:1", "localhost:2"]})) == 2
    assert Dz.num_workers(strategy({"chief": ["localhost:1"], "worker": ["localhost:2"], "ps": ["localhost:3"]})) == 2


def test_config_accepts_the_three_strategies_only():
    from tripletface.config import ConfigError, load_config

    assert load_config().train.distribute == "none"
    for name in ("none", "mirrored", "multiworker"):
        assert load_config(overrides=[f"train.distribute={name}"]).train.distribute == name
    with pytest.raises(ConfigError, match="train.distribute.*none|mirrored|multiworker.*'horovod'"):
        load_config(overrides=["train.distribute=horovod"])
