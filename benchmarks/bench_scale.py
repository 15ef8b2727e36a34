"""Scale: how training time per epoch and ``identify`` latency grow with the data.

* **training**: one trainer (``cpu`` preset model, P×K batches, the config's augmentation)
  run on the real pipeline over aligned-crop sets of growing size (subsets of the crops;
  sizes beyond the crops repeat them under new identity names, which costs the same to
  decode and cache). Per size: the dataset set-up (index, decode every file once into the
  uint8 cache), the cache size, the step time, and the time of one pass over the data
  (``images / img/s``; ``tripletface train`` counts epochs in ``train.steps_per_epoch``
  steps, so its epochs do not grow with the data, only the set-up does).
* **identify**: synthetic galleries of 1k, 10k and 100k unit embeddings (dim 128, 10 rows per
  identity), saved with ``save_gallery``; per size the time to load and check the gallery
  (``load_gallery``) and to search it (``nearest_identities``, exact), against the bare ceiling
  of one float32 matrix-vector product over the same rows. The query's embedding (one forward)
  does not depend on the gallery size and is left out.

    python benchmarks/bench_scale.py                                   # ~5 min on 2 cores
    python benchmarks/bench_scale.py --train-sizes 1000,6909,20000 --gallery-sizes 1000,10000,100000,1000000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402
import common  # noqa: E402


def sized_index(index, n: int):
    """About ``n`` images: the first identities of ``index``, or ``index`` repeated under new names."""
    import numpy as np

    from tripletface.dataset import FaceIndex

    if n <= len(index):
        cum = np.cumsum(index.counts())
        return index.subset(range(int(np.searchsorted(cum, n)) + 1))
    copies = -(-n // len(index))
    paths, labels, names = [], [], []
    for c in range(copies):
        paths += list(index.paths)
        labels.append(np.asarray(index.labels) + c * index.num_identities)
        names += [f"{name}~{c}" for name in index.names]
    return FaceIndex(tuple(paths[:n]), np.concatenate(labels)[:n], tuple(names), index.root)


def measure_training(index, sizes: list[int], backbone: str = "mobilenet", size: int = 112, batch: int = 16,
                     k: int = 4, steps: int = 4, log=print) -> list[dict]:
    import gc

    import keras
    import numpy as np
    import tensorflow as tf

    from tripletface import dataset as D
    from tripletface import model as M
    from tripletface.losses import get_loss
    from tripletface.train import make_optimizer, make_trainer

    cfg = bench_train.train_config(backbone, size, batch, k)
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.train.seed)
    embedder = M.build_embedding_model(backbone, cfg.model.embedding_dim, (size, size), weights=None)
    trainer = make_trainer(embedder, get_loss(cfg.loss))
    trainer.compile(optimizer=make_optimizer(cfg.train, 1000), jit_compile=False)
    p = cfg.data.p
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (p * k, size, size, 3)).astype(np.float32))
    labels = tf.constant(np.repeat(np.arange(p, dtype=np.int32), k))
    bare = tf.data.Dataset.from_tensors((images, labels)).repeat()
    trainer.fit(bare, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)  # trace
    bench_train._block(trainer, bare, steps)
    rows = []
    for n in sizes:
        idx = sized_index(index, n)
        common.reset_peak()
        t0 = time.perf_counter()
        ds = D.build_train_dataset(cfg, idx)
        setup = time.perf_counter() - t0
        secs, nsteps, peak, _ = bench_train._block(trainer, ds, steps)
        b_secs, b_steps, _, _ = bench_train._block(trainer, bare, steps)
        step = secs / nsteps
        row = {"images": len(idx), "identities": idx.num_identities, "setup_s": setup,
               "cache_mib": len(idx) * size * size * 3 / 2**20, "step_s": step, "bare_step_s": b_secs / b_steps,
               "real_img_s": batch / step, "pass_s": len(idx) / batch * step,
               "ratio": (b_secs / b_steps) / step, "peak_rss_mib": peak, "loadavg": common.load_average()}
        rows.append(row)
        log(f"scale train {backbone}@{size}: {row['images']} images: setup {setup:.1f}s, cache "
            f"{row['cache_mib']:.0f} MiB, step {step:.2f}s (bare {row['bare_step_s']:.2f}s), one pass "
            f"{row['pass_s']:.0f}s, peak {common.fmt(peak, '.0f')} MiB")
        del ds
        gc.collect()
    return rows


def synthetic_gallery(n: int, dim: int = 128, per_identity: int = 10, seed: int = 0):
    import numpy as np

    from tripletface.gallery import FORMAT, Gallery

    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = np.arange(n) // per_identity
    names = np.array([f"id{i:07d}" for i in ids])
    keys = np.array([f"id{i:07d}/{j:07d}" for j, i in enumerate(ids)])
    meta = {"format": FORMAT, "model_fingerprint": "synthetic", "model": "synthetic", "dim": dim,
            "metric": "euclidean", "index": "exact"}
    return Gallery(emb, names, keys, meta)


def measure_identify(sizes: list[int], queries: int = 20, log=print) -> list[dict]:
    import numpy as np

    from tripletface.gallery import load_gallery, nearest_identities, save_gallery

    rows = []
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        for n in sizes:
            g = synthetic_gallery(n)
            path = Path(tmp) / f"g{n}.npz"
            save_gallery(g, path)
            common.reset_peak()
            loads = []
            for _ in range(3):
                t0 = time.perf_counter()
                g = load_gallery(path)
                loads.append(time.perf_counter() - t0)
            q = rng.standard_normal((queries, g.embeddings.shape[1])).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            search, bare = [], []
            emb = g.embeddings
            for i in range(queries):  # alternate real / ceiling query by query
                t0 = time.perf_counter()
                nearest_identities(g, q[i], top_k=5)
                search.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                emb @ q[i]
                bare.append(time.perf_counter() - t0)
            row = {"entries": n, "identities": len(set(g.names.tolist())) if n <= 100_000 else n // 10,
                   "file_mib": path.stat().st_size / 2**20, "load_s": common.median(loads),
                   "search_ms": 1e3 * common.median(search), "bare_matvec_ms": 1e3 * common.median(bare),
                   "peak_rss_mib": common.peak_rss_mib(), "loadavg": common.load_average()}
            row["ratio"] = row["bare_matvec_ms"] / row["search_ms"]
            rows.append(row)
            log(f"scale identify: {n} entries: load {row['load_s'] * 1e3:.0f} ms, search {row['search_ms']:.1f} ms "
                f"(bare mat-vec {row['bare_matvec_ms']:.2f} ms)")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=Path, default=None)
    parser.add_argument("--train-sizes", default="1000,3000,6909", help="images per training set")
    parser.add_argument("--gallery-sizes", default="1000,10000,100000", help="gallery entries")
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    gallery_sizes = [int(s) for s in args.gallery_sizes.split(",") if s.strip()]
    identify = measure_identify(gallery_sizes, log=log)
    training = []
    if not args.skip_training:
        common.quiet_tensorflow()
        from tripletface.cli import import_tensorflow_quietly

        import_tensorflow_quietly()
        crops = args.crops or common.default_crops()
        index = bench_train.load_index(crops)
        training = measure_training(index, [int(s) for s in args.train_sizes.split(",") if s.strip()],
                                    args.backbone, batch=args.batch, steps=args.steps, log=log)
        common.print_table(["images", "identities", "set-up s", "cache MiB", "step s", "bare step s",
                            "one pass s", "peak MiB"],
                           [[r["images"], r["identities"], common.fmt(r["setup_s"]), common.fmt(r["cache_mib"], ".0f"),
                             common.fmt(r["step_s"], ".2f"), common.fmt(r["bare_step_s"], ".2f"),
                             common.fmt(r["pass_s"], ".0f"), common.fmt(r["peak_rss_mib"], ".0f")] for r in training])
    common.print_table(["gallery entries", "file MiB", "load ms", "search ms", "bare mat-vec ms", "peak MiB"],
                       [[r["entries"], common.fmt(r["file_mib"]), common.fmt(r["load_s"] * 1e3, ".0f"),
                         common.fmt(r["search_ms"], ".1f"), common.fmt(r["bare_matvec_ms"], ".2f"),
                         common.fmt(r["peak_rss_mib"], ".0f")] for r in identify])
    print(f"load average {common.load_average()} ({os.cpu_count()} CPUs)")
    common.save_results(args.json, __file__, argv, scale_training=training, scale_identify=identify)
    return 0


if __name__ == "__main__":
    common.quiet_tensorflow()
    raise SystemExit(main())
