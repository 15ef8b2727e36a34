"""Face alignment: the ONE function that turns (image, 5 landmarks) into a square face crop.

Training data (``tripletface crop``) and inference (``embed``/``compare``) both call
:func:`align_face`, so a model always sees faces placed exactly as it was trained on.

The five landmarks, in this order, in image pixel coordinates ``(x, y)``:

    0 left eye     (the eye with the smaller x in the image)
    1 right eye
    2 nose tip
    3 mouth left   (the mouth corner with the smaller x)
    4 mouth right

They are mapped by a similarity transform (rotation, uniform scale, translation; no
shear, no reflection) fitted in the least-squares sense (Umeyama, 1991) onto the
standard ArcFace 112x112 template, scaled by ``size / 112`` for other output sizes.

Example::

    >>> lm = template(112) * 2 + 30        # a face twice the template size
    >>> m = estimate_transform(lm, 112)    # 2x3 matrix, image -> crop
    >>> crop = align_face(image, lm, 112)  # doctest: +SKIP  (uint8, 112x112x3)
"""

from __future__ import annotations

import numpy as np

__all__ = ["TEMPLATES", "DEFAULT_TEMPLATE", "BOX", "template", "estimate_transform", "transform_points", "align_face",
           "box_crop"]

# Landmark positions in a 112x112 crop (insightface arcface_torch ``arcface_dst``).
TEMPLATES = {
    "arcface": np.array(
        [
            [38.2946, 51.6963],
            [73.5318, 51.5014],
            [56.0252, 71.7366],
            [41.5493, 92.3655],
            [70.7299, 92.2041],
        ],
        dtype=np.float32,
    ),
}
DEFAULT_TEMPLATE = "arcface"
# the crop "template" that does no alignment (box_crop): the ablation's alignment-off baseline
BOX = "box"
_TEMPLATE_SIZE = 112.0


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an integer >= 8, received: {size!r}")
    return int(size)


def template(size: int = 112, name: str = DEFAULT_TEMPLATE) -> np.ndarray:
    """The 5 landmark targets, shape ``(5, 2)`` float32, for a ``size x size`` crop."""
    size = _check_size(size)
    if name not in TEMPLATES:
        raise ValueError(f"name must be one of {sorted(TEMPLATES)}, received: {name!r}")
    return (TEMPLATES[name] * np.float32(size / _TEMPLATE_SIZE)).astype(np.float32)


def _check_landmarks(landmarks) -> np.ndarray:
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"landmarks must have shape (5, 2), received shape: {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError(f"landmarks must be finite, received: {pts.tolist()}")
    return pts


# Kept instead of cv2.estimateAffinePartial2D (scikit-image's SimilarityTransform is not installed;
# not measured). Measured on the MTCNN landmarks of 50 lfw-dev photos (OpenCV 4.14): its default,
# RANSAC with a 3 px threshold, keeps fewer than 5 landmarks on 42/50 faces (as few as 2): matrices
# differ from this least-squares fit by up to 22.4 (median 4.5), the 112 px crops by a median of
# 114 grey levels; LMEDS drops landmarks on 9/50 (matrices up to 10.1 apart). Only RANSAC with a
# threshold no landmark can miss (1e9) fits all five: the same squared error (ratio 1.000000000), by
# an iterative refinement rather than this closed form, so its matrices still differ by up to
# 1.9e-5 and 20/50 crops by a few pixels (at most 3, +-2 levels) -- the crops a model was trained on
# would change. It is faster (15 us vs 87 us a face), which is nothing beside detection (~50 ms).
def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``dst ~ s * R @ src + t`` (no reflection); returns 2x3."""
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_c = src - src_mean
    dst_c = dst - dst_mean
    n = src.shape[0]
    cov = dst_c.T @ src_c / n
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    src_var = (src_c ** 2).sum() / n
    if src_var <= 1e-12:
        raise ValueError("landmarks must not all coincide (zero spread)")
    scale = float((s * d).sum() / src_var)
    trans = dst_mean - scale * rot @ src_mean
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = trans
    return m


def estimate_transform(landmarks, size: int = 112, name: str = DEFAULT_TEMPLATE) -> np.ndarray:
    """2x3 float64 matrix mapping image coordinates onto the template for ``size``.

    Args:
        landmarks: ``(5, 2)`` array-like, ``(x, y)`` in image pixels, order as in the module doc.
        size: side of the output crop in pixels.
        name: template name (see :data:`TEMPLATES`).
    """
    pts = _check_landmarks(landmarks)
    dst = template(size, name).astype(np.float64)
    return _umeyama(pts, dst)


def transform_points(matrix, points) -> np.ndarray:
    """Apply a 2x3 affine ``matrix`` to ``(N, 2)`` points."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def align_face(image: np.ndarray, landmarks, size: int = 112, name: str = DEFAULT_TEMPLATE,
               border: str = "replicate") -> np.ndarray:
    """Warp ``image`` so the 5 ``landmarks`` land on the template; returns ``uint8 (size, size, 3)``.

    Args:
        image: ``uint8 (H, W, 3)`` RGB (as from :func:`tripletface.data.decode.read_image`);
            ``(H, W)`` greyscale is replicated to 3 channels.
        landmarks: ``(5, 2)`` image coordinates, order as in the module doc.
        size: side of the square output.
        name: template name.
        border: ``"replicate"`` (edge pixels extended) or ``"constant"`` (black) outside the image.
    """
    img = _check_image(image, border)
    size = _check_size(size)
    return _warp(img, estimate_transform(_check_landmarks(landmarks), size, name), size, border)


def box_crop(image: np.ndarray, box, size: int = 112, border: str = "replicate") -> np.ndarray:
    """The unaligned crop: the square around the detector's ``box`` (``x1, y1, x2, y2``; side =
    its longer side, same centre), scaled to ``size``; no rotation, landmarks unused.

    This is the "alignment off" baseline (``crop.template = "box"``): faces keep their
    in-plane tilt and their landmarks move from crop to crop. Arguments as in :func:`align_face`.
    """
    img = _check_image(image, border)
    size = _check_size(size)
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.shape != (4,) or not np.all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"box must be finite (x1, y1, x2, y2) with x2 > x1 and y2 > y1, received: {b.tolist()}")
    scale = size / max(b[2] - b[0], b[3] - b[1])
    centre = (b[:2] + b[2:]) / 2.0
    # pixel centres: the box centre lands on the crop centre ((size - 1) / 2)
    m = np.array([[scale, 0.0, (size - 1) / 2.0 - scale * centre[0]],
                  [0.0, scale, (size - 1) / 2.0 - scale * centre[1]]])
    return _warp(img, m, size, border)


def _check_image(image, border: str) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"image must have shape (H, W, 3), received shape: {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, received dtype: {img.dtype}")
    if border not in ("replicate", "constant"):
        raise ValueError(f"border must be 'replicate' or 'constant', received: {border!r}")
    return img


def _warp(img: np.ndarray, m: np.ndarray, size: int, border: str) -> np.ndarray:
    """``cv2.warpAffine`` of ``img`` by the 2x3 similarity ``m`` into ``size x size``."""
    import cv2

    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:
        # A face much larger than the crop: shrink its region with area averaging first,
        # so the bilinear warp does not alias (skip pixels).
        img, m = _shrink_region(img, m, size, 2.0 * scale)
    mode = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_CONSTANT
    return cv2.warpAffine(np.ascontiguousarray(img), m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=mode, borderValue=(0, 0, 0))


def _shrink_region(img: np.ndarray, m: np.ndarray, size: int, factor: float):
    """Crop the image region that ``m`` maps into the output, resize it by ``factor`` (< 1) and
    return it with ``m`` re-expressed in its coordinates."""
    import cv2

    inv = cv2.invertAffineTransform(m)
    corners = transform_points(inv, [[0, 0], [size, 0], [0, size], [size, size]])
    h, w = img.shape[:2]
    x0 = int(max(0, np.floor(corners[:, 0].min()) - 2))
    y0 = int(max(0, np.floor(corners[:, 1].min()) - 2))
    x1 = int(min(w, np.ceil(corners[:, 0].max()) + 2))
    y1 = int(min(h, np.ceil(corners[:, 1].max()) + 2))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return img, m
    roi = img[y0:y1, x0:x1]
    new_w = max(1, int(round((x1 - x0) * factor)))
    new_h = max(1, int(round((y1 - y0) * factor)))
    small = cv2.resize(roi, (new_w, new_h), interpolation=cv2.INTER_AREA)
    fx = new_w / (x1 - x0)
    fy = new_h / (y1 - y0)
    # pixel centres: x_small + 0.5 = (x - x0 + 0.5) * fx, so x = (x_small + 0.5) / fx - 0.5 + x0
    back = np.array([[1.0 / fx, 0.0, 0.5 / fx - 0.5 + x0],
                     [0.0, 1.0 / fy, 0.5 / fy - 0.5 + y0],
                     [0.0, 0.0, 1.0]])
    return small, np.asarray(m, dtype=np.float64) @ back
