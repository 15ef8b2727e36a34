"""The folds of a pairs file: stratified k folds, and one fold written as its own pairs file."""

from __future__ import annotations

import numpy as np

from tripletface.evaluation.folds import stratified_folds, write_fold


def test_stratified_folds_deal_each_kind_round_robin_in_file_order():
    same = np.array([True] * 5 + [False] * 4)  # a pairs file lists its matched pairs first
    ids = stratified_folds(same, 2)
    assert ids.tolist() == [0, 1, 0, 1, 0, 0, 1, 0, 1]
    for k in (2, 3):  # every fold holds both kinds
        ids = stratified_folds(same, k)
        assert all(same[ids == f].any() and (~same[ids == f]).any() for f in range(k))


def test_write_fold_lists_only_identities_training_has(tmp_path):
    """A fold identity with no crop folder (no face found in any photo) is left off the exclusion
    list, which training would otherwise reject as naming an identity it doesn't have."""
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t1\nAnn\t1\t2\nBob\t1\tCyd\t1\n")
    cropped = tmp_path / "cropped"
    for name in ("Ann", "Cyd"):
        (cropped / name).mkdir(parents=True)
    n_pairs, n_ids = write_fold(pairs, 1, tmp_path / "fold.txt", tmp_path / "ids.txt", cropped=cropped)
    assert (n_pairs, n_ids) == (2, 3)  # the fold's identities: none of them trained on
    assert (tmp_path / "ids.txt").read_text().split() == ["Ann", "Cyd"]
    assert len((tmp_path / "fold.txt").read_text().splitlines()) == 3  # the pairs are all kept
    write_fold(pairs, 1, tmp_path / "fold.txt", tmp_path / "all.txt")
    assert (tmp_path / "all.txt").read_text().split() == ["Ann", "Bob", "Cyd"]
