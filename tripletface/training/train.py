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
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from tripletface.errors import DiskFullError, InputError, TrainingError, disk_full

FINAL_MODEL_NAME = "model.keras"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.main import add_config_arguments, add_config_flag, add_progress_argument

    add_config_flag(parser, "train_dir", key="data.train_dir", nargs="*", metavar="TRAIN_DIR",
                    help="crop folder(s): TRAIN_DIR/<identity>/<image>; the same as --set TRAIN_DIR=... "
                         "(default: the config's)")
    add_config_flag(parser, "--input-dir", key="data.train_dir", metavar="DIR", help="same as TRAIN_DIR")
    add_config_arguments(parser)
    parser.add_argument("--fresh", action="store_true",
                        help="ignore existing checkpoints in CHECKPOINT_DIR and start from epoch 0")
    parser.add_argument("--allow-missing", action="store_true",
                        help="names in data.exclude_identities that match no training identity are "
                             "ignored instead of an error (data.allow_missing_exclusions=true)")
    add_progress_argument(parser)


def run(args: argparse.Namespace) -> int:
    from tripletface.cli.main import config_from_args

    cfg = config_from_args(args, default_preset=None)
    if getattr(args, "allow_missing", False):
        cfg.data.allow_missing_exclusions = True
    result = train(cfg, fresh=args.fresh, verbose=1 if args.progress else 0)
    if result.get("interrupted"):
        print(result["message"], file=sys.stderr)
        return 128 + result["interrupted"]  # 130 for SIGINT, 143 for SIGTERM: the shell's convention
    print(f"saved model: {result['model_path']}")
    test = Path(cfg.data.test_triplets) if cfg.data.test_triplets else None
    if test is not None and test.is_file():
        m = test_on_triplets(result["model_path"], test, progress=args.progress)
        vals = "  ".join(f"{k} {m['triplet_' + k]:.4f}" for k in ("loss", "precision", "recall")
                         if isinstance(m.get("triplet_" + k), (int, float)))
        print(f"test triplets ({test}): {vals}  ({m['triplets'] - m['unscored_triplets']} scored, "
              f"{m['unscored_triplets']} unscored) -> {m['path']}")
    elif test is not None:
        print(f"no TEST_TRIPLETS file at {test} (crop --test-fraction writes one); the original triplet "
              "metrics were not computed", file=sys.stderr)
    return 0


def test_on_triplets(model_path, triplets_file: Path, progress: bool = True) -> dict:
    """The original design's last step: the trained model's triplet loss, precision and recall on
    TEST_TRIPLETS (``data.test_triplets``: crop's ``test_triplets.csv``, anchor,positive,negative
    paths relative to its folder), with the model's own inference path. Written next to the model
    as ``test_triplets.json``; returns the metrics and ``path``."""
    from tripletface.inference.embedder import Embedder, print_failures
    from tripletface.evaluation.evaluate import evaluate_triplets

    embedder = Embedder.load(str(model_path))
    metrics, failures = evaluate_triplets(embedder, triplets_file.parent, triplets_file, aligned=True,
                                          progress=progress)
    print_failures(failures, prefix="test triplets, not embedded: ", more=" images not embedded")
    out = Path(model_path).with_name("test_triplets.json")
    out.write_text(json.dumps({"triplets_file": str(triplets_file), **metrics}, indent=2) + "\n", encoding="utf-8")
    return {**metrics, "path": str(out)}


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

def make_trainer(embedder, loss_obj, memory_bank=None, memory_start_step: int = 0, aux_head=None,
                 aux_weight: float = 0.0, label_source=None, source_names=(), hard_loss=None,
                 hard_start_step: int = 0):
    """Wrap the embedding model in a keras.Model whose train_step runs the mining loss.

    ``hard_loss`` (the mining schedule, ``loss.hard_from``) replaces ``loss_obj`` from step
    ``hard_start_step`` on (semi-hard, then harder); its stats are logged under the same names.

    ``aux_head`` (a built :class:`~tripletface.losses.MarginSoftmaxHead`) adds ``aux_weight``
    times its margin-softmax loss over the batch's labels; its class weights train with the
    embedder but are not part of the saved model. ``label_source`` (int32, the source of each
    training label) and ``source_names`` log each source's share of the sampled images as
    ``share_<name>``. The wrapper owns no other weights; the embedding model is what gets saved.
    """
    import keras
    import tensorflow as tf

    from tripletface.training.distribute import gather_global_batch, scale_loss, step_logs

    class TripletTrainer(keras.Model):
        def __init__(self):
            super().__init__(name="triplet_trainer")
            self.embedder = embedder
            self.loss_obj = loss_obj
            self.memory_bank = memory_bank
            self.aux_head = aux_head
            self.stat_names = ("loss", "active_fraction", "pos_dist", "neg_dist")
            extra = (("aux_loss",) if aux_head is not None else ()) + tuple(f"share_{n}" for n in source_names)
            self.trackers = {n: keras.metrics.Mean(name=n) for n in self.stat_names + extra}
            self.label_source = None if label_source is None else tf.constant(label_source, tf.int32)

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

        def _loss_of(self, loss_obj, labels, emb, warm):
            if self.memory_bank is not None:
                mem_emb, mem_lab = self.memory_bank.contents()
                return tf.cond(warm,
                               lambda: loss_obj.compute_with_stats(labels, emb, memory=(mem_emb, mem_lab)),
                               lambda: loss_obj.compute_with_stats(labels, emb))
            return loss_obj.compute_with_stats(labels, emb)

        def _loss(self, labels, emb, warm):
            if hard_loss is None:
                return self._loss_of(self.loss_obj, labels, emb, warm)
            hard = tf.greater_equal(self.optimizer.iterations, hard_start_step)  # this step's index
            return tf.cond(hard, lambda: self._loss_of(hard_loss, labels, emb, warm),
                           lambda: self._loss_of(self.loss_obj, labels, emb, warm))

        def train_step(self, data):
            images, labels = data
            # the cross-batch memory's warm-up (XBM): before step memory_start_step the bank is
            # neither used nor filled, so it never holds the fast-drifting embeddings of early training
            warm = tf.greater_equal(self.optimizer.iterations, memory_start_step)  # this step's index
            with tf.GradientTape() as tape:
                emb = self.embedder(images, training=True)
                # mine on the global batch: every replica's embeddings and labels (tripletface.training.distribute)
                labels, emb = gather_global_batch(labels, emb)
                loss, stats = self._loss(labels, emb, warm)
                # masks in the loss can hide NaN embeddings (loss 0, distances NaN): surface them as a NaN loss
                finite = tf.reduce_all(tf.math.is_finite(tf.cast(emb, tf.float32)))
                loss = tf.where(finite, loss, tf.constant(float("nan"), loss.dtype))
                reg = sum(self.embedder.losses) if self.embedder.losses else 0.0
                total = loss + tf.cast(reg, loss.dtype)
                if self.aux_head is not None:
                    aux = self.aux_head(tf.cast(emb, tf.float32), labels)
                    total = total + tf.cast(aux_weight * aux, total.dtype)
                scaled = scale_loss(total)  # / replicas: the optimizer sums the replicas' gradients
                scaled = self.optimizer.scale_loss(scaled) if hasattr(self.optimizer, "scale_loss") else scaled
            variables = self.embedder.trainable_variables
            if self.aux_head is not None:
                variables = variables + self.aux_head.trainable_variables
            grads = tape.gradient(scaled, variables)
            self.optimizer.apply_gradients(zip(grads, variables))
            if self.memory_bank is not None:
                def enqueue():
                    self.memory_bank.enqueue(tf.stop_gradient(tf.cast(emb, tf.float32)), labels)
                    return tf.constant(True)

                tf.cond(warm, enqueue, lambda: tf.constant(False))
            self.trackers["loss"].update_state(total)
            for n in self.stat_names[1:]:
                self.trackers[n].update_state(stats[n])
            if self.aux_head is not None:
                self.trackers["aux_loss"].update_state(aux)
            if self.label_source is not None:
                src = tf.gather(self.label_source, labels)
                for i, n in enumerate(source_names):
                    self.trackers[f"share_{n}"].update_state(tf.reduce_mean(tf.cast(tf.equal(src, i), tf.float32)))
            return step_logs({n: t.result() for n, t in self.trackers.items()})

    return TripletTrainer()


# The smallest epsilon TensorFlow's fused BatchNorm kernel takes (tf.nn.fused_batch_norm raises
# smaller ones to this): layers with a smaller one keep Keras' path, so nothing changes for them.
_FUSED_BN_MIN_EPSILON = 1.001e-5


def fuse_batch_norm(model) -> int:
    """Make the training pass of ``model``'s BatchNormalization layers (nested models too) one
    fused TensorFlow kernel; returns how many were switched.

    Keras 3 computes a training-mode BatchNorm as separate ops (moments: Mean, SquaredDifference,
    Mean; then Sub/Mul/Add, each with its own gradient ops): 23 % of the op time of a small_cnn
    training step on CPU (docs/PERFORMANCE.md, "Training step levers"). ``FusedBatchNormV3`` (and
    its gradient) does the same in one pass over the activations. The result is Keras' own: the
    same batch statistics, the same moving-statistics update (biased variance, ``momentum``), and
    the same float32 computation under a mixed policy; they differ by float rounding only.

    Only the training forward pass changes: inference (``training=False``) runs Keras' code, and
    nothing is saved differently (the saved model is rebuilt from its config by :func:`train`).
    Layers the fused kernel does not cover keep Keras' path: synchronized (multi-replica), renorm,
    an axis other than the last of a 4-D input, a masked call, or an epsilon below its minimum.
    """
    import types

    import keras
    import tensorflow as tf

    def walk(m):
        for layer in getattr(m, "layers", ()):
            yield layer
            yield from walk(layer)  # a backbone nested as one layer

    def fused_call(self, inputs, training=None, mask=None):
        if (not (training is True and self.trainable) or mask is not None or self.synchronized
                or len(inputs.shape) != 4 or self.axis not in (-1, 3)):
            return type(self).call(self, inputs, training=training, mask=mask)
        x = tf.cast(inputs, "float32")  # as Keras computes BatchNorm: in float32 under any policy
        channels = x.shape[-1]
        scale = tf.cast(self.gamma, "float32") if self.scale else tf.ones((channels,), "float32")
        offset = tf.cast(self.beta, "float32") if self.center else tf.zeros((channels,), "float32")
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(x, scale, offset, epsilon=self.epsilon,
                                                             data_format="NHWC", is_training=True)
        # the kernel returns the unbiased (n - 1) variance for the moving average; Keras averages
        # the biased one it normalises with
        n = tf.cast(tf.size(x) // channels, "float32")
        variance = variance * ((n - 1.0) / n)
        m = self.momentum
        self.moving_mean.assign(tf.cast(self.moving_mean, "float32") * m + mean * (1.0 - m))
        self.moving_variance.assign(tf.cast(self.moving_variance, "float32") * m + variance * (1.0 - m))
        return tf.cast(y, self.compute_dtype)

    n = 0
    for layer in walk(model):
        if (isinstance(layer, keras.layers.BatchNormalization) and not layer.renorm
                and layer.epsilon >= _FUSED_BN_MIN_EPSILON and "call" not in vars(layer)):
            layer.call = types.MethodType(fused_call, layer)
            n += 1
    return n


def build_embedder(cfg, metadata=None, weights="config"):
    """The embedding model of ``cfg.model`` (``weights``: ``cfg.model.weights`` unless given), as
    :func:`train` builds it; benchmarks build theirs here so they time the model that trains."""
    from tripletface.model import build as M

    return M.build_embedding_model(cfg.model.backbone, cfg.model.embedding_dim, tuple(cfg.model.image_size),
                                   weights=cfg.model.weights if weights == "config" else weights,
                                   dropout=cfg.model.dropout, width=cfg.model.width, metadata=metadata,
                                   greyscale=cfg.model.greyscale)


def build_trainer(cfg, embedder, total_steps: int | None = None, policy: str = "float32", **trainer_kwargs):
    """``(trainer, optimizer)`` for ``embedder`` as :func:`train` runs it: BatchNorm's fused training
    pass (``train.fused_batch_norm``), ``cfg.loss``'s mining loss, the optimizer and its schedule
    over ``total_steps`` (default: epochs × steps per epoch; loss-scaled under mixed_float16), compiled
    with ``train.jit_compile``; ``loss.hard_from`` sets the mining schedule's switch step. ``trainer_kwargs``
    go to :func:`make_trainer` (memory bank, aux head)."""
    import keras

    from tripletface.losses import get_loss

    if cfg.train.fused_batch_norm:  # the training pass only; the saved model is rebuilt by train()
        fuse_batch_norm(embedder)  # synchronized (multi-replica) layers keep Keras' path
    total = cfg.train.epochs * cfg.train.steps_per_epoch if total_steps is None else total_steps
    optimizer = make_optimizer(cfg.train, total)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    loss_obj = get_loss(cfg.loss)
    if cfg.loss.hard_from > 0:  # the mining schedule: the same loss, mined batch_hard from then on
        trainer_kwargs.setdefault("hard_loss", get_loss(dataclasses.replace(cfg.loss, name="batch_hard")))
        trainer_kwargs.setdefault("hard_start_step", int(round(cfg.loss.hard_from * total)))
    trainer = make_trainer(embedder, loss_obj, **trainer_kwargs)
    # XLA (train.jit_compile) is off unless asked: on CPU it was slower than the fused
    # BatchNorm step (docs/PERFORMANCE.md, "Training step levers")
    trainer.compile(optimizer=optimizer, jit_compile=bool(cfg.train.jit_compile))
    return trainer, optimizer


# Variables AdamW leaves undecayed, by name: biases and the BatchNorm/LayerNorm scale (gamma) and
# offset (beta). A regular expression on the variable's name, which Keras sees as "gamma" or (the
# TensorFlow variable under it) "layer/gamma:0".
NO_WEIGHT_DECAY = (r"(^|/)(bias|gamma|beta)(:\d+)?$",)


def make_optimizer(tcfg, total_steps: int):
    import keras

    lr = tcfg.learning_rate
    if tcfg.lr_schedule == "cosine":
        warm = tcfg.warmup_epochs * tcfg.steps_per_epoch
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warm else tcfg.learning_rate, decay_steps=max(1, total_steps - warm),
            warmup_target=tcfg.learning_rate if warm else None, warmup_steps=warm, alpha=0.01)
    if tcfg.optimizer == "adamw":
        opt = keras.optimizers.AdamW(lr, weight_decay=tcfg.weight_decay)  # 0 means none
        # decoupled decay shrinks kernels only: decaying a BatchNorm scale/offset or a bias toward 0
        # regularises nothing and changes what the layer computes (Loshchilov & Hutter; timm, BERT)
        opt.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
        return opt
    if tcfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    return keras.optimizers.Adam(lr)


# --------------------------------------------------------------------------- callbacks

def _callbacks_module():
    import keras

    from tripletface.losses import is_collapsed

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
        """Each epoch: embed held-out identities through ``embedder`` (the inference path, see
        :func:`validate`); verification accuracy on pairs and the original triplet metrics (loss,
        precision, recall) on triplets. Adds val_* entries to the epoch logs (so TensorBoard and
        the checkpoint callback see them) and warns on embedding collapse."""

        def __init__(self, val, embedder, margin, collapse_threshold, nan_guard, interrupt=None,
                     loss_distance="squared_l2"):
            super().__init__()
            self.val = val
            self.embedder = embedder
            self.margin = margin
            self.loss_distance = loss_distance
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
            if "pos_dist" in logs and "neg_dist" in logs and is_collapsed(logs, self.collapse_threshold, self.margin):
                print(f"\nwarning: embedding collapse at epoch {epoch + 1}: mean positive distance "
                      f"{logs['pos_dist']:.2e}, negative {logs['neg_dist']:.2e}, "
                      f"{logs.get('active_fraction', float('nan')):.0%} of the mined triplets active "
                      f"(the embeddings drew together); try a lower learning rate, semi-hard mining or a warm-up",
                      file=sys.stderr)
                logs["collapsed"] = 1.0
            if self.val is None:
                return
            from tripletface.errors import ModelError

            try:
                metrics = validate(self.val, self.embedder, self.margin, self.loss_distance)
            except ModelError:  # non-finite validation embeddings
                raise TrainingError(f"validation after epoch {epoch + 1}: the model produced non-finite "
                                    "embeddings; try a lower learning rate") from None
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
    """Pairs and triplets over held-out identities' images: ``{"paths", "pairs", "triplets"}``
    (index arrays into ``paths``). The images are embedded as inference embeds them (see
    :func:`validate`)."""
    from tripletface.data import dataset as D

    if val_index is None or len(val_index.paths) == 0:
        return None
    n_trip = max(8, cfg.train.validation_steps * max(1, cfg.data.batch_size // 3))
    pa, pb, same = D.make_val_pairs(val_index, cfg.data.val_pairs, seed=cfg.data.seed)
    ta, tp, tn = D.make_val_triplets(val_index, n_trip, seed=cfg.data.seed + 1)
    needed = np.unique(np.concatenate([pa, pb, ta, tp, tn]))
    pos = {int(i): j for j, i in enumerate(needed)}
    remap = lambda a: np.array([pos[int(i)] for i in a], dtype=np.int64)  # noqa: E731
    return {"paths": [val_index.paths[i] for i in needed], "identities": int(val_index.num_identities),
            "pairs": (remap(pa), remap(pb), np.asarray(same, bool)),
            "triplets": (remap(ta), remap(tp), remap(tn))}


def validation_pairs(val) -> list[tuple[str, str, bool]]:
    """The validation pairs as ``(path_a, path_b, same)``: what the stored threshold was chosen on."""
    pa, pb, same = val["pairs"]
    return [(val["paths"][a], val["paths"][b], bool(s)) for a, b, s in zip(pa, pb, same)]


def validate(val, embedder, margin, loss_distance: str = "squared_l2") -> dict:
    """Validation metrics of ``embedder`` (a :class:`tripletface.inference.embedder.Embedder`): the files are
    embedded exactly as ``compare``/``evaluate --aligned`` embed them (its flip mode included),
    so the threshold chosen here is the one inference needs.

    Returns ``val_accuracy`` (k-fold), ``val_threshold`` (best accuracy on all the pairs, the
    model's stored default) with ``val_threshold_accuracy`` (the accuracy there), and the
    original triplet metrics on the validation triplets: ``val_triplet_loss`` (the loss's own
    distance and margin; not comparable with the mined training loss) and ``val_precision`` /
    ``val_recall`` at ``val_threshold`` (chosen on the pairs, not on these triplets).
    """
    from keras import ops

    from tripletface.evaluation import verification as V
    from tripletface.inference.embedder import distance
    from tripletface.errors import InputError
    from tripletface.losses import get_distance

    emb, failures = embedder.embed_files(val["paths"], aligned=True)
    if failures:
        raise InputError(f"validation image {failures[0].message}")
    pa, pb, same = val["pairs"]
    d = distance(emb[pa], emb[pb])  # euclidean: the metric stored with the model
    acc = V.kfold_accuracy(d, same, folds=min(10, max(2, len(d) // 20)))
    threshold, threshold_acc = V.best_threshold(d, same)
    ta, tp, tn = val["triplets"]
    dist = get_distance(loss_distance)
    tm = V.triplet_metrics(ops.convert_to_numpy(dist.paired(emb[ta], emb[tp])),
                           ops.convert_to_numpy(dist.paired(emb[ta], emb[tn])), margin,
                           threshold=dist.from_euclidean(threshold))
    return {"val_accuracy": float(acc["mean"]), "val_triplet_loss": float(tm["loss"]),
            "val_precision": float(tm["precision"]), "val_recall": float(tm["recall"]),
            "val_threshold": float(threshold), "val_threshold_accuracy": float(threshold_acc)}


# --------------------------------------------------------------------------- main entry

# What a resume checkpoint's state was made with: a change in any of these changes the shapes or
# the meaning of the weights and optimizer slots, and a restore would fill only part of the state.
STATE_KEYS = ("model.backbone", "model.embedding_dim", "model.image_size", "model.width", "model.greyscale",
              "loss.name", "loss.distance", "loss.margin", "loss.soft_margin", "loss.memory_bank_size",
              "loss.aux_weight", "train.optimizer")
STATE_SIGNATURE_NAME = "made_with.json"  # in CHECKPOINT_DIR/state, beside the checkpoints


def state_signature(cfg, policy: str) -> dict:
    """The :data:`STATE_KEYS` values of ``cfg`` (those it has) and whether the optimizer scales the loss."""
    d = cfg.to_dict()
    sig = {}
    for key in STATE_KEYS:
        section, name = key.split(".")
        if name in d.get(section, {}):  # keys this version of the config has
            sig[key] = d[section][name]
    sig["loss scaling (train.mixed_precision=float16)"] = policy == "mixed_float16"
    return json.loads(json.dumps(sig))  # tuples as lists, as read back


def check_state_signature(state_dir: Path, signature: dict, write: bool) -> None:
    """Refuse to resume a checkpoint in ``state_dir`` made with another :func:`state_signature`
    (one line naming the differing keys); with ``write``, record ``signature`` there.

    Call it only when a checkpoint will be restored, or with ``write`` when starting over. A
    checkpoint from before signatures were written is taken as it is.
    """
    from tripletface.atomic import replaced_atomically

    f = state_dir / STATE_SIGNATURE_NAME
    if f.is_file() and not write:
        try:
            saved = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(saved, dict):
                raise ValueError
        except (OSError, ValueError):
            raise InputError(f"{f}: unreadable record of what the checkpoint was made with; "
                             "start over with --fresh") from None
        differ = [k for k in sorted(set(saved) | set(signature)) if saved.get(k) != signature.get(k)]
        if differ:
            what = ", ".join(f"{k} {json.dumps(saved.get(k))} (now {json.dumps(signature.get(k))})" for k in differ)
            raise InputError(f"{state_dir}: the checkpoint there was made with other settings: {what}; resuming "
                             "would restore only part of it: start over with --fresh, or use another CHECKPOINT_DIR")
        return
    with replaced_atomically(f) as tmp:
        tmp.write_text(json.dumps(signature, indent=2, sort_keys=True) + "\n", encoding="utf-8")


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
    """Drop blurred/turned/small crops per data.min_blur / max_pose / min_face_size, scored by crop's manifest."""
    from tripletface.data import dataset as D
    from tripletface.faces.crop import read_manifest

    manifest = _beside_crops(train_dir, "manifest.jsonl")
    if manifest is None:
        raise InputError(f"{train_dir}: data.min_blur/data.max_pose/data.min_face_size need the manifest.jsonl "
                         "that `tripletface crop` writes beside its crops")
    kept, dropped = D.quality_filter(index, read_manifest(manifest), manifest.parent,
                                     cfg.data.min_blur, cfg.data.max_pose, cfg.data.min_face_size)
    print(f"data: quality filter dropped {dropped} of {len(index)} crops in {train_dir} "
          f"(blur < {cfg.data.min_blur:g}, |pose| > {cfg.data.max_pose:g} or face < {cfg.data.min_face_size:g} px;"
          " 0 = off)", file=sys.stderr)
    return kept


# Terms of use of public face sets, by a name their folder usually carries; data.source_terms overrides.
KNOWN_TERMS = {
    "celeba": "CelebA: non-commercial research purposes only (CUHK's CelebA agreement); "
              "a model trained on it inherits that restriction",
    "casia": "CASIA-WebFace: non-commercial research purposes only",
    "lfw": "LFW: public research data set (UMass Amherst); photos of public figures, no licence restriction stated",
    "vggface2": "VGGFace2: non-commercial research purposes only",
}


def source_terms(path: Path) -> str:
    """The terms of a known face set, guessed from the folder's name and its parents' names."""
    parts = [p.lower() for p in Path(os.path.abspath(path)).parts[-3:]]
    for key, terms in KNOWN_TERMS.items():
        if any(key in p for p in parts):
            return terms
    return "unknown: check the data set's licence (set data.source_terms)"


def _source_records(cfg, index, dirs: list[Path]) -> list[dict]:
    """One record per training folder for the model file: name, path, counts and terms of use."""
    if cfg.data.source_terms and len(cfg.data.source_terms) != len(dirs):
        raise InputError(f"data.source_terms has {len(cfg.data.source_terms)} entries for {len(dirs)} training "
                         "folders; give one per folder, in data.train_dirs order")
    out = []
    for i, (row, d) in enumerate(zip(index.source_summary(), dirs)):
        terms = cfg.data.source_terms[i] if cfg.data.source_terms else source_terms(d)
        out.append({**row, "path": str(d), "terms": terms})
    return out


def _common_alignment(cfg, dirs: list[Path]) -> dict:
    """The alignment settings shared by every training folder; folders cropped differently are an error."""
    settings = [_alignment_settings(cfg, d) for d in dirs]
    for d, other in zip(dirs[1:], settings[1:]):
        diff = sorted(k for k in set(settings[0]) | set(other) if settings[0].get(k) != other.get(k))
        if diff:
            raise InputError(f"{d}: cropped with other alignment settings than {dirs[0]} ({', '.join(diff)} differ); "
                             "crop every training folder with the same crop settings")
    return settings[0]


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
    from tripletface.faces.cropper import alignment_settings

    return alignment_settings(cfg.crop)


def train(cfg, fresh: bool = False, verbose: int = 1) -> dict:
    """Train per ``cfg``; returns {'model_path', 'history', 'resumed_from', 'validation',
    'validation_pairs'} (the last: ``(path_a, path_b, same)`` the stored threshold was chosen on)."""
    import keras
    import tensorflow as tf

    from tripletface.data import dataset as D
    from tripletface.training import distribute
    from tripletface.model import build as M
    from tripletface.inference.embedder import Embedder
    from tripletface.losses import MemoryBank

    t0 = time.time()
    strategy = distribute.get_strategy(cfg.train.distribute)  # before any other TensorFlow op
    chief = distribute.is_chief(strategy)  # only the chief writes files
    keras.utils.set_random_seed(cfg.train.seed)
    policy = resolve_precision(cfg.train.mixed_precision, cfg.model.backbone)
    keras.mixed_precision.set_global_policy(policy)
    try:
        # ---- data (every data problem is reported before any training starts)
        ckpt_dir = Path(cfg.train.checkpoint_dir)
        start_epoch = 0 if fresh else _checkpoint_epoch(ckpt_dir)
        # a resumed run draws new batches rather than replaying epoch 1's
        data_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seed=cfg.data.seed + 7919 * start_epoch))
        train_dir = None
        val = None
        sources: list = []
        label_source = None
        n_classes = cfg.data.synthetic_identities  # labels the margin-softmax head classifies
        if cfg.data.source == "synthetic":
            ds = D.build_train_dataset(data_cfg)
        else:
            dirs = [Path(d) for d in cfg.data.dirs]
            train_dir = dirs[0]
            index = D.index_folders(dirs)
            if cfg.data.exclude_identities:
                index, dropped = D.exclude_identities(index, _read_names(cfg.data.exclude_identities),
                                                      cfg.data.allow_missing_exclusions,
                                                      what=f"exclusion list {cfg.data.exclude_identities}")
                print(f"data: excluded {dropped} identities listed in {cfg.data.exclude_identities}", file=sys.stderr)
            if cfg.data.min_blur > 0 or cfg.data.max_pose > 0 or cfg.data.min_face_size > 0:
                for d in dirs:
                    index = _quality_filter(cfg, index, d)
            sources = _source_records(cfg, index, dirs)
            train_index, val_index = D.split_by_identity(index, cfg.data.val_fraction, seed=cfg.data.seed)
            if index.num_sources > 1:
                share = D.source_weights(train_index, cfg.data.source_weights)
                for rec, w in zip(sources, share):
                    rec["sampling_share"] = round(float(w), 4)
                    print(f"data: source {rec['name']}: {rec['images']} images of {rec['identities']} identities "
                          f"({rec['identities_2plus']} with 2+), {100 * w:.1f}% of each P×K batch; "
                          f"terms: {rec['terms']}", file=sys.stderr)
                label_source = train_index.source_ids()
            n_classes = train_index.num_identities
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
        alignment = (_alignment_settings(cfg, None) if train_dir is None
                     else _common_alignment(cfg, [Path(d) for d in cfg.data.dirs]))
        metadata = {"alignment": alignment, "config": cfg.to_dict(),
                    "metric": "euclidean", "flip_tta": bool(cfg.eval.flip_tta), "sources": sources}
        with strategy.scope():  # variables mirrored over the replicas (tripletface.training.distribute)
            embedder = build_embedder(cfg, metadata=metadata)
            distribute.sync_batch_norm(embedder, strategy)
            bank = (MemoryBank(cfg.loss.memory_bank_size, cfg.model.embedding_dim)
                    if cfg.loss.memory_bank_size > 0 else None)
            aux_head = None
            if cfg.loss.aux_weight > 0:
                from tripletface.losses import MarginSoftmaxHead

                aux_head = MarginSoftmaxHead(n_classes, margin=cfg.loss.aux_margin, scale=cfg.loss.aux_scale,
                                             name="margin_softmax_head")
                aux_head.build((None, cfg.model.embedding_dim))
            trainer, optimizer = build_trainer(
                cfg, embedder, policy=policy, memory_bank=bank, memory_start_step=cfg.loss.memory_bank_start_step,
                aux_head=aux_head, aux_weight=cfg.loss.aux_weight, label_source=label_source,
                source_names=[re.sub(r"[^0-9A-Za-z]+", "_", r["name"]) for r in sources]
                if label_source is not None else ())
            # build optimizer variables so a restore has something to fill
            optimizer.build(embedder.trainable_variables
                            + (aux_head.trainable_variables if aux_head is not None else []))

        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        # steps done in epoch `epoch_var` when a signal stopped it (0 in every epoch checkpoint)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        state = {"model": embedder, "optimizer": optimizer, "epoch": epoch_var, "step_in_epoch": step_var}
        if bank is not None:
            state["memory_bank"] = bank
        if aux_head is not None:
            state["aux_head"] = aux_head
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
        if chief:  # a resume with another backbone, embedding size, loss... is refused, not half-restored
            check_state_signature(ckpt_dir / "state", state_signature(cfg, policy), write=fresh or not latest)
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
        # validation embeds as inference does (tripletface.inference.embedder, the model's flip mode)
        validation = Validation(val, Embedder(embedder, batch_size=cfg.eval.batch_size),
                                cfg.loss.margin, cfg.loss.collapse_threshold, guard, interrupt=stopper,
                                loss_distance=cfg.loss.distance)
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
        keras.mixed_precision.set_global_policy("float32")
        final = build_embedder(cfg, weights=None,
                               metadata={**metadata, "epochs_trained": max(resumed_from, cfg.train.epochs)})
        final.set_weights(embedder.get_weights())
        if val is not None:
            # chosen on the saved model through the inference path itself (Embedder, its flip mode),
            # so `compare` on these pairs decides exactly as measured here; and also when no epoch
            # ran (a rerun after the last one); BatchNorm folded as Embedder.load does
            final_embedder = Embedder(final, batch_size=cfg.eval.batch_size, fold_batch_norm=True)
            v = validate(val, final_embedder, cfg.loss.margin, cfg.loss.distance)
            n_pairs = len(val["pairs"][0])
            M.update_metadata(final, threshold=v["val_threshold"], val_accuracy=v["val_accuracy"],
                              threshold_source=f"training validation pairs ({n_pairs} pairs of {val['identities']} "
                                               "held-out identities, best accuracy)",
                              calibration={"source": "training validation pairs", "target": "accuracy",
                                           "pairs_used": n_pairs, "accuracy": v["val_threshold_accuracy"],
                                           "kfold_accuracy": v["val_accuracy"], "aligned": True,
                                           "flip_tta": final_embedder.flip_tta})
        model_path = M.save_model(final, ckpt_dir / FINAL_MODEL_NAME) if chief else ckpt_dir / FINAL_MODEL_NAME
        elapsed = time.time() - t0
        print(f"training done in {elapsed:.0f}s", file=sys.stderr)
        return {"model_path": str(model_path), "history": hist.history, "resumed_from": resumed_from,
                "validation": validation.history,
                "validation_pairs": validation_pairs(val) if val is not None else []}
    except (OSError, tf.errors.OpError) as e:
        bad_image = D.image_error(e) if isinstance(e, tf.errors.OpError) else None
        if bad_image is not None:  # a streamed (uncached) file found unreadable at the step that sampled it
            raise bad_image from None
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
