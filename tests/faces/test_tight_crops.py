"""Every photo gets an answer: a photo that is already a tight face crop is detected on a padded copy,
with box and landmarks in the original image's pixels, and the manifest says ``detect_path``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tripletface.faces.detect import Detection, Detector
from tripletface.faces.cropper import PAD_FRACTION, FaceCropper, pad_for_detection


class _OnlyPadded(Detector):
    """Finds one face, at fixed padded-image coordinates, only in images larger than the original."""

    name = "fake"

    def __init__(self, original_shape, box, landmarks):
        super().__init__(min_face_size=0, detect_scale=1.0, min_score=0.5)
        self.original_shape, self.box, self.landmarks = original_shape, np.asarray(box), np.asarray(landmarks)

    def detect_batch(self, images):
        return [[] if img.shape == self.original_shape else
                [Detection(box=self.box.copy(), score=0.99, landmarks=self.landmarks.copy())] for img in images]


def test_padded_retry_maps_coordinates_back_to_the_original_image():
    img = np.random.default_rng(0).integers(0, 256, (100, 80, 3), dtype=np.uint8)
    padded, pad = pad_for_detection(img)
    assert pad == round(PAD_FRACTION * 100) and padded.shape == (100 + 2 * pad, 80 + 2 * pad, 3)
    np.testing.assert_array_equal(padded[pad:pad + 100, pad:pad + 80], img)
    lm = np.array([[60, 70], [90, 70], [75, 85], [62, 100], [88, 100]], np.float64)
    cropper = FaceCropper(detector=_OnlyPadded(img.shape, [45, 45, 105, 125], lm), size=32)
    res = cropper.process([img])[0]
    assert res.ok and res.detect_path == "padded"
    np.testing.assert_allclose(res.box, np.array([45, 45, 105, 125]) - pad)
    np.testing.assert_allclose(res.landmarks, lm - pad)
    assert res.to_dict()["detect_path"] == "padded"
    off = FaceCropper(detector=_OnlyPadded(img.shape, [45, 45, 105, 125], lm), size=32, pad_retry=False)
    assert off.process([img])[0].status == "no_face"


@pytest.mark.lfw
def test_tight_lfw_crops_are_found_with_the_right_landmarks_and_the_manifest_says_so(lfw_dir, tmp_path):
    from PIL import Image

    from tripletface.config import load_config
    from tripletface.faces.crop import crop_folder
    from tripletface.faces.manifest import read_manifest

    files = sorted(lfw_dir.glob("A*/*_0001.jpg"))[:40]
    cropper = FaceCropper()
    from tripletface.data.decode import read_image

    photos = [read_image(f) for f in files]
    full = cropper.process(photos)
    tight, offsets, refs = [], [], []
    for photo, r in zip(photos, full):
        if not r.ok:
            continue
        x1, y1, x2, y2 = r.box  # the face box shrunk to 80%: forehead and chin leave the frame
        cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, 0.4 * (x2 - x1), 0.4 * (y2 - y1)
        left, top = int(round(cx - hw)), int(round(cy - hh))
        tight.append(np.ascontiguousarray(photo[top:int(round(cy + hh)), left:int(round(cx + hw))]))
        offsets.append(np.array([left, top], np.float64))
        refs.append(np.asarray(r.landmarks))
    before = FaceCropper(pad_retry=False).process(tight)
    after = cropper.process(tight)
    n_before, n_after = sum(r.ok for r in before), sum(r.ok for r in after)
    assert n_after > n_before, (n_before, n_after, len(tight))
    padded = [i for i, r in enumerate(after) if r.detect_path == "padded"]
    assert padded and all(after[i].ok for i in padded)
    for i in padded:  # in the tight image's own pixels: + its offset = where the full photo has them
        iod = np.linalg.norm(refs[i][1] - refs[i][0])
        err = np.linalg.norm(np.asarray(after[i].landmarks) + offsets[i] - refs[i], axis=1).mean() / iod
        assert err < 0.3, (i, err)
    assert all(r.detect_path == "direct" for r in after if r.ok and r.detect_path != "padded")

    src = tmp_path / "photos" / "Tight"
    src.mkdir(parents=True)
    Image.fromarray(tight[padded[0]]).save(src / "tight.png")
    out = tmp_path / "crops"
    crop_folder(src.parent, out, load_config(overrides={"crop.workers": 1}).crop, progress=False)
    (row,) = read_manifest(out / "manifest.jsonl")
    assert row["status"] == "ok" and row["detect_path"] == "padded", json.dumps(row)
    assert (out / row["output"]).is_file()
