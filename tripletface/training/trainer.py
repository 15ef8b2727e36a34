"""The model that trains: the embedding model wrapped in a Keras model whose ``train_step`` runs
the mining loss (:func:`make_trainer`), BatchNorm's fused training pass, the optimizer and its
schedule, and :func:`build_trainer`, which puts them together as
:func:`tripletface.training.loop.train` runs them (benchmarks build theirs here too)."""

from __future__ import annotations

import dataclasses


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
            # A private Keras hook with no public equivalent (fit() calls it before the first step,
            # unconditionally under a strategy), so it stays; tests/training/test_keras_private_api.py
            # fails loudly if Keras renames or stops calling it.
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
    nothing is saved differently (the saved model is rebuilt from its config by
    :func:`~tripletface.training.loop.train`).
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
    :func:`~tripletface.training.loop.train` builds it; benchmarks build theirs here so they time the
    model that trains."""
    from tripletface.model.build import build_embedding_model

    return build_embedding_model(cfg.model.backbone, cfg.model.embedding_dim, tuple(cfg.model.image_size),
                                 weights=cfg.model.weights if weights == "config" else weights,
                                 dropout=cfg.model.dropout, width=cfg.model.width, metadata=metadata,
                                 greyscale=cfg.model.greyscale)


def build_trainer(cfg, embedder, total_steps: int | None = None, policy: str = "float32", **trainer_kwargs):
    """``(trainer, optimizer)`` for ``embedder`` as :func:`~tripletface.training.loop.train` runs it:
    BatchNorm's fused training pass (``train.fused_batch_norm``), ``cfg.loss``'s mining loss, the
    optimizer and its schedule over ``total_steps`` (default: epochs × steps per epoch; loss-scaled
    under mixed_float16), compiled with ``train.jit_compile``; ``loss.hard_from`` sets the mining
    schedule's switch step. ``trainer_kwargs`` go to :func:`make_trainer` (memory bank, aux head)."""
    import keras

    from tripletface.losses import get_loss

    if cfg.train.fused_batch_norm:  # the training pass only; the saved model is rebuilt by loop.train()
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
