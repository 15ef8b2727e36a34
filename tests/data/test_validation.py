"""Validation pairs and triplets drawn from held-out identities."""

import numpy as np

from tripletface.data.validation import make_val_pairs, make_val_triplets


def test_val_pairs_half_matched_and_correct(index):
    a, b, same = make_val_pairs(index, 40, seed=4)
    assert len(a) == len(b) == len(same) == 40 and same.sum() == 20
    labels = index.labels
    np.testing.assert_array_equal(labels[a] == labels[b], same)
    assert (a[same] != b[same]).all()
    assert not (same[:20].all() and not same[20:].any()), "pairs are shuffled, not blocked"
    again = make_val_pairs(index, 40, seed=4)
    for x, y in zip((a, b, same), again):
        np.testing.assert_array_equal(x, y)
    t_a, t_p, t_n = make_val_triplets(index, 30, seed=4)
    assert (labels[t_a] == labels[t_p]).all() and (t_a != t_p).all() and (labels[t_n] != labels[t_a]).all()
