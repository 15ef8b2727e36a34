"""The one metric tripletface stores and reports, and the distances in it.

Embeddings are L2-normalised, and on unit vectors the squared Euclidean distance and
the cosine similarity are tied by ``||a - b||^2 = 2 - 2 cos(a, b)``. The map is strictly
monotone (decreasing in cos), so a cosine threshold and a Euclidean threshold make
*identical* decisions on every pair; only the number differs. We therefore store and
report one metric, :data:`METRIC` = ``"euclidean"``: the plain (not squared) L2 distance
between L2-normalised embeddings, in ``[0, 2]``. Convert with
:func:`cosine_to_euclidean` / :func:`euclidean_to_cosine`.

:func:`pair_distances` computes it row-wise for two embedding arrays with the very computation
:func:`tripletface.inference.matching.distance` makes for one pair (``compare``, the service),
so a pair scored by ``evaluate`` and compared alone gets the same number, bit for bit.
"""

from __future__ import annotations

import numpy as np

from tripletface.inference import matching

__all__ = ["METRIC", "METRIC_NOTE", "cosine_to_euclidean", "euclidean_to_cosine", "pair_distances"]

METRIC = "euclidean"
"""The one metric we store: L2 distance between L2-normalised embeddings (smaller = same)."""

METRIC_NOTE = (
    "On L2-normalised embeddings the squared Euclidean distance equals 2 - 2*cosine similarity, "
    "a strictly monotone map, so cosine and Euclidean thresholds make identical decisions. "
    "One metric is stored: 'euclidean' (L2 distance between L2-normalised embeddings, 0..2; "
    "a pair is 'same' when distance < threshold)."
)


def cosine_to_euclidean(cos):
    """Cosine similarity of unit vectors -> their L2 distance, ``sqrt(2 - 2 cos)`` (in [0, 2])."""
    cos = np.asarray(cos, dtype=np.float64)
    out = np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, 4.0))
    return float(out) if out.ndim == 0 else out


def euclidean_to_cosine(distance):
    """L2 distance of unit vectors -> their cosine similarity, ``1 - d^2 / 2``."""
    d = np.asarray(distance, dtype=np.float64)
    out = 1.0 - d * d / 2.0
    return float(out) if out.ndim == 0 else out


def pair_distances(emb_a, emb_b, normalize: bool = True) -> np.ndarray:
    """Row-wise :data:`METRIC` distance between two ``(n, dim)`` embedding arrays -> ``(n,)``.

    Rows are L2-normalised first unless ``normalize=False``. A row holding NaN (an image
    without an embedding) gives a NaN distance, which
    :func:`tripletface.evaluation.verification.score_with_failures` counts wrong.
    """
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"emb_a and emb_b must be (n, dim) arrays of one shape, received: {a.shape} and {b.shape}")
    if normalize:
        with np.errstate(invalid="ignore", divide="ignore"):
            a = a / np.linalg.norm(a, axis=1, keepdims=True)
            b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return matching.distance(a, b)
