"""Training: a short loop, with logging, validation, checkpoints and the NaN guard in callbacks.

``tripletface train [--preset NAME] [--config FILE] [--set KEY=VALUE ...]``; ``python train.py``
runs the ``seed`` preset (the original design). Resume is automatic: started again with the
same CHECKPOINT_DIR, training continues from the last complete epoch with its optimizer state.

SIGINT (Ctrl-C) or SIGTERM: the running step finishes, the exact state (weights, optimizer,
epoch and the step within it) is saved to ``CHECKPOINT_DIR/state/interrupted/``, and the
command exits with 130 (SIGINT) or 143 (SIGTERM) and a one-line message; started again, it
runs the rest of that epoch, then the remaining epochs (a second signal stops at once). A
SIGKILL loses the steps since the last checkpoint. A full disk while saving stops with a
one-line error and keeps the last complete checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from tripletface.errors import DiskFullError, InputError, TrainingError, disk_full

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
    if result.get("interrupted"):
        print(result["message"], file=sys.stderr)
        return 128 + result["interrupted"]  # 130 for SIGINT, 143 for SIGTERM: the shell's convention
    print(f"saved model: {result['model_path']}")
    return 0


# --------------------------------------------------------------------------- precision

def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# Backbones built on depthwise convolutions: on CPU their bfloat16 training is slower than float32
# (oneDNN has no fast bfloat16 depthwise backward pass; measured 0.6x for mobilenet and efficientnet
# with AVX512_BF16, docs/PERFORMANCE.md), so 'auto' keeps them in float32 there.
_DEPTHWISE_BACKBONES = ("mobilenet", "efficientnet")


def resolve_precision(requested: str, backbone: str | None = None) -> str:
    """Map train.mixed_precision to a Keras policy name; 'auto' picks what the hardware does well
    (for ``backbone``, when given: depthwise-convolution backbones stay float32 on CPU)."""
    import tensorflow as tf

    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if requested == "auto":
        if has_gpu:
            return "mixed_float16"
        if cpu_supports_bf16():
            if backbone in _DEPTHWISE_BACKBONES:
                print(f"mixed precision: {backbone} trains slower in bfloat16 than float32 on CPU; using float32",
                      file=sys.stderr)
                return "float32"
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

    from tripletface.distribute import gather_global_batch, scale_loss, step_logs

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

        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            # Everything is built before fit (embedder, optimizer, trackers). Under a tf.distribute
            # strategy Keras 3 would strategy.reduce() a whole distributed batch only to learn its
            # shapes, which fails under MultiWorkerMirroredStrategy; without a strategy it does nothing.
            return

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
                # mine on the global batch: every replica's embeddings and labels (tripletface.distribute)
                labels, emb = gather_global_batch(labels, emb)
                loss, stats = self._loss(labels, emb)
                # masks in the loss can hide NaN embeddings (loss 0, distances NaN): surface them as a NaN loss
                finite = tf.reduce_all(tf.math.is_finite(tf.cast(emb, tf.float32)))
                loss = tf.where(finite, loss, tf.constant(float("nan"), loss.dtype))
                reg = sum(self.embedder.losses) if self.embedder.losses else 0.0
                total = loss + tf.cast(reg, loss.dtype)
                scaled = scale_loss(total)  # / replicas: the optimizer sums the replicas' gradients
                scaled = self.optimizer.scale_loss(scaled) if hasattr(self.optimizer, "scale_loss") else scaled
            variables = self.embedder.trainable_variables
            grads = tape.gradient(scaled, variables)
            self.optimizer.apply_gradients(zip(grads, variables))
            if self.memory_bank is not None:
                self.memory_bank.enqueue(tf.stop_gradient(tf.cast(emb, tf.float32)), labels)
            self.trackers["loss"].update_state(total)
            for n in self.stat_names[1:]:
                self.trackers[n].update_state(stats[n])
            return step_logs({n: t.result() for n, t in self.trackers.items()})

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

        def __init__(self, val, embed_fn, margin, collapse_threshold, nan_guard, interrupt=None):
            super().__init__()
            self.val = val
            self.embed_fn = embed_fn
            self.margin = margin
            self.collapse_threshold = collapse_threshold
            self.nan_guard = nan_guard
            self.interrupt = interrupt
            self.history = []

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            if self.nan_guard.bad or (self.interrupt is not None and self.interrupt.mid_epoch):
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

        def __init__(self, manager, epoch_var, nan_guard, on_save=None, interrupt=None):
            super().__init__()
            self.manager = manager
            self.epoch_var = epoch_var
            self.nan_guard = nan_guard
            self.on_save = on_save
            self.interrupt = interrupt

        def on_epoch_end(self, epoch, logs=None):
            if self.nan_guard.bad or (self.interrupt is not None and self.interrupt.mid_epoch):
                return  # a partial epoch is saved by the interrupt callback, not as an epoch
            self.epoch_var.assign(epoch + 1)
            path = self.manager.save(checkpoint_number=epoch + 1)
            if self.interrupt is not None:
                self.interrupt.epoch_saved()
            if self.on_save:
                step = int(self.model.optimizer.iterations.numpy())
                self.on_save(epoch + 1, {**(logs or {}), "step": step})
            return path

    return NanGuard, Validation, EpochCheckpoint


def _stop_on_signal(steps_per_epoch: int, save_partial, remove_partial):
    """The SIGINT/SIGTERM callback: finish the running step, save, stop (see the module doc).

    ``save_partial(epoch, steps)`` saves the state ``steps`` steps into ``epoch`` (0-based) and
    returns the checkpoint path; ``remove_partial()`` drops that checkpoint once a whole
    epoch has been saved after it.
    """
    import signal

    import keras

    class StopOnSignal(keras.callbacks.Callback):
        SIGNALS = (signal.SIGINT, signal.SIGTERM)

        def __init__(self):
            super().__init__()
            self.signum = None  # the signal received, once one is
            self.step_offset = 0  # steps of the current epoch done before this fit() (a resumed epoch)
            self.epoch = 0
            self.done = 0  # steps done in the current epoch
            self.saved = None  # the checkpoint saved on the signal
            self._previous = {}

        @property
        def mid_epoch(self) -> bool:
            """A signal stopped training inside an epoch (not after its last step)."""
            return self.signum is not None and 0 < self.done < steps_per_epoch

        def _handle(self, signum, frame):
            if self.signum is not None:  # the second signal: its default action, now
                self._restore()
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signum)
                return
            self.signum = signum
            print(f"\n{signal.Signals(signum).name}: finishing the running step, then saving a checkpoint "
                  "(send it again to stop at once)", file=sys.stderr)

        def _restore(self):
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous = {}

        def on_train_begin(self, logs=None):
            for sig in self.SIGNALS:
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread: signals keep their handlers
                    pass

        def on_train_end(self, logs=None):
            self._restore()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self.done = self.step_offset

        def on_train_batch_end(self, batch, logs=None):
            self.done = self.step_offset + batch + 1
            if self.signum is not None:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if self.signum is None:
                return
            self.model.stop_training = True
            if self.mid_epoch:
                self.saved = save_partial(epoch, self.done)

        def epoch_saved(self):
            remove_partial()

    return StopOnSignal()


def _fit(trainer, ds, epochs: int, steps_per_epoch: int, epoch: int, step: int, callbacks, stopper, verbose):
    """``trainer.fit`` from ``step`` steps into ``epoch``: the rest of that epoch first (a run
    interrupted mid-epoch), then whole epochs. Returns an object with the merged ``.history``."""
    import types

    parts = []  # (initial_epoch, epochs, steps_per_epoch, steps already done in the first epoch)
    if 0 < step < steps_per_epoch and epoch < epochs:
        parts.append((epoch, epoch + 1, steps_per_epoch - step, step))
        epoch += 1
    if epoch < epochs or not parts:
        parts.append((epoch, epochs, steps_per_epoch, 0))
    history: dict = {}
    skip = 0
    for initial, end, steps, offset in parts:
        stopper.step_offset = offset
        data = ds.skip(skip) if skip and hasattr(ds, "skip") else ds  # no batch twice after a partial epoch
        h = trainer.fit(data, epochs=end, initial_epoch=initial, shuffle=False, steps_per_epoch=steps,
                        callbacks=callbacks, verbose=verbose)
        for key, values in h.history.items():
            history.setdefault(key, []).extend(values)
        if trainer.stop_training or stopper.signum is not None:
            break
        skip = steps
    stopper.step_offset = 0
    return types.SimpleNamespace(history=history)


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


def _beside_crops(train_dir: Path, name: str) -> Path | None:
    """``name`` as crop writes it beside its crops: in ``train_dir``, or its parent (a split output)."""
    for d in (train_dir, train_dir.parent):
        if (d / name).is_file():
            return d / name
    return None


def _quality_filter(cfg, index, train_dir: Path):
    """Drop blurred/turned crops per data.min_blur / data.max_pose, scored by crop's manifest."""
    from tripletface import dataset as D
    from tripletface.crop import read_manifest

    manifest = _beside_crops(train_dir, "manifest.jsonl")
    if manifest is None:
        raise InputError(f"{train_dir}: data.min_blur/data.max_pose need the manifest.jsonl that "
                         "`tripletface crop` writes beside its crops")
    kept, dropped = D.quality_filter(index, read_manifest(manifest), manifest.parent,
                                     cfg.data.min_blur, cfg.data.max_pose)
    print(f"data: quality filter dropped {dropped} of {len(index)} crops "
          f"(blur < {cfg.data.min_blur:g} or |pose| > {cfg.data.max_pose:g}; 0 = off)", file=sys.stderr)
    return kept


def _alignment_settings(cfg, train_dir: Path | None) -> dict:
    """The crop settings the training crops were made with (crop_settings.json beside them), else the config's."""
    f = _beside_crops(train_dir, "crop_settings.json") if train_dir is not None else None
    if f is not None:
        try:
            record = json.loads(f.read_text())
        except (OSError, ValueError):
            raise InputError(f"{f}: unreadable crop settings") from None
        settings = record.get("alignment") if isinstance(record, dict) else None
        if not isinstance(settings, dict) or not settings:
            raise InputError(f"{f}: crop settings without an 'alignment' section")
        return settings
    from tripletface.faces import alignment_settings

    return alignment_settings(cfg.crop)


def train(cfg, fresh: bool = False, verbose: int = 1) -> dict:
    """Train per ``cfg``; returns {'model_path', 'history', 'resumed_from', 'validation'}."""
    import keras
    import tensorflow as tf

    from tripletface import dataset as D
    from tripletface import distribute
    from tripletface import model as M
    from tripletface.losses import MemoryBank, get_loss

    t0 = time.time()
    strategy = distribute.get_strategy(cfg.train.distribute)  # before any other TensorFlow op
    chief = distribute.is_chief(strategy)  # only the chief writes files
    keras.utils.set_random_seed(cfg.train.seed)
    policy = resolve_precision(cfg.train.mixed_precision, cfg.model.backbone)
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
            if cfg.data.min_blur > 0 or cfg.data.max_pose > 0:
                index = _quality_filter(cfg, index, train_dir)
            train_index, val_index = D.split_by_identity(index, cfg.data.val_fraction, seed=cfg.data.seed)
            D.check_images(val_index)  # the training images are checked as the dataset decodes them
            print(f"data: training on {train_index.describe()}; validating on {val_index.describe()} "
                  "(held-out identities)", file=sys.stderr)
            ds = D.build_train_dataset(data_cfg, train_index)
            val = prepare_validation(val_index, cfg)

        ds = distribute.shard_by_data(ds)
        distribute.check_global_batch(cfg.data.p * cfg.data.k if cfg.data.sampling == "pk" else 3 * cfg.data.batch_size,
                                      strategy)

        # ---- model, loss, optimizer, resume state
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        metadata = {"alignment": _alignment_settings(cfg, train_dir), "config": cfg.to_dict(),
                    "metric": "euclidean", "flip_tta": bool(cfg.eval.flip_tta)}
        with strategy.scope():  # variables mirrored over the replicas (tripletface.distribute)
            embedder = M.build_embedding_model(cfg.model.backbone, cfg.model.embedding_dim, image_size,
                                               weights=cfg.model.weights, dropout=cfg.model.dropout,
                                               width=cfg.model.width, metadata=metadata)
            distribute.sync_batch_norm(embedder, strategy)
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
        # steps done in epoch `epoch_var` when a signal stopped it (0 in every epoch checkpoint)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        state = {"model": embedder, "optimizer": optimizer, "epoch": epoch_var, "step_in_epoch": step_var}
        if bank is not None:
            state["memory_bank"] = bank
        checkpoint = tf.train.Checkpoint(**state)
        manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir / "state"), max_to_keep=2)
        # every worker saves (it may take collective ops); a non-chief into a scratch folder it removes
        save_manager = manager if chief else tf.train.CheckpointManager(
            checkpoint, str(distribute.worker_dir(ckpt_dir / "state", strategy)), max_to_keep=1)
        # saved on SIGINT/SIGTERM mid-epoch; removed once a later whole epoch is saved, so when
        # present it is newer than the last epoch checkpoint
        partial_dir = distribute.worker_dir(ckpt_dir / "state" / "interrupted", strategy)
        if fresh:
            shutil.rmtree(partial_dir, ignore_errors=True)
        partial_manager = tf.train.CheckpointManager(checkpoint, str(partial_dir), max_to_keep=1)
        latest = partial_manager.latest_checkpoint or manager.latest_checkpoint
        resumed_from = resumed_step = 0
        if latest and not fresh:
            checkpoint.restore(latest).expect_partial()
            resumed_from, resumed_step = int(epoch_var.numpy()), int(step_var.numpy())
            step_var.assign(0)
            if cfg.train.lr_schedule == "constant":  # the config's rate wins over the one saved in the checkpoint
                optimizer.learning_rate = cfg.train.learning_rate
            into = (f", {resumed_step} of {cfg.train.steps_per_epoch} steps into epoch {resumed_from + 1}"
                    if resumed_step else "")
            print(f"resumed from {latest} at epoch {resumed_from} "
                  f"(step {int(optimizer.iterations.numpy())}){into}", file=sys.stderr)
        elif manager.latest_checkpoint and fresh:
            print(f"--fresh: ignoring checkpoints in {ckpt_dir / 'state'}", file=sys.stderr)
        if resumed_from >= cfg.train.epochs:
            print(f"already trained {resumed_from}/{cfg.train.epochs} epochs; saving the model", file=sys.stderr)

        # ---- callbacks
        NanGuard, Validation, EpochCheckpoint = _callbacks_module()
        guard = NanGuard()

        def save_partial(epoch, steps):
            epoch_var.assign(epoch)
            step_var.assign(steps)
            try:
                return partial_manager.save(checkpoint_number=epoch)
            finally:
                step_var.assign(0)

        stopper = _stop_on_signal(cfg.train.steps_per_epoch, save_partial,
                                  lambda: shutil.rmtree(partial_dir, ignore_errors=True))
        validation = Validation(val, lambda x: batched_embed(embedder, x, cfg.eval.batch_size),
                                cfg.loss.margin, cfg.loss.collapse_threshold, guard, interrupt=stopper)
        history_path = ckpt_dir / "history.jsonl"

        def on_save(epoch, logs):
            if not chief:
                distribute.remove_worker_dir(ckpt_dir / "state", strategy)
                return
            row = {"epoch": epoch, **{k: float(v) for k, v in logs.items() if np.isscalar(v) or np.ndim(v) == 0}}
            with open(history_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

        callbacks = [guard, validation, EpochCheckpoint(save_manager, epoch_var, guard, on_save, interrupt=stopper),
                     stopper]
        if chief:
            callbacks.append(keras.callbacks.TensorBoard(cfg.train.tensorboard_logdir, update_freq="epoch",
                                                         write_graph=False))
        hist = _fit(trainer, ds, cfg.train.epochs, cfg.train.steps_per_epoch, resumed_from, resumed_step,
                    callbacks, stopper, verbose=verbose if sys.stderr.isatty() or verbose == 0 else 2)
        if guard.bad:
            epoch, batch, step, value = guard.bad
            last = ((partial_manager.latest_checkpoint if partial_dir.is_dir() else None) or manager.latest_checkpoint
                    or "none (no epoch completed)")
            raise TrainingError(f"loss became {value} at epoch {epoch}, batch {batch} (global step {step}); "
                                f"stopped; last good checkpoint: {last}")
        if stopper.signum is not None:
            import signal

            where = stopper.saved or manager.latest_checkpoint or "none"
            at = (f"epoch {stopper.epoch + 1}, step {stopper.done} of {cfg.train.steps_per_epoch}"
                  if stopper.mid_epoch else f"the end of epoch {stopper.epoch + 1}")
            return {"interrupted": int(stopper.signum), "checkpoint": where, "model_path": None,
                    "history": hist.history, "resumed_from": resumed_from, "validation": validation.history,
                    "message": f"{signal.Signals(stopper.signum).name}: training stopped at {at} (global step "
                               f"{int(optimizer.iterations.numpy())}); checkpoint {where}; run the same command "
                               "again to resume"}

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
        model_path = M.save_model(final, ckpt_dir / FINAL_MODEL_NAME) if chief else ckpt_dir / FINAL_MODEL_NAME
        elapsed = time.time() - t0
        print(f"training done in {elapsed:.0f}s", file=sys.stderr)
        return {"model_path": str(model_path), "history": hist.history, "resumed_from": resumed_from,
                "validation": validation.history}
    except (OSError, tf.errors.OpError) as e:
        if not disk_full(e):
            raise
        state_dir = Path(cfg.train.checkpoint_dir) / "state"
        for temp in state_dir.glob("**/*_temp"):  # what the failed save wrote: free the space
            shutil.rmtree(temp, ignore_errors=True)
        where = getattr(e, "filename", None) or state_dir.parent
        last = tf.train.latest_checkpoint(str(state_dir)) or "none"
        raise DiskFullError(f"{where}: no space left on device while saving; the last complete checkpoint "
                            f"({last}) is kept: free some space and run the same command again to resume") from None
    finally:
        keras.mixed_precision.set_global_policy("float32")
