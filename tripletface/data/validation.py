"""Validation pairs and triplets drawn from the held-out identities of a training run.

:func:`make_val_pairs` gives matched and mismatched image pairs (the threshold is chosen on
them), :func:`make_val_triplets` anchor/positive/negative triplets, as index arrays into a
:class:`tripletface.data.index.FaceIndex`'s paths; both deterministic for a seed. (Pairs
read from an LFW ``pairs.txt`` file are :mod:`tripletface.data.pairs`.)
"""

from __future__ import annotations

import numpy as np

from tripletface.data.index import FaceIndex, check_index, identity_layout
from tripletface.data.pipeline import check_positive_int
from tripletface.errors import InputError

__all__ = ["make_val_pairs", "make_val_triplets"]


def _check_val_index(index: FaceIndex, what: str) -> None:
    check_index(index)
    if len(index.anchor_identities()) < 1 or index.num_identities < 2:
        raise InputError(f"validation {what} need an identity with 2+ images and another identity; "
                         f"the validation data has {index.describe()}")


def _unique_draws(draw, n: int, rng) -> list[tuple[int, int]]:
    """``n`` draws of ``draw(rng) -> (a, b)``, avoiding repeats while that is possible."""
    seen, out = set(), []
    attempts = 0
    while len(out) < n:
        a, b = draw(rng)
        attempts += 1
        pair = (min(a, b), max(a, b))
        if pair in seen and attempts < 50 * n:
            continue
        seen.add(pair)
        out.append((a, b))
    return out


def make_val_pairs(index: FaceIndex, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_pairs`` image pairs, ``n_pairs // 2`` matched and the rest mismatched, in random order.

    Matched: an identity with 2+ images drawn uniformly, two different images of it.
    Mismatched: two different identities drawn uniformly, one image of each. Pairs are
    not repeated while enough distinct ones exist. Deterministic for a seed.

    Returns:
        ``(idx_a, idx_b, same)``: int64 indices into ``index.paths`` and a bool array.
    """
    _check_val_index(index, "pairs")
    n_pairs = check_positive_int("n_pairs", n_pairs)
    rng = np.random.default_rng(seed)
    order, starts, counts = identity_layout(index)
    anchors = index.anchor_identities()
    n_ids = index.num_identities

    def matched(r):
        ident = anchors[r.integers(len(anchors))]
        a, b = r.choice(counts[ident], size=2, replace=False)
        return int(order[starts[ident] + a]), int(order[starts[ident] + b])

    def mismatched(r):
        i, j = r.choice(n_ids, size=2, replace=False)
        return (int(order[starts[i] + r.integers(counts[i])]), int(order[starts[j] + r.integers(counts[j])]))

    n_same = n_pairs // 2
    pairs = _unique_draws(matched, n_same, rng) + _unique_draws(mismatched, n_pairs - n_same, rng)
    same = np.array([True] * n_same + [False] * (n_pairs - n_same))
    perm = rng.permutation(n_pairs)
    pairs_arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)[perm]
    return pairs_arr[:, 0], pairs_arr[:, 1], same[perm]


def make_val_triplets(index: FaceIndex, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` triplets ``(anchor, positive, negative)`` of indices into ``index.paths``.

    Sampled as in :func:`tripletface.data.samplers.make_triplet_dataset` (negative never of
    the anchor's identity); deterministic for a seed.
    """
    _check_val_index(index, "triplets")
    n = check_positive_int("n", n)
    rng = np.random.default_rng(seed)
    order, starts, counts = identity_layout(index)
    anchors = index.anchor_identities()
    n_images = len(index)
    out = np.zeros((n, 3), np.int64)
    for row in range(n):
        ident = anchors[rng.integers(len(anchors))]
        a, p = rng.choice(counts[ident], size=2, replace=False)
        neg = rng.integers(n_images - counts[ident])
        if neg >= starts[ident]:
            neg += counts[ident]
        out[row] = (order[starts[ident] + a], order[starts[ident] + p], order[neg])
    return out[:, 0], out[:, 1], out[:, 2]
