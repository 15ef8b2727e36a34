"""The match decision on embeddings: their distance, the threshold it is held against, and
:func:`verify` -- are two photos of the same person?

Producing embeddings is :mod:`tripletface.inference.embedder`; this module only compares them.
The one metric tripletface stores is the Euclidean distance between L2-normalised embeddings
(in [0, 2]); two faces are the same person when their distance is under the threshold stored
in the model (chosen by training or ``tripletface calibrate``).

Example::

    r = verify("a.jpg", "b.jpg")                    # the bundled model
    r["distance"], r["threshold"], r["verdict"]     # 0.71, 0.93, "same"
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["distance", "check_threshold", "verify"]


def check_threshold(value, name: str = "--threshold") -> float:
    """A decision threshold as a float: finite and >= 0 (distances are in [0, 2])."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not math.isfinite(t) or t < 0:
        from tripletface.errors import InputError

        raise InputError(f"{name} must be a finite number >= 0, received: {value!r}")
    return t


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance between L2-normalised embeddings (the one metric tripletface stores).

    A NaN row (an image without an embedding) gives a NaN distance.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return np.sqrt(np.maximum(np.sum((a - b) ** 2, axis=-1), 0.0))


def _is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def _check_photo(x, name: str) -> np.ndarray:
    """An image path or an ``(H, W, 3)`` uint8 RGB array; anything else is a ``ValueError`` naming it."""
    if isinstance(x, np.ndarray) and x.ndim == 3 and x.shape[-1] == 3 and x.dtype == np.uint8 and min(x.shape[:2]):
        return x
    received = f"array of shape {x.shape} dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
    raise ValueError(f"{name} must be an image path or an (H, W, 3) uint8 RGB array, received: {received}")


def _embed_pair(embedder, a, b, aligned: bool) -> np.ndarray:
    """(2, D) embeddings of ``a`` and ``b``; the first that yields none raises its error
    (:class:`~tripletface.errors.ImageError` or :class:`~tripletface.errors.NoFaceError`).

    Paths go through :meth:`Embedder.embed_files` together, as ``tripletface compare`` sends them;
    arrays through the model's cropper (unless ``aligned``), then :meth:`Embedder.embed_aligned`.
    """
    from tripletface.data.decode import check_image_file
    from tripletface.inference.embedder import Failure, resize_images

    inputs = {"a": a, "b": b}
    row = {"a": 0, "b": 1}
    paths = [n for n, x in inputs.items() if _is_path(x)]
    for n in paths:
        check_image_file(inputs[n])
    arrays = {n: _check_photo(x, n) for n, x in inputs.items() if n not in paths}
    out = np.full((2, embedder.dim), np.nan, np.float32)
    failed = {}
    if paths:
        vectors, failures = embedder.embed_files([inputs[n] for n in paths], aligned=aligned)
        failed.update(zip([n for n, v in zip(paths, vectors) if not np.all(np.isfinite(v))], failures))
        out[[row[n] for n in paths]] = vectors  # failures in input order, their rows NaN
    faces = dict(arrays)
    if arrays and not aligned:
        for n, r in zip(arrays, embedder.cropper.process(list(arrays.values()))):
            if r.ok:
                faces[n] = r.aligned
            else:
                del faces[n]
                failed[n] = Failure(f"{n} (array)", r.status, r.reason or r.status)
    if faces:
        batch = np.stack([resize_images(f[None], embedder.image_size)[0] for f in faces.values()])
        out[[row[n] for n in faces]] = embedder.embed_aligned(batch)
    for n in ("a", "b"):
        if n in failed:
            raise failed[n].error()
    return out


def verify(a, b, model=None, threshold: float | None = None, aligned: bool = False) -> dict:
    """Are ``a`` and ``b`` photos of the same person? The decision ``tripletface compare`` makes.

    Args:
        a, b: image paths, or ``(H, W, 3)`` uint8 RGB arrays of photos (aligned crops with
            ``aligned=True``). Faces are detected and aligned with the model's own settings.
        model: a ``.keras`` path, an :class:`~tripletface.inference.embedder.Embedder` (load it
            once to verify many pairs), or ``None`` for the bundled model.
        threshold: the decision threshold; ``None`` = the one stored in the model.
        aligned: the inputs are aligned crops: skip detection.

    Returns:
        A dict: ``distance`` (Euclidean, on L2-normalised embeddings), ``threshold``,
        ``threshold_source``, ``metric``, ``verdict`` (``"same"`` when ``distance < threshold``,
        else ``"different"``), ``same`` (bool) and ``model``.

    Raises:
        ImageError / NoFaceError naming the first input that yields no embedding (no verdict is
        ever given without two faces); ModelError when no threshold is given and the model stores
        none; ValueError for an input that is neither a path nor an image array.
    """
    from tripletface.inference.embedder import Embedder

    embedder = model if isinstance(model, Embedder) else Embedder.load(None if model is None else str(model))
    threshold, source = embedder.decision_threshold(threshold)  # before any work
    vectors = _embed_pair(embedder, a, b, aligned)
    d = float(distance(vectors[0], vectors[1]))
    same = d < threshold
    return {"distance": d, "threshold": float(threshold), "threshold_source": source,
            "metric": str(embedder.metadata.get("metric", "euclidean")), "verdict": "same" if same else "different",
            "same": bool(same), "model": embedder.name}
