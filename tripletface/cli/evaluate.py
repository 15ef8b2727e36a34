"""``tripletface evaluate --model MODEL --data-dir DIR --pairs pairs.txt --report-dir R``.

LFW-protocol verification on a pairs file and, with ``--triplets FILE``, the original triplet
metrics (:mod:`tripletface.evaluation.evaluate` computes them). stdout gets a summary of a few
lines (all the numbers as one JSON object instead with ``--json``); ``--report-dir R`` writes
``roc.png``, ``hist.png``, ``report.html``, ``report.md`` (with the hardest false accepts and
false rejects at the model's threshold as thumbnails under ``errors/``), ``metrics.json`` (all
the numbers) and ``failures.jsonl`` (the images that could not be embedded, and why). A report
folder that cannot be written is a one-line error (exit 8; 7 when the disk is full).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tripletface.errors import InputError

__all__ = ["add_arguments", "run", "summary_lines"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.flags import (add_config_arguments, add_flip_argument, add_input_argument,
                                       add_progress_argument, number)

    add_input_argument(parser, "images: DATA_DIR/<name>/<name>_NNNN.<jpg|png|jpeg>", "--data-dir",
                       metavar="DATA_DIR", dest="data_dir")
    parser.add_argument("--model", default=None, help="a .keras model (default: the bundled model)")
    parser.add_argument("--pairs", default=None, help="pairs file in the LFW format (header 'folds<TAB>n')")
    parser.add_argument("--triplets", default=None,
                        help="CSV anchor,positive,negative (paths relative to --data-dir): the original metrics")
    parser.add_argument("--report-dir", default=None,
                        help="write report.html/.md, roc.png, hist.png, metrics.json, failures.jsonl here")
    parser.add_argument("--aligned", action="store_true", help="images are aligned crops: skip detection")
    parser.add_argument("--folds", type=number(int, 2), default=None,
                        help="k folds for k-fold accuracy (default: the folds of the pairs file, "
                             "or eval.folds (10) when it has one)")
    parser.add_argument("--margin", type=number(float, 0), default=None,
                        help="triplet margin (default: the model's training margin, else 0.2)")
    add_flip_argument(parser, "--no-flip")
    parser.add_argument("--batch-size", type=number(int, 1), default=None,
                        help="images per forward pass (default: eval.batch_size, 64)")
    add_progress_argument(parser)
    add_config_arguments(parser)  # eval.far_targets, eval.folds, eval.batch_size
    parser.add_argument("--json", action="store_true",
                        help="print all numbers as one JSON object on stdout (the summary goes to stderr); "
                             "--report-dir writes them to metrics.json either way")


def run(args: argparse.Namespace) -> int:
    from tripletface.cli.flags import config_from_args
    from tripletface.data.pairs import read_pairs
    from tripletface.evaluation.evaluate import (check_report_dir, evaluate_pairs, evaluate_triplets, pair_files,
                                                 write_results)
    from tripletface.evaluation.report import to_jsonable
    from tripletface.inference.embedder import Embedder, print_failures

    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: data folder not found")
    if not args.pairs and not args.triplets:
        raise InputError("nothing to evaluate: give --pairs and/or --triplets")
    for name, f in (("--pairs", args.pairs), ("--triplets", args.triplets)):
        if f and not Path(f).is_file():
            raise InputError(f"{f}: {name} file not found")
    cfg = config_from_args(args).eval

    rdir = Path(args.report_dir) if args.report_dir else None
    if rdir is not None:
        check_report_dir(rdir)  # a read-only or misplaced folder fails now, not after the embedding
    embedder = Embedder.load(args.model, flip_tta=args.flip_tta, batch_size=args.batch_size or cfg.batch_size)
    metrics: dict = {}
    extra = {"model": embedder.name, "data_dir": str(data_dir), "pairs_file": args.pairs,
             "triplets_file": args.triplets, "aligned": bool(args.aligned), "flip_tta": embedder.flip_tta}
    failures: list = []
    d = same = None
    if args.pairs:
        m, d, same, failures = evaluate_pairs(embedder, data_dir, args.pairs, args.aligned, args.folds,
                                              far_targets=cfg.far_targets, progress=args.progress,
                                              default_folds=cfg.folds)
        metrics.update(m)
    if args.triplets:
        tm, tf_failures = evaluate_triplets(embedder, data_dir, args.triplets, args.aligned, args.margin,
                                            progress=args.progress)
        metrics.update(tm)
        known = {f.path for f in failures}
        failures = failures + [f for f in tf_failures if f.path not in known]

    if rdir is not None:
        pairs = pair_files(data_dir, read_pairs(args.pairs)) if d is not None else None
        paths = write_results(rdir, metrics, extra, failures, f"tripletface evaluation: {Path(embedder.name).name}",
                              distances=d, issame=same, pair_files=pairs)
        extra["report"] = {k: str(v) for k, v in paths.items()}
    out = to_jsonable({**metrics, **extra})
    if args.json:
        print(json.dumps(out, indent=2))
    for line in summary_lines(out):
        print(line, file=sys.stderr if args.json else sys.stdout)
    print_failures(failures, prefix="not embedded: ", more=" images not embedded")
    return 0


def summary_lines(out: dict) -> list[str]:
    """The lines ``evaluate`` prints for people (all numbers are in metrics.json / ``--json``)."""
    lines = []
    if "accuracy_mean" in out:
        tar = ", ".join(f"TAR@FAR={float(k):g} {v[0]:.4f}" for k, v in out["tar_at_far"].items())
        lines.append(f"accuracy {out['accuracy_mean']:.4f} ± {out['accuracy_std']:.4f} ({out['n_folds']} folds)  "
                     f"AUC {out['auc']:.4f}  EER {out['eer']:.4f}  {tar}  "
                     f"unscored pairs {out['unscored_pairs']} of {out['n_pairs']}")
        if out.get("model_threshold") is not None:
            lines.append(f"at the model's threshold {out['model_threshold']:.4f}: "
                         f"accuracy {out['model_threshold_accuracy']:.4f}")
    if "triplets" in out:
        vals = "  ".join(f"{k} {out['triplet_' + k]:.4f}" for k in ("loss", "precision", "recall")
                         if isinstance(out.get("triplet_" + k), (int, float)))
        lines.append(f"triplets: {vals}  ({out['triplets'] - out['unscored_triplets']} scored, "
                     f"{out['unscored_triplets']} unscored)")
    report = out.get("report")
    if report:
        lines.append(f"report: {report.get('html', report['json'])} (all numbers: {report['json']})")
    else:
        lines.append("all numbers: --json, or --report-dir DIR")
    return lines
