"""Choosing a decision threshold on pairs and storing it in the model (``tripletface calibrate``).

:func:`calibrate` picks the threshold on the given pairs -- at the best accuracy, or the largest
threshold whose false accept rate stays at or under a target (:func:`parse_target`) -- and stores
it in the model's metadata with the metric and where it came from (``threshold``, ``metric``,
``threshold_source``, ``calibration``). Only metadata changes: the weights, and so the galleries
built with the model, stay valid. :func:`save_calibrated` writes the model atomically, keeping the
previous file as :func:`backup_path` when it replaces it. Pairs with an image that could not be
embedded are kept, scored as wrong (see
:func:`tripletface.evaluation.verification.score_with_failures`). The command, and the 1:N
calibration of a gallery, are :mod:`tripletface.cli.calibrate`.
"""

from __future__ import annotations

import time
from pathlib import Path

from tripletface.errors import InputError

__all__ = ["parse_target", "calibrate", "backup_path", "save_calibrated"]


def parse_target(target: str, kinds=("accuracy", "far")) -> tuple[str, float | None]:
    """``"accuracy"`` -> ("accuracy", None); ``"far=1e-3"`` -> ("far", 0.001); ``"fpir=0.01"``
    -> ("fpir", 0.01) when ``kinds`` allows it."""
    if target == "accuracy" and "accuracy" in kinds:
        return "accuracy", None
    for kind in kinds:
        if kind != "accuracy" and isinstance(target, str) and target.startswith(f"{kind}="):
            try:
                rate = float(target[len(kind) + 1:])
            except ValueError:
                rate = -1.0
            if 0 < rate < 1:
                return kind, rate
    allowed = " or ".join("'accuracy'" if k == "accuracy" else f"'{k}=<rate in (0, 1)>'" for k in kinds)
    raise InputError(f"--target must be {allowed}, received: {target!r}")


def calibrate(embedder, data_dir, pairs_file, target: str = "accuracy", aligned: bool = False,
              progress: bool = True) -> dict:
    """Choose a threshold for ``embedder`` on the pairs and store it in its model's metadata.

    Returns the values stored: ``threshold``, ``metric``, ``threshold_source``, ``calibration``
    (pairs file, data folder, target, date, the accuracy or TAR/FAR reached, k-fold accuracy).
    The caller saves the model.
    """
    from tripletface.model.io import get_metadata, update_metadata
    from tripletface.evaluation import verification as V
    from tripletface.evaluation.evaluate import evaluate_pairs

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
    update_metadata(embedder.model, **info)
    embedder.metadata = get_metadata(embedder.model)
    return info


def backup_path(model_path) -> Path:
    """``m.keras`` -> ``m.prev.keras``: where ``--in-place`` keeps the previous model."""
    p = Path(model_path)
    return p.with_name(p.name[: -len(".keras")] + ".prev.keras") if p.name.endswith(".keras") else \
        p.with_name(p.name + ".prev")


def save_calibrated(model, source: Path, out: Path) -> Path | None:
    """Save ``model`` to ``out`` atomically. When ``out`` is ``source``, first copy the previous
    file to :func:`backup_path` (atomically too) and return that path."""
    import shutil

    from tripletface.model.io import save_model
    from tripletface.atomic import replaced_atomically
    from tripletface.errors import os_error

    backup = None
    try:
        if out.resolve() == source.resolve() and source.is_file():
            backup = backup_path(source)
            with replaced_atomically(backup, ".keras") as tmp:
                shutil.copy2(source, tmp)
        save_model(model, out)
    except OSError as e:
        raise os_error(e, "the calibrated model") from None
    return backup
