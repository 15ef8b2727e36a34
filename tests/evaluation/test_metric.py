"""The one metric stored: Euclidean on L2-normalised embeddings, its cosine twin, and the
row-wise distances evaluate scores (the same numbers compare gets for one pair)."""

from __future__ import annotations

import numpy as np
import pytest

from tripletface.evaluation import metric as M


def test_cosine_and_euclidean_decide_alike():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16))
    b = a + rng.normal(scale=1.0, size=a.shape)
    d = M.pair_distances(a, b)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = (an * bn).sum(1)
    np.testing.assert_allclose(d, np.linalg.norm(an - bn, axis=1))
    np.testing.assert_allclose(d**2, 2 - 2 * cos, atol=1e-12)
    np.testing.assert_allclose(M.euclidean_to_cosine(d), cos, atol=1e-12)
    np.testing.assert_allclose(M.cosine_to_euclidean(cos), d, atol=1e-7)
    for c in (0.0, 0.3, 0.6):
        assert np.array_equal(cos > c, d < M.cosine_to_euclidean(c))
    assert M.cosine_to_euclidean(1.0) == 0.0 and M.cosine_to_euclidean(-1.0) == pytest.approx(2.0)
    a[0] = np.nan
    assert np.isnan(M.pair_distances(a, b)[0])


def test_pair_distances_are_bit_for_bit_the_distance_compare_uses():
    from tripletface.inference.matching import distance

    rng = np.random.default_rng(1)
    a = rng.normal(size=(200, 32)).astype(np.float32)
    b = rng.normal(size=(200, 32)).astype(np.float32)
    a[3] = np.nan
    d = M.pair_distances(a, b, normalize=False)
    assert np.array_equal(d, distance(a, b), equal_nan=True)
    assert [float(distance(a[i], b[i])) for i in (0, 7)] == [float(d[0]), float(d[7])]
    with pytest.raises(ValueError, match="same shape|one shape"):
        M.pair_distances(a, b[:10])
