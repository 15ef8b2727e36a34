"""Training: a short loop, with logging, validation, checkpoints and the NaN guard in callbacks.

``tripletface train [--preset NAME] [--config FILE] [--set KEY=VALUE ...]``; ``python train.py``
runs the ``seed`` preset (the original design). Resume is automatic: started again with the
same CHECKPOINT_DIR, training continues from the last complete epoch with its optimizer state.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from tripletface.errors import InputError, TrainingError

FINAL_MODEL_NAME = "model.keras"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--fresh", action="store_true",
                        help="ignore existing checkpoints in CHECKPOINT_DIR and start from epoch 0")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tripletface.cli import config_from_args

    cfg = config_from_args(args, default_preset=None)
    result = train(cfg, fresh=args.fresh, verbose=0 if args.quiet else 1)
    print(f"saved model: {result['model_path']}")
    return 0


# --------------------------------------------------------------------------- precision

def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str) -> str:
    """Map train.mixed_precision to a Keras policy name; 'auto' picks what the hardware does well."""
    import tensorflow as tf

    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if requested == "auto":
        if has_gpu:
            return "mixed_float16"
        if cpu_supports_bf16():
            return "mixed_bfloat16"
        print("mixed precision: this CPU has no bfloat16 support; using float32", file=sys.stderr)
        return "float32"
    if requested == "bfloat16":
        if not has_gpu and not cpu_supports_bf16():
            print("mixed precision: bfloat16 requested but this CPU lacks AVX512_BF16/AMX; it will be slow",
                  file=sys.stderr)
        return "mixed_bfloat16"
    if requested == "float16":
        return "mixed_float16"
    return "float32"


# --------------------------------------------------------------------------- the trainer model

def make_trainer(embedder, loss_obj, memory_bank=None, memory_start_step: int = 0):
    """Wrap the embedding model in a keras.Model whose train_step runs the mining loss.

    The wrapper owns no weights of its own; the embedding model is what gets saved.
    """
    import keras
    import tensorflow as tf

    class TripletTrainer(keras.Model):
        def __init__(self):
            super().__init__(name="triplet_trainer")
            self.embedder = embedder
            self.loss_obj = loss_obj
            self.memory_bank = memory_bank
            self.stat_names = ("loss", "active_fraction", "pos_dist", "neg_dist")
            self.trackers = {n: keras.metrics.Mean(name=n) for n in self.stat_names}

        @property
        def metrics(self):
            return list(self.trackers.values())

        def call(self, x, training=False):
            return self.embedder(x, training=training)

        def _loss(self, labels, emb):
            if self.memory_bank is not None:
                use = tf.cast(self.optimizer.iterations >= memory_start_step, tf.bool)
                mem_emb, mem_lab = self.memory_bank.contents()
                loss, stats = tf.cond(
                    use,
                    lambda: self.loss_obj.compute_with_stats(labels, emb, memory=(mem_emb, mem_lab)),
                    lambda: self.loss_obj.compute_with_stats(labels, emb))
                return loss, stats
            return self.loss_obj.compute_with_stats(labels, emb)

        def train_step(self, data):
            images, labels = data
            with tf.GradientTape() as tape:
                emb = self.embedder(images, training=True)
                loss, stats = self._loss(labels, emb)
                # masks in the loss can hide NaN embeddings (loss 0, distances NaN): surface them as a NaN loss
                finite = tf.reduce_all(tf.math.is_finite(tf.cast(emb, tf.float32)))
                loss = tf.where(finite, loss, tf.constant(float("nan"), loss.dtype))
                reg = sum(self.embedder.losses) if self.embedder.losses else 0.0
                total = loss + tf.cast(reg, loss.dtype)
                scaled = self.optimizer.scale_loss(total) if hasattr(self.optimizer, "scale_loss") else total
            variables = self.embedder.trainable_variables
            grads = tape.gradient(scaled, variables)
            self.optimizer.apply_gradients(zip(grads, variables))
            if self.memory_bank is not None:
                self.memory_bank.enqueue(tf.stop_gradient(tf.cast(emb, tf.float32)), labels)
            self.trackers["loss"].update_state(total)
            for n in self.stat_names[1:]:
                self.trackers[n].update_state(stats[n])
            return {n: t.result() for n, t in self.trackers.items()}

    return TripletTrainer()


def make_optimizer(tcfg, total_steps: int):
    import keras

    lr = tcfg.learning_rate
    if tcfg.lr_schedule == "cosine":
        warm = tcfg.warmup_epochs * tcfg.steps_per_epoch
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warm else tcfg.learning_rate, decay_steps=max(1, total_steps - warm),
            warmup_target=tcfg.learning_rate if warm else None, warmup_steps=warm, alpha=0.01)
    if tcfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=tcfg.weight_decay or 1e-4)
    if tcfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    return keras.optimizers.Adam(lr)


# --------------------------------------------------------------------------- callbacks

def _callbacks_module():
    import keras

    class NanGuard(keras.callbacks.Callback):
        """Stop at the first non-finite loss, naming the epoch and step; no checkpoint is written after it."""

        def __init__(self):
            super().__init__()
            self.bad = None
            self.epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self.bad = (self.epoch + 1, batch + 1, int(self.model.optimizer.iterations.numpy()), float(loss))
                self.model.stop_training = True

    class Validation(keras.callbacks.Callback):
        """Each epoch: embed held-out identities; verification accuracy on pairs and the original
        triplet metrics (loss, precision, recall) on triplets. Adds val_* entries to the epoch logs
        (so TensorBoard and the checkpoint callback see them) and warns on embedding collapse."""

        def __init__(self, val, embed_fn, margin, collapse_threshold, nan_guard):
            super().__init__()
            self.val = val
            self.embed_fn = embed_fn
            self.margin = margin
            self.collapse_threshold = collapse_threshold
            self.nan_guard = nan_guard
            self.history = []

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            if self.nan_guard.bad:
                return
            lr = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(lr.numpy() if hasattr(lr, "numpy") else lr)
            if logs.get("pos_dist", 1.0) < self.collapse_threshold and logs.get("neg_dist", 1.0) < self.collapse_threshold:
                print(f"\nwarning: embedding collapse at epoch {epoch + 1}: mean positive distance "
                      f"{logs['pos_dist']:.2e}, negative {logs['neg_dist']:.2e} (all embeddings nearly equal); "
                      "try a lower learning rate, semi-hard mining or a warm-up", file=sys.stderr)
                logs["collapsed"] = 1.0
            if self.val is None:
                return
            metrics = validate(self.val, self.embed_fn, self.margin)
            logs.update(metrics)
            self.history.append({"epoch": epoch + 1, **metrics})
            print(f"\nepoch {epoch + 1}: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()), file=sys.stderr)

    class EpochCheckpoint(keras.callbacks.Callback):
        """Save complete resume state (weights, optimizer, epoch, memory bank) after each good epoch."""

        def __init__(self, manager, epoch_var, nan_guard, on_save=None):
            super().__init__()
            self.manager = manager
            self.epoch_var = epoch_var
            self.nan_guard = nan_guard
            self.on_save = on_save

        def on_epoch_end(self, epoch, logs=None):
            if self.nan_guard.bad:
                return
            self.epoch_var.assign(epoch + 1)
            path = self.manager.save(checkpoint_number=epoch + 1)
            if self.on_save:
                self.on_save(epoch + 1, logs or {})
            return path

    return NanGuard, Validation, EpochCheckpoint


# --------------------------------------------------------------------------- validation

def prepare_validation(val_index, cfg):
    """Load held-out identities' images once (no augmentation) with pairs and triplets over them."""
    from tripletface import dataset as D

    if val_index is None or len(val_index.paths) == 0:
        return None
    n_trip = max(8, cfg.train.validation_steps * max(1, cfg.data.batch_size // 3))
    pa, pb, same = D.make_val_pairs(val_index, cfg.data.val_pairs, seed=cfg.data.seed)
    ta, tp, tn = D.make_val_triplets(val_index, n_trip, seed=cfg.data.seed + 1)
    needed = np.unique(np.concatenate([pa, pb, ta, tp, tn]))
    images = D.load_images([val_index.paths[i] for i in needed], tuple(cfg.model.image_size))
    pos = {int(i): j for j, i in enumerate(needed)}
    remap = lambda a: np.array([pos[int(i)] for i in a], dtype=np.int64)  # noqa: E731
    return {"images": images, "pairs": (remap(pa), remap(pb), np.asarray(same, bool)),
            "triplets": (remap(ta), remap(tp), remap(tn))}


def validate(val, embed_fn, margin) -> dict:
    from tripletface import verification as V

    from tripletface.embedder import distance

    emb = embed_fn(val["images"])
    pa, pb, same = val["pairs"]
    d = distance(emb[pa], emb[pb])  # euclidean: the metric stored with the model
    acc = V.kfold_accuracy(d, same, folds=min(10, max(2, len(d) // 20)))
    threshold, _ = V.best_threshold(d, same)
    ta, tp, tn = val["triplets"]
    # the original metrics: triplet loss on squared distances (as trained), precision/recall of the
    # 'same' decision at the threshold picked on these validation triplets
    tm = V.triplet_metrics(distance(emb[ta], emb[tp]) ** 2, distance(emb[ta], emb[tn]) ** 2, margin)
    return {"val_accuracy": float(acc["mean"]), "val_loss": float(tm["loss"]),
            "val_precision": float(tm["precision"]), "val_recall": float(tm["recall"]),
            "val_threshold": float(threshold)}


def batched_embed(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    out = [np.asarray(model(images[i:i + batch_size], training=False), dtype=np.float32)
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


# --------------------------------------------------------------------------- main entry

def _checkpoint_epoch(ckpt_dir: Path) -> int:
    """The epoch of the latest resume checkpoint (saved as ckpt-<epoch>), 0 when none."""
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(ckpt_dir / "state"))
    try:
        return int(latest.rsplit("-", 1)[1]) if latest else 0
    except (IndexError, ValueError):
        return 0


def _read_names(path: str) -> list[str]:
    try:
        return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise InputError(f"{path}: cannot read the identity exclusion list ({e.strerror})") from None


def _alignment_settings(cfg, train_dir: Path | None) -> dict:
    """The crop settings the training crops were made with (crop_settings.json beside them), else the config's."""
    if train_dir is not None:
        for d in (train_dir, train_dir.parent):
            f = d / "crop_settings.json"
            if f.is_file():
                try:
                    return json.loads(f.read_text())
                except (OSError, ValueError):
                    raise InputError(f"{f}: unreadable crop settings") from None
    from tripletface.faces import alignment_settings

    return alignment_settings(cfg.crop)


def train(cfg, fresh: bool = False, verbose: int = 1) -> dict:
    """Train per ``cfg``; returns {'model_path', 'history', 'resumed_from', 'validation'}."""
    import keras
    import tensorflow as tf

    from tripletface import dataset as D
    from tripletface import model as M
    from tripletface.losses import MemoryBank, get_loss

    t0 = time.time()
    keras.utils.set_random_seed(cfg.train.seed)
    policy = resolve_precision(cfg.train.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    try:
        # ---- data (every data problem is reported before any training starts)
        image_size = tuple(cfg.model.image_size)
        ckpt_dir = Path(cfg.train.checkpoint_dir)
        start_epoch = 0 if fresh else _checkpoint_epoch(ckpt_dir)
        # a resumed run draws new batches rather than replaying epoch 1's
        data_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seed=cfg.data.seed + 7919 * start_epoch))
        train_dir = None
        val = None
        if cfg.data.source == "synthetic":
            ds = D.build_train_dataset(data_cfg)
        else:
            train_dir = Path(cfg.data.train_dir)
            index = D.index_folder(train_dir)
            if cfg.data.exclude_identities:
                index = index.without(_read_names(cfg.data.exclude_identities))
            train_index, val_index = D.split_by_identity(index, cfg.data.val_fraction, seed=cfg.data.seed)
            D.check_images(val_index)  # the training images are checked as the dataset decodes them
            print(f"data: training on {train_index.describe()}; validating on {val_index.describe()} "
                  "(held-out identities)", file=sys.stderr)
            ds = D.build_train_dataset(data_cfg, train_index)
            val = prepare_validation(val_index, cfg)

        # ---- model, loss, optimizer, resume state
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        metadata = {"alignment": _alignment_settings(cfg, train_dir), "config": cfg.to_dict(),
                    "metric": "euclidean", "flip_tta": bool(cfg.eval.flip_tta)}
        embedder = M.build_embedding_model(cfg.model.backbone, cfg.model.embedding_dim, image_size,
                                           weights=cfg.model.weights, dropout=cfg.model.dropout,
                                           width=cfg.model.width, metadata=metadata)
        loss_obj = get_loss(cfg.loss)
        bank = (MemoryBank(cfg.loss.memory_bank_size, cfg.model.embedding_dim)
                if cfg.loss.memory_bank_size > 0 else None)
        total_steps = cfg.train.epochs * cfg.train.steps_per_epoch
        optimizer = make_optimizer(cfg.train, total_steps)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        trainer = make_trainer(embedder, loss_obj, bank, cfg.loss.memory_bank_start_step)
        trainer.compile(optimizer=optimizer, jit_compile=False)
        # build optimizer variables so a restore has something to fill
        optimizer.build(embedder.trainable_variables)

        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        state = {"model": embedder, "optimizer": optimizer, "epoch": epoch_var}
        if bank is not None:
            state["memory_bank"] = bank
        checkpoint = tf.train.Checkpoint(**state)
        manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir / "state"), max_to_keep=2)
        resumed_from = 0
        if manager.latest_checkpoint and not fresh:
            checkpoint.restore(manager.latest_checkpoint).expect_partial()
            resumed_from = int(epoch_var.numpy())
            if cfg.train.lr_schedule == "constant":  # the config's rate wins over the one saved in the checkpoint
                optimizer.learning_rate = cfg.train.learning_rate
            print(f"resumed from {manager.latest_checkpoint} at epoch {resumed_from} "
                  f"(step {int(optimizer.iterations.numpy())})", file=sys.stderr)
        elif manager.latest_checkpoint and fresh:
            print(f"--fresh: ignoring checkpoints in {ckpt_dir / 'state'}", file=sys.stderr)
        if resumed_from >= cfg.train.epochs:
            print(f"already trained {resumed_from}/{cfg.train.epochs} epochs; saving the model", file=sys.stderr)

        # ---- callbacks
        NanGuard, Validation, EpochCheckpoint = _callbacks_module()
        guard = NanGuard()
        validation = Validation(val, lambda x: batched_embed(embedder, x, cfg.eval.batch_size),
                                cfg.loss.margin, cfg.loss.collapse_threshold, guard)
        history_path = ckpt_dir / "history.jsonl"

        def on_save(epoch, logs):
            row = {"epoch": epoch, **{k: float(v) for k, v in logs.items() if np.isscalar(v) or np.ndim(v) == 0}}
            with open(history_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

        callbacks = [guard, validation, EpochCheckpoint(manager, epoch_var, guard, on_save),
                     keras.callbacks.TensorBoard(cfg.train.tensorboard_logdir, update_freq="epoch",
                                                 write_graph=False)]
        hist = trainer.fit(ds, epochs=cfg.train.epochs, initial_epoch=resumed_from, shuffle=False,
                           steps_per_epoch=cfg.train.steps_per_epoch, callbacks=callbacks,
                           verbose=verbose if sys.stderr.isatty() or verbose == 0 else 2)
        if guard.bad:
            epoch, batch, step, value = guard.bad
            last = manager.latest_checkpoint or "none (no epoch completed)"
            raise TrainingError(f"loss became {value} at epoch {epoch}, batch {batch} (global step {step}); "
                                f"stopped; last good checkpoint: {last}")

        # ---- the final model, with a threshold picked on validation as its starting default
        threshold_meta = {}
        if validation.history:
            v = validation.history[-1]
            threshold_meta = {"threshold": v["val_threshold"], "threshold_source": "training validation pairs",
                              "val_accuracy": v["val_accuracy"]}
        keras.mixed_precision.set_global_policy("float32")
        final = M.build_embedding_model(cfg.model.backbone, cfg.model.embedding_dim, image_size, weights=None,
                                        dropout=cfg.model.dropout, width=cfg.model.width,
                                        metadata={**metadata, **threshold_meta,
                                                  "epochs_trained": max(resumed_from, cfg.train.epochs)})
        final.set_weights(embedder.get_weights())
        model_path = M.save_model(final, ckpt_dir / FINAL_MODEL_NAME)
        elapsed = time.time() - t0
        print(f"training done in {elapsed:.0f}s", file=sys.stderr)
        return {"model_path": str(model_path), "history": hist.history, "resumed_from": resumed_from,
                "validation": validation.history}
    finally:
        keras.mixed_precision.set_global_policy("float32")
