"""Synthetic identities: P×K and triplet batches with no files."""

import numpy as np
import pytest

from tripletface.data.synthetic import make_synthetic_dataset, make_synthetic_triplet_dataset
from tripletface.errors import InputError

from crops_support import SIZE, take


def test_synthetic_batches_have_the_pk_structure_and_are_learnable():
    ds = make_synthetic_dataset(4, 3, SIZE, n_identities=8, seed=0)
    (images, labels), = take(ds, 1)
    assert images.shape == (12, *SIZE, 3) and images.dtype == np.float32 and labels.dtype == np.int32
    groups = labels.reshape(4, 3)
    assert (groups == groups[:, :1]).all() and len(set(groups[:, 0])) == 4
    assert images.min() >= 0 and images.max() <= 255
    flat = images.reshape(12, -1)
    d = np.linalg.norm(flat[:, None] - flat[None], axis=2)
    same = labels[:, None] == labels[None]
    off_diag = ~np.eye(12, dtype=bool)
    assert d[same & off_diag].mean() < 0.7 * d[~same].mean()
    (again, _), = take(make_synthetic_dataset(4, 3, SIZE, n_identities=8, seed=0), 1)
    np.testing.assert_array_equal(images, again)
    (trip, tl), = take(make_synthetic_triplet_dataset(5, SIZE, n_identities=8, seed=0), 1)
    assert trip.shape == (15, *SIZE, 3) and (tl[:5] == tl[5:10]).all() and (tl[10:] != tl[:5]).all()
    with pytest.raises(InputError, match="P=9"):
        make_synthetic_dataset(9, 2, SIZE, n_identities=8, seed=0)
