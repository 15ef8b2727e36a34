"""Scale: how training time per epoch and ``identify`` latency grow with the data.

* **training**: one trainer (``cpu`` preset model, P×K batches, the config's augmentation)
  run on the real pipeline over aligned-crop sets of growing size (subsets of the crops;
  sizes beyond the crops repeat them under new identity names, which costs the same to
  decode and cache). Per size: the dataset set-up (index, decode every file once into the
  uint8 cache), the cache size, the step time, and the time of one pass over the data
  (``images / img/s``; ``tripletface train`` counts epochs in ``train.steps_per_epoch``
  steps, so its epochs do not grow with the data, only the set-up does).
* **tree** (CASIA-WebFace size and beyond): a synthetic crop tree of up to 500k files in two
  sources (``<source>/<identity>/<n>.png``, ~47 images per identity as in CASIA-WebFace's
  494k images of 10.5k identities), hard links to the real crops so no disk is spent on
  pixels. Per size: the set-up of a two-source training run (index, identity split, P×K
  dataset: what ``tripletface train`` does before its first step), the process's peak
  memory, and the steady time per batch of the pipeline alone and of a training step fed by
  it against the same step on one fixed batch. The cache takes what fits in a quarter of
  memory; a tree that does not fit streams from disk (no decode pass at set-up).
* **identify**: synthetic galleries of 1k, 10k and 100k unit embeddings (dim 128, 10 rows per
  identity), saved with ``save_gallery``; per size the time to load and check the gallery
  (``load_gallery``) and to search it (``nearest_identities``, exact), against the bare ceiling
  of one float32 matrix-vector product over the same rows. The query's embedding (one forward)
  does not depend on the gallery size and is left out.

    python benchmarks/bench_scale.py                                   # ~5 min on 2 cores
    python benchmarks/bench_scale.py --skip-training --skip-identify --tree-sizes 50000,150000,500000
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

    from tripletface.data.index import FaceIndex

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

    from tripletface.data.samplers import build_train_dataset
    from tripletface.training.trainer import build_embedder, build_trainer

    cfg = bench_train.train_config(backbone, size, batch, k)
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.train.seed)
    embedder = build_embedder(cfg, weights=None)
    trainer, _ = build_trainer(cfg, embedder, total_steps=1000)  # as `tripletface train` runs it
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
        ds = build_train_dataset(cfg, idx)
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


def synthetic_tree(root: Path, crops: list[str], n_files: int, per_identity: int = 47, sources: int = 2) -> Path:
    """``root/src<s>/id<i>/<j>.png``: ``n_files`` hard links (or symlinks across file systems)
    to the real ``crops``, cycled; identities alternate between the sources."""
    n_ids = -(-n_files // per_identity)
    made = 0
    for i in range(n_ids):
        folder = root / f"src{i % sources}" / f"id{i:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(min(per_identity, n_files - made)):
            target, link = crops[made % len(crops)], folder / f"{j:03d}.png"
            try:
                os.link(target, link)
            except OSError:
                link.symlink_to(os.path.abspath(target))
            made += 1
    return root


def measure_tree(crops_root: Path, sizes: list[int], batches: int = 20, steps: int = 6, log=print) -> list[dict]:
    """Set-up time, peak memory and steady batch / step time of a two-source run on synthetic trees."""
    import gc
    import shutil

    import keras
    import numpy as np
    import tensorflow as tf

    from tripletface.data.index import index_folder, index_folders, split_by_identity
    from tripletface.data.pipeline import cache_budget_bytes
    from tripletface.data.samplers import build_train_dataset
    from tripletface.config import load_config
    from tripletface.training.trainer import build_embedder, build_trainer

    crops = [p for p in index_folder(crops_root).paths if p.endswith(".png")]
    cfg = load_config("lfw-cpu")  # the recipe's pipeline: small_cnn at 64, P×K 32×4
    size = tuple(cfg.model.image_size)
    keras.utils.set_random_seed(0)
    embedder = build_embedder(cfg, weights=None)
    trainer, _ = build_trainer(cfg, embedder, total_steps=1000)  # as `tripletface train` runs it
    n = cfg.data.p * cfg.data.k
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (n, *size, 3)).astype(np.float32))
    bare = tf.data.Dataset.from_tensors((images, tf.constant(np.repeat(np.arange(cfg.data.p), cfg.data.k),
                                                            tf.int32))).repeat()
    trainer.fit(bare, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)  # trace
    rows = []
    for n_files in sizes:
        tmp = Path(tempfile.mkdtemp(prefix="bench_tree_"))
        try:
            t0 = time.perf_counter()
            synthetic_tree(tmp, crops, n_files)
            made_s = time.perf_counter() - t0
            gc.collect()
            common.reset_peak()
            base = common.rss_mib()
            t0 = time.perf_counter()
            index = index_folders([tmp / "src0", tmp / "src1"])
            t_index = time.perf_counter() - t0
            train_index, _ = split_by_identity(index, cfg.data.val_fraction, seed=cfg.data.seed)
            t_split = time.perf_counter() - t0 - t_index
            ds = build_train_dataset(cfg, train_index)
            setup = time.perf_counter() - t0
            setup_peak = common.peak_rss_mib()
            it = iter(ds)
            for _ in range(3):
                next(it)
            t1 = time.perf_counter()
            for _ in range(batches):
                next(it)
            batch_s = (time.perf_counter() - t1) / batches
            del it
            secs, nsteps, peak, _ = bench_train._block(trainer, ds, steps)
            b_secs, b_steps, _, _ = bench_train._block(trainer, bare, steps)
            row = {"files": n_files, "identities": index.num_identities, "make_tree_s": made_s, "index_s": t_index,
                   "split_s": t_split, "setup_s": setup, "rss_before_mib": base, "setup_peak_rss_mib": setup_peak,
                   "peak_rss_mib": peak, "batch_s": batch_s, "step_s": secs / nsteps, "bare_step_s": b_secs / b_steps,
                   "cache_fits": len(train_index) * size[0] * size[1] * 3 <= cache_budget_bytes(), "loadavg": common.load_average()}
            row["ratio"] = row["bare_step_s"] / row["step_s"]
            rows.append(row)
            log(f"scale tree: {n_files} files, {index.num_identities} identities: index {t_index:.1f}s, split "
                f"{t_split:.1f}s, set-up {setup:.1f}s, peak {common.fmt(setup_peak, '.0f')} MiB (from "
                f"{common.fmt(base, '.0f')}), batch {batch_s:.2f}s, step {row['step_s']:.2f}s (bare "
                f"{row['bare_step_s']:.2f}s)")
            del ds, index, train_index
            gc.collect()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def synthetic_gallery(n: int, dim: int = 128, per_identity: int = 10, seed: int = 0):
    import numpy as np

    from tripletface.inference.gallery import FORMAT, Gallery

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

    from tripletface.inference.gallery import load_gallery, save_gallery
    from tripletface.inference.search import nearest_identities

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
    parser.add_argument("--skip-identify", action="store_true")
    parser.add_argument("--tree-sizes", default="", help="files in synthetic two-source crop trees, e.g. "
                                                          "50000,150000,500000 (none by default)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    gallery_sizes = [int(s) for s in args.gallery_sizes.split(",") if s.strip()]
    identify = [] if args.skip_identify else measure_identify(gallery_sizes, log=log)
    training, tree = [], []
    tree_sizes = [int(s) for s in args.tree_sizes.split(",") if s.strip()]
    if tree_sizes:
        common.quiet_tensorflow()
        from tripletface.cli.startup import import_tensorflow_quietly

        import_tensorflow_quietly()
        tree = measure_tree(args.crops or common.default_crops(), tree_sizes, log=log)
        common.print_table(["files", "identities", "index s", "split s", "set-up s", "peak MiB", "batch s",
                            "step s", "bare step s"],
                           [[r["files"], r["identities"], common.fmt(r["index_s"]), common.fmt(r["split_s"]),
                             common.fmt(r["setup_s"]), common.fmt(r["setup_peak_rss_mib"], ".0f"),
                             common.fmt(r["batch_s"], ".2f"), common.fmt(r["step_s"], ".2f"),
                             common.fmt(r["bare_step_s"], ".2f")] for r in tree])
    if not args.skip_training:
        common.quiet_tensorflow()
        from tripletface.cli.startup import import_tensorflow_quietly

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
    if identify:
        common.print_table(["gallery entries", "file MiB", "load ms", "search ms", "bare mat-vec ms", "peak MiB"],
                           [[r["entries"], common.fmt(r["file_mib"]), common.fmt(r["load_s"] * 1e3, ".0f"),
                             common.fmt(r["search_ms"], ".1f"), common.fmt(r["bare_matvec_ms"], ".2f"),
                             common.fmt(r["peak_rss_mib"], ".0f")] for r in identify])
    print(f"load average {common.load_average()} ({os.cpu_count()} CPUs)")
    common.save_results(args.json, __file__, argv, scale_training=training, scale_identify=identify,
                        scale_tree=tree)
    return 0


if __name__ == "__main__":
    common.quiet_tensorflow()
    raise SystemExit(main())
