"""Exported models on LFW dev pairs: agreement with the Keras model, accuracy, speed, size.

Exports one model to every format (SavedModel, TFLite float32 / float16 / int8, ONNX), embeds
the aligned crops of the LFW dev pairs with each (uint8 crops in, preprocessing inside the
artifact) and reports, per format: the cosine to the Keras model's embeddings (min, mean),
the LFW-protocol accuracy on the pairs (threshold picked on the other folds) and its change
from the Keras model, the embedding speed (images/s, batch 64, this machine) and file size.

    python benchmarks/bench_export.py --model ../runs/exp/demo_f1/model.keras
    python benchmarks/bench_export.py --model M --pairs P --crops DIR --max-pairs 600 --json export.json

Folded BatchNorm (``tripletface.model.fold``): with ``--fold-configs``, the inference forward (batch 64)
of each untrained backbone, BatchNorm statistics fitted to real crops, against the same model
with its BatchNorm folded into the convolutions, alternating block by block (ABBA), in float32
and (``--precisions float32,bfloat16``) mixed bfloat16; plus the largest embedding difference:

    python benchmarks/bench_export.py --fold-configs mobilenet@112,resnet50@112 --precisions float32,bfloat16
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
    from tripletface.data.pairs import pair_paths, read_pairs

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
    from tripletface.data.decode import read_image

    return np.stack([read_image(f) for f in files])


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _fit_batch_norm(model, x) -> None:
    """Moving statistics := those of ``x`` (one training-mode pass), so folding has real values to fold."""
    import keras

    from tripletface.model.build import all_layers

    bns = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, m in zip(bns, momenta):
        layer.momentum = m


def measure_fold(backbone: str, size: int, precisions=("float32",), batch: int = 64, calls: int = 4,
                 rounds: int = 4, crops: Path | None = None, log=print) -> list[dict]:
    """Folded vs unfolded inference forward, alternating; one row per precision."""
    import keras
    import tensorflow as tf

    from tripletface.model.build import build_embedding_model
    from tripletface.inference.embedder import resize_images
    from tripletface.model.fold import fold_batch_norm

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    files = common.image_sample(crops, batch) if crops is not None and crops.is_dir() else []
    if len(files) == batch:
        x = resize_images(read_crops(files), (size, size))
    else:
        x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    ref = build_embedding_model(backbone, 128, (size, size))
    _fit_batch_norm(ref, x)
    xt = tf.constant(x)
    spec = tf.TensorSpec((None, size, size, 3), tf.float32)
    exact = ref(xt, training=False).numpy()  # float32, unfolded: what each row is also compared with
    rows = []
    for policy in precisions:
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if policy == "bfloat16" else "float32")
        try:
            plain = build_embedding_model(backbone, 128, (size, size))
        finally:
            keras.mixed_precision.set_global_policy("float32")
        plain.set_weights(ref.get_weights())
        t0 = time.perf_counter()
        folded = fold_batch_norm(plain)
        fold_s = time.perf_counter() - t0
        kinds = {}
        for kind, m in (("unfolded", plain), ("folded", folded.model)):
            fn = tf.function(lambda t, m=m: m(t, training=False), input_signature=[spec])
            t0 = time.perf_counter()
            out = fn(xt).numpy()
            kinds[kind] = {"fn": fn, "out": out, "first_call_s": time.perf_counter() - t0, "wall": [], "cpu": []}
        for r in range(rounds):
            for kind in (("unfolded", "folded") if r % 2 == 0 else ("folded", "unfolded")):
                kd = kinds[kind]
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(calls):
                    kd["fn"](xt).numpy()
                kd["wall"].append((time.perf_counter() - t0) / calls)
                kd["cpu"].append((time.process_time() - c0) / calls)
        u, f = kinds["unfolded"], kinds["folded"]
        row = {"config": f"{backbone}@{size}", "precision": policy, "batch": batch, "folded_bn": folded.folded,
               "kept_bn": folded.kept, "fold_seconds": fold_s,
               "img_s": {"unfolded": batch / common.median(u["wall"]), "folded": batch / common.median(f["wall"])},
               "speedup": common.median(a / b for a, b in zip(u["wall"], f["wall"])),
               "cpu_speedup": common.median(u["cpu"]) / common.median(f["cpu"]),
               "max_abs_diff": float(np.abs(u["out"] - f["out"]).max()),
               "max_abs_diff_vs_float32": {"unfolded": float(np.abs(u["out"] - exact).max()),
                                           "folded": float(np.abs(f["out"] - exact).max())},
               "first_call_s": {"unfolded": u["first_call_s"], "folded": f["first_call_s"]},
               "forward_s": {"unfolded": u["wall"], "folded": f["wall"]}, "real_crops": len(files) == batch,
               "loadavg": common.load_average()}
        log(f"fold {row['config']} {policy}: {folded.folded} BN folded ({folded.kept} kept) in {fold_s:.1f}s; "
            f"{row['img_s']['unfolded']:.1f} -> {row['img_s']['folded']:.1f} img/s ({row['speedup']:.2f}x, CPU time "
            f"{row['cpu_speedup']:.2f}x); max |diff| {row['max_abs_diff']:.1e}; against unfolded float32: unfolded "
            f"{row['max_abs_diff_vs_float32']['unfolded']:.1e}, folded {row['max_abs_diff_vs_float32']['folded']:.1e} "
            f"(load {row['loadavg']})")
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a tripletface .keras model (the export table)")
    parser.add_argument("--fold-configs", default="", help="BACKBONE@SIZE list: folded vs unfolded BatchNorm speed")
    parser.add_argument("--precisions", default="float32", help="float32,bfloat16: precisions of the fold rows")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of the fold rows")
    parser.add_argument("--calls", type=int, default=4, help="forward calls per block of the fold rows")
    parser.add_argument("--pairs", default=str(common.data_root() / "lfw-dev-pairs.txt"))
    parser.add_argument("--crops", default=str(common.default_crops()), help="aligned crops: DIR/<name>/<name>_NNNN.png")
    parser.add_argument("--max-pairs", type=int, default=0, help="use the first N pairs (0 = all)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    common.quiet_tensorflow()
    if not args.model and not args.fold_configs:
        parser.error("give --model (the export table) and/or --fold-configs (the BatchNorm fold rows)")
    fold_rows = []
    if args.fold_configs:
        import bench_train

        log = lambda s: print(s, file=sys.stderr)  # noqa: E731
        precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
        for c in args.fold_configs.split(","):
            if c.strip():
                backbone, size = bench_train.parse_config(c)
                fold_rows += measure_fold(backbone, size, precisions, args.batch, args.calls, args.rounds,
                                          Path(args.crops), log=log)
        common.print_table(
            ["model", "precision", "BN folded", "unfolded img/s", "folded img/s", "speed-up", "CPU-time speed-up",
             "max |diff|", "vs float32 (unfolded / folded)"],
            [[r["config"], r["precision"], f"{r['folded_bn']} (kept {r['kept_bn']})",
              common.fmt(r["img_s"]["unfolded"]), common.fmt(r["img_s"]["folded"]), common.fmt(r["speedup"], ".2f") + "x",
              common.fmt(r["cpu_speedup"], ".2f") + "x", common.fmt(r["max_abs_diff"], ".1e"),
              f"{r['max_abs_diff_vs_float32']['unfolded']:.1e} / {r['max_abs_diff_vs_float32']['folded']:.1e}"]
             for r in fold_rows])
        if not args.model:
            if args.json:
                common.write_json(args.json, {"machine": common.machine_info(), "fold": fold_rows})
            return 0
    from tripletface.evaluation import verification as V
    from tripletface.inference.embedder import Embedder
    from tripletface.inference.matching import distance
    from tripletface.inference.export import export_model, load_exported

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
                                      "machine": common.machine_info(), "results": results, "fold": fold_rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
