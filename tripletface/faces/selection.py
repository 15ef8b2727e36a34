"""Which face of a photo to keep, and how usable it is: :func:`select_face` picks one detection;
:func:`blur_score` and :func:`pose_score` grade it (the ``blur`` and ``pose`` of every ``ok``
crop, see :mod:`tripletface.faces.cropper`; training's quality filter reads them from the
manifest).

Example::

    >>> face, count = select_face(detections, image.shape)           # doctest: +SKIP
    >>> blur_score(crop), pose_score(face.landmarks)                  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tripletface.faces.detect import Detection

__all__ = ["select_face", "blur_score", "pose_score"]


def select_face(detections: list[Detection], image_shape) -> tuple[Optional[Detection], int]:
    """Pick the face to keep: the largest, preferring central ones. Returns ``(face or None, count)``.

    Rank = box area - 2 * squared distance of the box centre from the image centre
    (insightface's rule), so a big face wins unless it is far off-centre.
    """
    count = len(detections)
    if count == 0:
        return None, 0
    h, w = float(image_shape[0]), float(image_shape[1])
    cx, cy = w / 2.0, h / 2.0

    def rank(d: Detection) -> float:
        area = max(0.0, d.width) * max(0.0, d.height)
        bx = (d.box[0] + d.box[2]) / 2.0
        by = (d.box[1] + d.box[3]) / 2.0
        return area - 2.0 * ((bx - cx) ** 2 + (by - cy) ** 2)

    return max(detections, key=rank), count


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
