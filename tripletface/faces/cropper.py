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
pixels); and, from :func:`process_files`, the :mod:`tripletface.data.decode` statuses
(``missing``, ``unreadable``, ``too_large``, ``truncated``, ``not_an_image``).

Where nothing is found, detection runs again on a copy padded by :data:`PAD_FRACTION` of the
longer side (replicated edges): photos that are already tight face crops are found that way.
``FaceResult.detect_path`` says which pass found the face (``"direct"`` or ``"padded"``);
coordinates are always in the original image's pixels.

Quality measures (on every ``ok`` result; :mod:`tripletface.faces.selection`):

* ``face_size`` -- longer side of the detected box, original pixels;
* ``blur`` -- variance of the Laplacian of the aligned crop, greyscale (low = blurry;
  depends on the crop size, compare like with like);
* ``pose`` -- signed horizontal offset of the nose from the line through the eye
  midpoint and the mouth midpoint, divided by the eye distance: ~0 frontal, ~±0.3 and
  beyond strongly turned (a yaw proxy; sign = direction).
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from tripletface.faces.align import BOX, DEFAULT_TEMPLATE, TEMPLATES, align_face, box_crop
from tripletface.faces.detect import DETECTORS, Detection, Detector, get_detector
from tripletface.faces.selection import blur_score, pose_score, select_face
from tripletface.errors import ImageError
from tripletface.data.decode import read_image

__all__ = ["FaceResult", "FaceCropper", "alignment_settings", "SETTINGS_KEYS", "PAD_FRACTION", "pad_for_detection"]

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
        detector: ``"mtcnn"`` | ``"opencv"``, or a :class:`~tripletface.faces.detect.Detector`.
        size: side of the aligned square crop in pixels.
        template: alignment template name (``"arcface"``), or ``"box"`` for no alignment
            (the detector's box squared and scaled: the ablation's alignment-off baseline).
        min_face_size: faces whose box is smaller (pixels, original image) are ``too_small``.
        detect_scale: images are shrunk by this before detection.
        min_score: detections below this score are ignored.
        max_pixels: larger images are refused unread (:func:`tripletface.data.decode.read_image`).
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
        """:func:`tripletface.data.decode.read_image` with this cropper's pixel limit."""
        return read_image(path, max_pixels=self.max_pixels)

    def process(self, images: list[np.ndarray]) -> list[FaceResult]:
        """Detect (one batched call), select, align and measure; one :class:`FaceResult` per image.

        An image where nothing is found is detected again on a padded copy (:func:`pad_for_detection`):
        a photo that is already a tight face crop (the face fills the frame) gives the detector
        no context around the face and is often missed. Boxes and landmarks found that way are
        mapped back to the original image, and the result says ``detect_path="padded"``.
        """
        detections, paths = self.detect(images)
        return [self.complete(img, dets, path) for img, dets, path in zip(images, detections, paths)]

    def prepare(self, image: np.ndarray):
        """The detector's per-image preparation (:meth:`tripletface.faces.detect.Detector.prepare`), to run
        ahead in a reader thread; pass the results to :meth:`detect`."""
        return self.detector.prepare(image)

    def detect(self, images: list[np.ndarray], prepared=None) -> tuple[list[list[Detection]], list[str]]:
        """The detection half of :meth:`process`: ``(detections per image, detect path per image)``,
        the padded retry included. ``prepared``: :meth:`prepare` of each image, or None."""
        if not len(images):
            return [], []
        if prepared is not None and any(p is not None for p in prepared):
            detections = self.detector.detect_batch(images, prepared=prepared)
        else:
            detections = self.detector.detect_batch(images)
        paths = ["direct"] * len(images)
        if self.pad_retry:
            again = [i for i, dets in enumerate(detections) if not dets]
            if again:
                padded = [pad_for_detection(images[i], PAD_FRACTION) for i in again]
                for i, (_, offset), dets in zip(again, padded, self.detector.detect_batch([p for p, _ in padded])):
                    detections[i] = [_shifted(d, -offset) for d in dets]
                    paths[i] = "padded"
        return detections, paths

    def complete(self, image: np.ndarray, detections: list[Detection], path: str = "direct") -> FaceResult:
        """The per-image half of :meth:`process` (:meth:`finish`, plus the detect path): OpenCV and
        NumPy work that releases the GIL, so it can run in a thread while the next batch is detected."""
        r = self.finish(image, detections)
        if r.status != "no_face":
            r.detect_path = path
        elif self.pad_retry:
            r.reason += f"; none on a copy padded by {PAD_FRACTION:.0%} either"
        return r

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
        chunks = [paths[s:s + max(1, batch)] for s in range(0, len(paths), max(1, batch))]
        return [_read_failure(err) if err is not None else res
                for chunk in self.stream(chunks) for _, err, res, _ in chunk]

    def stream(self, chunks, read=None, then=None, workers: int = 0, safe: bool = False):
        """Crop chunks of files as a pipeline; yields, per chunk and in order, a list of
        ``(source, read error or None, FaceResult or None, outcome)``.

        The stages overlap: while chunk ``k`` is detected (in the calling thread: TensorFlow),
        the files of chunks ``k+1`` and ``k+2`` are read and made ready for the detector
        (:meth:`prepare`), and chunk ``k-1`` is aligned and measured (:meth:`complete`) and
        handed to ``then``, in a pool of ``workers`` threads (0 = this cropper's ``workers``):
        decoding, OpenCV and zlib release the GIL. A chunk is yielded once all of its work
        is done, while the next one is detected. Results are those of :meth:`process` on each
        chunk's readable images.

        Args:
            chunks: iterable of lists of sources (one detector call per list).
            read: ``source -> image`` (default :meth:`read`); an :class:`ImageError` it raises
                becomes the item's read error.
            then: ``(source, result) -> outcome``, run in the pool after :meth:`complete`: its
                return value, or the exception it raised, is the item's ``outcome`` (None
                without ``then``).
            safe: when detecting or aligning raises unexpectedly, detect the chunk image by image
                and give a failing image an ``error`` result (one odd image must not stop a long
                run); otherwise the exception propagates.
        """
        import collections

        read = read or self.read

        def load(src):
            try:
                img = read(src)
            except ImageError as e:
                return None, None, e
            try:
                return img, self.prepare(img), None
            except Exception:  # noqa: BLE001 - detection meets it again and reports it
                return img, None, None

        def finish(src, img, dets, path):
            if isinstance(dets, FaceResult):
                res = dets
            else:
                try:
                    res = self.complete(img, dets, path)
                except Exception as e:  # noqa: BLE001
                    if not safe:
                        raise
                    res = _error_result(e)
            if then is None:
                return res, None
            try:
                return res, then(src, res)
            except Exception as e:  # noqa: BLE001 - the caller decides
                return res, e

        chunks = iter(chunks)
        n_workers = max(1, workers or self.workers)
        pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="tripletface-crop")
        try:
            reads = collections.deque()  # (sources, read futures) of the next chunks
            for chunk in itertools.islice(chunks, 2):
                reads.append((chunk, [pool.submit(load, s) for s in chunk]))
            done = None  # (sources, reads, finish futures) of the chunk being aligned
            while reads:
                sources, futures = reads.popleft()
                loaded = [f.result() for f in futures]
                for chunk in itertools.islice(chunks, 1):
                    reads.append((chunk, [pool.submit(load, s) for s in chunk]))
                ok = [k for k, (_, _, err) in enumerate(loaded) if err is None]
                dets = self._detect_safely([loaded[k][0] for k in ok], [loaded[k][1] for k in ok], safe)
                by_index = dict(zip(ok, dets))
                jobs = {k: pool.submit(finish, sources[k], loaded[k][0], *by_index[k]) for k in ok}
                if done is not None:
                    yield _gather(*done)
                done = (sources, loaded, jobs)
            if done is not None:
                yield _gather(*done)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _detect_safely(self, images, prepared, safe: bool) -> list[tuple]:
        """``(detections, path)`` per image (or ``(error FaceResult, None)`` when ``safe``)."""
        if not images:
            return []
        try:
            return list(zip(*self.detect(images, prepared)))
        except Exception:  # noqa: BLE001
            if not safe:
                raise
        out = []
        for img, prep in zip(images, prepared):
            try:
                (dets,), (path,) = self.detect([img], [prep])
                out.append((dets, path))
            except Exception as e:  # noqa: BLE001
                out.append((_error_result(e), None))
        return out


def _gather(sources, loaded, jobs) -> list[tuple]:
    out = []
    for k, (src, (_, _, err)) in enumerate(zip(sources, loaded)):
        if err is not None:
            out.append((src, err, None, None))
        else:
            res, outcome = jobs[k].result()
            out.append((src, None, res, outcome))
    return out


def _read_failure(err) -> FaceResult:
    return FaceResult(status=getattr(err, "status", "unreadable"), reason=getattr(err, "reason", str(err)))


def _error_result(e: Exception) -> FaceResult:
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return FaceResult(status="error", reason=f"detection/alignment failed: {msg}")
