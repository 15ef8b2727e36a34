"""LFW-protocol verification and the original triplet metrics of an embedding model on a folder.

:func:`evaluate_pairs` (an LFW pairs file): k-fold accuracy with the threshold chosen on the
other folds (mean and std), AUC, EER, TAR at FAR 1e-3 / 1e-2
(:mod:`tripletface.evaluation.verification`), and ``unscored_pairs``: pairs with an image that
could not be embedded (missing, unreadable, no face), which are scored as wrong, never dropped.
:func:`evaluate_triplets` (a CSV of anchor,positive,negative paths, the original design's
TEST_TRIPLETS): triplet loss, and precision and recall at the model's stored threshold
(``triplet_optimistic_*``: at the threshold picked on the triplets themselves, optimistic).

Embedding (:class:`tripletface.inference.embedder.Embedder`) is separate from scoring: each distinct
image is embedded once, then the distances are scored. :func:`write_results` writes the report
folder (pages and plots by :mod:`tripletface.evaluation.report`, ``metrics.json``,
``failures.jsonl``). The command is :mod:`tripletface.cli.evaluate`.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from tripletface.errors import ImageError, InputError, os_error
from tripletface.evaluation.folds import stratified_folds

__all__ = ["pair_files", "evaluate_pairs", "evaluate_triplets", "read_triplets_csv", "explain_missing",
           "check_report_dir", "write_failures", "write_results"]


# --------------------------------------------------------------------------- embedding


def _embed_table(embedder, paths, aligned: bool, progress: bool = True, data_dir=None) -> tuple[dict, list]:
    """Embed each distinct file once -> ({path: vector, NaN when it failed}, failures).

    With ``data_dir`` (a ``crop`` output), a file missing because ``crop`` found no face in
    its photo is reported with the crop manifest's status and reason (:func:`explain_missing`).
    """
    uniq = list(dict.fromkeys(str(p) for p in paths))
    vectors, failures = embedder.embed_files(uniq, aligned=aligned, progress=progress)
    if data_dir is not None:
        failures = explain_missing(failures, data_dir)
    return {p: vectors[i] for i, p in enumerate(uniq)}, failures


def _crop_manifests(data_dir: Path) -> list[Path]:
    """The crop manifests describing ``data_dir``: its own, else its parent's when it is a
    ``train``/``test`` split folder of a crop output."""
    for folder in (data_dir, data_dir.parent if data_dir.name in ("train", "test") else None):
        if folder is None:
            continue
        found = sorted(folder.glob("manifest*.jsonl"))
        if found:
            return found
    return []


def explain_missing(failures: list, data_dir) -> list:
    """Failures of files that are ``missing`` from a crop output, given the crop manifest's reason.

    A pair image absent from ``crop``'s output is absent because crop did not crop its photo
    (``no_face``, ``too_small``, an unreadable source, ...): that status and reason replace
    "file not found". The manifest's ``source`` is matched by its path without extension
    (``Saeb_Erekat/Saeb_Erekat_0002``). Other failures, and files the manifest says were
    cropped, are kept as they are.
    """
    from tripletface.faces.manifest import read_manifest
    from tripletface.inference.embedder import Failure

    missing = [f for f in failures if f.status == "missing"]
    data_dir = Path(data_dir)
    manifests = _crop_manifests(data_dir) if missing else []
    if not manifests:
        return failures
    rows: dict[str, tuple[dict, Path]] = {}
    for m in manifests:
        for row in read_manifest(m):
            rows[Path(row["source"]).with_suffix("").as_posix()] = (row, m)
    out = []
    for f in failures:
        found = None
        if f.status == "missing":
            try:
                key = Path(f.path).relative_to(data_dir).with_suffix("").as_posix()
            except ValueError:
                key = None
            found = rows.get(key) if key else None
        if found is None or found[0].get("status") == "ok":
            out.append(f)
            continue
        row, manifest = found
        reason = row.get("reason") or row["status"]
        out.append(Failure(f.path, str(row["status"]),
                           f"{reason} (not cropped: {manifest} has status {row['status']} for {row['source']})"))
    return out


def pair_files(data_dir, pairs) -> list[tuple[Path, Path]]:
    """The two files of each pair; a missing image is given its ``.jpg`` path (it then fails as missing)."""
    from tripletface.data import pairs as P

    cache: dict = {}

    def find(name, i):
        if (name, i) not in cache:
            try:
                cache[(name, i)] = P.image_path(data_dir, name, i)
            except ImageError:
                cache[(name, i)] = P.image_path(data_dir, name, i, ext="jpg")
        return cache[(name, i)]

    return [(find(p.name_a, p.idx_a), find(p.name_b, p.idx_b)) for p in pairs]


def evaluate_pairs(embedder, data_dir, pairs_file, aligned: bool = False, folds: int | None = None,
                   far_targets=(1e-3, 1e-2), progress: bool = True,
                   default_folds: int = 10) -> tuple[dict, np.ndarray, np.ndarray, list]:
    """Verification metrics of ``embedder`` on an LFW pairs file.

    Returns ``(metrics, distances, issame, failures)``: ``distances`` per pair (NaN where an
    image failed), ``failures`` the :class:`~tripletface.inference.embedder.Failure` of each image that
    could not be embedded. ``metrics`` holds :func:`tripletface.evaluation.verification.verification_metrics`
    (``n_unscored`` renamed ``unscored_pairs``) plus ``failed_images``, ``folds_from`` and, when
    the model stores a threshold, ``model_threshold`` and ``model_threshold_accuracy``. Folds:
    ``folds`` when given, else the pairs file's, else ``default_folds`` (``eval.folds``).
    """
    from tripletface.data import pairs as P
    from tripletface.evaluation import verification as V
    from tripletface.inference.matching import distance

    pairs = P.read_pairs(pairs_file)
    if folds is not None and not 2 <= folds <= len(pairs):  # before the embedding, which takes the time
        raise InputError(f"--folds must be in [2, {len(pairs)}] (the number of pairs), received: {folds}")
    same = np.array([p.same for p in pairs], bool)
    fold_ids = np.array([p.fold for p in pairs])
    if same.all() or not same.any():
        raise InputError(f"{pairs_file}: needs matched and mismatched pairs, found {int(same.sum())} matched "
                         f"and {int((~same).sum())} mismatched")
    # every fold needs a pair of each kind: at most as many folds as the rarer kind has pairs
    k_max = int(min(same.sum(), (~same).sum()))
    if folds is not None:
        if folds > k_max:
            raise InputError(f"--folds {folds}: {pairs_file} has only {k_max} pairs of its rarer kind (matched or "
                             f"mismatched), and every fold needs one of each; use --folds {k_max} or fewer")
        kw, folds_from = {"folds": None, "fold_ids": stratified_folds(same, folds)}, f"{folds} folds (--folds)"
    elif len(np.unique(fold_ids)) >= 2:
        kw, folds_from = {"folds": None, "fold_ids": fold_ids}, "the pairs file"
    else:
        k = min(default_folds, k_max)
        if k < 2:
            raise InputError(f"{pairs_file}: k-fold accuracy needs at least 2 matched and 2 mismatched pairs, found "
                             f"{int(same.sum())} matched and {int((~same).sum())} mismatched")
        kw, folds_from = {"folds": None, "fold_ids": stratified_folds(same, k)}, f"{k} folds (eval.folds; the pairs file has one)"
    files = pair_files(data_dir, pairs)  # the folds are settled before the embedding, which takes the time
    table, failures = _embed_table(embedder, [f for ab in files for f in ab], aligned, progress, data_dir)
    d = np.array([distance(table[str(a)], table[str(b)]) for a, b in files], np.float64)
    m = V.verification_metrics(d, same, far_targets=tuple(far_targets), **kw)
    m["unscored_pairs"] = m.pop("n_unscored")
    m["failed_images"] = len(failures)
    m["folds_from"] = folds_from
    if embedder.metadata.get("threshold") is not None:
        t = embedder.threshold
        filled, _ = V.score_with_failures(d, same)
        m["model_threshold"] = t
        m["model_threshold_source"] = str(embedder.metadata.get("threshold_source") or "stored in the model")
        m["model_threshold_accuracy"] = V.accuracy_at(filled, same, t)
    return m, d, same, failures


# --------------------------------------------------------------------------- triplets


def read_triplets_csv(path, data_dir) -> list[tuple[Path, Path, Path]]:
    """``anchor,positive,negative`` rows -> paths (relative ones under ``data_dir``).

    A first row without image file names is a header; blank rows and ``#`` comments are
    skipped. Images are not checked here: a missing one makes its triplet unscored.
    """
    from tripletface.data.decode import is_image_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: triplets file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read triplets file ({e})") from None
    rows, first = [], True
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if first:
            first = False
            if not any(is_image_file(c) for c in cells):
                continue  # header
        if len(cells) != 3 or not all(cells):
            raise InputError(f"{path}:{n}: expected 3 columns anchor,positive,negative, found {len(cells)}")
        rows.append(tuple(Path(c) if os.path.isabs(c) else Path(data_dir) / c for c in cells))
    if not rows:
        raise InputError(f"{path}: no triplets")
    return rows


def evaluate_triplets(embedder, data_dir, triplets_file, aligned: bool = False, margin: float | None = None,
                      distance_kind: str | None = None, progress: bool = True) -> tuple[dict, list]:
    """The original design's test metrics (triplet loss, precision, recall) on a triplets CSV.

    Distances are the model's training loss distance (``config.loss.distance`` in its
    metadata, default squared L2, computed by :mod:`tripletface.losses.distances`) with its
    margin unless ``margin`` is given. Precision and recall are those of the model's stored
    threshold (None for a model without one); ``triplet_optimistic_*`` are at the threshold
    picked on these triplets themselves (optimistic). Triplets with an image that could not be
    embedded are counted in ``unscored_triplets`` and left out of these means (a loss has no
    value for them). Returns ``(metrics, failures)``.
    """
    from keras import ops

    from tripletface.evaluation import verification as V
    from tripletface.losses import get_distance

    loss_cfg = (embedder.metadata.get("config") or {}).get("loss") or {}
    margin = float(loss_cfg.get("margin", 0.2) if margin is None else margin)
    kind = distance_kind or str(loss_cfg.get("distance", "squared_l2"))
    dist = get_distance(kind)
    trip = read_triplets_csv(triplets_file, data_dir)
    table, failures = _embed_table(embedder, [x for t in trip for x in t], aligned, progress, data_dir)
    ok = [t for t in trip if all(np.all(np.isfinite(table[str(x)])) for x in t)]
    if not ok:
        raise InputError(f"{triplets_file}: no triplet could be embedded ({len(failures)} images failed)")
    a, p, n = (np.stack([table[str(t[i])] for t in ok]) for i in range(3))
    d_ap = ops.convert_to_numpy(dist.paired(a, p))
    d_an = ops.convert_to_numpy(dist.paired(a, n))
    stored = embedder.threshold
    tm = V.triplet_metrics(d_ap, d_an, margin, threshold=None if stored is None else dist.from_euclidean(stored))
    return {"triplets": len(trip), "unscored_triplets": len(trip) - len(ok), "triplet_margin": margin,
            "triplet_distance": kind,
            "triplet_threshold_source": (str(embedder.metadata.get("threshold_source") or "stored in the model")
                                         if stored is not None else "none: the model stores no threshold"),
            **{f"triplet_{k}": v for k, v in tm.items()}}, failures


# --------------------------------------------------------------------------- the report folder


def check_report_dir(rdir: Path) -> None:
    """Create ``rdir`` and try a file in it: :class:`OutputError` (or disk full) now, naming it."""
    import tempfile

    try:
        rdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=rdir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise os_error(e, "the report folder") from None


def write_failures(path: Path, failures) -> None:
    """``failures.jsonl``: one :class:`~tripletface.inference.embedder.Failure` a line, as JSON."""
    with open(path, "w", encoding="utf-8") as f:
        for fl in failures:
            f.write(json.dumps(fl.to_dict()) + "\n")


def write_results(rdir: Path, metrics: dict, extra: dict, failures: list, title: str, distances=None, issame=None,
                  pair_files=None) -> dict:
    """Write an evaluation's report folder -> ``{name: path}``.

    With the pairs' ``distances`` and ``issame``: the full report of
    :func:`tripletface.evaluation.report.write_report` (its threshold line is the model's stored
    threshold when it has one; ``pair_files`` gives the hardest errors their thumbnails); without
    them (triplets only): ``metrics.json`` holding ``metrics`` and ``extra``. Then
    ``failures.jsonl`` (:func:`write_failures`). A write that fails is a one-line
    :class:`~tripletface.errors.OutputError` (or disk full) naming the folder.
    """
    from tripletface.evaluation.report import to_jsonable, write_report

    try:
        if distances is not None:
            t = metrics.get("model_threshold")
            paths = write_report(rdir, metrics, distances, issame, title=title, extra=extra, threshold=t,
                                 pair_files=pair_files, threshold_source=None if t is None else
                                 f"the model's stored threshold ({metrics['model_threshold_source']})")
        else:
            rdir.mkdir(parents=True, exist_ok=True)
            paths = {"json": rdir / "metrics.json"}
            paths["json"].write_text(json.dumps({"metrics": to_jsonable(metrics), "extra": to_jsonable(extra)},
                                                indent=2) + "\n", encoding="utf-8")
        paths["failures"] = rdir / "failures.jsonl"
        write_failures(paths["failures"], failures)
    except OSError as e:
        raise os_error(e, f"the report in {rdir}") from None
    return paths
