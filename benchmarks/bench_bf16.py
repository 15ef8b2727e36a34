"""Mixed bfloat16 vs float32 on this CPU: training step and inference speed, and the accuracy cost.

* **speed**: two copies of the same model, one built under ``mixed_bfloat16`` and one under
  ``float32``, in one process; their bare training steps (``TripletTrainer`` on a constant
  batch, as in ``bench_train.py``) and their inference forwards (batch 64) alternate block by
  block. Ratio = float32 time / bfloat16 time (target >= 1.5x where the CPU has AVX512_BF16 or
  AMX; elsewhere ``train.mixed_precision=auto`` falls back to float32 with a message).
* **accuracy**: ``tripletface.training.loop.train`` with the same config and budget (the ``demo``
  preset: small_cnn at 64 px; steps, batch, seed) in each precision, on the aligned LFW dev
  crops minus every identity of the first two folds of the LFW dev pairs, then verification
  accuracy on those 1200 pairs (``evaluate_pairs``, aligned, threshold picked on the other
  fold, no flip averaging). Target: no more
  than 0.5 point lost. With a short budget the difference is within run-to-run noise (the
  fold standard deviation is reported with it); the JSON says how short.

    python benchmarks/bench_bf16.py                               # speed + accuracy (~15 min on 2 cores)
    python benchmarks/bench_bf16.py --skip-accuracy --configs resnet50@112,mobilenet@112
    python benchmarks/bench_bf16.py --configs "" --acc-epochs 5 --acc-steps 60 --acc-seeds 1,2   # accuracy only

The accuracy row needs a CPU with AVX512_BF16 or AMX: elsewhere bfloat16 is emulated and its
training runs about 6x slower than float32 (docs/PERFORMANCE.md, issue 14).
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

TARGET_SPEEDUP = 1.5
TARGET_ACC_LOSS = 0.5  # accuracy points


def bf16_supported() -> bool:
    from tripletface.training.precision import cpu_supports_bf16

    return cpu_supports_bf16()


def _build(cfg, policy: str):
    import keras

    from tripletface.training.trainer import build_embedder, build_trainer

    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(cfg.train.seed)
        embedder = build_embedder(cfg, weights=None)
        trainer, _ = build_trainer(cfg, embedder, total_steps=1000)  # as `tripletface train` runs it
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return embedder, trainer


def measure_speed(backbone: str, size: int, batch: int = 16, k: int = 4, steps: int = 3, rounds: int = 2,
                  infer_batch: int = 64, infer_calls: int = 4, log=print) -> dict:
    """Alternating float32 / mixed_bfloat16 blocks: bare training steps and inference forwards."""
    import keras
    import numpy as np
    import tensorflow as tf

    keras.backend.clear_session()
    cfg = bench_train.train_config(backbone, size, batch, k)
    p = cfg.data.p
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (p * k, size, size, 3)).astype(np.float32))
    labels = tf.constant(np.repeat(np.arange(p, dtype=np.int32), k))
    bare = tf.data.Dataset.from_tensors((images, labels)).repeat()
    x = tf.constant(rng.integers(0, 256, (infer_batch, size, size, 3)).astype(np.float32))
    spec = tf.TensorSpec((None, size, size, 3), tf.float32)
    kinds = {}
    for policy in ("float32", "mixed_bfloat16"):
        embedder, trainer = _build(cfg, policy)
        forward = tf.function(lambda t, m=embedder: m(t, training=False), input_signature=[spec])
        t0 = time.perf_counter()
        trainer.fit(bare, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)  # trace + warm
        forward(x).numpy()
        kinds[policy] = {"trainer": trainer, "forward": forward, "first_call_s": time.perf_counter() - t0,
                         "train": [], "infer": [], "train_cpu": [], "infer_cpu": [], "peak_train": [],
                         "peak_infer": []}
    for r in range(rounds):
        order = ("float32", "mixed_bfloat16") if r % 2 == 0 else ("mixed_bfloat16", "float32")
        for policy in order:
            kd = kinds[policy]
            secs, nsteps, peak, cpu_s = bench_train._block(kd["trainer"], bare, steps)
            kd["train"].append(secs / nsteps)
            kd["train_cpu"].append(cpu_s / nsteps)
            kd["peak_train"].append(peak)
        for policy in order:
            kd = kinds[policy]
            common.reset_peak()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(infer_calls):
                kd["forward"](x).numpy()
            kd["infer"].append((time.perf_counter() - t0) / infer_calls)
            kd["infer_cpu"].append((time.process_time() - c0) / infer_calls)
            kd["peak_infer"].append(common.peak_rss_mib())
    f32, b16 = kinds["float32"], kinds["mixed_bfloat16"]
    train_speedup = common.median(a / b for a, b in zip(f32["train"], b16["train"]))
    infer_speedup = common.median(a / b for a, b in zip(f32["infer"], b16["infer"]))
    n = p * k

    def peak(v):
        return max(v) if v and v[0] is not None else None

    result = {"config": f"{backbone}@{size}", "batch": n, "infer_batch": infer_batch,
              "train_img_s": {"float32": n / common.median(f32["train"]),
                              "bfloat16": n / common.median(b16["train"])},
              "infer_img_s": {"float32": infer_batch / common.median(f32["infer"]),
                              "bfloat16": infer_batch / common.median(b16["infer"])},
              "train_speedup": train_speedup, "infer_speedup": infer_speedup,
              "train_cpu_speedup": common.median(f32["train_cpu"]) / common.median(b16["train_cpu"]),
              "infer_cpu_speedup": common.median(f32["infer_cpu"]) / common.median(b16["infer_cpu"]),
              "peak_rss_mib": {"train": {"float32": peak(f32["peak_train"]), "bfloat16": peak(b16["peak_train"])},
                               "infer": {"float32": peak(f32["peak_infer"]), "bfloat16": peak(b16["peak_infer"])}},
              "step_s": {"float32": f32["train"], "bfloat16": b16["train"]},
              "forward_s": {"float32": f32["infer"], "bfloat16": b16["infer"]},
              "target": TARGET_SPEEDUP, "loadavg": common.load_average()}
    log(f"bf16 {result['config']}: train {train_speedup:.2f}x ({result['train_img_s']['float32']:.1f} -> "
        f"{result['train_img_s']['bfloat16']:.1f} img/s; CPU time {result['train_cpu_speedup']:.2f}x), inference "
        f"{infer_speedup:.2f}x ({result['infer_img_s']['float32']:.1f} -> {result['infer_img_s']['bfloat16']:.1f} "
        f"img/s; CPU time {result['infer_cpu_speedup']:.2f}x) (load {result['loadavg']})")
    return result


def holdout_pairs(pairs_file: Path, folds: int, out: Path) -> list[str]:
    """Write the first ``folds`` folds of an LFW pairs file to ``out``; return their identities.

    Training leaves these identities out, so the accuracy is on people the model never saw.
    """
    from tripletface.data.pairs import read_pairs

    pairs = read_pairs(pairs_file)
    lines = [line for line in pairs_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    header = lines[0].split()
    per_fold = int(header[1]) if len(header) == 2 else len(pairs) // 2
    n_folds = len({p.fold for p in pairs})
    folds = max(1, min(folds, n_folds))
    keep = lines[1:1 + folds * 2 * per_fold]
    out.write_text(f"{folds}\t{per_fold}\n" + "\n".join(keep) + "\n", encoding="utf-8")
    names = set()
    for p in pairs[:folds * 2 * per_fold]:
        names.update((p.name_a, p.name_b))
    return sorted(names)


def measure_accuracy(crops: Path, pairs_file: Path, preset: str = "demo", epochs: int = 3, steps: int = 40,
                     seeds: tuple = (42,), folds: int = 2, log=print) -> dict:
    """Train the same budget in float32 and mixed bfloat16 (per seed), then verification accuracy.

    The ``demo`` preset (small_cnn at 64 px: plain 3x3 convolutions, batch norm, ReLU) learns well
    above chance in a few minutes on 2 cores, so the two accuracies mean something; ResNet50 from
    scratch would still be near chance after a budget this short. Evaluation embeds without flip
    averaging (the saved model is float32 either way: only the training numerics differ). With
    several seeds, the spread between seeds of one precision says how large a difference noise
    alone makes.
    """
    from tripletface.config import load_config
    from tripletface.inference.embedder import Embedder
    from tripletface.evaluation.evaluate import evaluate_pairs
    from tripletface.training.loop import train

    with tempfile.TemporaryDirectory(prefix="bench_bf16_") as tmp:
        held_pairs = Path(tmp) / "holdout_pairs.txt"
        names = holdout_pairs(pairs_file, folds, held_pairs)
        exclude = Path(tmp) / "holdout_identities.txt"
        exclude.write_text("\n".join(names) + "\n")
        out = {"preset": preset, "epochs": epochs, "steps_per_epoch": steps, "seeds": list(seeds),
               "pairs": str(pairs_file), "pair_folds": folds, "held_out_identities": len(names),
               "runs": {"float32": [], "bfloat16": []}}
        for seed in seeds:
            for precision in ("float32", "bfloat16"):
                ckpt = Path(tmp) / f"{precision}-{seed}"
                cfg = load_config(preset=preset, overrides={
                    "train.epochs": epochs, "train.steps_per_epoch": steps, "train.seed": seed,
                    "data.seed": seed, "train.mixed_precision": precision, "data.train_dir": str(crops),
                    "data.exclude_identities": str(exclude), "data.val_fraction": 0.05, "data.val_pairs": 200,
                    "train.checkpoint_dir": str(ckpt), "train.tensorboard_logdir": str(ckpt / "logs")})
                out.update({"backbone": cfg.model.backbone, "image_size": list(cfg.model.image_size),
                            "batch": cfg.data.batch_size, "images_seen": cfg.data.batch_size * epochs * steps})
                common.reset_peak()
                t0 = time.perf_counter()
                res = train(cfg, fresh=True, verbose=0)
                train_s = time.perf_counter() - t0
                train_peak = common.peak_rss_mib()
                emb = Embedder.load(res["model_path"], flip_tta=False)
                metrics, _, _, failures = evaluate_pairs(emb, crops, held_pairs, aligned=True, progress=False)
                out["n_pairs"] = metrics["n_pairs"]
                run = {"seed": seed, "train_seconds": train_s, "accuracy": metrics["accuracy_mean"] * 100,
                       "accuracy_std": metrics["accuracy_std"] * 100, "auc": metrics["auc"],
                       "failed_images": len(failures), "peak_rss_mib": train_peak}
                out["runs"][precision].append(run)
                log(f"bf16 accuracy: {precision} seed {seed}: {run['accuracy']:.2f}% (fold std "
                    f"{run['accuracy_std']:.2f}) on {metrics['n_pairs']} held-out pairs after {out['images_seen']} "
                    f"images ({out['backbone']}), training {train_s:.0f}s (load {common.load_average()})")
    for precision, runs in out["runs"].items():
        accs = [r["accuracy"] for r in runs]
        out[precision] = {"accuracy": sum(accs) / len(accs), "seed_spread": max(accs) - min(accs),
                          "accuracy_std": sum(r["accuracy_std"] for r in runs) / len(runs),
                          "train_seconds": sum(r["train_seconds"] for r in runs),
                          "peak_rss_mib": max(r["peak_rss_mib"] or 0 for r in runs) or None}
    out["accuracy_loss_points"] = out["float32"]["accuracy"] - out["bfloat16"]["accuracy"]
    out["train_time_ratio"] = out["float32"]["train_seconds"] / out["bfloat16"]["train_seconds"]
    out["target_loss_points"] = TARGET_ACC_LOSS
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="resnet50@112,mobilenet@112", help="BACKBONE@SIZE list for speed")
    parser.add_argument("--batch", type=int, default=16, help="training batch for the speed rows")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--crops", type=Path, default=None)
    parser.add_argument("--pairs", type=Path, default=None, help="LFW pairs (default: lfw-dev-pairs.txt)")
    parser.add_argument("--acc-preset", default="demo", help="config preset of the accuracy runs")
    parser.add_argument("--acc-epochs", type=int, default=3)
    parser.add_argument("--acc-steps", type=int, default=40, help="steps per epoch of the accuracy runs")
    parser.add_argument("--acc-seeds", default="42", help="comma-separated seeds of the accuracy runs")
    parser.add_argument("--acc-folds", type=int, default=2,
                        help="pair folds evaluated on (their identities are left out of training)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    common.quiet_tensorflow()
    from tripletface.cli.startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    supported = bf16_supported()
    if not supported:
        print("this CPU has no AVX512_BF16/AMX: bfloat16 would be emulated and slow; tripletface trains in "
              "float32 here (train.mixed_precision=auto falls back with a message). Measuring anyway.",
              file=sys.stderr)
    speed = [measure_speed(*bench_train.parse_config(c), batch=args.batch, steps=args.steps, rounds=args.rounds,
                           log=log) for c in args.configs.split(",") if c.strip()]
    accuracy = None
    if not args.skip_accuracy:
        crops = args.crops or common.default_crops()
        pairs = args.pairs or common.data_root() / "lfw-dev-pairs.txt"
        if crops.is_dir() and pairs.is_file():
            seeds = tuple(int(x) for x in args.acc_seeds.split(",") if x.strip())
            accuracy = measure_accuracy(crops, pairs, args.acc_preset, args.acc_epochs, args.acc_steps,
                                        seeds=seeds, folds=args.acc_folds, log=log)
        else:
            log(f"accuracy skipped: {crops} or {pairs} not found")
    rows = [[r["config"], "train", common.fmt(r["train_img_s"]["float32"]), common.fmt(r["train_img_s"]["bfloat16"]),
             common.fmt(r["train_speedup"], ".2f") + "x", common.fmt(r["train_cpu_speedup"], ".2f") + "x"]
            for r in speed]
    rows += [[r["config"], f"inference b{r['infer_batch']}", common.fmt(r["infer_img_s"]["float32"]),
              common.fmt(r["infer_img_s"]["bfloat16"]), common.fmt(r["infer_speedup"], ".2f") + "x",
              common.fmt(r["infer_cpu_speedup"], ".2f") + "x"] for r in speed]
    common.print_table(["model", "stage", "float32 img/s", "bfloat16 img/s", "speed-up", "CPU-time speed-up"], rows)
    if accuracy:
        a = accuracy
        print(f"accuracy on {a['n_pairs']} pairs (folds 1-{a['pair_folds']} of {a['pairs']}; their "
              f"{a['held_out_identities']} identities never trained on) after {a['images_seen']} training images "
              f"({a['backbone']}@{a['image_size'][0]}, seeds {a['seeds']}): float32 {a['float32']['accuracy']:.2f}%, "
              f"bfloat16 {a['bfloat16']['accuracy']:.2f}% -> loss {a['accuracy_loss_points']:+.2f} points "
              f"(target <= {TARGET_ACC_LOSS}); spread between seeds: float32 {a['float32']['seed_spread']:.2f}, "
              f"bfloat16 {a['bfloat16']['seed_spread']:.2f} points")
    print(f"AVX512_BF16/AMX: {'yes' if supported else 'no'}; load average {common.load_average()} "
          f"({os.cpu_count()} CPUs)")
    common.save_results(args.json, __file__, argv, bf16_speed=speed, bf16_accuracy=accuracy,
                        bf16_supported=supported)
    return 0


if __name__ == "__main__":
    common.quiet_tensorflow()
    raise SystemExit(main())
