"""Training step: the real pipeline against the bare model step, side by side in one run.

* **real**: aligned crop files -> ``tripletface.data.samplers.build_train_dataset`` (P×K sampling,
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

``--levers`` (issue 14) measures instead the real step built several ways, side by side in one
process (:func:`measure_levers`; ``--profile DIR`` adds each one's op-level breakdown), e.g. the
training-speed target's setting (the lfw-cpu preset: small_cnn at 64 px, P×K 32×4, semi-hard)::

    python benchmarks/bench_train.py --preset lfw-cpu --configs small_cnn@64 --batch 128 --steps 3 \\
        --rounds 3 --levers keras,fused_bn,jit,fused_bn+jit,fused_bn+spe4,nchw
"""

from __future__ import annotations

import argparse
import os
import re
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
                 augment: str = "default", extra: dict | None = None, preset: str = "cpu"):
    """``preset`` (the ``cpu`` one unless told) with this backbone, input size, P×K batch and precision."""
    from tripletface.config import load_config

    overrides = {"model.backbone": backbone, "model.image_size": (size, size), "data.batch_size": batch,
                 "data.k": k, "train.mixed_precision": precision, "model.weights": None}
    if augment == "strong":
        overrides.update({"augment.contrast": 0.3, "augment.color_jitter": 0.2, "augment.gaussian_blur": 0.2,
                          "augment.motion_blur": 0.2, "augment.cutout": 0.3})
    elif augment == "none":
        overrides.update({"augment.flip": False, "augment.rotation": 0, "augment.brightness": 0})
    overrides.update(extra or {})
    return load_config(preset=preset, overrides=overrides)


def load_index(crops: Path, limit: int = 0):
    """Index the crops; with ``limit`` keep the first identities holding about that many images."""
    import numpy as np

    from tripletface.data.index import index_folder

    index = index_folder(crops)
    if limit and limit < len(index):
        cum = np.cumsum(index.counts())
        index = index.subset(range(int(np.searchsorted(cum, limit)) + 1))
    return index


def _block(trainer, ds, steps: int, warm: int = 1, per_execution: int = 1) -> tuple[float, int, float | None, float]:
    """Run ``warm + steps`` steps with fit (a fresh iterator, as each ``fit`` makes, so no pipeline
    work spills into the next block); returns (wall seconds of the last ``steps``, steps, peak RSS
    MiB, process CPU seconds of the last ``steps``). With ``per_execution`` steps per compiled call
    (``compile(steps_per_execution=...)``, callbacks see one batch end per call) both counts are
    rounded up to whole calls."""
    from tripletface.training.callbacks import StepTimer  # records each step's end, wall and CPU

    calls = lambda n: -(-n // per_execution)  # noqa: E731
    warm, steps = calls(warm) * per_execution, calls(steps) * per_execution
    clock = StepTimer()
    common.reset_peak()
    trainer.fit(ds, epochs=1, steps_per_epoch=warm + steps, verbose=0, callbacks=[clock], shuffle=False)
    first = calls(warm) - 1
    return (clock.ends[-1] - clock.ends[first], steps, common.peak_rss_mib(), clock.cpu[-1] - clock.cpu[first])


def measure(cfg, index, steps: int = 4, rounds: int = 2, warmup: int = 2, log=print) -> dict:
    """Real vs bare training step for ``cfg`` (a Config) on ``index`` (a FaceIndex); see the module doc."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tripletface.data.samplers import build_train_dataset
    from tripletface.data.augment import enabled_ops
    from tripletface.training.callbacks import StepTimer
    from tripletface.training.precision import resolve_precision
    from tripletface.training.trainer import build_embedder, build_trainer

    backbone, (h, w) = cfg.model.backbone, tuple(cfg.model.image_size)
    p, k = cfg.data.p, cfg.data.k
    # images per step: P×K, or for explicit triplets B triplets stacked (anchors, positives, negatives)
    triplets = cfg.data.sampling != "pk"
    n = 3 * cfg.data.batch_size if triplets else p * k
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.train.seed)
    policy = resolve_precision(cfg.train.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    try:
        embedder = build_embedder(cfg, weights=None)
        trainer, _ = build_trainer(cfg, embedder)  # as `tripletface train` runs it
        rng = np.random.default_rng(0)
        images = tf.constant(rng.integers(0, 256, (n, h, w, 3)).astype(np.float32))
        b = cfg.data.batch_size
        labels = tf.constant(np.concatenate([np.arange(b), np.arange(b), b + np.arange(b)]).astype(np.int32) if triplets
                             else np.repeat(np.arange(p, dtype=np.int32), k))
        bare = tf.data.Dataset.from_tensors((images, labels)).repeat()

        # tracing and warm-up, then a bare block before the dataset exists (its memory peak)
        clock = StepTimer()
        t0 = time.perf_counter()
        trainer.fit(bare, epochs=1, steps_per_epoch=warmup, verbose=0, callbacks=[clock], shuffle=False)
        trace_s = clock.ends[0] - t0
        _, _, peak_bare, _ = _block(trainer, bare, steps)

        rss_before = common.rss_mib()
        t0 = time.perf_counter()
        real = build_train_dataset(cfg, index)
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


# --------------------------------------------------------------------------- levers (issue 14)

# The training-step levers, each a word of a ``--levers`` entry ("fused_bn+jit"): the step as it
# was before them is "keras" (Keras' BatchNorm ops, no XLA, one step per compiled call, NHWC).
LEVER_WORDS = {
    "keras": "Keras 3's BatchNorm (separate moments and normalisation ops), no XLA, NHWC",
    "fused_bn": "BatchNorm training pass as TensorFlow's fused kernel (tripletface.training.trainer.fuse_batch_norm)",
    "jit": "XLA: compile(jit_compile=True)",
    "spe<N>": "compile(steps_per_execution=N): N steps per call of the compiled function",
    "nchw": "small_cnn in channels_first (NCHW) layout after the preprocessing layer",
}
DEFAULT_LEVERS = ("keras", "fused_bn", "jit", "fused_bn+jit", "fused_bn+spe4", "nchw")


def parse_lever(text: str) -> dict:
    """``"fused_bn+jit+spe4"`` -> ``{"name": ..., "fused_bn": True, "jit": True, "spe": 4, "nchw": False}``."""
    lever = {"name": text.strip(), "fused_bn": False, "jit": False, "spe": 1, "nchw": False}
    for word in (w.strip() for w in text.split("+")):
        if word in ("fused_bn", "jit", "nchw"):
            lever[word] = True
        elif word.startswith("spe") and word[3:].isdigit() and int(word[3:]) >= 1:
            lever["spe"] = int(word[3:])
        elif word != "keras":
            raise argparse.ArgumentTypeError(f"unknown lever {word!r} in {text!r}; levers: "
                                             + ", ".join(LEVER_WORDS))
    return lever


def _small_cnn_nchw(cfg):
    """small_cnn (tripletface.model.build._small_cnn, same layers and widths) with its convolutions,
    BatchNorm and pooling in channels_first: one transpose after the preprocessing layer."""
    import keras

    from tripletface.model.build import PREPROCESS_MODES
    from tripletface.model.layers import FacePreprocess, L2Normalize

    h, w = tuple(cfg.model.image_size)
    inputs = keras.Input((h, w, 3), name="image")
    x = FacePreprocess(PREPROCESS_MODES["small_cnn"], name="preprocess")(inputs)
    x = keras.layers.Permute((3, 1, 2), name="to_nchw")(x)
    for i, ch in enumerate((32, 64, 128, 256)):
        ch = max(8, int(ch * cfg.model.width))
        for j in range(2):
            x = keras.layers.Conv2D(ch, 3, strides=2 if (j == 0 and i > 0) else 1, padding="same", use_bias=False,
                                    data_format="channels_first", name=f"stage{i}_conv{j}")(x)
            x = keras.layers.BatchNormalization(axis=1, name=f"stage{i}_bn{j}")(x)
            x = keras.layers.ReLU(name=f"stage{i}_relu{j}")(x)
    x = keras.layers.GlobalAveragePooling2D(data_format="channels_first", name="gap")(x)
    x = keras.layers.Dense(int(cfg.model.embedding_dim), name="embedding")(x)
    return keras.Model(inputs, L2Normalize(name="l2_normalize")(x), name="tripletface_small_cnn_nchw")


def _lever_trainer(cfg, lever: dict):
    import keras

    from tripletface.model.build import build_embedding_model
    from tripletface.losses import get_loss
    from tripletface.training.trainer import fuse_batch_norm, make_optimizer, make_trainer

    keras.utils.set_random_seed(cfg.train.seed)  # every lever starts from the same weights
    if lever["nchw"]:
        if cfg.model.backbone != "small_cnn":
            raise SystemExit(f"error: lever nchw: only for small_cnn, received: {cfg.model.backbone}")
        embedder = _small_cnn_nchw(cfg)
    else:
        embedder = build_embedding_model(cfg.model.backbone, cfg.model.embedding_dim, tuple(cfg.model.image_size),
                                         weights=None, dropout=cfg.model.dropout, width=cfg.model.width)
    if lever["fused_bn"]:
        fuse_batch_norm(embedder)
    trainer = make_trainer(embedder, get_loss(cfg.loss))
    trainer.compile(optimizer=make_optimizer(cfg.train, cfg.train.epochs * cfg.train.steps_per_epoch),
                    jit_compile=lever["jit"], steps_per_execution=lever["spe"])
    return trainer


def measure_levers(cfg, index, levers: list[dict], steps: int = 4, rounds: int = 3, log=print) -> dict:
    """Each lever's real training step (``cfg``'s pipeline on ``index``) against the first lever's,
    in one process: one trainer per lever, then ``rounds`` rounds of one block per lever, the
    order rotated and reversed from round to round. A lever's speed-up is the median over rounds
    of (first lever's step time / its step time) in the same round; also in CPU seconds per step."""
    import keras

    from tripletface.data.samplers import build_train_dataset
    from tripletface.training.callbacks import StepTimer
    from tripletface.training.precision import resolve_precision

    p, k = cfg.data.p, cfg.data.k
    n = p * k
    keras.backend.clear_session()
    policy = resolve_precision(cfg.train.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    try:
        real = build_train_dataset(cfg, index)
        trainers, first_call, first_loss = [], [], []
        for lever in levers:
            try:
                trainer = _lever_trainer(cfg, lever)
                clock = StepTimer()
                t0 = time.perf_counter()
                h = trainer.fit(real, epochs=1, steps_per_epoch=lever["spe"], verbose=0, callbacks=[clock],
                                shuffle=False)
                first_call.append(clock.ends[0] - t0)
                first_loss.append(float(h.history["loss"][-1]))
            except Exception as e:  # a lever that does not build or compile here is reported, not fatal
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                why = next((ln for ln in reversed(lines) if not ln.startswith(("[[", "Detected at", "File "))),
                           type(e).__name__)
                log(f"lever {lever['name']}: failed: {type(e).__name__}: {why[:300]}")
                trainer = None
                first_call.append(None)
                first_loss.append(None)
            trainers.append(trainer)
        wall = {lv["name"]: [] for lv in levers}
        cpu = {lv["name"]: [] for lv in levers}
        order = [i for i, t in enumerate(trainers) if t is not None]
        for r in range(rounds):
            turn = order[r % len(order):] + order[:r % len(order)]
            for i in (turn if r % 2 == 0 else turn[::-1]):
                secs, nsteps, _, cpu_s = _block(trainers[i], real, steps, warm=levers[i]["spe"],
                                                per_execution=levers[i]["spe"])
                wall[levers[i]["name"]].append(secs / nsteps)
                cpu[levers[i]["name"]].append(cpu_s / nsteps)
        base = levers[0]["name"]
        rows = []
        for lever, fc, loss in zip(levers, first_call, first_loss):
            name = lever["name"]
            ok = bool(wall[name]) and bool(wall[base])
            rows.append({
                "lever": name, "failed": not wall[name], "first_call_s": fc, "first_step_loss": loss,
                "img_s": n / common.median(wall[name]) if wall[name] else None,
                "speedup": common.median(b / t for b, t in zip(wall[base], wall[name])) if ok else None,
                "cpu_speedup": common.median(b / t for b, t in zip(cpu[base], cpu[name])) if ok else None,
                "step_s": wall[name], "cpu_s_per_step": cpu[name]})
            log(f"{name:>16s}  {common.fmt(rows[-1]['img_s'])} img/s  x{common.fmt(rows[-1]['speedup'], '.3f')} "
                f"(CPU x{common.fmt(rows[-1]['cpu_speedup'], '.3f')})  first call {common.fmt(fc)}s  "
                f"first loss {common.fmt(loss, '.5f')}")
        del real
        return {"config": f"{cfg.model.backbone}@{cfg.model.image_size[0]}", "batch": n, "p": p, "k": k,
                "precision": policy, "loss": cfg.loss.name, "baseline": base, "steps_timed_per_block": steps,
                "rounds": rounds, "levers": rows, "loadavg": common.load_average()}
    finally:
        keras.mixed_precision.set_global_policy("float32")


# Op-level shares of a step, from the TensorFlow profiler's host trace: each op's node name
# (and type) says which part of the step it belongs to; the first match wins.
OP_PARTS = (
    ("conv backprop", lambda path, op: op.startswith("Conv2DBackprop") or "Conv2DBackprop" in op),
    ("conv forward", lambda path, op: op in ("Conv2D", "_FusedConv2D") or op.endswith("Conv2D")),
    ("batchnorm (fwd + bwd)", lambda path, op: "BatchNorm" in op or re.search(r"_bn\d|batch_norm", path)),
    ("relu (fwd + bwd)", lambda path, op: op.startswith("Relu")),
    ("optimizer", lambda path, op: re.search(r"adam|Adam|optimizer|ResourceApply|AssignSub|AssignVariable", path + op)),
    ("rest of the net (preprocess, pool, dense, l2)", lambda path, op: "tripletface_" in path),
    ("loss + miner (distances, masks, sort, search)", lambda path, op: True),
)


def op_shares(logdir: Path, wall_s: float, steps: int) -> dict:
    """Seconds per step of each :data:`OP_PARTS` part (op time summed over TensorFlow's compute
    threads), and ``idle`` = wall time no op was running (the Python fit loop, callbacks,
    executor dispatch), per step."""
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(sorted(glob.glob(str(logdir / "plugins/profile/*/*.xplane.pb")))[-1]).read_bytes())
    host = next(pl for pl in space.planes if pl.name == "/host:CPU")
    parts = {name: 0.0 for name, _ in OP_PARTS}
    spans = []
    for line in host.lines:
        if not line.name.startswith("tf_Compute") and not line.name.startswith("tf_XLA"):
            continue
        for e in line.events:
            name = host.event_metadata[e.metadata_id].name
            if name in ("ExecutorState::Process", "ParallelFor") or ":" not in name:
                continue
            path, _, op = name.rpartition(":")
            part = next(n for n, match in OP_PARTS if match(path, op))
            parts[part] += e.duration_ps / 1e12 / steps
            start = line.timestamp_ns * 1e-9 + e.offset_ps * 1e-12
            spans.append((start, start + e.duration_ps * 1e-12))
    busy, end = 0.0, -1.0
    for a, b in sorted(spans):  # the union of the ops' intervals
        if b > end:
            busy += b - max(a, end)
            end = b
    return {"op_s_per_step": parts, "idle_s_per_step": max(0.0, wall_s - busy) / steps, "wall_s_per_step": wall_s / steps}


def profile_levers(cfg, index, levers: list[dict], steps: int, logdir: Path, log=print) -> list[dict]:
    """One profiled block of ``steps`` real steps per lever (after one untimed step): :func:`op_shares`."""
    import shutil

    import keras
    import tensorflow as tf

    from tripletface.data.samplers import build_train_dataset
    from tripletface.training.precision import resolve_precision

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(resolve_precision(cfg.train.mixed_precision))
    out = []
    try:
        real = build_train_dataset(cfg, index)
        for lever in levers:
            trainer = _lever_trainer(cfg, lever)
            trainer.fit(real, epochs=1, steps_per_epoch=2 * lever["spe"], verbose=0, shuffle=False)
            d = logdir / re.sub(r"[^0-9A-Za-z_+]", "_", lever["name"])
            shutil.rmtree(d, ignore_errors=True)
            n = -(-steps // lever["spe"]) * lever["spe"]
            tf.profiler.experimental.start(str(d))
            t0 = time.perf_counter()
            trainer.fit(real, epochs=1, steps_per_epoch=n, verbose=0, shuffle=False)
            wall = time.perf_counter() - t0
            tf.profiler.experimental.stop()
            shares = {"lever": lever["name"], **op_shares(d, wall, n)}
            total = sum(shares["op_s_per_step"].values()) + shares["idle_s_per_step"]
            log(f"profile {lever['name']}: " + ", ".join(
                f"{k} {v:.3f}s ({100 * v / total:.0f}%)" for k, v in
                [*shares["op_s_per_step"].items(), ("idle (Python, dispatch)", shares["idle_s_per_step"])]))
            out.append(shares)
        return out
    finally:
        keras.mixed_precision.set_global_policy("float32")


def print_levers(result: dict, file=None) -> None:
    rows = [[r["lever"], "failed" if r["failed"] else common.fmt(r["img_s"]), common.fmt(r["speedup"], ".3f"),
             common.fmt(r["cpu_speedup"], ".3f"), common.fmt(r["first_call_s"]), common.fmt(r["first_step_loss"], ".5f")]
            for r in result["levers"]]
    print(f"{result['config']}, P×K {result['p']}×{result['k']}, {result['loss']}, {result['precision']}; "
          f"speed-up against {result['baseline']!r}, median of {result['rounds']} alternated rounds", file=file)
    common.print_table(["lever", "real img/s", "speed-up", "CPU speed-up", "first call s", "first-step loss"],
                       rows, file=file)


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
    parser.add_argument("--preset", default="cpu", help="the config preset the runs start from (default: cpu; "
                        "the training-speed target's setting is --preset lfw-cpu --configs small_cnn@64 --batch 128)")
    parser.add_argument("--levers", default=None, nargs="?", const=",".join(DEFAULT_LEVERS),
                        help="instead of real vs bare: the lever table, comma-separated levers (words joined by "
                             "'+': " + ", ".join(LEVER_WORDS) + "), the first the baseline (no value: "
                             "%(const)s)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="with --levers: also profile one block per lever (TensorFlow profiler traces in DIR) "
                             "and print each part's share of the step (conv backprop, BatchNorm, miner, ...)")
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
    if args.levers is not None:
        try:
            levers = [parse_lever(t) for t in args.levers.split(",") if t.strip()]
        except argparse.ArgumentTypeError as e:
            parser.error(str(e))
        if len(configs) != 1:
            parser.error("--levers measures one config: pass --configs BACKBONE@SIZE")
        common.quiet_tensorflow()
        from tripletface.cli.startup import import_tensorflow_quietly

        import_tensorflow_quietly()
        index = load_index(crops, args.limit)
        print(f"data: {crops} ({index.describe()}); load average {common.load_average()} on {os.cpu_count()} CPUs",
              file=sys.stderr)
        cfg = train_config(*configs[0], args.batch, args.k, args.precision, args.augment, preset=args.preset)
        result = measure_levers(cfg, index, levers, steps=args.steps, rounds=args.rounds,
                                log=lambda s: print(s, file=sys.stderr))
        if args.profile:
            result["profile"] = profile_levers(cfg, index, levers, args.steps, args.profile,
                                               log=lambda s: print(s, file=sys.stderr))
        print_levers(result)
        common.save_results(args.json, __file__, argv, levers=result, data=str(crops))
        return 0
    if len(configs) > 1 and not args.in_process:
        results = _run_children(argv if argv is not None else sys.argv[1:], configs)
    else:
        common.quiet_tensorflow()
        from tripletface.cli.startup import import_tensorflow_quietly

        import_tensorflow_quietly()
        index = load_index(crops, args.limit)
        print(f"data: {crops} ({index.describe()}); load average {common.load_average()} on {os.cpu_count()} CPUs",
              file=sys.stderr)
        results = []
        for backbone, size in configs:
            cfg = train_config(backbone, size, args.batch, args.k, args.precision, args.augment,
                               preset=args.preset)
            results.append(measure(cfg, index, steps=args.steps, rounds=args.rounds,
                                   log=lambda s: print(s, file=sys.stderr)))
    print_results(results)
    print(f"load average {common.load_average()} ({os.cpu_count()} CPUs); target real/bare >= {TARGET}")
    common.save_results(args.json, __file__, argv, train_step=results, data=str(crops))
    return 0


if __name__ == "__main__":
    common.quiet_tensorflow()
    raise SystemExit(main())
