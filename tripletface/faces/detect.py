"""Face detection backends behind one thin object (the choice of one face per image is
:func:`tripletface.faces.selection.select_face`).

Which detector, and why
-----------------------
``mtcnn`` (default) -- the ``mtcnn`` 1.0 package (TensorFlow): it ships its weights inside
the wheel, needs nothing downloaded, finds faces across pose and lighting far better than
a Haar cascade, and returns the **5 landmarks** (eyes, nose, mouth corners) that the
similarity alignment in :mod:`tripletface.faces.align` needs. It is slow one image at a time
(~11-20 img/s on a 250x250 LFW photo, CPU), so this backend

* shrinks every image by ``detect_scale`` (0.5 by default) with area averaging;
* calls mtcnn with a *list* of images: one PNet pass over the whole batch per pyramid
  level, one RNet and one ONet call for all candidate boxes;
* retries only the images where nothing was found, with lower proposal thresholds
  (the final ONet score must still reach ``min_score``), then at twice the resolution.

Together that is ~10-20x the one-at-a-time speed on LFW with the same detections.
Two quirks of the package are handled here: its ``min_face_size`` argument breaks (finds
nothing) above ~24, so it is always 20 *at the detection scale* -- the smallest face
found is therefore ``20 / detect_scale`` original pixels (40 px at 0.5), and
``min_face_size`` is a filter applied afterwards (:class:`tripletface.faces.cropper.FaceCropper`
marks smaller faces ``too_small``); and it pads images of different sizes in one call
and un-pads them wrongly when an image has no face (pads are paired with the ids of
images *with* detections) -- and its pyramid then depends on the largest image of the
batch. So each image is padded here, at the bottom/right (coordinates unchanged), to
the next multiple of 32 pixels, and only same-size canvases share a call: the result
for an image does not depend on what else is in its batch (training crops and inference
crops of one photo are identical), and a folder of same-size photos (LFW, CASIA) runs
in full batches. Boxes and landmarks are mapped back to original-image pixels
(pixel-centre convention).

``opencv`` -- the original design's detector: OpenCV's Haar frontal-face cascade from
``opencv-python-headless`` 4.x (``cv2.data.haarcascades``). It is fast and dependency-light
but gives **no landmarks** and no calibrated score. Landmarks are estimated: the two
eyes from the eye cascade inside the face box when both are found, else a fixed position
in the box; nose and mouth always come from the average face geometry (measured against
MTCNN on LFW: mean eye error ~0.06 of the inter-ocular distance with the eye cascade,
~0.08 from the box alone). So alignment corrects position, scale and (with eyes) roll,
but not yaw or pitch, and profile faces are often missed: use it only where TensorFlow
is unwanted. Scores are 1.0. OpenCV 5 wheels ship no cascade files; this backend then
refuses with a one-line :class:`~tripletface.errors.ModelError`.

Example::

    >>> det = get_detector("mtcnn", min_face_size=40, detect_scale=0.5, min_score=0.9)  # doctest: +SKIP
    >>> faces = det.detect_batch([img1, img2])   # list (per image) of lists of Detection
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from tripletface.errors import ModelError

__all__ = ["Detection", "Detector", "MTCNNDetector", "OpenCVDetector", "DETECTORS", "get_detector",
           "detection_scale"]

# Landmarks as fractions of a Haar face box (x, y), mean of MTCNN on LFW, symmetrised.
_BOX_LANDMARKS = np.array(
    [[0.323, 0.390], [0.677, 0.390], [0.500, 0.595], [0.350, 0.773], [0.650, 0.773]], dtype=np.float64
)
# Never shrink an image's shorter side below this many pixels for detection.
_MIN_DETECT_SIDE = 80
# Proposal thresholds for the second pass over images where nothing was found (defaults 0.6/0.7).
_RETRY_THRESHOLDS = {"threshold_pnet": 0.4, "threshold_rnet": 0.5}
# Detection images are padded (bottom/right) to a multiple of this many pixels per side.
_BUCKET = 32


@dataclass
class Detection:
    """One face in original-image pixel coordinates.

    Attributes:
        box: ``(4,)`` float ``x1, y1, x2, y2``.
        score: detector confidence in [0, 1] (1.0 for backends without one).
        landmarks: ``(5, 2)`` float ``(x, y)`` -- left eye, right eye, nose, mouth left,
            mouth right (see :mod:`tripletface.faces.align`) -- or None.
    """

    box: np.ndarray
    score: float
    landmarks: Optional[np.ndarray] = None

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def size(self) -> float:
        """Face size in pixels: the longer side of the box."""
        return max(self.width, self.height)

    def to_dict(self) -> dict:
        """JSON-ready: floats rounded to 0.01 px."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 5),
            "landmarks": None if self.landmarks is None
            else [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
        }


def detection_scale(shape, detect_scale: float) -> float:
    """Factor an image of ``shape`` is resized by before detection.

    ``detect_scale``, except that small images keep a shorter side of at least
    ``_MIN_DETECT_SIDE`` pixels (and are never enlarged).
    """
    short = min(int(shape[0]), int(shape[1]))
    if short <= 0:
        return 1.0
    return float(min(1.0, max(detect_scale, _MIN_DETECT_SIDE / short)))


def _resize_for_detection(image: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    if scale >= 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _to_original(points: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Detection-image pixel coords -> original pixel coords (pixel-centre convention)."""
    out = np.asarray(points, dtype=np.float64).copy()
    out[..., 0] = (out[..., 0] + 0.5) / sx - 0.5
    out[..., 1] = (out[..., 1] + 0.5) / sy - 0.5
    return out


def _check_images(images) -> list:
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if not isinstance(images, (list, tuple)):
        raise ValueError(f"images must be a list of (H, W, 3) uint8 arrays, received: {type(images).__name__}")
    out = []
    for i, img in enumerate(images):
        arr = np.asarray(img)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"images[{i}] must be a uint8 (H, W, 3) array, received {arr.dtype} {arr.shape}")
        out.append(arr)
    return out


class Detector:
    """Base class: ``detect_batch(images) -> list[list[Detection]]``, one list per image.

    Every backend returns all faces it finds with ``score >= min_score``, in original
    pixel coordinates. ``min_face_size`` is carried for the caller (the face-size filter
    in :class:`tripletface.faces.cropper.FaceCropper`); backends find faces down to
    :attr:`smallest_face` pixels.
    """

    name = "base"
    window = 20  # smallest face the backend finds, in detection-scale pixels

    def __init__(self, min_face_size: int = 20, detect_scale: float = 0.5, min_score: float = 0.9):
        if isinstance(min_face_size, bool) or not isinstance(min_face_size, (int, np.integer)) or min_face_size < 0:
            raise ValueError(f"min_face_size must be an integer >= 0, received: {min_face_size!r}")
        if not (isinstance(detect_scale, (int, float)) and 0 < detect_scale <= 1):
            raise ValueError(f"detect_scale must be in (0, 1], received: {detect_scale!r}")
        if not (isinstance(min_score, (int, float)) and 0 <= min_score <= 1):
            raise ValueError(f"min_score must be in [0, 1], received: {min_score!r}")
        self.min_face_size = int(min_face_size)
        self.detect_scale = float(detect_scale)
        self.min_score = float(min_score)

    @property
    def smallest_face(self) -> float:
        """Smallest face (pixels, original image) found at the nominal ``detect_scale``."""
        return self.window / self.detect_scale

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in one ``uint8 (H, W, 3)`` RGB image."""
        return self.detect_batch([image])[0]

    def prepare(self, image: np.ndarray):
        """The per-image work of :meth:`detect_batch` that can run ahead, in a reader thread
        (OpenCV releases the GIL), or None when this backend has none. Pass what it returns,
        one per image, as ``detect_batch(images, prepared=...)``: the detections are the same."""
        return None

    def detect_batch(self, images, prepared=None) -> list[list[Detection]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(min_face_size={self.min_face_size}, detect_scale={self.detect_scale}, "
                f"min_score={self.min_score})")


@functools.lru_cache(maxsize=1)
def _load_mtcnn():
    """One MTCNN per process (loading builds three Keras models: ~1 s)."""
    try:
        from mtcnn import MTCNN
    except ImportError as e:  # pragma: no cover - dependency is declared
        raise ModelError(f"detector 'mtcnn': cannot import the mtcnn package ({e}); pip install 'mtcnn>=1.0'") from None
    return MTCNN()


class MTCNNDetector(Detector):
    """MTCNN (``mtcnn`` package), batched and at reduced resolution; 5 landmarks."""

    name = "mtcnn"
    window = 20

    def __init__(self, min_face_size: int = 20, detect_scale: float = 0.5, min_score: float = 0.9,
                 retry: bool = True):
        super().__init__(min_face_size, detect_scale, min_score)
        self.retry = bool(retry)
        self._mtcnn = _load_mtcnn()

    def prepare(self, image: np.ndarray) -> "_Canvas":
        """The first pass's detection canvas of ``image`` (shrunk by :func:`detection_scale`, padded
        to the bucket): what :meth:`detect_batch` would make of it, made ahead (a reader thread)."""
        (image,) = _check_images([image])
        return _canvas(image, detection_scale(image.shape, self.detect_scale))

    def detect_batch(self, images, prepared=None) -> list[list[Detection]]:
        """Faces in each image. ``prepared``: :meth:`prepare` of each image (None entries are made
        here), so the shrinking is not redone; the detections are the same either way."""
        images = _check_images(images)
        results: list[list[Detection]] = [[] for _ in images]
        scales = [detection_scale(img.shape, self.detect_scale) for img in images]
        prepared = list(prepared) if prepared is not None else [None] * len(images)
        if len(prepared) != len(images):
            raise ValueError(f"prepared must have one entry per image ({len(images)}), received {len(prepared)}")
        canvases = [c if isinstance(c, _Canvas) and c.scale == s else _canvas(img, s)
                    for img, s, c in zip(images, scales, prepared)]
        self._detect_into(canvases, range(len(images)), results, {})
        if self.retry:
            # Nothing found: retry with more PNet/RNet proposals (ONet still needs min_score) on the
            # same canvases (not shrunk again), then also at twice the resolution. On LFW this finds
            # half of the misses.
            again = [i for i, dets in enumerate(results) if not dets]
            if again:
                self._detect_into(canvases, again, results, _RETRY_THRESHOLDS)
            again = [i for i in again if not results[i] and scales[i] < 1.0]
            if again:
                twice = {i: _canvas(images[i], min(1.0, 2.0 * scales[i])) for i in again}
                self._detect_into(twice, again, results, _RETRY_THRESHOLDS)
        for dets in results:
            dets.sort(key=lambda d: -d.score)
        return results

    def _detect_into(self, canvases, indices, results, thresholds: dict) -> None:
        """Detect on ``canvases[i]`` for each ``i`` in ``indices`` (same-shape canvases share a call)."""
        groups: dict[tuple, list] = {}
        for i in indices:
            c = canvases[i]
            groups.setdefault(c.canvas.shape, []).append((i, c.canvas, c.shape, c.sx, c.sy))
        for group in groups.values():
            rows = self._run([g[1] for g in group], [g[2] for g in group], thresholds)
            for row in rows:
                i, _, _, sx, sy = group[int(row[0])]
                if row[5] < self.min_score:
                    continue
                box = _to_original(np.array([[row[1], row[2]], [row[3], row[4]]]), sx, sy).reshape(4)
                lm = _to_original(np.stack([row[6:11], row[11:16]], axis=1), sx, sy)
                results[i].append(Detection(box=box, score=float(row[5]), landmarks=lm))

    def _run(self, canvases: list[np.ndarray], shapes: list[tuple], thresholds: dict) -> np.ndarray:
        """Raw mtcnn rows ``[image, x1, y1, x2, y2, score, lx*5, ly*5]`` for same-shape canvases."""
        if not canvases or min(canvases[0].shape[:2]) < 12:  # smaller than PNet's window
            return np.empty((0, 16))
        rows = self._mtcnn.detect_faces(list(canvases), output_type="numpy", box_format="xyxy",
                                        fit_to_image=False, min_face_size=self.window, **thresholds)
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[0] == 0:
            return np.empty((0, 16))
        # Clip boxes to each image's own (unpadded) extent.
        for k, (h, w) in enumerate(shapes):
            sel = rows[:, 0] == k
            rows[sel, 1] = np.clip(rows[sel, 1], 0, w - 1)
            rows[sel, 3] = np.clip(rows[sel, 3], 0, w - 1)
            rows[sel, 2] = np.clip(rows[sel, 2], 0, h - 1)
            rows[sel, 4] = np.clip(rows[sel, 4], 0, h - 1)
        return rows


@dataclass(frozen=True)
class _Canvas:
    """One image made ready for an mtcnn call: shrunk by ``scale`` (to ``shape``, ``(h, w)``; the
    factors ``sx``, ``sy`` map back), padded to the bucket."""

    canvas: np.ndarray
    shape: tuple
    sx: float
    sy: float
    scale: float


def _canvas(image: np.ndarray, scale: float) -> _Canvas:
    small = _resize_for_detection(image, scale)
    return _Canvas(_pad_to_bucket(small), small.shape[:2], small.shape[1] / image.shape[1],
                   small.shape[0] / image.shape[0], scale)


def _pad_to_bucket(image: np.ndarray) -> np.ndarray:
    """Pad bottom/right with black to the next multiple of ``_BUCKET`` pixels per side.

    The canvas depends on the image alone, so a face gets the same detection whatever
    else is in its batch, and images of similar size share one batched call.
    """
    h, w = image.shape[:2]
    bh = -(-h // _BUCKET) * _BUCKET
    bw = -(-w // _BUCKET) * _BUCKET
    if (bh, bw) == (h, w):
        return image
    canvas = np.zeros((bh, bw, 3), dtype=np.uint8)
    canvas[:h, :w] = image
    return canvas


class OpenCVDetector(Detector):
    """Haar cascade (OpenCV 4.x), estimated landmarks; see the module doc for its limits."""

    name = "opencv"
    window = 24

    def __init__(self, min_face_size: int = 20, detect_scale: float = 0.5, min_score: float = 0.9):
        super().__init__(min_face_size, detect_scale, min_score)
        import cv2

        base = getattr(getattr(cv2, "data", None), "haarcascades", None)
        face_file = os.path.join(base, "haarcascade_frontalface_default.xml") if base else None
        eye_file = os.path.join(base, "haarcascade_eye.xml") if base else None
        if not face_file or not os.path.isfile(face_file):
            raise ModelError(
                f"detector 'opencv': Haar cascade file not found ({face_file or 'cv2.data.haarcascades missing'}); "
                f"OpenCV {cv2.__version__} ships none (OpenCV 5 wheels dropped them): install "
                "'opencv-python-headless<5' or use crop.detector=mtcnn"
            )
        self._face = cv2.CascadeClassifier(face_file)
        if self._face.empty():
            raise ModelError(f"detector 'opencv': cannot load Haar cascade {face_file}")
        self._eye = cv2.CascadeClassifier(eye_file) if eye_file and os.path.isfile(eye_file) else None
        if self._eye is not None and self._eye.empty():
            self._eye = None

    def detect_batch(self, images, prepared=None) -> list[list[Detection]]:
        import cv2

        images = _check_images(images)
        out = []
        for img in images:
            grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            s = detection_scale(img.shape, self.detect_scale)
            small = _resize_for_detection(grey, s)
            sy = small.shape[0] / img.shape[0]
            sx = small.shape[1] / img.shape[1]
            faces = self._face.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5,
                                                minSize=(self.window, self.window))
            dets = []
            for x, y, w, h in (faces if len(faces) else []):
                box = _to_original(np.array([[x, y], [x + w, y + h]], dtype=np.float64), sx, sy).reshape(4)
                dets.append(Detection(box=box, score=1.0, landmarks=self._landmarks(grey, box)))
            if self.min_score > 1.0:  # pragma: no cover - scores are 1.0
                dets = []
            out.append(dets)
        return out

    def _landmarks(self, grey: np.ndarray, box: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        geometric = _BOX_LANDMARKS * [w, h] + [x1, y1]
        if self._eye is None:
            return geometric
        ix1, iy1 = int(max(0, round(x1))), int(max(0, round(y1)))
        ix2, iy2 = int(min(grey.shape[1], round(x2))), int(min(grey.shape[0], round(y1 + 0.6 * h)))
        roi = grey[iy1:iy2, ix1:ix2]
        if roi.shape[0] < 16 or roi.shape[1] < 16:
            return geometric
        m = max(8, int(w // 8))
        eyes = self._eye.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=3, minSize=(m, m))
        half = (ix2 - ix1) / 2
        left = [e for e in eyes if e[0] + e[2] / 2 < half]
        right = [e for e in eyes if e[0] + e[2] / 2 >= half]
        if not left or not right:
            return geometric
        le = max(left, key=lambda e: e[2])
        re = max(right, key=lambda e: e[2])
        pl = np.array([ix1 + le[0] + le[2] / 2, iy1 + le[1] + le[3] / 2])
        pr = np.array([ix1 + re[0] + re[2] / 2, iy1 + re[1] + re[3] / 2])
        dist = np.linalg.norm(pr - pl)
        if not (0.25 * w <= dist <= 0.55 * w) or abs(pr[1] - pl[1]) > 0.25 * w:
            return geometric  # implausible pair (eyebrow, nostril): keep the box estimate
        # Similarity taking the geometric eyes onto the found eyes, applied to all 5 points.
        src = geometric[1] - geometric[0]
        dst = pr - pl
        a = complex(dst[0], dst[1]) / complex(src[0], src[1])
        pts = geometric - geometric[0]
        moved = np.array([[(a * complex(px, py)).real, (a * complex(px, py)).imag] for px, py in pts])
        return moved + pl


DETECTORS = {"mtcnn": MTCNNDetector, "opencv": OpenCVDetector}


def get_detector(name: str = "mtcnn", min_face_size: int = 20, detect_scale: float = 0.5,
                 min_score: float = 0.9) -> Detector:
    """Build the detector called ``name`` (``"mtcnn"`` or ``"opencv"``)."""
    if name not in DETECTORS:
        raise ValueError(f"detector must be one of {sorted(DETECTORS)}, received: {name!r}")
    return DETECTORS[name](min_face_size=min_face_size, detect_scale=detect_scale, min_score=min_score)
