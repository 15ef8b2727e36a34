"""``tripletface calibrate --model M --data-dir DIR --pairs pairs.txt [--target accuracy|far=1e-3]``.

Picks the decision threshold on the given pairs -- at the best accuracy, or the largest
threshold whose false accept rate stays at or under a target -- and stores it in the model's
metadata with the metric and where it came from (``threshold``, ``metric``,
``threshold_source``, ``calibration``). ``compare`` and ``identify`` then use it by default
and show its source. Only metadata changes: the weights, and so the galleries built with
the model, stay valid.

Pairs with an image that could not be embedded are kept, scored as wrong (see
:func:`tripletface.verification.score_with_failures`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tripletface.errors import InputError

__all__ = ["add_arguments", "run", "parse_target", "calibrate"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the .keras model to calibrate")
    parser.add_argument("--data-dir", required=True, help="images: DIR/<name>/<name>_NNNN.<jpg|png|jpeg>")
    parser.add_argument("--pairs", required=True, help="pairs file in the LFW format")
    parser.add_argument("--aligned", action="store_true", help="images are aligned crops: skip detection")
    parser.add_argument("--target", default="accuracy",
                        help="'accuracy' (best accuracy on the pairs) or 'far=<rate>' (e.g. far=1e-3)")
    parser.add_argument("--output", default=None, help="write the calibrated model here (default: in place)")


def parse_target(target: str) -> tuple[str, float | None]:
    """``"accuracy"`` -> ("accuracy", None); ``"far=1e-3"`` -> ("far", 0.001)."""
    if target == "accuracy":
        return "accuracy", None
    if isinstance(target, str) and target.startswith("far="):
        try:
            far = float(target[4:])
        except ValueError:
            far = -1.0
        if 0 < far < 1:
            return "far", far
    raise InputError(f"--target must be 'accuracy' or 'far=<rate in (0, 1)>', received: {target!r}")


def calibrate(embedder, data_dir, pairs_file, target: str = "accuracy", aligned: bool = False,
              progress: bool = True) -> dict:
    """Choose a threshold for ``embedder`` on the pairs and store it in its model's metadata.

    Returns the values stored: ``threshold``, ``metric``, ``threshold_source``, ``calibration``
    (pairs file, data folder, target, date, the accuracy or TAR/FAR reached, k-fold accuracy).
    The caller saves the model.
    """
    from tripletface import model as M
    from tripletface import verification as V
    from tripletface.evaluate import evaluate_pairs

    kind, far = parse_target(target)
    metrics, d, same, failures = evaluate_pairs(embedder, data_dir, pairs_file, aligned, progress=progress)
    if metrics["unscored_pairs"] == len(d):
        raise InputError(f"{pairs_file}: no pair could be scored ({len(failures)} images failed); "
                         "nothing to calibrate on")
    filled, _ = V.score_with_failures(d, same)
    if kind == "accuracy":
        threshold, acc = V.best_threshold(filled, same)
        detail = {"accuracy": float(acc)}
    else:
        point = V.far_point(filled, same, far)
        threshold = point.threshold
        detail = {"far_target": far, "far": point.far, "tar": point.tar, "far_reachable": point.reachable,
                  "accuracy": V.accuracy_at(filled, same, threshold)}
    source = (f"tripletface calibrate --target {target} on {Path(pairs_file).name} "
              f"({len(d)} pairs, {metrics['unscored_pairs']} unscored)")
    info = {
        "threshold": float(threshold),
        "metric": "euclidean",
        "threshold_source": source,
        "calibration": {"pairs": str(pairs_file), "data_dir": str(data_dir), "target": target,
                        "aligned": bool(aligned), "flip_tta": embedder.flip_tta,
                        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "pairs_used": int(len(d)),
                        "unscored_pairs": int(metrics["unscored_pairs"]),
                        "kfold_accuracy": float(metrics["accuracy_mean"]), **detail},
    }
    M.update_metadata(embedder.model, **info)
    embedder.metadata = M.get_metadata(embedder.model)
    return info


def run(args: argparse.Namespace) -> int:
    from tripletface import model as M
    from tripletface.embedder import Embedder

    parse_target(args.target)  # a bad target fails before any work
    if not Path(args.data_dir).is_dir():
        raise InputError(f"{args.data_dir}: data folder not found")
    if not Path(args.pairs).is_file():
        raise InputError(f"{args.pairs}: pairs file not found")
    out = Path(args.output) if args.output else None
    if out is not None and out.suffix != ".keras":
        raise InputError(f"--output must end in .keras, received: {args.output!r}")
    embedder = Embedder.load(args.model)
    info = calibrate(embedder, Path(args.data_dir), Path(args.pairs), args.target, args.aligned)
    out = out or Path(embedder.name)
    M.save_model(embedder.model, out)
    print(json.dumps({"model": str(out), **info}, indent=2))
    return 0
