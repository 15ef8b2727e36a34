"""Training step: the real pipeline against the bare model step, side by side in one run.

* **real**: aligned crop files -> ``tripletface.dataset.build_train_dataset`` (P×K sampling,
  decoded once into the in-memory cache, per-image augmentation from the config, parallel
  map, prefetch) -> ``TripletTrainer.train_step`` (model -> mining loss -> optimizer), run
  by ``keras.Model.fit`` exactly as ``tripletface train`` runs it;
* **bare**: the same trainer (same model, loss, optimizer, compiled function) fed one
  constant in-memory batch of the same shape (``tf.data.Dataset.from_tensors(...).repeat()``),
  so nothing but the input pipeline differs.

Only warm steps are timed: the first call (tracing) is reported apart, and each timed block
(one ``fit`` call, so one fresh iterator: no pipeline work spills into the next block) starts
with one untimed step. Each round runs a real and a bare block back to back, in ABBA order;
the ratio is the median over rounds of (bare step time / real step time), the number least
disturbed by other processes sharing the cores. The same ratio in process CPU seconds per
step is reported as ``cpu_ratio``. Peak memory is the RSS high-water mark of each kind of block
(reset before each): ``bare`` is measured before the dataset exists; ``real`` includes the
decoded-image cache (its size is reported as ``cache_mib``).

    python benchmarks/bench_train.py                                   # all three, batch 16
    python benchmarks/bench_train.py --configs mobilenet@112 --batch 64 --steps 8 --json train.json
    python benchmarks/bench_train.py --precision bfloat16              # mixed bfloat16

Target (issue 3): real/bare >= 0.95.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

DEFAULT_CONFIGS = ("resnet50@112", "resnet50@224", "mobilenet@112")
TARGET = 0.95


def parse_config(text: str) -> tuple[str, int]:
    """``"resnet50@112"`` -> ``("resnet50", 112)``."""
    name, _, size = text.partition("@")
    try:
        side = int(size)
    except ValueError:
        raise argparse.ArgumentTypeError(f"config must look like BACKBONE@SIZE (resnet50@112), received: {text!r}")
    return name.strip(), side


def train_config(backbone: str, size: int, batch: int, k: int, precision: str = "float32",
                 augment: str = "default", extra: dict | None = None):
    """The ``cpu`` preset with this backbone, input size, P×K batch and precision."""
    from tripletface.config import load_config

    overrides = {"model.backbone": backbone, "model.image_size": (size, size), "data.batch_size": batch,
                 "data.k": k, "train.mixed_precision": precision, "model.weights": None}
    if augment == "strong":
        overrides.update({"augment.contrast": 0.3, "augment.color_jitter": 0.2, "augment.gaussian_blur": 0.2,
                          "augment.motion_blur": 0.2, "augment.cutout": 0.3})
    elif augment == "none":
        overrides.update({"augment.flip": False, "augment.rotation": 0, "augment.brightness": 0})
    overrides.update(extra or {})
    return load_config(preset="cpu", overrides=overrides)


def load_index(crops: Path, limit: int = 0):
    """Index the crops; with ``limit`` keep the first identities holding about that many images."""
    import numpy as np

    from tripletface import dataset as D

    index = D.index_folder(crops)
    if limit and limit < len(index):
        cum = np.cumsum(index.counts())
        index = index.subset(range(int(np.searchsorted(cum, limit)) + 1))
    return index


class _StepClock:
    """A fit callback recording when each step ended, in wall and process CPU seconds.

    The logs are read at each step end, so the step has finished when the time is taken.
    """

    def __new__(cls):
        import keras

        class StepClock(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.ends = []
                self.cpu = []

            def on_train_batch_end(self, batch, logs=None):
                if logs and "loss" in logs:
                    float(logs["loss"])
                self.ends.append(time.perf_counter())
                self.cpu.append(time.process_time())

        return StepClock()


def _block(trainer, ds, steps: int, warm: int = 1) -> tuple[float, int, float | None, float]:
    """Run ``warm + steps`` steps with fit (a fresh iterator, as each ``fit`` makes, so no pipeline
    work spills into the next block); returns (wall seconds of the last ``steps``, steps, peak RSS
    MiB, process CPU seconds of the last ``steps``)."""
    clock = _StepClock()
    common.reset_peak()
    trainer.fit(ds, epochs=1, steps_per_epoch=warm + steps, verbose=0, callbacks=[clock], shuffle=False)
    return (clock.ends[-1] - clock.ends[warm - 1], steps, common.peak_rss_mib(),
            clock.cpu[-1] - clock.cpu[warm - 1])


def measure(cfg, index, steps: int = 4, rounds: int = 2, warmup: int = 2, log=print) -> dict:
    """Real vs bare training step for ``cfg`` (a Config) on ``index`` (a FaceIndex); see the module doc."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tripletface import dataset as D
    from tripletface import model as M
    from tripletface.augment import enabled_ops
    from tripletface.losses import get_loss
    from tripletface.train import make_optimizer, make_trainer, resolve_precision

    backbone, (h, w) = cfg.model.backbone, tuple(cfg.model.image_size)
    p, k = cfg.data.p, cfg.data.k
    n = p * k
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.train.seed)
    policy = resolve_precision(cfg.train.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    try:
        embedder = M.build_embedding_model(backbone, cfg.model.embedding_dim, (h, w), weights=None,
                                           dropout=cfg.model.dropout, width=cfg.model.width)
        trainer = make_trainer(embedder, get_loss(cfg.loss))
        trainer.compile(optimizer=make_optimizer(cfg.train, cfg.train.epochs * cfg.train.steps_per_epoch),
                        jit_compile=False)
        rng = np.random.default_rng(0)
        images = tf.constant(rng.integers(0, 256, (n, h, w, 3)).astype(np.float32))
        labels = tf.constant(np.repeat(np.arange(p, dtype=np.int32), k))
        bare = tf.data.Dataset.from_tensors((images, labels)).repeat()

        # tracing and warm-up, then a bare block before the dataset exists (its memory peak)
        clock = _StepClock()
        t0 = time.perf_counter()
        trainer.fit(bare, epochs=1, steps_per_epoch=warmup, verbose=0, callbacks=[clock], shuffle=False)
        trace_s = clock.ends[0] - t0
        _, _, peak_bare, _ = _block(trainer, bare, steps)

        rss_before = common.rss_mib()
        t0 = time.perf_counter()
        real = D.build_train_dataset(cfg, index)
        setup_s = time.perf_counter() - t0
        cache_mib = len(index) * h * w * 3 / 2**20 if cfg.data.cache else 0.0
        rss_after = common.rss_mib()
        # rounds of two adjacent blocks, in ABBA order (real, bare | bare, real | ...)
        blocks = {"real": [], "bare": []}
        cpu = {"real": [], "bare": []}
        real_peaks = []
        for r in range(rounds):
            for kind in (("real", "bare") if r % 2 == 0 else ("bare", "real")):
                secs, nsteps, peak, cpu_s = _block(trainer, real if kind == "real" else bare, steps)
                blocks[kind].append(secs / nsteps)
                cpu[kind].append(cpu_s / nsteps)
                if kind == "real":
                    real_peaks.append(peak)
        real_step, bare_step = common.median(blocks["real"]), common.median(blocks["bare"])
        real_ips, bare_ips = n / real_step, n / bare_step
        # each round's two blocks ran back to back: the median of their ratios is the number least
        # disturbed by other processes' load
        paired = common.median(b / r for r, b in zip(blocks["real"], blocks["bare"]))
        cpu_ratio = common.median(cpu["bare"]) / common.median(cpu["real"])
        result = {
            "config": f"{backbone}@{h}", "backbone": backbone, "image_size": [h, w], "batch": n, "p": p, "k": k,
            "precision": policy, "loss": cfg.loss.name, "augment": list(enabled_ops(cfg.augment)),
            "images_in_data": len(index), "steps_timed_per_block": steps, "rounds": rounds,
            "real_img_s": real_ips, "bare_img_s": bare_ips, "ratio": paired, "ratio_of_medians": real_ips / bare_ips,
            "cpu_ratio": cpu_ratio, "step_s": {"real": blocks["real"], "bare": blocks["bare"]},
            "cpu_s_per_step": cpu,
            "first_call_s": trace_s, "dataset_setup_s": setup_s, "cache_mib": cache_mib,
            "dataset_rss_growth_mib": (rss_after - rss_before) if rss_after and rss_before else None,
            "peak_rss_mib": {"real": max(real_peaks) if real_peaks and real_peaks[0] is not None else None,
                             "bare": peak_bare},
            "target": TARGET, "loadavg": common.load_average(),
        }
        log(f"{result['config']:>14s} {policy:>14s}  bare {bare_ips:7.1f} img/s  real {real_ips:7.1f} img/s  "
            f"ratio {result['ratio']:.3f} (CPU time {cpu_ratio:.3f})  peak MiB bare "
            f"{common.fmt(result['peak_rss_mib']['bare'], '.0f')} "
            f"real {common.fmt(result['peak_rss_mib']['real'], '.0f')}  (first call {trace_s:.1f}s, "
            f"data setup {setup_s:.1f}s, load {result['loadavg']})")
        del real
        return result
    finally:
        keras.mixed_precision.set_global_policy("float32")


def print_results(results: list[dict], file=None) -> None:
    rows = [[r["config"], r["precision"], r["batch"], common.fmt(r["bare_img_s"]), common.fmt(r["real_img_s"]),
             common.fmt(r["ratio"], ".3f"), common.fmt(r["cpu_ratio"], ".3f"),
             "met" if min(r["ratio"], r["cpu_ratio"]) >= TARGET else "MISSED",
             common.fmt(r["peak_rss_mib"]["bare"], ".0f"), common.fmt(r["peak_rss_mib"]["real"], ".0f"),
             common.fmt(r["first_call_s"])] for r in results]
    common.print_table(["config", "precision", "batch", "bare img/s", "real img/s", "real/bare", "CPU ratio",
                        f">= {TARGET}", "peak MiB bare", "peak MiB real", "first call s"], rows, file=file)


def _run_children(argv: list[str], configs) -> list[dict]:
    """Each config in a child process of this script (same arguments, one config, ``--in-process``)."""
    import json
    import subprocess
    import tempfile

    args = []
    skip = False
    for a in argv:  # drop --configs/--json (and their values); the child gets its own
        if skip:
            skip = False
            continue
        if a in ("--configs", "--json"):
            skip = True
            continue
        if a.startswith(("--configs=", "--json=")):
            continue
        args.append(a)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for i, (backbone, size) in enumerate(configs):
            out = Path(tmp) / f"{i}.json"
            cmd = [sys.executable, __file__, *args, "--configs", f"{backbone}@{size}", "--json", str(out),
                   "--in-process"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            results += json.loads(out.read_text())["train_step"]
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help="comma-separated BACKBONE@SIZE (default: %(default)s)")
    parser.add_argument("--crops", type=Path, default=None,
                        help="aligned crops <identity>/<image> (default: $TRIPLETFACE_CROPS, ../runs/lfw112, "
                             "else the raw lfw-dev photos)")
    parser.add_argument("--limit", type=int, default=0, help="use about this many images (0 = all)")
    parser.add_argument("--batch", type=int, default=16, help="P*K images per step (default 16)")
    parser.add_argument("--k", type=int, default=4, help="images per identity (default 4)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per block (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of a real and a bare block (default 3)")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--augment", default="default", choices=("default", "strong", "none"),
                        help="the config's augmentations (flip, rotation, brightness), all of them, or none")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--in-process", action="store_true",
                        help="measure every config in this process (default: one child process per config, "
                             "so each peak memory is that config's own)")
    args = parser.parse_args(argv)
    configs = [parse_config(c) for c in args.configs.split(",") if c.strip()]
    crops = args.crops or common.default_crops()
    if not crops.is_dir():
        print(f"error: {crops}: crops not found (pass --crops or set TRIPLETFACE_CROPS)", file=sys.stderr)
        return 2
    if len(configs) > 1 and not args.in_process:
        results = _run_children(argv if argv is not None else sys.argv[1:], configs)
    else:
        common.quiet_tensorflow()
        from tripletface.cli import import_tensorflow_quietly

        import_tensorflow_quietly()
        index = load_index(crops, args.limit)
        print(f"data: {crops} ({index.describe()}); load average {common.load_average()} on {os.cpu_count()} CPUs",
              file=sys.stderr)
        results = []
        for backbone, size in configs:
            cfg = train_config(backbone, size, args.batch, args.k, args.precision, args.augment)
            results.append(measure(cfg, index, steps=args.steps, rounds=args.rounds,
                                   log=lambda s: print(s, file=sys.stderr)))
    print_results(results)
    print(f"load average {common.load_average()} ({os.cpu_count()} CPUs); target real/bare >= {TARGET}")
    common.save_results(args.json, __file__, argv, train_step=results, data=str(crops))
    return 0


if __name__ == "__main__":
    common.quiet_tensorflow()
    raise SystemExit(main())
