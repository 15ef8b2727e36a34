"""Measuring the model on held-out data: the validation pairs and triplets drawn from held-out
identities and their metrics through the inference path (each epoch, and the stored threshold),
and the trained model's original triplet metrics on TEST_TRIPLETS (the command's last step)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def prepare_validation(val_index, cfg):
    """Pairs and triplets over held-out identities' images: ``{"paths", "pairs", "triplets"}``
    (index arrays into ``paths``). The images are embedded as inference embeds them (see
    :func:`validate`)."""
    from tripletface.data.validation import make_val_pairs, make_val_triplets

    if val_index is None or len(val_index.paths) == 0:
        return None
    n_trip = max(8, cfg.train.validation_steps * max(1, cfg.data.batch_size // 3))
    pa, pb, same = make_val_pairs(val_index, cfg.data.val_pairs, seed=cfg.data.seed)
    ta, tp, tn = make_val_triplets(val_index, n_trip, seed=cfg.data.seed + 1)
    needed = np.unique(np.concatenate([pa, pb, ta, tp, tn]))
    pos = {int(i): j for j, i in enumerate(needed)}
    remap = lambda a: np.array([pos[int(i)] for i in a], dtype=np.int64)  # noqa: E731
    return {"paths": [val_index.paths[i] for i in needed], "identities": int(val_index.num_identities),
            "pairs": (remap(pa), remap(pb), np.asarray(same, bool)),
            "triplets": (remap(ta), remap(tp), remap(tn))}


def validation_pairs(val) -> list[tuple[str, str, bool]]:
    """The validation pairs as ``(path_a, path_b, same)``: what the stored threshold was chosen on."""
    pa, pb, same = val["pairs"]
    return [(val["paths"][a], val["paths"][b], bool(s)) for a, b, s in zip(pa, pb, same)]


def validate(val, embedder, margin, loss_distance: str = "squared_l2") -> dict:
    """Validation metrics of ``embedder`` (a :class:`tripletface.inference.embedder.Embedder`): the files are
    embedded exactly as ``compare``/``evaluate --aligned`` embed them (its flip mode included),
    so the threshold chosen here is the one inference needs.

    Returns ``val_accuracy`` (k-fold), ``val_threshold`` (best accuracy on all the pairs, the
    model's stored default) with ``val_threshold_accuracy`` (the accuracy there), and the
    original triplet metrics on the validation triplets: ``val_triplet_loss`` (the loss's own
    distance and margin; not comparable with the mined training loss) and ``val_precision`` /
    ``val_recall`` at ``val_threshold`` (chosen on the pairs, not on these triplets).
    """
    from keras import ops

    from tripletface.evaluation import verification as V
    from tripletface.inference.matching import distance
    from tripletface.errors import InputError
    from tripletface.losses import get_distance

    emb, failures = embedder.embed_files(val["paths"], aligned=True)
    if failures:
        raise InputError(f"validation image {failures[0].message}")
    pa, pb, same = val["pairs"]
    d = distance(emb[pa], emb[pb])  # euclidean: the metric stored with the model
    acc = V.kfold_accuracy(d, same, folds=min(10, max(2, len(d) // 20)))
    threshold, threshold_acc = V.best_threshold(d, same)
    ta, tp, tn = val["triplets"]
    dist = get_distance(loss_distance)
    tm = V.triplet_metrics(ops.convert_to_numpy(dist.paired(emb[ta], emb[tp])),
                           ops.convert_to_numpy(dist.paired(emb[ta], emb[tn])), margin,
                           threshold=dist.from_euclidean(threshold))
    return {"val_accuracy": float(acc["mean"]), "val_triplet_loss": float(tm["loss"]),
            "val_precision": float(tm["precision"]), "val_recall": float(tm["recall"]),
            "val_threshold": float(threshold), "val_threshold_accuracy": float(threshold_acc)}


def test_on_triplets(model_path, triplets_file: Path, progress: bool = True) -> dict:
    """The original design's last step: the trained model's triplet loss, precision and recall on
    TEST_TRIPLETS (``data.test_triplets``: crop's ``test_triplets.csv``, anchor,positive,negative
    paths relative to its folder), with the model's own inference path. Written next to the model
    as ``test_triplets.json``; returns the metrics and ``path``."""
    from tripletface.inference.embedder import Embedder, print_failures
    from tripletface.evaluation.evaluate import evaluate_triplets

    embedder = Embedder.load(str(model_path))
    metrics, failures = evaluate_triplets(embedder, triplets_file.parent, triplets_file, aligned=True,
                                          progress=progress)
    print_failures(failures, prefix="test triplets, not embedded: ", more=" images not embedded")
    out = Path(model_path).with_name("test_triplets.json")
    out.write_text(json.dumps({"triplets_file": str(triplets_file), **metrics}, indent=2) + "\n", encoding="utf-8")
    return {**metrics, "path": str(out)}
