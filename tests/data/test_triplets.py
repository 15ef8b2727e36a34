"""Triplets files: parsing, errors naming the file and line, and the dataset of their triplets."""

import os
from pathlib import Path

import numpy as np
import pytest

from tripletface.data.images import load_images
from tripletface.data.index import split_by_identity
from tripletface.data.triplets import make_triplets_file_dataset, read_triplets_file
from tripletface.errors import InputError

from crops_support import NO_AUG, SIZE, take


def _write_triplets(path: Path, index, rows_extra=(), header=True):
    by = {}
    for pth, l in zip(index.paths, index.labels):
        by.setdefault(int(l), []).append(os.path.relpath(pth, index.root))
    multi = [l for l in by if len(by[l]) >= 2]
    lines = ["anchor,positive,negative"] if header else []
    for i, l in enumerate(multi):
        other = multi[(i + 1) % len(multi)]
        lines.append(f"{by[l][0]},{by[l][1]},{by[other][0]}")
    lines.extend(rows_extra)
    path.write_text("\n".join(lines) + "\n")
    return len(multi)


def test_triplets_file_parsing_and_dataset(tmp_path, index):
    f = tmp_path / "triplets.csv"
    n = _write_triplets(f, index)
    triplets = read_triplets_file(f, root=index.root)
    assert len(triplets) == n and all(len(t) == 3 for t in triplets)
    assert read_triplets_file(f, root=index.root) == triplets
    g = tmp_path / "noheader.csv"
    _write_triplets(g, index, header=False)
    assert read_triplets_file(g, root=index.root) == triplets

    ds = make_triplets_file_dataset(triplets, 4, SIZE, NO_AUG, seed=0, index=index)
    for images, labels in take(ds, 3):
        assert images.shape == (12, *SIZE, 3)
        assert (labels[:4] == labels[4:8]).all() and (labels[8:] != labels[:4]).all()
    # one ordered pass without augmentation == the files through the eval path
    once = list(make_triplets_file_dataset(triplets, 4, SIZE, None, index=index, repeat=False))
    assert sum(len(l) for _, l in once) == 3 * n
    first_images, _ = once[0]
    expected = load_images([triplets[0][0], triplets[0][1], triplets[0][2]], SIZE)
    np.testing.assert_array_equal(first_images.numpy()[[0, 4, 8]], expected)
    # an index without some identities drops their triplets (no leakage from validation)
    train, val = split_by_identity(index, 0.3, seed=1)
    kept = list(make_triplets_file_dataset(triplets, 2, SIZE, None, index=train, repeat=False))
    assert 0 < sum(len(l) for _, l in kept) < 3 * n


@pytest.mark.parametrize("line, message", [
    ("a.png,b.png", r":\d+: expected 3 comma-separated image paths"),
    ("x/missing.png,x/missing2.png,y/z.png", r":\d+: anchor image not found"),
])
def test_bad_triplets_file_names_file_and_line(tmp_path, index, line, message):
    f = tmp_path / "bad.csv"
    n = _write_triplets(f, index, rows_extra=[line])
    with pytest.raises(InputError, match=rf"bad\.csv:{n + 2}: " + message.split(":", 2)[-1].lstrip(r"\d+: ")):
        read_triplets_file(f, root=index.root)


def test_triplets_file_identity_errors(tmp_path, index):
    ident = int(index.anchor_identities()[0])
    mine = [os.path.relpath(p, index.root) for p, l in zip(index.paths, index.labels) if l == ident]
    a, b = mine[:2]
    other = next(os.path.relpath(p, index.root) for p, l in zip(index.paths, index.labels) if l != ident)
    f = tmp_path / "t.csv"
    f.write_text(f"{a},{b},{b}\n")
    with pytest.raises(InputError, match=r"t\.csv:1: negative is from the anchor's identity"):
        read_triplets_file(f, root=index.root)
    f.write_text(f"{a},{other},{b}\n")
    with pytest.raises(InputError, match=r"t\.csv:1: anchor and positive are in different identity folders"):
        read_triplets_file(f, root=index.root)
    with pytest.raises(InputError, match="does not exist"):
        read_triplets_file(tmp_path / "none.csv", root=index.root)
