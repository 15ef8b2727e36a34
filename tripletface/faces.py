"""From photo to aligned face crop: read -> detect -> select -> align -> quality.

:class:`FaceCropper` is the one object that turns photos into the face crops a model sees.
``tripletface crop`` uses it to build the training set; ``embed``/``compare`` rebuild the
exact same cropper from the settings stored with a model::

    settings = alignment_settings(cfg.crop)         # JSON-ready dict, stored in the model
    cropper = FaceCropper.from_settings(settings)   # at inference: identical crops
    result = cropper.process_files(["me.jpg"])[0]
    if result.ok:
        crop = result.aligned                        # uint8 (size, size, 3) RGB

Statuses (``FaceResult.status``): ``ok``; ``no_face`` (nothing detected with
``score >= min_score``); ``too_small`` (faces found, all smaller than ``min_face_size``
pixels); and, from :func:`process_files`, the :mod:`tripletface.imageio` statuses
(``missing``, ``unreadable``, ``too_large``, ``truncated``, ``not_an_image``).

Where nothing is found, detection runs again on a copy padded by :data:`PAD_FRACTION` of the
longer side (replicated edges): photos that are already tight face crops are found that way.
``FaceResult.detect_path`` says which pass found the face (``"direct"`` or ``"padded"``);
coordinates are always in the original image's pixels.

Quality measures (on every ``ok`` result):

* ``face_size`` -- longer side of the detected box, original pixels;
* ``blur`` -- variance of the Laplacian of the aligned crop, greyscale (low = blurry;
  depends on the crop size, compare like with like);
* ``pose`` -- signed horizontal offset of the nose from the line through the eye
  midpoint and the mouth midpoint, divided by the eye distance: ~0 frontal, ~±0.3 and
  beyond strongly turned (a yaw proxy; sign = direction).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from tripletface.align import BOX, DEFAULT_TEMPLATE, TEMPLATES, align_face, box_crop
from tripletface.detect import DETECTORS, Detection, Detector, get_detector, select_face
from tripletface.errors import ImageError
from tripletface.imageio import read_image

__all__ = ["FaceResult", "FaceCropper", "alignment_settings", "blur_score", "pose_score", "SETTINGS_KEYS",
           "PAD_FRACTION", "pad_for_detection"]

# Keys of the alignment settings dict (what a model stores to rebuild its cropper).
SETTINGS_KEYS = ("detector", "size", "template", "min_face_size", "detect_scale", "min_score", "max_pixels")


@dataclass
class FaceResult:
    """What happened to one image. ``aligned`` is set only when ``status == "ok"``."""

    status: str
    reason: str = ""
    aligned: Optional[np.ndarray] = field(default=None, repr=False)
    score: Optional[float] = None
    box: Optional[list] = None
    landmarks: Optional[list] = None
    n_faces: int = 0
    face_size: Optional[float] = None
    blur: Optional[float] = None
    pose: Optional[float] = None
    detect_path: Optional[str] = None  # which detection found the face: "direct" | "padded" (see FaceCropper)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        """JSON-ready record (no pixels)."""
        return {
            "status": self.status,
            "reason": self.reason,
            "score": self.score,
            "box": self.box,
            "landmarks": self.landmarks,
            "n_faces": self.n_faces,
            "face_size": self.face_size,
            "blur": self.blur,
            "pose": self.pose,
            "detect_path": self.detect_path,
        }


def alignment_settings(crop_cfg) -> dict:
    """The JSON-ready settings that define a crop, from a :class:`tripletface.config.CropConfig`.

    Store this dict with a model; :meth:`FaceCropper.from_settings` rebuilds the same cropper.
    """
    return {
        "detector": str(crop_cfg.detector),
        "size": int(crop_cfg.size),
        "template": str(crop_cfg.template),
        "min_face_size": int(crop_cfg.min_face_size),
        "detect_scale": float(crop_cfg.detect_scale),
        "min_score": float(crop_cfg.min_score),
        "max_pixels": int(crop_cfg.max_pixels),
    }


def blur_score(aligned: np.ndarray) -> float:
    """Variance of the Laplacian of ``aligned`` (uint8 RGB) in greyscale."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(aligned), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def pose_score(landmarks) -> float:
    """Signed nose offset from the eye-mouth midline, in eye distances (0 = frontal)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eyes = (lm[0] + lm[1]) / 2.0
    mouth = (lm[3] + lm[4]) / 2.0
    axis = mouth - eyes
    iod = float(np.linalg.norm(lm[1] - lm[0]))
    norm = float(np.linalg.norm(axis))
    if iod < 1e-6 or norm < 1e-6:
        return 0.0
    rel = lm[2] - eyes
    cross = axis[0] * rel[1] - axis[1] * rel[0]  # signed distance * norm
    return float(-cross / norm / iod)


# Border added on every side of an image, as a fraction of its longer side, for the padded retry.
# Edge pixels are replicated (a black border misses more: measured on tight LFW crops, see
# docs/RELIABILITY.md "Tight face crops").
PAD_FRACTION = 0.4


def pad_for_detection(image: np.ndarray, fraction: float = PAD_FRACTION) -> tuple[np.ndarray, int]:
    """``image`` with ``round(fraction * longer side)`` replicated edge pixels on every side, and that
    offset (subtract it from coordinates found in the padded image)."""
    import cv2

    h, w = image.shape[:2]
    pad = int(round(fraction * max(h, w)))
    return cv2.copyMakeBorder(np.ascontiguousarray(image), pad, pad, pad, pad, cv2.BORDER_REPLICATE), pad


def _shifted(d: Detection, delta: float) -> Detection:
    """``d`` with its box and landmarks moved by ``delta`` pixels in x and y."""
    return Detection(box=np.asarray(d.box, np.float64) + delta, score=d.score,
                     landmarks=None if d.landmarks is None else np.asarray(d.landmarks, np.float64) + delta)


def _round_list(a, nd: int = 2):
    return None if a is None else np.round(np.asarray(a, dtype=np.float64), nd).tolist()


class FaceCropper:
    """Detect, select, align and measure faces; one instance per settings dict.

    Args:
        detector: ``"mtcnn"`` | ``"opencv"``, or a :class:`~tripletface.detect.Detector`.
        size: side of the aligned square crop in pixels.
        template: alignment template name (``"arcface"``), or ``"box"`` for no alignment
            (the detector's box squared and scaled: the ablation's alignment-off baseline).
        min_face_size: faces whose box is smaller (pixels, original image) are ``too_small``.
        detect_scale: images are shrunk by this before detection.
        min_score: detections below this score are ignored.
        max_pixels: larger images are refused unread (:func:`tripletface.imageio.read_image`).
        workers: threads for decoding in :meth:`process_files` (0 = CPU count).
        pad_retry: detect again on a padded copy where nothing was found (see :meth:`process`);
            off only to measure what it adds.
    """

    def __init__(self, detector="mtcnn", size: int = 112, template: str = DEFAULT_TEMPLATE,
                 min_face_size: int = 20, detect_scale: float = 0.5, min_score: float = 0.9,
                 max_pixels: int = 40_000_000, workers: int = 0, pad_retry: bool = True):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
            raise ValueError(f"size must be an integer >= 8, received: {size!r}")
        if template not in (*TEMPLATES, BOX):
            raise ValueError(f"template must be one of {[*sorted(TEMPLATES), BOX]}, received: {template!r}")
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels <= 0:
            raise ValueError(f"max_pixels must be a positive integer, received: {max_pixels!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0, received: {workers!r}")
        if isinstance(detector, Detector):
            self.detector = detector
        else:
            if detector not in DETECTORS:
                raise ValueError(f"detector must be one of {sorted(DETECTORS)}, received: {detector!r}")
            self.detector = get_detector(detector, min_face_size=min_face_size, detect_scale=detect_scale,
                                         min_score=min_score)
        self.size = int(size)
        self.template = template
        self.max_pixels = int(max_pixels)
        self.workers = workers or (os.cpu_count() or 1)
        self.pad_retry = bool(pad_retry)

    @classmethod
    def from_settings(cls, settings: dict, workers: int = 0) -> "FaceCropper":
        """Rebuild the cropper described by :func:`alignment_settings` output."""
        if not isinstance(settings, dict):
            raise ValueError(f"settings must be a dict, received: {type(settings).__name__}")
        unknown = set(settings) - set(SETTINGS_KEYS)
        if unknown:
            raise ValueError(f"settings has unknown keys {sorted(unknown)}; known: {list(SETTINGS_KEYS)}")
        kwargs = {k: settings[k] for k in SETTINGS_KEYS if k in settings}
        return cls(workers=workers, **kwargs)

    @property
    def settings(self) -> dict:
        """This cropper's :func:`alignment_settings`-style dict."""
        return {
            "detector": self.detector.name,
            "size": self.size,
            "template": self.template,
            "min_face_size": self.detector.min_face_size,
            "detect_scale": self.detector.detect_scale,
            "min_score": self.detector.min_score,
            "max_pixels": self.max_pixels,
        }

    def read(self, path) -> np.ndarray:
        """:func:`tripletface.imageio.read_image` with this cropper's pixel limit."""
        return read_image(path, max_pixels=self.max_pixels)

    def process(self, images: list[np.ndarray]) -> list[FaceResult]:
        """Detect (one batched call), select, align and measure; one :class:`FaceResult` per image.

        An image where nothing is found is detected again on a padded copy (:func:`pad_for_detection`):
        a photo that is already a tight face crop (the face fills the frame) gives the detector
        no context around the face and is often missed. Boxes and landmarks found that way are
        mapped back to the original image, and the result says ``detect_path="padded"``.
        """
        detections = self.detector.detect_batch(images) if len(images) else []
        paths = ["direct"] * len(images)
        if self.pad_retry:
            again = [i for i, dets in enumerate(detections) if not dets]
            if again:
                padded = [pad_for_detection(images[i], PAD_FRACTION) for i in again]
                for i, (_, offset), dets in zip(again, padded, self.detector.detect_batch([p for p, _ in padded])):
                    detections[i] = [_shifted(d, -offset) for d in dets]
                    paths[i] = "padded"
        results = [self.finish(img, dets) for img, dets in zip(images, detections)]
        for r, path in zip(results, paths):
            if r.status != "no_face":
                r.detect_path = path
            elif self.pad_retry:
                r.reason += f"; none on a copy padded by {PAD_FRACTION:.0%} either"
        return results

    def finish(self, image: np.ndarray, detections: list[Detection]) -> FaceResult:
        """Select, align and measure, given the detections of ``image``."""
        n_faces = len(detections)
        if n_faces == 0:
            return FaceResult(
                status="no_face",
                reason=(f"no face found (score >= {self.detector.min_score:g}, "
                        f"size >= ~{self.detector.smallest_face:.0f} px)"),
            )
        big = [d for d in detections if d.size >= self.detector.min_face_size and d.landmarks is not None]
        if not big:
            largest = max(detections, key=lambda d: d.size)
            return FaceResult(
                status="too_small",
                reason=f"{n_faces} face(s) found, largest {largest.size:.0f} px < min_face_size "
                       f"{self.detector.min_face_size}",
                score=round(float(largest.score), 5), box=_round_list(largest.box), n_faces=n_faces,
                landmarks=_round_list(largest.landmarks), face_size=round(largest.size, 1),
            )
        face, _ = select_face(big, np.shape(image))
        if self.template == BOX:
            aligned = box_crop(np.asarray(image), face.box, self.size)
        else:
            aligned = align_face(np.asarray(image), face.landmarks, self.size, self.template)
        reason = "" if n_faces == 1 else f"{n_faces} faces found; kept the largest/most central"
        return FaceResult(
            status="ok", reason=reason, aligned=aligned, score=round(float(face.score), 5),
            box=_round_list(face.box), landmarks=_round_list(face.landmarks), n_faces=n_faces,
            face_size=round(face.size, 1), blur=round(blur_score(aligned), 2),
            pose=round(pose_score(face.landmarks), 4),
        )

    def process_files(self, paths, batch: int = 32) -> list[FaceResult]:
        """Read (in threads) and :meth:`process` files, ``batch`` at a time; unreadable files
        get their read status (``missing``, ``unreadable``, ``too_large``, ...)."""
        paths = list(paths)
        results: list[FaceResult] = []

        def load(p):
            try:
                return self.read(p), None
            except ImageError as e:
                return None, e

        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(paths) or 1))) as pool:
            for start in range(0, len(paths), max(1, batch)):
                loaded = list(pool.map(load, paths[start:start + max(1, batch)]))
                found = iter(self.process([img for img, err in loaded if err is None]))
                for img, err in loaded:
                    if err is not None:
                        results.append(FaceResult(status=getattr(err, "status", "unreadable"),
                                                  reason=getattr(err, "reason", str(err))))
                    else:
                        results.append(next(found))
        return results
