"""The crop pipeline (issue 14): detection overlaps reading and alignment, nothing is detected or
shrunk twice, PNG level is a setting, and raw-photo embedding overlaps detection with the model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from tripletface.faces.align import template
from tripletface.faces.detect import Detection, Detector
from tripletface.faces.cropper import FaceCropper
from tripletface.data.decode import _error as image_error


def _face(x: float = 40, y: float = 40) -> Detection:
    lm = template(112).astype(np.float64) + [x, y]
    return Detection(box=np.array([x, y, x + 112, y + 112], float), score=0.99, landmarks=lm)


class _Recorder(Detector):
    """Finds one face in every image, except images whose first pixel is 7 (raises) or 0 (none);
    records the first pixel of each batch it is given."""

    name = "stub"

    def __init__(self, before=None):
        super().__init__(min_face_size=0, detect_scale=0.5, min_score=0.9)
        self.batches, self.before = [], before

    def detect_batch(self, images):
        keys = [int(img[0, 0, 0]) for img in images]
        if self.before is not None:
            self.before(keys)
        self.batches.append(keys)
        if 7 in keys:
            raise RuntimeError("odd image\nsecond line")
        return [[] if k == 0 else [_face()] for k in keys]


def _images(keys):
    return {k: np.full((200, 200, 3), k, np.uint8) for k in keys}


def test_stream_aligns_a_chunk_while_the_next_is_detected():
    """Chunk 1 is detected only once chunk 0's results went through ``then``: the detector blocks
    for it (it waited forever, then timed out, when chunks ran one after another)."""
    handled = threading.Event()

    def before(keys):
        if keys[0] == 3:  # chunk 1
            assert handled.wait(10), "chunk 0 was not aligned while chunk 1 was being detected"

    images = _images([1, 2, 3, 4, 5])
    cropper = FaceCropper(detector=_Recorder(before), size=32, workers=2)
    seen = []

    def then(src, res):
        seen.append(src)
        if src == 2:
            handled.set()
        return f"wrote {src}"

    chunks = list(cropper.stream([[1, 2], [3, 4], [5]], read=images.__getitem__, then=then))
    assert [[src for src, *_ in c] for c in chunks] == [[1, 2], [3, 4], [5]]
    assert all(err is None and res.ok and res.aligned.shape == (32, 32, 3) and out == f"wrote {src}"
               for c in chunks for src, err, res, out in c)
    assert sorted(seen) == [1, 2, 3, 4, 5]
    ref = FaceCropper(detector=_Recorder(), size=32).process([images[1]])[0]
    assert np.array_equal(chunks[0][0][2].aligned, ref.aligned) and chunks[0][0][2].to_dict() == ref.to_dict()


def test_stream_read_errors_failures_and_then_exceptions():
    images = _images([0, 1, 7])

    def read(src):
        if src == "bad":
            raise image_error(src, "unreadable", "empty file (0 bytes)")
        return images[src]

    def then(src, res):
        if src == 1:
            raise OSError(28, "No space left on device")

    det = _Recorder()
    cropper = FaceCropper(detector=det, size=32, workers=1)
    (chunk,) = list(cropper.stream([["bad", 0, 1, 7]], read=read, then=then, safe=True))
    (_, err, r_bad, _), (_, _, none, _), (_, _, ok, oserr), (_, _, odd, _) = chunk
    assert err.status == "unreadable" and r_bad is None
    assert none.status == "no_face" and none.detect_path is None and "padded" in none.reason
    assert ok.ok and isinstance(oserr, OSError) and oserr.errno == 28
    assert odd.status == "error" and odd.reason == "detection/alignment failed: odd image"
    assert [0, 1, 7] in det.batches and [7] in det.batches  # the batch failed: then image by image
    with pytest.raises(RuntimeError, match="odd image"):
        list(FaceCropper(detector=_Recorder(), size=32).stream([[7]], read=images.__getitem__))


@pytest.mark.lfw
def test_mtcnn_shrinks_each_image_once_and_takes_prepared_canvases(lfw_dir, monkeypatch):
    """The retry at lower thresholds reuses the first pass's canvas (HEAD shrank the image again),
    and canvases made ahead (:meth:`prepare`, in a reader thread) give the same detections."""
    from tripletface.faces import detect as D

    det = D.get_detector("mtcnn")
    face = np.asarray(Image.open(sorted((lfw_dir / "Abdullah_Gul").glob("*.jpg"))[0]).convert("RGB"))
    blank = np.zeros((250, 250, 3), np.uint8)  # nothing found: all three passes run
    ref = det.detect_batch([face, blank])
    prepared = [det.prepare(face), det.prepare(blank)]
    shrunk = []
    real = D._resize_for_detection
    monkeypatch.setattr(D, "_resize_for_detection", lambda img, s: shrunk.append(s) or real(img, s))
    out = det.detect_batch([face, blank])
    assert shrunk == [0.5, 0.5, 1.0]  # face and blank once each at 0.5, blank at twice that for the last retry
    shrunk.clear()
    again = det.detect_batch([face, blank], prepared=prepared)
    assert shrunk == [1.0]
    for got in (out, again):
        assert len(got[0]) == len(ref[0]) == 1 and got[1] == ref[1] == []
        np.testing.assert_array_equal(got[0][0].landmarks, ref[0][0].landmarks)
        np.testing.assert_array_equal(got[0][0].box, ref[0][0].box)
    with pytest.raises(ValueError, match="one entry per image"):
        det.detect_batch([face, blank], prepared=prepared[:1])


@pytest.mark.lfw
def test_png_compression_is_a_lossless_setting(lfw_dir, tmp_path):
    from tripletface.config import load_config
    from tripletface.faces.crop import crop_folder
    from tripletface.faces.manifest import MANIFEST, read_manifest
    from tripletface.config import ConfigError

    (tmp_path / "in" / "Abdullah_Gul").mkdir(parents=True)
    for f in sorted((lfw_dir / "Abdullah_Gul").glob("*.jpg"))[:3]:
        (tmp_path / "in" / "Abdullah_Gul" / f.name).write_bytes(f.read_bytes())
    assert load_config().crop.png_compression == 1
    pixels, sizes = {}, {}
    for level in (0, 9):
        cfg = load_config(overrides={"crop.png_compression": level, "crop.workers": 2}).crop
        out = tmp_path / f"out{level}"
        crop_folder(tmp_path / "in", out, cfg, progress=False)
        rows = read_manifest(out / MANIFEST)
        assert [r["status"] for r in rows] == ["ok"] * 3
        pixels[level] = [np.asarray(Image.open(out / r["output"])) for r in rows]
        sizes[level] = sum((out / r["output"]).stat().st_size for r in rows)
    assert all(np.array_equal(a, b) for a, b in zip(pixels[0], pixels[9]))
    assert sizes[0] > 2 * sizes[9]  # level 0 stores, level 9 compresses
    with pytest.raises(ConfigError, match="crop.png_compression"):
        load_config(overrides={"crop.png_compression": 10})


@pytest.mark.lfw
def test_raw_embedding_runs_the_model_behind_detection(lfw_dir, tmp_path, monkeypatch):
    """The forward pass of a chunk runs in a background thread while the next is detected, with the
    vectors of embedding the aligned crops chunk by chunk."""
    from inference_support import make_model

    from tripletface.inference.embedder import Embedder

    files = [str(p) for p in sorted((lfw_dir / "Abdullah_Gul").glob("*.jpg"))[:5]] + [str(tmp_path / "gone.jpg")]
    emb = Embedder.load(str(make_model(tmp_path / "m.keras")), batch_size=2)
    threads = []
    real = Embedder.embed_aligned
    monkeypatch.setattr(Embedder, "embed_aligned",
                        lambda self, b, **k: threads.append(threading.current_thread().name) or real(self, b, **k))
    vectors, failures = emb.embed_files(files, aligned=False)
    assert [f.status for f in failures] == ["missing"] and np.isnan(vectors[5]).all()
    assert threads and all(t.startswith("tripletface-embed") for t in threads)
    chunks = [np.stack([r.aligned for r in emb.cropper.process_files(files[s:min(s + 2, 5)])])
              for s in range(0, 5, 2)]
    np.testing.assert_array_equal(vectors[:5], np.concatenate([real(emb, c) for c in chunks]))
