"""crop: real LFW faces, the bad-input corpus, kill-and-resume, the seed command, detectors.

The corpus is generated here from real LFW photos (pasted onto canvases, re-encoded as
CMYK, 16-bit, RGBA, EXIF-rotated, ...) so detection really runs on every case; nothing
generated is committed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tripletface.config import load_config
from tripletface.cli.crop import parse_shard
from tripletface.faces.crop import crop_folder
from tripletface.faces.manifest import MANIFEST, read_manifest
from tripletface.faces.scan import inside
from tripletface.errors import InputError, ModelError

pytestmark = pytest.mark.lfw

SAMPLE_IDS = ("Abdullah_Gul", "Adrien_Brody", "Al_Sharpton", "Albert_Costa", "Amelia_Vega")


def lfw_rgb(lfw_dir: Path, name: str, i: int = 1) -> np.ndarray:
    return np.asarray(Image.open(lfw_dir / name / f"{name}_{i:04d}.jpg").convert("RGB"))


def sample_dataset(lfw_dir: Path, root: Path, per_id: int = 8) -> list[str]:
    """Symlink-free copy of a few LFW identities (inputs may be written only by the test)."""
    sources = []
    for name in SAMPLE_IDS:
        files = sorted((lfw_dir / name).glob("*.jpg"))[:per_id]
        (root / name).mkdir(parents=True)
        for f in files:
            (root / name / f.name).write_bytes(f.read_bytes())
            sources.append(f"{name}/{f.name}")
    return sources


def cfg_crop(**overrides):
    return load_config(overrides={f"crop.{k}": v for k, v in overrides.items()}).crop


def env_with_repo(repo_root: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo_root) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def tree_digest(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for f in filenames:
            p = Path(dirpath) / f
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            else:
                st = p.stat()
                out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
    return out


def write_bomb_png(path: Path, width: int, height: int) -> None:
    """PNG header of a huge image with a tiny IDAT: a decompression bomb in ~100 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 99))
                     + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- the bad-input corpus


@pytest.fixture(scope="module")
def corpus(lfw_dir, tmp_path_factory):
    import cv2

    root = tmp_path_factory.mktemp("corpus")
    src = root / "dataset"
    bad = src / "Bad_Cases"
    bad.mkdir(parents=True)
    face = lfw_rgb(lfw_dir, "Abdullah_Gul", 1)
    jpg_bytes = (lfw_dir / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg").read_bytes()

    (bad / "zero.jpg").write_bytes(b"")
    (bad / "truncated.jpg").write_bytes(jpg_bytes[: len(jpg_bytes) // 2])
    (bad / "text.jpg").write_text("not an image, just text\n")
    write_bomb_png(bad / "bomb.png", 30000, 30000)
    Image.fromarray(face).convert("CMYK").save(bad / "cmyk.jpg", quality=95)
    cv2.imwrite(str(bad / "sixteen.png"), face[:, :, ::-1].astype(np.uint16) * 257)
    rgba = np.dstack([face, np.zeros(face.shape[:2], np.uint8)])
    rgba[20:230, 20:230, 3] = 255  # opaque face, transparent frame
    Image.fromarray(rgba, mode="RGBA").save(bad / "alpha.png")
    Image.fromarray(face[:, :, 0], mode="L").save(bad / "grey.png")
    # EXIF: stored turned left, orientation 6 says "rotate right to view".
    img = Image.fromarray(np.ascontiguousarray(np.rot90(face, k=1)))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(bad / "exif_rotated.jpg", exif=exif.tobytes(), quality=95)
    (bad / "Zoë_名前_ü.jpg").write_bytes(jpg_bytes)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((200, 240)) * 40 + 100).astype(np.uint8)).save(bad / "no_face.png")
    # Many faces: a large central one plus two smaller ones near the corners.
    canvas = np.full((520, 700, 3), 120, np.uint8)
    small1 = cv2.resize(lfw_rgb(lfw_dir, "Adrien_Brody", 1), (150, 150), interpolation=cv2.INTER_AREA)
    small2 = cv2.resize(lfw_rgb(lfw_dir, "Al_Sharpton", 1), (150, 150), interpolation=cv2.INTER_AREA)
    canvas[10:160, 10:160] = small1
    canvas[360:510, 540:690] = small2
    canvas[135:385, 225:475] = lfw_rgb(lfw_dir, "Amelia_Vega", 1)
    Image.fromarray(canvas).save(bad / "many_faces.jpg", quality=95)
    os.symlink("..", bad / "loop")  # folder symlink back up to the dataset root
    os.symlink("self_loop.jpg", bad / "self_loop.jpg")  # file symlink to itself

    (src / "Empty_Person").mkdir()
    (src / "Nested_Person" / "2004" / "summer").mkdir(parents=True)
    (src / "Nested_Person" / "2004" / "summer" / "beach.jpg").write_bytes(
        (lfw_dir / "Adrien_Brody" / "Adrien_Brody_0002.jpg").read_bytes())
    (src / "Nested_Person" / "notes.txt").write_text("ignored")
    (src / "stray.jpg").write_bytes(jpg_bytes)

    before = tree_digest(src)
    out = root / "cropped"
    summary = crop_folder(src, out, cfg_crop(workers=2), progress=False)
    rows = {r["source"]: r for r in read_manifest(out / MANIFEST)}
    return {"src": src, "out": out, "rows": rows, "before": before, "summary": summary, "face": face}


EXPECTED = {
    "Bad_Cases/zero.jpg": ("unreadable", "empty file"),
    "Bad_Cases/truncated.jpg": ("truncated", "truncated"),
    "Bad_Cases/text.jpg": ("not_an_image", "not an image"),
    "Bad_Cases/bomb.png": ("too_large", "decompression bomb"),
    "Bad_Cases/cmyk.jpg": ("ok", ""),
    "Bad_Cases/sixteen.png": ("ok", ""),
    "Bad_Cases/alpha.png": ("ok", ""),
    "Bad_Cases/grey.png": ("ok", ""),
    "Bad_Cases/exif_rotated.jpg": ("ok", ""),
    "Bad_Cases/Zoë_名前_ü.jpg": ("ok", ""),
    "Bad_Cases/no_face.png": ("no_face", "no face"),
    "Bad_Cases/many_faces.jpg": ("ok", "faces found"),
    "Bad_Cases/loop": ("skipped", "symlink loop"),
    "Bad_Cases/self_loop.jpg": ("unreadable", "symlink loop"),
    "Empty_Person": ("empty", "no image files"),
    "Nested_Person/2004/summer/beach.jpg": ("ok", ""),
    "stray.jpg": ("skipped", "identity folder"),
}


def test_every_bad_input_gets_a_row_with_a_reason(corpus):
    rows = corpus["rows"]
    assert set(rows) == set(EXPECTED), set(rows) ^ set(EXPECTED)
    for source, (status, reason) in EXPECTED.items():
        row = rows[source]
        assert row["status"] == status, (source, row["status"], row["reason"])
        assert reason in row["reason"], (source, row["reason"])
        if status != "ok":
            assert row["output"] is None
    lines = (corpus["out"] / MANIFEST).read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(EXPECTED)  # exactly one row per input
    assert corpus["summary"].counts["ok"] == sum(1 for s, _ in EXPECTED.values() if s == "ok")


def test_outputs_are_aligned_pngs_mirroring_the_folders(corpus):
    out = corpus["out"]
    for source, row in corpus["rows"].items():
        if row["status"] != "ok":
            continue
        assert row["output"] == str(Path(source).with_suffix(".png")).replace(os.sep, "/")
        img = Image.open(out / row["output"])
        assert img.size == (112, 112) and img.mode == "RGB"
        assert len(row["landmarks"]) == 5 and len(row["box"]) == 4
        assert row["score"] >= 0.9 and row["face_size"] > 40 and row["blur"] > 0 and abs(row["pose"]) < 1
    assert (out / "Bad_Cases" / "Zoë_名前_ü.png").is_file()
    assert (out / "Nested_Person" / "2004" / "summer" / "beach.png").is_file()
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".partial") or "tmp" in p.name]
    assert leftovers == []


def test_inputs_never_modified(corpus):
    assert tree_digest(corpus["src"]) == corpus["before"]


def test_formats_decode_to_the_same_face(corpus):
    """CMYK, 16-bit, alpha, grey and the plain JPEG all give the same face box (within 4 px)."""
    rows = corpus["rows"]
    ref = np.array(rows["Bad_Cases/Zoë_名前_ü.jpg"]["box"])
    for name in ("cmyk.jpg", "sixteen.png", "alpha.png", "grey.png", "exif_rotated.jpg"):
        box = np.array(rows[f"Bad_Cases/{name}"]["box"])
        assert np.abs(box - ref).max() < 4.0, (name, box, ref)


def test_exif_rotated_face_is_upright(corpus):
    lm = np.array(corpus["rows"]["Bad_Cases/exif_rotated.jpg"]["landmarks"])
    eyes_y, nose_y, mouth_y = lm[:2, 1].mean(), lm[2, 1], lm[3:, 1].mean()
    assert eyes_y < nose_y < mouth_y
    assert lm[0, 0] < lm[1, 0]


def test_many_faces_keeps_the_central_large_one(corpus):
    row = corpus["rows"]["Bad_Cases/many_faces.jpg"]
    assert row["n_faces"] >= 3
    x1, y1, x2, y2 = row["box"]
    assert 225 < (x1 + x2) / 2 < 475 and 135 < (y1 + y2) / 2 < 385


# ----------------------------------------------------------------------------- real LFW sample


def test_lfw_sample_all_faces_found(lfw_dir, tmp_path):
    sources = sample_dataset(lfw_dir, tmp_path / "in")
    n = len(sources)
    assert n == 36  # 8 + 8 + 7 + 6 + 7 images
    summary = crop_folder(tmp_path / "in", tmp_path / "out", cfg_crop(), progress=False)
    rows = read_manifest(tmp_path / "out" / MANIFEST)
    assert sorted(r["source"] for r in rows) == sorted(sources)
    assert [r["status"] for r in rows] == ["ok"] * n
    assert summary.counts == {"ok": n}
    for r in rows:
        img = np.asarray(Image.open(tmp_path / "out" / r["output"]))
        assert img.shape == (112, 112, 3)
        assert r["face_size"] > 60
        lm = np.array(r["landmarks"])
        assert lm[0, 0] < lm[1, 0] and lm[:2, 1].mean() < lm[3:, 1].mean()
    # crop.size 224 gives 224x224 from the same settings path
    crop_folder(tmp_path / "in", tmp_path / "out224", cfg_crop(size=224), progress=False, limit=3)
    rows224 = read_manifest(tmp_path / "out224" / MANIFEST)
    assert len(rows224) == 3 and all(r["status"] == "ok" for r in rows224)
    assert Image.open(tmp_path / "out224" / rows224[0]["output"]).size == (224, 224)
    # a re-run with other settings into the same folder is refused
    with pytest.raises(InputError, match="other settings"):
        crop_folder(tmp_path / "in", tmp_path / "out", cfg_crop(size=224), progress=False)


def test_split_shards_and_test_triplets(lfw_dir, tmp_path):
    sample_dataset(lfw_dir, tmp_path / "in", per_id=4)
    cfg = cfg_crop(test_fraction=0.4, seed=3)
    for shard in ((0, 2), (1, 2)):
        crop_folder(tmp_path / "in", tmp_path / "out", cfg, shard=shard, progress=False)
    rows = read_manifest(tmp_path / "out" / "manifest-0of2.jsonl") + read_manifest(
        tmp_path / "out" / "manifest-1of2.jsonl")
    sources = [r["source"] for r in rows]
    assert len(sources) == len(set(sources)) == 20  # shards are disjoint and complete
    test_ids = {r["identity"] for r in rows if r["split"] == "test"}
    train_ids = {r["identity"] for r in rows if r["split"] == "train"}
    assert len(test_ids) == 2 and test_ids.isdisjoint(train_ids) and len(train_ids) == 3
    for r in rows:
        assert r["output"].startswith(f"{r['split']}/{r['identity']}/")
        assert (tmp_path / "out" / r["output"]).is_file()
    with open(tmp_path / "out" / "test_triplets.csv", newline="", encoding="utf-8") as fh:
        triplets = list(csv.DictReader(fh))
    assert len(triplets) == 8  # 2 identities x 4 anchors
    for t in triplets:
        a, p, n = (t["anchor"], t["positive"], t["negative"])
        assert all((tmp_path / "out" / x).is_file() and x.startswith("test/") for x in (a, p, n))
        assert a.split("/")[1] == p.split("/")[1] != n.split("/")[1] and a != p
    # the same seed gives the same split
    again = crop_folder(tmp_path / "in", tmp_path / "out2", cfg, progress=False)
    rows2 = read_manifest(tmp_path / "out2" / MANIFEST)
    assert {r["identity"] for r in rows2 if r["split"] == "test"} == test_ids
    assert again.triplets == 8


# ----------------------------------------------------------------------------- kill, resume, CLI


def test_sigkill_then_resume_finishes_exactly_once(lfw_dir, tmp_path, repo_root):
    sources = sample_dataset(lfw_dir, tmp_path / "in", per_id=12)
    n = len(sources)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tripletface", "crop", str(tmp_path / "in"), str(out), "--no-progress",
           "--workers", "1", "--set", "crop.detect_batch=1"]
    proc = subprocess.Popen(cmd, cwd=repo_root, env=env_with_repo(repo_root),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / MANIFEST
    deadline = time.time() + 120
    rows_at_kill = 0
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists():
            rows_at_kill = len(manifest.read_bytes().splitlines())
            if rows_at_kill >= 5:
                break
        time.sleep(0.01)
    assert proc.poll() is None, "crop finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows_at_kill = len(read_manifest(manifest))
    assert 5 <= rows_at_kill < n
    with open(manifest, "ab") as fh:  # and a torn last line, as from a kill mid-write
        fh.write(b'{"source": "Abdullah_Gul/Abdull')

    # the original entry point finishes the job
    res = subprocess.run([sys.executable, "crop_faces.py", "--input_dir", str(tmp_path / "in"),
                          "--output_dir", str(out), "--no-progress"],
                         cwd=repo_root, env=env_with_repo(repo_root), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{rows_at_kill} already done" in res.stdout
    rows = read_manifest(manifest)
    assert sorted(r["source"] for r in rows) == sorted(sources)  # each exactly once
    assert len(manifest.read_bytes().splitlines()) == n
    outputs = {r["output"] for r in rows if r["status"] == "ok"}
    assert len(outputs) >= n - 1
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == outputs | {MANIFEST, "crop_settings.json"}  # no partial or temp file anywhere
    for rel in outputs:
        assert Image.open(out / rel).size == (112, 112)


def test_cli_template_box_writes_unaligned_crops(lfw_dir, tmp_path, repo_root):
    """`crop --template box`: the alignment-off crops the ablation trains on, recorded as such."""
    sample_dataset(lfw_dir, tmp_path / "in", per_id=1)
    outs = {}
    for template in ("box", "arcface"):
        res = subprocess.run([sys.executable, "-m", "tripletface", "crop", str(tmp_path / "in"),
                              str(tmp_path / template), "--template", template, "--limit", "2", "--no-progress"],
                             cwd=repo_root, env=env_with_repo(repo_root), capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        settings = json.loads((tmp_path / template / "crop_settings.json").read_text())
        assert settings["alignment"]["template"] == template
        rows = read_manifest(tmp_path / template / MANIFEST)
        assert [r["status"] for r in rows] == ["ok", "ok"]
        outs[template] = [np.asarray(Image.open(tmp_path / template / r["output"])) for r in rows]
    for box, aligned in zip(outs["box"], outs["arcface"]):
        assert box.shape == aligned.shape == (112, 112, 3)
        assert np.abs(box.astype(int) - aligned.astype(int)).mean() > 5  # a different framing


def test_missing_input_dir_is_one_line_error(tmp_path, repo_root):
    res = subprocess.run([sys.executable, "-m", "tripletface", "crop", str(tmp_path / "nope"), str(tmp_path / "o")],
                         cwd=repo_root, env=env_with_repo(repo_root), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not exist" in lines[0], res.stderr
    assert not (tmp_path / "o").exists()


def test_empty_input_dir_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        crop_folder(tmp_path / "empty", tmp_path / "o", cfg_crop(), progress=False)
    (tmp_path / "only_folders" / "Ann").mkdir(parents=True)
    with pytest.raises(InputError, match="no image files"):
        crop_folder(tmp_path / "only_folders", tmp_path / "o", cfg_crop(), progress=False)
    with pytest.raises(InputError, match="must differ"):
        crop_folder(tmp_path / "only_folders", tmp_path / "only_folders", cfg_crop(), progress=False)


def test_shard_parsing_and_output_paths_stay_inside():
    assert parse_shard(None) == (0, 1) and parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x", "1/0", "-1/3"):
        with pytest.raises(InputError, match="shard"):
            parse_shard(bad)
    assert inside("/out", "Ann/a.png") and not inside("/out", "../x.png") and not inside("/out", "a/../../x")


# ----------------------------------------------------------------------------- detectors


def test_mtcnn_batches_of_mixed_sizes_map_back_to_each_image(lfw_dir):
    from tripletface.faces.detect import get_detector

    det = get_detector("mtcnn")
    face = lfw_rgb(lfw_dir, "Abdullah_Gul", 1)
    ref = det.detect(face)[0].landmarks
    big = np.zeros((300, 280, 3), np.uint8)
    big[30:280, 20:270] = face
    near = np.zeros((256, 262, 3), np.uint8)
    near[3:253, 10:260] = face
    blank = np.zeros((250, 250, 3), np.uint8)
    out = det.detect_batch([blank, big, near, face, blank])
    assert [len(d) > 0 for d in out] == [False, True, True, True, False]
    # within MTCNN's own jitter across pyramid grids (~2 px); a wrong un-padding would be off by 10-30 px
    np.testing.assert_allclose(out[1][0].landmarks - [20, 30], ref, atol=3.0)
    np.testing.assert_allclose(out[2][0].landmarks - [10, 3], ref, atol=3.0)
    np.testing.assert_allclose(out[3][0].landmarks, ref, atol=1e-3)  # batch companions change nothing
    assert det.detect_batch([blank, blank]) == [[], []]  # a batch without any face
    full = get_detector("mtcnn", detect_scale=1.0).detect(face)[0].landmarks
    assert np.abs(full - ref).max() < 3.0  # reduced-scale landmarks map back to original pixels


def test_opencv_detector_and_missing_cascade(lfw_dir, monkeypatch, tmp_path):
    import cv2

    from tripletface.faces.detect import get_detector

    face = lfw_rgb(lfw_dir, "Abdullah_Gul", 1)
    det = get_detector("opencv")
    found = det.detect(face)
    assert found and found[0].landmarks.shape == (5, 2)
    ref = get_detector("mtcnn").detect(face)[0].landmarks
    iod = np.linalg.norm(ref[1] - ref[0])
    assert np.linalg.norm(found[0].landmarks[:2] - ref[:2], axis=1).max() < 0.35 * iod
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + os.sep)
    with pytest.raises(ModelError, match="cascade"):
        get_detector("opencv")


def test_select_face_prefers_large_and_central():
    from tripletface.faces.detect import Detection
    from tripletface.faces.selection import select_face

    def det(x1, y1, x2, y2):
        return Detection(box=np.array([x1, y1, x2, y2], float), score=0.99, landmarks=None)

    central, corner_big, tiny = det(150, 150, 250, 250), det(0, 0, 110, 110), det(190, 190, 210, 210)
    chosen, count = select_face([corner_big, tiny, central], (400, 400, 3))
    assert chosen is central and count == 3
    assert select_face([], (10, 10)) == (None, 0)


def test_cropper_settings_round_trip():
    from tripletface.faces.cropper import SETTINGS_KEYS, FaceCropper, alignment_settings

    settings = alignment_settings(load_config(preset="seed").crop)
    assert json.loads(json.dumps(settings)) == settings and set(settings) == set(SETTINGS_KEYS)
    assert settings["size"] == 224
    cropper = FaceCropper.from_settings({**settings, "detector": "opencv"})
    assert cropper.settings == {**settings, "detector": "opencv"}
    with pytest.raises(ValueError, match="unknown keys"):
        FaceCropper.from_settings({**settings, "colour": 1})


def test_cropper_statuses_with_a_stub_detector(tmp_path):
    """no_face / too_small / ok (with the face count) decided from the detections, no TF needed."""
    from tripletface.faces.align import template
    from tripletface.faces.detect import Detection, Detector
    from tripletface.faces.cropper import FaceCropper

    def face(x, y, scale):
        lm = template(112).astype(np.float64) * scale + [x, y]
        return Detection(box=np.array([x, y, x + 112 * scale, y + 112 * scale]), score=0.99, landmarks=lm)

    class Stub(Detector):
        name = "stub"

        def __init__(self, answers):
            super().__init__(min_face_size=50, detect_scale=0.5, min_score=0.9)
            self.answers = answers

        def detect_batch(self, images):
            return [self.answers[int(img[0, 0, 0])] for img in images]

    answers = {0: [], 1: [face(10, 10, 0.3)], 2: [face(200, 190, 0.5), face(80, 90, 1.0)]}
    cropper = FaceCropper(detector=Stub(answers), size=64)
    images = [np.full((300, 300, 3), k, np.uint8) for k in (0, 1, 2)]
    none, small, two = cropper.process(images)
    assert (none.status, none.aligned) == ("no_face", None) and "no face" in none.reason
    assert small.status == "too_small" and small.n_faces == 1 and "< min_face_size 50" in small.reason
    assert two.status == "ok" and two.n_faces == 2 and two.aligned.shape == (64, 64, 3)
    assert two.box == [80.0, 90.0, 192.0, 202.0] and two.face_size == 112.0 and abs(two.pose) < 0.01
    Image.fromarray(images[2]).save(tmp_path / "two.png")
    (tmp_path / "bad.jpg").write_bytes(b"")
    res = cropper.process_files([tmp_path / "bad.jpg", tmp_path / "two.png", tmp_path / "missing.png"])
    assert [r.status for r in res] == ["unreadable", "ok", "missing"]


def test_box_template_crops_the_detector_box_without_alignment():
    """crop.template=box (the ablation's alignment-off row): the selected face's box, squared;
    the setting travels in the cropper's settings so inference crops the same way."""
    from tripletface.faces.align import box_crop
    from tripletface.config import load_config
    from tripletface.faces.detect import Detection, Detector
    from tripletface.faces.cropper import FaceCropper, alignment_settings

    class Tilted(Detector):
        name = "stub"

        def __init__(self):
            super().__init__(min_face_size=20, detect_scale=0.5, min_score=0.9)

        def detect_batch(self, images):
            lm = np.array([[40, 50], [80, 60], [60, 75], [45, 95], [75, 100]], np.float64)  # a tilted face
            return [[Detection(box=np.array([30.0, 30.0, 90.0, 120.0]), score=0.99, landmarks=lm)] for _ in images]

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)
    box = FaceCropper(detector=Tilted(), size=64, template="box")
    aligned = FaceCropper(detector=Tilted(), size=64)
    (b,), (a,) = box.process([image]), aligned.process([image])
    assert b.status == "ok" and np.array_equal(b.aligned, box_crop(image, [30, 30, 90, 120], 64))
    assert not np.array_equal(a.aligned, b.aligned)  # the aligned crop rotates the tilt away
    assert box.settings["template"] == "box"
    cfg = load_config(overrides=["crop.template=box"])
    assert alignment_settings(cfg.crop)["template"] == "box"
    with pytest.raises(ValueError, match="template must be one of"):
        FaceCropper(detector=Tilted(), template="affine")
