"""Hardening: untrusted model/gallery files and folder names, concurrent runs, full disks, signals.

What the other test files already cover is not repeated here: Lambda / truncated / text /
non-tripletface models (test_model), hand-edited and object-dtype galleries (test_gallery),
bad images and kill-and-resume for crop (test_crop), SIGKILL resume and the NaN guard
(test_train). Full-disk cases mount a small tmpfs (root on Linux) and are skipped with the
reason elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference_support import error_lines, make_model, run_cli
from tripletface.model.io import load_model
from tripletface.errors import ImageError, InputError, ModelError, TripletfaceError

ROOT = Path(__file__).resolve().parents[1]
SMOKE_TRAIN = ["train", "--preset", "smoke", "--quiet", "--set", "data.source=synthetic"]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "tripletface", *map(str, args)]


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (a disk that fills up); skips where that is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a small tmpfs to fill ({e}); the full-disk cases need root on Linux")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({r.stderr.strip() or 'mount failed'}); "
                    "the full-disk cases need root on Linux")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def grow(path: Path, size: str) -> None:
    """Give the tmpfs at ``path`` more room (the 'free some space' step)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True, timeout=30)


def fill(path: Path) -> Path:
    """Write a file in ``path`` until the disk is full; returns it (delete it to free the space)."""
    filler = path / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                continue
    return filler


# =========================================================================== untrusted model files


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("models") / "good.keras")


def _rewrite_config(src: Path, dest: Path, edit=None, raw: bytes | None = None, extra: dict | None = None) -> Path:
    """A copy of the .keras archive ``src`` with its config.json edited (or replaced) and members added."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                if raw is not None:
                    data = raw
                elif edit is not None:
                    config = json.loads(data)
                    edit(config)
                    data = json.dumps(config).encode()
            zout.writestr(item, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
    return dest


def _replace_layer(target: str, **entry):
    def edit(config):
        for layer in config["config"]["layers"]:
            if layer["class_name"] == target:
                layer.update(entry)
    return edit


def test_model_with_an_unregistered_custom_layer_is_refused(tmp_path):
    import keras

    @keras.saving.register_keras_serializable(package="untrusted")
    class Doubler(keras.layers.Layer):  # registered here, where the file was made; unknown to tripletface
        def call(self, x):
            return x * 2

    inp = keras.Input((4,))
    keras.Model(inp, Doubler(name="doubler")(inp)).save(tmp_path / "custom.keras")
    with pytest.raises(ModelError) as err:
        load_model(tmp_path / "custom.keras")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'custom.keras'}: refused: layer 'doubler' uses ") and "\n" not in msg
    assert "Doubler" in msg and "not a Keras or tripletface class" in msg


@pytest.mark.parametrize("module, cls, config", [
    ("os", "system", {"command": "touch {marker}"}),
    ("subprocess", "Popen", {"args": ["touch", "{marker}"]}),
    ("builtins", "eval", {"source": "open('{marker}', 'w')"}),
    ("evil_package.layers", "Evil", {"name": "gap"}),
])
def test_model_config_naming_other_code_is_refused_before_it_runs(good_model, tmp_path, module, cls, config):
    marker = tmp_path / "PWNED"
    config = json.loads(json.dumps(config).replace("{marker}", str(marker)))
    bad = _rewrite_config(good_model, tmp_path / "bad.keras",
                          _replace_layer("GlobalAveragePooling2D", module=module, class_name=cls,
                                         registered_name=None, config=config))
    with pytest.raises(ModelError, match=rf"refused: layer '[^']+' uses {module}\.{cls}, which is not a Keras"):
        load_model(bad)
    assert not marker.exists()


def _python_lambda_activation(config):
    """Dense's activation as Keras serialises a Python lambda (marshalled bytecode)."""
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Dense":
            layer["config"]["activation"] = {"class_name": "__lambda__", "config": {"value": "4wAAAA=="}}


def test_model_archive_tricks_are_refused(good_model, tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    cases = {
        "plain_zip": (lambda p: zipfile.ZipFile(p, "w").writestr("hello.txt", "hi"),
                      "not a Keras model archive (a zip without config.json)"),
        "traversal": (lambda p: _rewrite_config(good_model, p, extra={"../outside/escaped.txt": b"x"}),
                      "refused: archive member '../outside/escaped.txt' points outside the archive"),
        "absolute": (lambda p: _rewrite_config(good_model, p, extra={f"{outside}/abs.txt": b"x"}),
                     "points outside the archive"),
        "deep_json": (lambda p: _rewrite_config(good_model, p, raw=b"[" * 50000 + b"]" * 50000),
                      "config.json is not valid JSON"),
        "lambda_nested": (lambda p: _rewrite_config(
            good_model, p, _replace_layer("Dense", class_name="Lambda", module="keras.layers",
                                          config={"name": "embedding", "function": "x"})),
            "refused: layer 'embedding' is a Lambda layer"),
        "python_lambda": (lambda p: _rewrite_config(good_model, p, _python_lambda_activation),
                          "refused: layer 'embedding' is a Lambda layer"),
    }
    for name, (make, needle) in cases.items():
        path = tmp_path / f"{name}.keras"
        make(path)
        with pytest.raises(ModelError) as err:
            load_model(path)
        assert str(err.value).startswith(f"{path}: ") and needle in str(err.value), name
        assert "\n" not in str(err.value)
    assert list(outside.iterdir()) == []
    # a zip bomb: refused from the sizes in the archive's directory, before anything is unpacked
    monkeypatch.setattr("tripletface.model.io.MAX_ARCHIVE_BYTES", 1000)
    with pytest.raises(ModelError, match=r"refused: the archive unpacks to \d+ bytes \(limit 1000; a zip bomb\?\)"):
        load_model(good_model)


def test_other_model_types_passed_as_model_are_refused(capsys, tmp_path):
    """A legacy .h5 file, the same renamed to .keras, and a SavedModel folder, through the CLI."""
    import keras
    import tensorflow as tf

    inp = keras.Input((4,))
    keras.Model(inp, keras.layers.Dense(2)(inp)).save(tmp_path / "legacy.h5")
    shutil.copy(tmp_path / "legacy.h5", tmp_path / "renamed.keras")
    tf.saved_model.save(tf.Module(), str(tmp_path / "saved_model_dir"))
    faces = []
    for i in range(2):
        faces.append(tmp_path / f"face{i}.png")
        Image.fromarray(np.full((64, 64, 3), 100 + i, np.uint8)).save(faces[-1])
    for model, needle in [("legacy.h5", "is an HDF5 (.h5) file, not a .keras model file"),
                          ("renamed.keras", "is an HDF5 (.h5) file, not a .keras model file"),
                          ("saved_model_dir", "is a TensorFlow SavedModel folder, not a .keras model file")]:
        rc, out, err = run_cli(capsys, "compare", "--model", tmp_path / model, *faces, "--aligned")
        assert rc == 5 and out == "", (model, err)
        assert error_lines(err) == [error_lines(err)[0]] and error_lines(err)[0].startswith(
            f"error: {tmp_path / model}: ") and needle in err, (model, err)


# =========================================================================== untrusted gallery files


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a malicious gallery would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_gallery_carrying_a_pickle_payload_is_refused_without_running_it(tmp_path):
    from tripletface.inference.gallery import FORMAT, load_gallery

    marker = tmp_path / "PWNED"
    meta = json.dumps({"format": FORMAT, "dim": 4})
    path = tmp_path / "evil.npz"
    np.savez(path, embeddings=np.eye(2, 4, dtype=np.float32), names=np.array(["a", "b"]), keys=np.array(["a/1", "b/1"]),
             meta=np.array([_Payload(marker), meta], dtype=object))
    with pytest.raises(ModelError, match=r"unreadable gallery \(Object arrays cannot be loaded"):
        load_gallery(path)
    assert not marker.exists()


# =========================================================================== folder names in crop


def test_crop_output_names_stay_inside_and_fit_the_file_system(lfw_dir, tmp_path):
    """Long file names (a.jpg + a.png -> over 255 bytes), a newline in a folder name, a folder of the
    output symlinked outside it; '..', '/' and NUL cannot be folder names on Linux, so the path
    check is tested directly."""
    from tripletface.config import load_config
    from tripletface.faces.crop import crop_folder
    from tripletface.faces.manifest import MANIFEST, read_manifest
    from tripletface.faces.scan import inside as _inside

    face = (lfw_dir / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg").read_bytes()
    src, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    long = "x" * 251
    (src / "Ann").mkdir(parents=True)
    (src / "Ann" / f"{long}.jpg").write_bytes(face)
    (src / "Ann" / f"{long}.png").write_bytes(face)  # JPEG bytes: read by content, not by name
    (src / "line\nbreak").mkdir()
    (src / "line\nbreak" / "a.jpg").write_bytes(face)
    (src / "Outside").mkdir()
    (src / "Outside" / "b.jpg").write_bytes(face)
    out.mkdir()
    elsewhere.mkdir()
    (out / "Outside").symlink_to(elsewhere, target_is_directory=True)  # planted in the output folder

    crop_folder(src, out, load_config(overrides={"crop.workers": 1}).crop, progress=False)
    rows = {r["source"]: r for r in read_manifest(out / MANIFEST)}
    assert len(rows) == 4
    ann = [rows[f"Ann/{long}.jpg"], rows[f"Ann/{long}.png"]]
    assert [r["status"] for r in ann] == ["ok", "ok"]
    names = [Path(r["output"]).name for r in ann]
    assert len(set(names)) == 2 and all(len(os.fsencode(n)) <= 255 for n in names)
    assert all(n.startswith("x" * 200) and n.endswith(".png") for n in names)
    for r in ann + [rows["line\nbreak/a.jpg"]]:
        assert r["status"] == "ok" and (out / r["output"]).is_file()
        assert os.path.realpath(out / r["output"]).startswith(os.path.realpath(out) + os.sep)
    assert rows["Outside/b.jpg"]["status"] == "skipped"
    assert "leads outside OUTPUT_DIR" in rows["Outside/b.jpg"]["reason"]
    assert list(elsewhere.iterdir()) == []
    for rel in ("../x.png", "/etc/x.png", "Ann/\0x.png", "Ann/../../x.png"):
        assert not _inside(str(out), rel), rel


def test_fifo_named_like_an_image_is_refused_not_waited_on(tmp_path):
    from tripletface.data.decode import read_image

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(ImageError, match="not a regular file"):
        read_image(fifo)
    assert time.monotonic() - t0 < 5


# =========================================================================== concurrent runs


def _crop_input(lfw_dir: Path, root: Path, n_ids: int = 4, per_id: int = 6) -> int:
    n = 0
    for d in sorted(p for p in lfw_dir.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= per_id)[:n_ids]:
        (root / d.name).mkdir(parents=True)
        for f in sorted(d.glob("*.jpg"))[:per_id]:
            (root / d.name / f.name).write_bytes(f.read_bytes())
            n += 1
    return n


def _check_crop_output(out: Path, n_sources: int) -> list[dict]:
    """Every source once in the manifest, every ok row's file a whole 112x112 PNG, no leftovers."""
    from tripletface.faces.manifest import MANIFEST, read_manifest

    rows = read_manifest(out / MANIFEST)
    assert len(rows) == n_sources == len({r["source"] for r in rows})
    assert len((out / MANIFEST).read_bytes().splitlines()) == n_sources  # no torn line
    for r in rows:
        if r["status"] == "ok":
            with Image.open(out / r["output"]) as im:
                im.load()
                assert im.size == (112, 112)
    assert not list(out.glob(".partial*")) and not list(out.glob(".lock*"))
    return rows


def test_second_crop_into_the_same_folder_refuses_clearly(lfw_dir, tmp_path):
    from tripletface.config import load_config
    from tripletface.faces.crop import crop_folder
    from tripletface.faces.manifest import exclusive_output as _exclusive_output

    n = _crop_input(lfw_dir, tmp_path / "in", n_ids=3, per_id=4)
    out = tmp_path / "out"
    # deterministic: a run holds the folder (here: this test) -> the next one refuses at once
    with _exclusive_output(out, (0, 1)):
        with pytest.raises(InputError) as err:
            crop_folder(tmp_path / "in", out, load_config().crop, progress=False)
    assert str(err.value) == (f"{out}: another crop (pid {os.getpid()}) is writing into this folder; wait for "
                              "it to finish (run again then to resume) or use another OUTPUT_DIR")
    assert sorted(p.name for p in out.iterdir()) == []  # the refused run wrote nothing

    # two real processes started together: one does the work, the other refuses (or, if the first was
    # already done, finds nothing left to do); never a corrupt or half-written file
    cmd = _cli("crop", tmp_path / "in", out, "--no-progress", "--workers", "1", "--set", "crop.detect_batch=1")
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 120
    while not list(out.glob(".lock-*")) and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    second = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1[-2000:]
    if second.returncode != 0:
        assert second.returncode == 2 and error_lines(second.stderr) == [
            f"error: {out}: another crop (pid {first.pid}) is writing into this folder; wait for it to finish "
            "(run again then to resume) or use another OUTPUT_DIR"], second.stderr[-2000:]
    else:
        assert f"{n} already done" in second.stdout
    _check_crop_output(out, n)


def _aligned_people(root: Path, names: list[str], per: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _waiting_on_lock(pids) -> set[int]:
    """Pids blocked waiting for a file lock (Linux /proc/locks '->' lines)."""
    waiting = set()
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[1] == "->" and int(parts[5]) in pids:
            waiting.add(int(parts[5]))
    return waiting


def test_two_enrolls_into_one_gallery_both_land(tmp_path):
    if not Path("/proc/locks").exists():
        pytest.skip("needs /proc/locks (Linux) to see both enrolls waiting on the gallery lock")
    model = make_model(tmp_path / "m.keras")
    gallery = tmp_path / "g.npz"
    a = _aligned_people(tmp_path / "a", ["Ann", "Ada"], seed=1)
    b = _aligned_people(tmp_path / "b", ["Bob"], per=3, seed=2)
    # hold the gallery's lock until both processes have embedded and wait on it: their
    # read-modify-write cycles then certainly overlap, and only the lock keeps both
    with open(tmp_path / "g.npz.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        procs = [subprocess.Popen(_cli("enroll", "--model", model, "--gallery", gallery, "--aligned", d),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
                 for d in (a, b)]
        pids = {p.pid for p in procs}
        deadline = time.time() + 180
        while _waiting_on_lock(pids) != pids and time.time() < deadline:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.05)
        assert _waiting_on_lock(pids) == pids
        fcntl.flock(lock, fcntl.LOCK_UN)
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    from tripletface.inference.gallery import load_gallery

    g = load_gallery(gallery)
    assert sorted(g.identities) == ["Ada", "Ann", "Bob"]
    assert len(g) == 7 and sorted(g.keys.tolist()) == sorted(
        ["Ann/0", "Ann/1", "Ada/0", "Ada/1", "Bob/0", "Bob/1", "Bob/2"])
    assert sorted(p.name for p in tmp_path.glob(".g.npz.tmp*")) == []


# =========================================================================== full disks


def test_gallery_write_on_a_full_disk_keeps_the_gallery(tmp_path):
    from tripletface.inference.embedder import Embedder
    from tripletface.inference.gallery import load_gallery
    from tripletface.inference.open_set import enroll

    embedder = Embedder.load(make_model(tmp_path / "m.keras"))
    a = _aligned_people(tmp_path / "a", ["Ann"], seed=1)
    b = _aligned_people(tmp_path / "b", ["Bob"], seed=2)
    with small_disk(tmp_path / "disk", "256k") as disk:
        gallery = disk / "g.npz"
        enroll(embedder, a, gallery, aligned=True)
        before = gallery.read_bytes()
        filler = fill(disk)
        with pytest.raises(TripletfaceError) as err:
            enroll(embedder, b, gallery, aligned=True)
        assert str(err.value) == (f"{gallery}: no space left on device while saving the gallery; the gallery "
                                  "file is unchanged: free some space and enroll again")
        assert gallery.read_bytes() == before
        assert sorted(p.name for p in disk.iterdir()) == ["filler.bin", "g.npz", "g.npz.lock"]  # no temp file
        filler.unlink()
        r = enroll(embedder, b, gallery, aligned=True)
        assert r["added"] == 2 and load_gallery(gallery).identities == ["Ann", "Bob"]


def test_embed_on_a_full_disk_is_one_line_and_keeps_the_old_output(tmp_path):
    model = make_model(tmp_path / "m.keras")
    faces = _aligned_people(tmp_path / "faces", ["Ann", "Bob"], per=40)
    with small_disk(tmp_path / "disk", "64k") as disk:
        out = disk / "e.npz"
        out.write_bytes(b"the previous run's output")
        filler = fill(disk)
        cmd = _cli("embed", faces, "--output", out, "--model", model, "--aligned")
        r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
        assert r.returncode == 7, r.stderr[-2000:]
        assert error_lines(r.stderr) == [f"error: {out}: no space left on device while writing; {out} is unchanged "
                                         "(no partial file): free some space and run the same command again"]
        assert "Traceback" not in r.stderr
        assert out.read_bytes() == b"the previous run's output"
        assert sorted(p.name for p in disk.iterdir()) == ["e.npz", "filler.bin"]  # no temporary file left
        filler.unlink()
        r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert len(np.load(out).files) == 80


def test_crop_on_a_full_disk_stops_cleanly_and_resumes(lfw_dir, tmp_path):
    from tripletface.config import load_config
    from tripletface.faces.crop import crop_folder
    from tripletface.faces.manifest import MANIFEST, read_manifest

    n = _crop_input(lfw_dir, tmp_path / "in", n_ids=3, per_id=6)
    cfg = load_config(overrides={"crop.workers": 1, "crop.detect_batch": 2}).crop
    with small_disk(tmp_path / "disk", "160k") as disk:
        out = disk / "out"
        with pytest.raises(TripletfaceError) as err:
            crop_folder(tmp_path / "in", out, cfg, progress=False)
        msg = str(err.value)
        assert msg.startswith(f"{out}/") and "\n" not in msg
        assert msg.endswith(": no space left on device; the crops and manifest rows written so far are kept: "
                            "free some space and run the same command again to resume")
        done = read_manifest(out / MANIFEST)
        assert 0 < len(done) < n
        for r in done:  # what the manifest says is done is whole
            if r["status"] == "ok":
                with Image.open(out / r["output"]) as im:
                    im.load()
        assert not list(out.glob(".partial*")) and not list(out.glob(".lock*"))
        grow(disk, "16m")
        summary = crop_folder(tmp_path / "in", out, cfg, progress=False)
        assert summary.already_done == len(done) and summary.processed == n - len(done)
        rows = _check_crop_output(out, n)
        assert sum(r["status"] == "ok" for r in rows) >= n - 1


def _state(ckpt: Path) -> dict:
    """epoch, step_in_epoch and the optimizer's iterations of the latest checkpoint in ``ckpt``."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(ckpt))
    keys = reader.get_variable_to_shape_map()
    value = {}
    for name, key in (("epoch", "epoch/"), ("step_in_epoch", "step_in_epoch/"), ("iterations", "iteration")):
        match = [k for k in keys if k.startswith(key) or (key == "iteration" and "iteration" in k)]
        value[name] = int(reader.get_tensor(match[0])) if match else None
    return value


def test_checkpoint_on_a_full_disk_keeps_the_last_and_resumes(tmp_path):
    with small_disk(tmp_path / "disk", "1400k") as disk:  # room for one smoke checkpoint (~0.9 MB), not two
        ckpt = disk / "ckpt"
        cmd = _cli(*SMOKE_TRAIN, f"CHECKPOINT_DIR={ckpt}", f"TENSORBOARD_LOGDIR={tmp_path / 'logs'}", "EPOCHS=3",
                   "STEPS_PER_EPOCH=3")
        r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
        assert r.returncode == 7, r.stderr[-2000:]
        assert error_lines(r.stderr) == [
            f"error: {ckpt}: no space left on device while saving; the last complete checkpoint "
            f"({ckpt / 'state' / 'ckpt-1'}) is kept: free some space and run the same command again to resume"]
        assert "Traceback" not in r.stderr
        assert _state(ckpt / "state") == {"epoch": 1, "step_in_epoch": 0, "iterations": 3}
        assert not list((ckpt / "state").glob("*_temp*")) and not (ckpt / "model.keras").exists()
        grow(disk, "16m")
        r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"resumed from {ckpt / 'state' / 'ckpt-1'} at epoch 1 (step 3)" in r.stderr
        assert _state(ckpt / "state")["iterations"] == 9 and (ckpt / "model.keras").is_file()
        rows = [json.loads(line) for line in (ckpt / "history.jsonl").read_text().splitlines()]
        assert [row["epoch"] for row in rows] == [1, 2, 3]


# =========================================================================== signals in training


def _start_training(ckpt: Path, *extra):
    cmd = _cli(*SMOKE_TRAIN, f"CHECKPOINT_DIR={ckpt}", f"TENSORBOARD_LOGDIR={ckpt / 'logs'}", *extra)
    return cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _signal_early_in_epoch_2(proc, ckpt: Path, sig) -> tuple[str, str]:
    """Send ``sig`` a moment after epoch 1's history row is written (the last thing epoch 1
    does before epoch 2's steps; an epoch of 60 steps lasts far longer than the moment)."""
    deadline = time.time() + 300
    history = ckpt / "history.jsonl"
    while not (history.exists() and history.read_text().endswith("\n")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.1)
    proc.send_signal(sig)
    return proc.communicate(timeout=120)


def test_sigterm_mid_epoch_saves_the_step_and_the_resumed_curve_continues(tmp_path):
    ckpt = tmp_path / "ckpt"
    cmd, proc = _start_training(ckpt, "EPOCHS=2", "STEPS_PER_EPOCH=60")
    out, err = _signal_early_in_epoch_2(proc, ckpt, signal.SIGTERM)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and not (ckpt / "model.keras").exists()
    partial = _state(ckpt / "state" / "interrupted")
    step = partial["step_in_epoch"]
    assert partial["epoch"] == 1 and 0 < step < 60 and partial["iterations"] == 60 + step
    assert err.strip().splitlines()[-1] == (
        f"SIGTERM: training stopped at epoch 2, step {step} of 60 (global step {60 + step}); checkpoint "
        f"{ckpt / 'state' / 'interrupted' / 'ckpt-1'}; run the same command again to resume")
    assert _state(ckpt / "state")["epoch"] == 1  # the last whole epoch stays as it was

    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (f"resumed from {ckpt / 'state' / 'interrupted' / 'ckpt-1'} at epoch 1 (step {60 + step}), "
            f"{step} of 60 steps into epoch 2") in r.stderr
    # the curve continues: no step redone or skipped, each epoch once, at its global step
    assert _state(ckpt / "state") == {"epoch": 2, "step_in_epoch": 0, "iterations": 120}
    rows = [json.loads(line) for line in (ckpt / "history.jsonl").read_text().splitlines()]
    assert [(row["epoch"], row["step"]) for row in rows] == [(1, 60), (2, 120)]
    # ... from the trained weights: a restart from random weights would look like epoch 1 again
    assert rows[1]["neg_dist"] > rows[0]["neg_dist"] and rows[1]["active_fraction"] < rows[0]["active_fraction"]
    assert not (ckpt / "state" / "interrupted").exists()  # superseded by the whole epoch 2


def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path):
    ckpt = tmp_path / "ckpt"
    _, proc = _start_training(ckpt, "EPOCHS=2", "STEPS_PER_EPOCH=60")
    out, err = _signal_early_in_epoch_2(proc, ckpt, signal.SIGINT)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    partial = _state(ckpt / "state" / "interrupted")
    assert partial["epoch"] == 1 and 0 < partial["step_in_epoch"] < 60
    assert partial["iterations"] == 60 + partial["step_in_epoch"]
    assert err.strip().splitlines()[-1].startswith("SIGINT: training stopped at epoch 2, step ")
