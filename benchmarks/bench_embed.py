"""Embedding: ``Embedder.embed_files(aligned=True)`` on crop files vs the bare model forward on tensors.

* **real**: what ``tripletface embed --aligned`` does per chunk of ``--batch`` files: read and
  decode each file, stack, (resize when needed), forward, check, write the rows;
* **bare**: the same loaded model's forward (``tf.function``, the same input signature the
  Embedder uses) on one constant in-memory batch, as many images as the real run embeds.

With ``--flip-tta`` both sides do the mirror-image forward too (twice the model work). Blocks
alternate real/bare/bare/real; the first call of each (tracing) is untimed; the ratio is the
median over rounds of (bare time / real time) of the two blocks of a round; ``cpu_ratio`` is
the same in process CPU seconds (less disturbed by other processes on a shared machine). Target (issue 6):
real/bare >= 0.90 at batch 64.

    python benchmarks/bench_embed.py                       # mobilenet@112, 512 crops, batch 64
    python benchmarks/bench_embed.py --backbones mobilenet,resnet50 --images 256 --json embed.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET = 0.90


def save_model(backbone: str, size: int, folder: Path, threshold: float = 1.0) -> Path:
    """An untrained model with a stored threshold (speed does not depend on the weights)."""
    import keras

    from tripletface.model import io as model_io  # a module: this function's own name is save_model
    from tripletface.model.build import build_embedding_model

    keras.utils.set_random_seed(0)
    model = build_embedding_model(backbone, 128, (size, size), weights=None,
                                  metadata={"threshold": threshold, "threshold_source": "benchmark",
                                            "metric": "euclidean", "flip_tta": False})
    return model_io.save_model(model, folder / f"{backbone}{size}.keras")


def measure(model_path: Path, files: list[Path], batch: int = 64, flip_tta: bool = False, rounds: int = 2,
            log=print) -> dict:
    import numpy as np
    import tensorflow as tf

    from tripletface.inference.embedder import Embedder

    emb = Embedder.load(str(model_path), flip_tta=flip_tta, batch_size=batch)
    paths = [str(f) for f in files]
    h, w = emb.image_size
    model = emb.model
    spec = tf.TensorSpec((None, h, w, 3), tf.float32)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    rng = np.random.default_rng(0)
    x = tf.constant(rng.integers(0, 256, (batch, h, w, 3)).astype(np.float32))
    tail = len(paths) % batch
    x_tail = x[:tail] if tail else None
    passes = 2 if flip_tta else 1

    def bare():
        for _ in range(len(paths) // batch):
            for _ in range(passes):
                np.asarray(forward(x))
        if x_tail is not None:
            for _ in range(passes):
                np.asarray(forward(x_tail))

    def real():
        vectors, failures = emb.embed_files(paths, aligned=True)
        if failures:
            raise RuntimeError(f"{len(failures)} crops failed: {failures[0].message}")
        return vectors

    # warm-up: trace both functions on both batch shapes
    emb.embed_files(paths[:batch] + paths[:tail], aligned=True)
    forward(x), x_tail is not None and forward(x_tail)
    times = {"real": [], "bare": []}
    cpu = {"real": [], "bare": []}
    peaks = {"real": [], "bare": []}
    for r in range(rounds):
        for kind in (("real", "bare") if r % 2 == 0 else ("bare", "real")):
            common.reset_peak()
            t0, c0 = time.perf_counter(), time.process_time()
            (real if kind == "real" else bare)()
            times[kind].append(time.perf_counter() - t0)
            cpu[kind].append(time.process_time() - c0)
            peaks[kind].append(common.peak_rss_mib())
    n = len(paths)
    real_ips, bare_ips = n * rounds / sum(times["real"]), n * rounds / sum(times["bare"])
    # each round's real and bare blocks ran back to back: the median of their ratios is the
    # least disturbed by other processes' load
    paired = common.median(b / r for r, b in zip(times["real"], times["bare"]))
    result = {"model": str(model_path), "backbone": emb.metadata.get("backbone"), "image_size": [h, w],
              "images": n, "batch": batch, "flip_tta": flip_tta, "real_img_s": real_ips, "bare_img_s": bare_ips,
              "ratio": paired, "ratio_of_totals": real_ips / bare_ips, "seconds": times, "cpu_seconds": cpu,
              "cpu_ratio": common.median(cpu["bare"]) / common.median(cpu["real"]), "target": TARGET,
              "peak_rss_mib": {k: (max(v) if v and v[0] is not None else None) for k, v in peaks.items()},
              "loadavg": common.load_average()}
    log(f"embed {result['backbone']}@{h} batch {batch} flip_tta={flip_tta}: real {real_ips:.1f} img/s, "
        f"bare {bare_ips:.1f} img/s, ratio {result['ratio']:.3f}, CPU-time ratio {result['cpu_ratio']:.3f} "
        f"(load {result['loadavg']})")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=Path, default=None, help="aligned crops (default: see bench_train.py)")
    parser.add_argument("--images", type=int, default=512, help="crops to embed per block (default 512)")
    parser.add_argument("--backbones", default="mobilenet", help="comma-separated backbones (default: %(default)s)")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of a real and a bare block (default 4)")
    parser.add_argument("--flip-tta", action="store_true", help="also embed the mirror images (both sides)")
    parser.add_argument("--model", type=Path, default=None, help="a .keras model (default: an untrained one)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    crops = args.crops or common.default_crops()
    files = common.image_sample(crops, args.images)
    if not files:
        print(f"error: {crops}: no crops found (pass --crops)", file=sys.stderr)
        return 2
    common.quiet_tensorflow()
    from tripletface.cli.startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        models = [args.model] if args.model else [save_model(b.strip(), args.size, Path(tmp))
                                                  for b in args.backbones.split(",") if b.strip()]
        for path in models:
            results.append(measure(path, files, args.batch, flip_tta=False, rounds=args.rounds, log=log))
            if args.flip_tta:
                results.append(measure(path, files, args.batch, flip_tta=True, rounds=args.rounds, log=log))
    rows = [[f"{r['backbone']}@{r['image_size'][0]}", r["batch"], r["flip_tta"], common.fmt(r["bare_img_s"]),
             common.fmt(r["real_img_s"]), common.fmt(r["ratio"], ".3f"), common.fmt(r["cpu_ratio"], ".3f"),
             "met" if min(r["ratio"], r["cpu_ratio"]) >= TARGET else "MISSED",
             common.fmt(r["peak_rss_mib"]["bare"], ".0f"), common.fmt(r["peak_rss_mib"]["real"], ".0f")]
            for r in results]
    common.print_table(["model", "batch", "flip_tta", "bare img/s", "embed_files img/s", "ratio", "CPU ratio",
                        f">= {TARGET}",
                        "peak MiB bare", "peak MiB real"], rows)
    print(f"load average {common.load_average()} ({os.cpu_count()} CPUs); {len(files)} crops from {crops}")
    common.save_results(args.json, __file__, argv, embed=results, data=str(crops))
    return 0


if __name__ == "__main__":
    common.quiet_tensorflow()
    raise SystemExit(main())
