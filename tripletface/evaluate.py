"""``tripletface evaluate --model MODEL --data-dir DIR --pairs pairs.txt --report-dir R``.

LFW-protocol verification (:mod:`tripletface.verification`): k-fold accuracy with the
threshold chosen on the other folds (mean and std), AUC, EER, TAR at FAR 1e-3 / 1e-2, and
``unscored_pairs``: pairs with an image that could not be embedded (missing, unreadable, no
face), which are scored as wrong, never dropped. ``--triplets FILE`` (a CSV of
anchor,positive,negative paths under DIR, the original design's TEST_TRIPLETS) adds the
original metrics: triplet loss, precision and recall.

Embedding (:class:`tripletface.embedder.Embedder`) is separate from scoring: each distinct
image is embedded once, then the distances are scored. The JSON goes to stdout and, with
``--report-dir``, into R with ``roc.png``, ``hist.png``, ``report.html``, ``report.md``,
``metrics.json`` and ``failures.jsonl`` (the images that could not be embedded, and why).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

from tripletface.errors import ImageError, InputError

__all__ = ["add_arguments", "run", "pair_files", "evaluate_pairs", "evaluate_triplets", "read_triplets_csv",
           "loss_distance"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="a .keras model (default: the bundled model)")
    parser.add_argument("--data-dir", required=True, help="images: DIR/<name>/<name>_NNNN.<jpg|png|jpeg>")
    parser.add_argument("--pairs", default=None, help="pairs file in the LFW format (header 'folds<TAB>n')")
    parser.add_argument("--triplets", default=None,
                        help="CSV anchor,positive,negative (paths relative to --data-dir): the original metrics")
    parser.add_argument("--report-dir", default=None,
                        help="write report.html/.md, roc.png, hist.png, metrics.json, failures.jsonl here")
    parser.add_argument("--aligned", action="store_true", help="images are aligned crops: skip detection")
    parser.add_argument("--folds", type=int, default=None,
                        help="k contiguous folds for k-fold accuracy (default: the folds of the pairs file, "
                             "or 10 when it has one)")
    parser.add_argument("--margin", type=float, default=None,
                        help="triplet margin (default: the model's training margin, else 0.2)")
    parser.add_argument("--no-flip", action="store_true", help="no test-time flip averaging")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")


# --------------------------------------------------------------------------- embedding


def _embed_table(embedder, paths, aligned: bool, progress: bool = True) -> tuple[dict, list]:
    """Embed each distinct file once -> ({path: vector, NaN when it failed}, failures)."""
    uniq = list(dict.fromkeys(str(p) for p in paths))
    vectors, failures = embedder.embed_files(uniq, aligned=aligned, progress=progress)
    return {p: vectors[i] for i, p in enumerate(uniq)}, failures


def pair_files(data_dir, pairs) -> list[tuple[Path, Path]]:
    """The two files of each pair; a missing image is given its ``.jpg`` path (it then fails as missing)."""
    from tripletface import pairs as P

    cache: dict = {}

    def find(name, i):
        if (name, i) not in cache:
            try:
                cache[(name, i)] = P.image_path(data_dir, name, i)
            except ImageError:
                cache[(name, i)] = P.image_path(data_dir, name, i, ext="jpg")
        return cache[(name, i)]

    return [(find(p.name_a, p.idx_a), find(p.name_b, p.idx_b)) for p in pairs]


def stratified_folds(same: np.ndarray, k: int) -> np.ndarray:
    """Fold ids that deal matched and mismatched pairs round-robin into k folds, in file order, so that
    every fold mixes both kinds like LFW's (a file lists its matched pairs first: contiguous folds would not)."""
    ids = np.empty(len(same), np.int64)
    for kind in (True, False):
        rows = np.flatnonzero(same == kind)
        ids[rows] = np.arange(len(rows)) % k
    return ids


def evaluate_pairs(embedder, data_dir, pairs_file, aligned: bool = False, folds: int | None = None,
                   far_targets=(1e-3, 1e-2), progress: bool = True) -> tuple[dict, np.ndarray, np.ndarray, list]:
    """Verification metrics of ``embedder`` on an LFW pairs file.

    Returns ``(metrics, distances, issame, failures)``: ``distances`` per pair (NaN where an
    image failed), ``failures`` the :class:`~tripletface.embedder.Failure` of each image that
    could not be embedded. ``metrics`` holds :func:`tripletface.verification.verification_metrics`
    (``n_unscored`` renamed ``unscored_pairs``) plus ``failed_images``, ``folds_from`` and, when
    the model stores a threshold, ``model_threshold`` and ``model_threshold_accuracy``.
    """
    from tripletface import pairs as P
    from tripletface import verification as V
    from tripletface.embedder import distance

    pairs = P.read_pairs(pairs_file)
    files = pair_files(data_dir, pairs)
    table, failures = _embed_table(embedder, [f for ab in files for f in ab], aligned, progress)
    d = np.array([distance(table[str(a)], table[str(b)]) for a, b in files], np.float64)
    same = np.array([p.same for p in pairs], bool)
    fold_ids = np.array([p.fold for p in pairs])
    if folds is not None:
        if folds < 2 or folds > len(pairs):
            raise InputError(f"--folds must be in [2, {len(pairs)}] (the number of pairs), received: {folds}")
        kw, folds_from = {"folds": None, "fold_ids": stratified_folds(same, folds)}, f"{folds} folds (--folds)"
    elif len(np.unique(fold_ids)) >= 2:
        kw, folds_from = {"folds": None, "fold_ids": fold_ids}, "the pairs file"
    else:
        k = min(10, len(pairs))
        if k < 2:
            raise InputError(f"{pairs_file}: k-fold accuracy needs at least 2 pairs")
        kw, folds_from = {"folds": None, "fold_ids": stratified_folds(same, k)}, f"{k} folds (the pairs file has one)"
    if same.all() or not same.any():
        raise InputError(f"{pairs_file}: needs matched and mismatched pairs, found {int(same.sum())} matched "
                         f"and {int((~same).sum())} mismatched")
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
    from tripletface.imageio import is_image_file

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


def loss_distance(d: np.ndarray, kind: str) -> np.ndarray:
    """Euclidean distances of unit vectors -> the training loss's distance (the margin's units)."""
    if kind == "squared_l2":
        return d ** 2
    if kind == "l2":
        return d
    if kind == "cosine":
        return d ** 2 / 2.0  # 1 - cos
    raise ValueError(f"kind must be squared_l2, l2 or cosine, received: {kind!r}")


def evaluate_triplets(embedder, data_dir, triplets_file, aligned: bool = False, margin: float | None = None,
                      distance_kind: str | None = None, progress: bool = True) -> tuple[dict, list]:
    """The original design's test metrics (triplet loss, precision, recall) on a triplets CSV.

    Distances are in the units of the model's training loss (``config.loss.distance`` in its
    metadata, default squared L2) with its margin unless ``margin`` is given. Triplets with an
    image that could not be embedded are counted in ``unscored_triplets`` and left out of
    these means (a loss has no value for them). Returns ``(metrics, failures)``.
    """
    from tripletface import verification as V
    from tripletface.embedder import distance

    loss_cfg = (embedder.metadata.get("config") or {}).get("loss") or {}
    margin = float(loss_cfg.get("margin", 0.2) if margin is None else margin)
    kind = distance_kind or str(loss_cfg.get("distance", "squared_l2"))
    trip = read_triplets_csv(triplets_file, data_dir)
    table, failures = _embed_table(embedder, [x for t in trip for x in t], aligned, progress)
    ok = [t for t in trip if all(np.all(np.isfinite(table[str(x)])) for x in t)]
    if not ok:
        raise InputError(f"{triplets_file}: no triplet could be embedded ({len(failures)} images failed)")
    d_ap = loss_distance(np.array([distance(table[str(a)], table[str(p)]) for a, p, _ in ok]), kind)
    d_an = loss_distance(np.array([distance(table[str(a)], table[str(n)]) for a, _, n in ok]), kind)
    tm = V.triplet_metrics(d_ap, d_an, margin)
    return {"triplets": len(trip), "unscored_triplets": len(trip) - len(ok), "triplet_margin": margin,
            "triplet_distance": kind, **{f"triplet_{k}": v for k, v in tm.items()}}, failures


# --------------------------------------------------------------------------- CLI


def _write_failures(path: Path, failures) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for fl in failures:
            f.write(json.dumps(fl.to_dict()) + "\n")


def run(args: argparse.Namespace) -> int:
    from tripletface.config import EvalConfig
    from tripletface.embedder import Embedder, print_failures
    from tripletface.report import to_jsonable, write_report

    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: data folder not found")
    if not args.pairs and not args.triplets:
        raise InputError("nothing to evaluate: give --pairs and/or --triplets")
    for name, f in (("--pairs", args.pairs), ("--triplets", args.triplets)):
        if f and not Path(f).is_file():
            raise InputError(f"{f}: {name} file not found")
    if args.batch_size <= 0:
        raise InputError(f"--batch-size must be > 0, received: {args.batch_size}")
    if args.margin is not None and not args.margin >= 0:
        raise InputError(f"--margin must be >= 0, received: {args.margin}")

    embedder = Embedder.load(args.model, flip_tta=False if args.no_flip else None, batch_size=args.batch_size)
    metrics: dict = {}
    extra = {"model": embedder.name, "data_dir": str(data_dir), "pairs_file": args.pairs,
             "triplets_file": args.triplets, "aligned": bool(args.aligned), "flip_tta": embedder.flip_tta}
    failures: list = []
    d = same = None
    if args.pairs:
        m, d, same, failures = evaluate_pairs(embedder, data_dir, args.pairs, args.aligned, args.folds,
                                              far_targets=EvalConfig().far_targets)
        metrics.update(m)
    if args.triplets:
        tm, tf_failures = evaluate_triplets(embedder, data_dir, args.triplets, args.aligned, args.margin)
        metrics.update(tm)
        known = {f.path for f in failures}
        failures = failures + [f for f in tf_failures if f.path not in known]

    if args.report_dir:
        rdir = Path(args.report_dir)
        if d is not None:
            paths = write_report(rdir, metrics, d, same, title=f"tripletface evaluation: {Path(embedder.name).name}",
                                 extra=extra)
        else:
            rdir.mkdir(parents=True, exist_ok=True)
            paths = {"json": rdir / "metrics.json"}
            paths["json"].write_text(json.dumps({"metrics": to_jsonable(metrics), "extra": to_jsonable(extra)},
                                                indent=2) + "\n", encoding="utf-8")
        paths["failures"] = rdir / "failures.jsonl"
        _write_failures(paths["failures"], failures)
        extra["report"] = {k: str(v) for k, v in paths.items()}
    out = to_jsonable({**metrics, **extra})
    print(json.dumps(out, indent=2))
    if d is not None:
        tar = ", ".join(f"TAR@FAR={float(k):g} {v[0]:.4f}" for k, v in out["tar_at_far"].items())
        print(f"accuracy {out['accuracy_mean']:.4f} ± {out['accuracy_std']:.4f}  AUC {out['auc']:.4f}  "
              f"EER {out['eer']:.4f}  {tar}  unscored pairs {out['unscored_pairs']}", file=sys.stderr)
    print_failures(failures, prefix="not embedded: ", more=" images not embedded")
    return 0
