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

from tripletface.cli import main

SMOKE = ["--preset", "smoke", "--quiet"]


def _tiny_train_dir(lfw_dir: Path, dest: Path, n_ids: int = 12, per_id: int = 6) -> Path:
    """Identities with the most images, linked into dest/<identity>/ (raw LFW photos: fine for plumbing)."""
    ids = sorted((d for d in lfw_dir.iterdir() if d.is_dir()), key=lambda d: -len(list(d.iterdir())))[:n_ids]
    for d in ids:
        (dest / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:per_id]:
            (dest / d.name / f.name).symlink_to(f)
    return dest


def _run_cli(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_train_on_real_faces_writes_model_checkpoints_and_tensorboard(lfw_dir, tmp_path, capsys):
    train_dir = _tiny_train_dir(lfw_dir, tmp_path / "train")
    ckpt, logs = tmp_path / "ckpt", tmp_path / "logs"
    rc, out, err = _run_cli(["train", *SMOKE, "--set", f"TRAIN_DIR={train_dir}", f"CHECKPOINT_DIR={ckpt}",
                             f"TENSORBOARD_LOGDIR={logs}", "data.val_fraction=0.25", "data.val_pairs=40"], capsys)
    assert rc == 0, err
    assert f"saved model: {ckpt / 'model.keras'}" in out
    from tripletface import model as M

    model = M.load_model(ckpt / "model.keras")
    meta = M.get_metadata(model)
    assert meta["image_size"] == [64, 64] and "alignment" in meta and 0 < meta["threshold"] < 2.1
    rows = [json.loads(line) for line in (ckpt / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("loss", "active_fraction", "pos_dist", "neg_dist", "val_accuracy", "val_precision", "val_recall",
                "val_loss", "learning_rate"):
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
    # Keras writes val_* entries to the validation run without the prefix
    assert {"epoch_accuracy", "epoch_precision", "epoch_recall", "epoch_loss"} <= tags["validation"]


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
        _tiny_train_dir(lfw_dir, train_dir, n_ids=1)
    elif case == "p_too_large":
        _tiny_train_dir(lfw_dir, train_dir, n_ids=3)  # smoke: P = 16 / 4 = 4 > 3 identities
        extra = ["data.val_fraction=0"]
    elif case == "corrupt_image":
        _tiny_train_dir(lfw_dir, train_dir, n_ids=6)
        bad = next(train_dir.iterdir()) / "broken.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    elif case == "unknown_backbone":
        _tiny_train_dir(lfw_dir, train_dir, n_ids=6)
        extra = ["model.backbone=vgg99"]
    elif case == "quality_without_manifest":  # raw photos: no crop manifest to score them
        _tiny_train_dir(lfw_dir, train_dir, n_ids=6)
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


def test_train_py_runs_the_seed_preset(tmp_path):
    """`python train.py` is the original design: the seed preset's values reach the trainer."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "train.py"), "--set", f"TRAIN_DIR={tmp_path / 'none'}"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error:") and "none" in r.stderr


@pytest.mark.parametrize("policy", ["bfloat16"])
def test_mixed_precision_training_runs(tmp_path, policy):
    r = subprocess.run(_train_cmd(tmp_path / "ckpt", "EPOCHS=1", f"train.mixed_precision={policy}"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    from tripletface import model as M

    m = M.load_model(tmp_path / "ckpt" / "model.keras")
    out = m(np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")).numpy()
    assert out.dtype == np.float32 and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-4)
