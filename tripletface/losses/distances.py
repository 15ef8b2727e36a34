"""Pairwise distances between embeddings: the first stage of the loss stack.

distance -> miner -> per-triplet loss -> reduction. Every distance here returns a
float32 matrix whatever dtype the embeddings arrive in (float16/bfloat16 under mixed
precision), and says which way it runs: ``is_inverted = False`` means *smaller is
closer* (a distance); a similarity (larger is closer) would set it to True. Mining and
the per-triplet loss only ever see :meth:`Distance.oriented` values, so any distance or
similarity goes through the same code path (the idea of pytorch-metric-learning's
``BaseDistance.is_inverted``).

Example::

    d = get_distance("l2")
    m = d.pairwise(emb)          # (B, B), diagonal exactly 0
    x = d.pairwise(emb, memory)  # (B, M)
    r = d.paired(a, b)           # (B,), row i against row i

Only ``keras.ops`` is used (portable across Keras backends).
"""

from __future__ import annotations

from keras import ops

__all__ = [
    "Distance",
    "SquaredL2Distance",
    "L2Distance",
    "CosineDistance",
    "DISTANCES",
    "get_distance",
    "safe_sqrt",
]

# Floor for squared norms when normalising (a zero vector stays zero, no division by 0).
_NORM_EPS = 1e-12


def _float32(x):
    return ops.cast(ops.convert_to_tensor(x), "float32")


def safe_sqrt(x):
    """sqrt with value 0 *and gradient 0* where ``x <= 0`` (plain sqrt has an infinite
    gradient at 0, which turns into NaN once multiplied by a zero upstream gradient).

    The double ``where`` keeps the infinite branch out of the backward pass.
    """
    positive = ops.greater(x, 0.0)
    return ops.where(positive, ops.sqrt(ops.where(positive, x, ops.ones_like(x))), ops.zeros_like(x))


def _normalize_rows(x):
    sq = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x * ops.rsqrt(ops.maximum(sq, _NORM_EPS))


class Distance:
    """Base class. Subclasses implement ``_matrix(x, y)`` and ``_paired(x, y)`` on float32.

    Attributes:
        name: the config name (``loss.distance``).
        is_inverted: False for distances (smaller = closer), True for similarities.
    """

    name = "distance"
    is_inverted = False

    def pairwise(self, x, y=None):
        """(N, D), (M, D) -> (N, M) float32. With ``y`` omitted, ``x`` against itself,
        and then the diagonal (self-pairs) is exactly 0 for a distance."""
        x = _float32(x)
        if y is None:
            m = self._matrix(x, x)
            if not self.is_inverted:
                n = ops.shape(x)[0]
                eye = ops.equal(ops.arange(n)[:, None], ops.arange(n)[None, :])
                m = ops.where(eye, ops.zeros_like(m), m)
            return m
        return self._matrix(x, _float32(y))

    def paired(self, x, y):
        """(B, D), (B, D) -> (B,) float32: row i of ``x`` against row i of ``y``."""
        return self._paired(_float32(x), _float32(y))

    def __call__(self, x, y=None):
        return self.pairwise(x, y)

    def oriented(self, values):
        """Values as 'smaller is closer' (negated for a similarity). Its own inverse."""
        return -values if self.is_inverted else values

    def from_euclidean(self, d):
        """This distance between unit vectors that lie ``d`` apart in Euclidean distance (NumPy).

        Monotone in ``d``: a Euclidean threshold (the one a model stores) maps to the threshold
        that makes the same decisions in this distance's units (the margin's units).
        """
        raise NotImplementedError

    def _matrix(self, x, y):
        raise NotImplementedError

    def _paired(self, x, y):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class SquaredL2Distance(Distance):
    """||x - y||^2, via ||x||^2 + ||y||^2 - 2 x.y (one matmul), clipped at 0."""

    name = "squared_l2"

    def _matrix(self, x, y):
        xx = ops.sum(ops.square(x), axis=1, keepdims=True)
        yy = ops.sum(ops.square(y), axis=1)[None, :]
        return ops.maximum(xx + yy - 2.0 * ops.matmul(x, ops.transpose(y)), 0.0)

    def _paired(self, x, y):
        return ops.sum(ops.square(x - y), axis=-1)

    def from_euclidean(self, d):
        import numpy as np

        return np.square(np.asarray(d, np.float64))


class L2Distance(Distance):
    """||x - y||, with a safe sqrt: a zero distance has gradient 0, never NaN."""

    name = "l2"

    def _matrix(self, x, y):
        return safe_sqrt(SquaredL2Distance()._matrix(x, y))

    def _paired(self, x, y):
        return safe_sqrt(SquaredL2Distance()._paired(x, y))

    def from_euclidean(self, d):
        import numpy as np

        return np.asarray(d, np.float64)


class CosineDistance(Distance):
    """1 - cos(x, y), in [0, 2]; rows are normalised first (a zero row counts as distance 1)."""

    name = "cosine"

    def _matrix(self, x, y):
        cos = ops.matmul(_normalize_rows(x), ops.transpose(_normalize_rows(y)))
        return ops.maximum(1.0 - cos, 0.0)

    def _paired(self, x, y):
        cos = ops.sum(_normalize_rows(x) * _normalize_rows(y), axis=-1)
        return ops.maximum(1.0 - cos, 0.0)

    def from_euclidean(self, d):
        import numpy as np

        return np.square(np.asarray(d, np.float64)) / 2.0  # ||x - y||^2 = 2 - 2 cos for unit vectors


DISTANCES = {cls.name: cls for cls in (SquaredL2Distance, L2Distance, CosineDistance)}


def get_distance(distance) -> Distance:
    """A :class:`Distance` from its name (``squared_l2`` | ``l2`` | ``cosine``) or as is."""
    if isinstance(distance, Distance):
        return distance
    if isinstance(distance, str) and distance in DISTANCES:
        return DISTANCES[distance]()
    raise ValueError(f"distance must be one of {'|'.join(DISTANCES)}, received: {distance!r}")
