"""The folds of a pairs file: k stratified folds for k-fold accuracy, and one fold written apart.

:func:`stratified_folds` deals matched and mismatched pairs into k folds when ``evaluate --folds``
asks for k, or the pairs file defines none; :func:`write_fold` writes one fold of a file's own
folds as a pairs file of its own, with the identities it names as a list training excludes (the
demo and docs/RECIPE.md hold fold 1 out this way).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tripletface.errors import InputError

__all__ = ["stratified_folds", "write_fold"]


def stratified_folds(same: np.ndarray, k: int) -> np.ndarray:
    """Fold ids that deal matched and mismatched pairs round-robin into k folds, in file order, so that
    every fold mixes both kinds like LFW's (a file lists its matched pairs first: contiguous folds would not)."""
    # Not sklearn.model_selection.StratifiedKFold(k, shuffle=False): it also balances the two kinds,
    # but cuts each kind into k contiguous blocks instead of dealing it round-robin. On the labels
    # of the shared data's lfw-dev-pairs.txt (3000 pairs, 1500 matched) it puts 2700 of the 3000
    # pairs in another fold than this at k=10 (2400 at k=5, 1500 at k=2), with the same fold
    # sizes: every `evaluate --folds k` figure published so far would change.
    ids = np.empty(len(same), np.int64)
    for kind in (True, False):
        rows = np.flatnonzero(same == kind)
        ids[rows] = np.arange(len(rows)) % k
    return ids


def write_fold(pairs_file: Path, fold: int, out_pairs: Path, out_identities: Path,
               cropped: Path | None = None) -> tuple[int, int]:
    """Write the held-out fold as its own pairs file and its identities as an exclusion list.

    With ``cropped`` (the crop folder training reads), the list keeps only the identities that have
    a folder there: one whose every photo had no face found is in no training folder, so it can't
    leak, and training rejects a list naming an identity it doesn't have (a typo must not pass).
    Returns the fold's numbers of pairs and of identities (all of them never trained on)."""
    from tripletface.data.pairs import read_pairs

    pairs = read_pairs(pairs_file)
    folds = sorted({p.fold for p in pairs})
    if fold < 1 or fold > len(folds):
        raise InputError(f"--holdout-fold must be in 1..{len(folds)}, received: {fold}")
    sel = [p for p in pairs if p.fold == folds[fold - 1]]
    matched = [p for p in sel if p.same]
    mismatched = [p for p in sel if not p.same]
    lines = [f"1\t{len(matched)}"]
    lines += [f"{p.name_a}\t{p.idx_a}\t{p.idx_b}" for p in matched]
    lines += [f"{p.name_a}\t{p.idx_a}\t{p.name_b}\t{p.idx_b}" for p in mismatched]
    out_pairs.write_text("\n".join(lines) + "\n")
    names = sorted({p.name_a for p in sel} | {p.name_b for p in sel})
    listed = names if cropped is None else [n for n in names if (cropped / n).is_dir()]
    out_identities.write_text("\n".join(listed) + "\n")
    return len(sel), len(names)
