"""Indexing a crop folder and the identity split, on real LFW crops."""

import shutil
from pathlib import Path

import pytest

from tripletface.data.index import index_folder, split_by_identity
from tripletface.errors import InputError

from crops_support import N_MULTI


def test_index_labels_match_folders_and_skip_non_images(index, crops):
    assert index.num_identities == N_MULTI + 2
    assert len(index.anchor_identities()) == N_MULTI
    assert sorted(index.names) == sorted(p.name for p in crops.iterdir())
    for path, label in zip(index.paths, index.labels):
        assert Path(path).parent.name == index.names[label]
        assert Path(path).suffix in (".png", ".jpg") and not Path(path).name.startswith(".")
    counts = index.counts()
    assert sorted(counts)[:3] == [1, 1, 2] and counts.sum() == len(index.paths)


def test_index_errors_are_one_line_and_name_the_problem(tmp_path, crops, index):
    with pytest.raises(InputError, match="does not exist"):
        index_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        index_folder(tmp_path / "empty")
    one = tmp_path / "one"
    shutil.copytree(crops / index.names[int(index.anchor_identities()[0])], one / "Only_Person")
    with pytest.raises(InputError, match=r"1 identity with 2 or more images") as err:
        index_folder(one)
    assert "\n" not in str(err.value)
    loose = tmp_path / "loose"
    loose.mkdir()
    for f in list((one / "Only_Person").iterdir())[:2]:
        shutil.copy(f, loose / f.name)
    with pytest.raises(InputError, match="one folder per identity"):
        index_folder(loose)


def test_split_is_identity_disjoint_deterministic_and_only_holds_out_multi_image_identities(index):
    train, val = split_by_identity(index, 0.3, seed=5)
    assert set(train.names).isdisjoint(val.names)
    assert set(train.names) | set(val.names) == set(index.names)
    assert val.num_identities == 3 and (val.counts() >= 2).all()
    assert len(train) + len(val) == len(index)
    # relabelled 0..m-1, labels still match the folders
    for sub in (train, val):
        assert set(sub.labels) == set(range(sub.num_identities))
        assert all(Path(p).parent.name == sub.names[l] for p, l in zip(sub.paths, sub.labels))
    again = split_by_identity(index, 0.3, seed=5)[1]
    assert again.names == val.names
    others = {split_by_identity(index, 0.3, seed=s)[1].names for s in range(6)}
    assert len(others) > 1
    train0, val0 = split_by_identity(index, 0.0, seed=5)
    assert len(val0) == 0 and train0 is index
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_identity(index, 1.0, seed=0)
    with pytest.raises(InputError, match="keep 2 for training"):
        split_by_identity(index, 0.9, seed=0)
