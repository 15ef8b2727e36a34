"""Exported models on LFW dev pairs: agreement with the Keras model, accuracy, speed, size.

Exports one model to every format (SavedModel, TFLite float32 / float16 / int8, ONNX), embeds
the aligned crops of the LFW dev pairs with each (uint8 crops in, preprocessing inside the
artifact) and reports, per format: the cosine to the Keras model's embeddings (min, mean),
the LFW-protocol accuracy on the pairs (threshold picked on the other folds) and its change
from the Keras model, the embedding speed (images/s, batch 64, this machine) and file size.

    python benchmarks/bench_export.py --model ../runs/exp/demo_f1/model.keras
    python benchmarks/bench_export.py --model M --pairs P --crops DIR --max-pairs 600 --json export.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VARIANTS = (("savedmodel", None, "sm"), ("tflite", None, "f32.tflite"), ("tflite", "float16", "f16.tflite"),
            ("tflite", "int8", "int8.tflite"), ("onnx", None, "model.onnx"))


def load_pairs(pairs_file: Path, crops: Path, max_pairs: int):
    from tripletface.errors import ImageError
    from tripletface.pairs import pair_paths, read_pairs

    kept, paths = [], []
    for p in read_pairs(pairs_file):
        try:
            a, b = pair_paths(crops, p)
        except ImageError:  # a crop the cropper could not make
            continue
        kept.append(p)
        paths.append((a, b))
        if max_pairs and len(kept) == max_pairs:
            break
    return kept, paths


def read_crops(files) -> np.ndarray:
    from tripletface.imageio import read_image

    return np.stack([read_image(f) for f in files])


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a tripletface .keras model")
    parser.add_argument("--pairs", default=str(common.data_root() / "lfw-dev-pairs.txt"))
    parser.add_argument("--crops", default=str(common.default_crops()), help="aligned crops: DIR/<name>/<name>_NNNN.png")
    parser.add_argument("--max-pairs", type=int, default=0, help="use the first N pairs (0 = all)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    common.quiet_tensorflow()
    from tripletface import verification as V
    from tripletface.embedder import Embedder, distance
    from tripletface.export import export_model, load_exported

    pairs, paths = load_pairs(Path(args.pairs), Path(args.crops), args.max_pairs)
    files = sorted({f for ab in paths for f in ab})
    row_of = {f: i for i, f in enumerate(files)}
    ia = np.array([row_of[a] for a, _ in paths])
    ib = np.array([row_of[b] for _, b in paths])
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    images = read_crops(files)
    print(f"{len(pairs)} pairs, {len(files)} crops {images.shape[1]}x{images.shape[2]} from {args.crops}",
          file=sys.stderr)

    embedder = Embedder.load(args.model)
    t0 = time.perf_counter()
    ref = embedder.embed_aligned(images)
    keras_s = time.perf_counter() - t0

    def score(emb):
        # the pairs file's folds; a one-fold file (View 1 style) gets 10 contiguous folds
        acc = V.kfold_accuracy(distance(emb[ia], emb[ib]), same, folds=10,
                               fold_ids=folds if len(set(folds.tolist())) > 1 else None)
        return acc["mean"]

    results = [{"format": "keras", "quantize": None, "images_per_s": len(images) / keras_s, "cos_min": 1.0,
                "cos_mean": 1.0, "accuracy": score(ref), "accuracy_change": 0.0, "size_kib": None}]
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, quantize, name in VARIANTS:
            out = export_model(embedder, Path(tmp) / name, fmt, quantize=quantize)
            runner = load_exported(out)
            runner.embed(images[: args.batch])  # warm-up (tracing, allocation)
            t0 = time.perf_counter()
            emb = np.concatenate([runner.embed(images[s:s + args.batch]) for s in range(0, len(images), args.batch)])
            secs = time.perf_counter() - t0
            cos = np.sum(emb.astype(np.float64) * ref, axis=1)
            acc = score(emb)
            results.append({"format": fmt, "quantize": quantize, "images_per_s": len(images) / secs,
                            "cos_min": float(cos.min()), "cos_mean": float(cos.mean()), "accuracy": acc,
                            "accuracy_change": acc - results[0]["accuracy"], "size_kib": size_of(out) / 1024})
    common.print_table(
        ["format", "quantize", "1 - cos (max)", "1 - cos (mean)", "LFW acc", "change", "img/s", "size KiB"],
        [[r["format"], r["quantize"] or "-", common.fmt(1 - r["cos_min"], ".1e"), common.fmt(1 - r["cos_mean"], ".1e"),
          common.fmt(r["accuracy"], ".4f"), common.fmt(r["accuracy_change"], "+.4f"),
          common.fmt(r["images_per_s"], ".0f"), common.fmt(r["size_kib"], ".0f")] for r in results])
    if args.json:
        common.write_json(args.json, {"model": args.model, "pairs": len(pairs), "crops": len(files),
                                      "machine": common.machine_info(), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
