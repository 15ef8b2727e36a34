"""Training beyond one device: strategy selection, the global batch, chief-only files.

``train.distribute`` picks the :mod:`tf.distribute` strategy the trainer is built under:

* ``none`` -- the default strategy (one device; what every single-machine run uses);
* ``mirrored`` -- :class:`tf.distribute.MirroredStrategy`, one replica per local GPU;
* ``multiworker`` -- :class:`tf.distribute.MultiWorkerMirroredStrategy`, one process per
  machine, the cluster described by the ``TF_CONFIG`` environment variable (without it,
  a single local worker).

How a batch is split, and why training stays the same as on one device:

* ``data.batch_size`` is the **global** batch (P×K images for P×K sampling). Keras
  splits each global batch into one contiguous slice per replica (the dataset is
  sharded by data, never by file: :func:`shard_by_data`), so a replica may hold only
  part of an identity's K images.
* Mining runs on the **gathered global batch**: inside the replica context,
  :func:`gather_global_batch` all-gathers the embeddings and labels of every replica
  (in replica order, which restores the global batch as the dataset produced it), so
  every replica mines the same triplets over all P×K images and computes the same loss.
* Gradients: the all-gather's gradient sums the upstream gradient over replicas and
  hands each replica its own rows, and the optimizer sums the replicas' gradients, so
  each replica's loss is divided by the number of replicas (:func:`scale_loss`); the
  applied gradient is then exactly the gradient of the global-batch loss.
* BatchNormalization layers are switched to synchronised statistics
  (:func:`sync_batch_norm`): batch statistics over the global batch, as on one device.
* Keras 3 reduces a multi-worker step's logs with ``axis=0``; :func:`step_logs` gives them
  the axis it needs (the epoch logs stay scalars).

With these, an N-replica step equals a one-device step on the same global batch
up to float summation order; the loss does not depend on the number of workers.

Files: only the chief writes the checkpoints, the final model, the history and the
TensorBoard logs. Every worker takes part in a checkpoint save (saving may need
collective communication), a non-chief worker into a scratch folder that is removed
at once (:func:`worker_dir`, :func:`remove_worker_dir`). A checkpoint holds plain
variable values, so it resumes under any number of workers (or none); with several
machines the checkpoint folder must be on storage every worker reads.

Example::

    strategy = get_strategy(cfg.train.distribute)      # before any other TensorFlow op
    with strategy.scope():
        model = build_embedding_model(...)
        sync_batch_norm(model)
    ...  # in the train step, in the replica context:
    labels, emb = gather_global_batch(labels, emb)
    loss = scale_loss(loss_fn(labels, emb))
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tripletface.errors import InputError, TrainingError, first_line

__all__ = ["STRATEGIES", "get_strategy", "num_replicas", "num_workers", "is_chief", "task_name", "worker_dir",
           "remove_worker_dir", "gather_global_batch", "scale_loss", "step_logs", "sync_batch_norm", "shard_by_data",
           "check_global_batch"]

STRATEGIES = ("none", "mirrored", "multiworker")


def _tf_config() -> dict:
    """The parsed ``TF_CONFIG`` ({} when unset); an :class:`InputError` when it is not JSON."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise InputError(f"TF_CONFIG is not valid JSON: {raw[:120]!r}") from None
    if not isinstance(value, dict):
        raise InputError(f"TF_CONFIG must be a JSON object, received: {raw[:120]!r}")
    return value


def get_strategy(name: str = "none"):
    """The :mod:`tf.distribute` strategy called ``name`` (one of :data:`STRATEGIES`).

    ``multiworker`` must be created before any other TensorFlow op runs in the process
    (TensorFlow configures collective ops at start-up); a :class:`TrainingError` says so
    otherwise.
    """
    if name not in STRATEGIES:
        raise ValueError(f"name must be one of {'|'.join(STRATEGIES)}, received: {name!r}")
    import tensorflow as tf

    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    cluster = _tf_config().get("cluster", {})
    if not cluster:
        return tf.distribute.MultiWorkerMirroredStrategy()  # one local worker
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        if "program startup" in str(e):
            raise TrainingError("train.distribute=multiworker: TensorFlow ran an op before the strategy was "
                                "created; create it first (tripletface.training.distribute.get_strategy)") from None
        raise
    except ValueError as e:  # a malformed cluster spec
        raise InputError(f"TF_CONFIG: {first_line(e)}") from None


def num_replicas(strategy=None) -> int:
    """Replicas in sync (all devices of all workers); 1 for the default strategy."""
    import tensorflow as tf

    return int((strategy or tf.distribute.get_strategy()).num_replicas_in_sync)


def num_workers(strategy=None) -> int:
    """Worker processes of ``strategy``'s cluster (its ``chief`` and ``worker`` tasks); 1 without one.

    From the public ``strategy.cluster_resolver``: what MultiWorkerMirroredStrategy's private
    ``extended._in_multi_worker_mode()`` tests (its worker count, the same chief + worker tasks of
    the cluster spec, > 1); TensorFlow 2.21 gives the same answer for no, one and several workers.
    """
    import tensorflow as tf

    resolver = getattr(strategy or tf.distribute.get_strategy(), "cluster_resolver", None)
    if resolver is None:
        return 1
    jobs = resolver.cluster_spec().as_dict()
    return max(1, len(jobs.get("chief", ())) + len(jobs.get("worker", ())))


def task_name(strategy=None) -> tuple[str, int]:
    """``(task type, task id)`` of this process: ``("chief", 0)``, ``("worker", 1)``, ... ."""
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and getattr(resolver, "task_type", None):
        return str(resolver.task_type), int(resolver.task_id or 0)
    return "chief", 0


def is_chief(strategy=None) -> bool:
    """True for the process that writes files: the ``chief`` task, else ``worker`` 0, else a lone process."""
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    extended = getattr(strategy, "extended", None)
    if extended is not None and hasattr(extended, "should_checkpoint"):
        return bool(extended.should_checkpoint)
    task_type, task_id = task_name(strategy)
    return task_type == "chief" or (task_type == "worker" and task_id == 0)


def worker_dir(path, strategy=None) -> Path:
    """Where this process writes ``path``: ``path`` itself on the chief; on another worker a
    scratch folder ``path/.worker-<type>-<id>`` to remove with :func:`remove_worker_dir`."""
    path = Path(path)
    if is_chief(strategy):
        return path
    task_type, task_id = task_name(strategy)
    return path / f".worker-{task_type}-{task_id}"


def remove_worker_dir(path, strategy=None) -> None:
    """Delete the scratch folder of a non-chief worker (nothing on the chief)."""
    if not is_chief(strategy):
        shutil.rmtree(worker_dir(path, strategy), ignore_errors=True)


def gather_global_batch(labels, embeddings):
    """``(labels, embeddings)`` of the whole global batch, in replica order.

    In a replica context with more than one replica, both are all-gathered along axis 0
    (the gradient flows back to each replica's own rows); otherwise returned unchanged.
    """
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return labels, embeddings
    labels = tf.convert_to_tensor(labels)
    if not labels.device and embeddings.device:
        # labels straight from a multi-worker input iterator carry no device, and the collective
        # needs one to name its destination: pin them beside this replica's embeddings
        with tf.device(embeddings.device):
            labels = tf.identity(labels)
    return ctx.all_gather(labels, axis=0), ctx.all_gather(embeddings, axis=0)


def scale_loss(loss):
    """Divide the (global-batch) loss by the replicas in sync, so the optimizer's sum of the
    replicas' gradients is the gradient of the global loss. Identity outside a replica context."""
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    n = 1 if ctx is None else ctx.num_replicas_in_sync
    return loss if n == 1 else loss / tf.cast(n, loss.dtype)


def step_logs(logs: dict) -> dict:
    """What a train step returns, in the shape Keras can reduce across workers.

    Keras 3 (3.15) reduces the logs of a multi-worker step with
    ``strategy.reduce("MEAN", value, axis=0)``, which fails on scalars; under a multi-worker
    strategy each value gets a length-1 axis (the reduction removes it again: the epoch
    logs are scalars as usual). Elsewhere the logs are returned unchanged.
    """
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and num_workers(strategy) > 1
    if not multi_worker:
        return logs
    return {k: tf.reshape(v, [1]) for k, v in logs.items()}


def sync_batch_norm(model, strategy=None) -> int:
    """Make the BatchNormalization layers of ``model`` (nested models too) use statistics over
    the global batch when ``strategy`` has several replicas; returns how many were switched.

    Only the training forward pass changes (inference uses the moving statistics); the
    saved model is rebuilt from its config by the trainer, so nothing of this is saved.
    """
    if num_replicas(strategy) <= 1:
        return 0
    import keras

    def walk(m):
        for layer in getattr(m, "layers", ()):
            yield layer
            yield from walk(layer)  # a backbone nested as one layer

    n = 0
    for layer in walk(model):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            n += 1
    return n


def shard_by_data(dataset):
    """Shard ``dataset`` across workers by element (each worker builds the same batches and
    keeps its slice of every global batch), never by input file: file sharding would give
    each worker batches of its own, breaking P×K batches and the global-batch mining."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def check_global_batch(batch_images: int, strategy=None, key: str = "data.batch_size") -> int:
    """The number of replicas, after checking that a global batch of ``batch_images`` images
    splits evenly over them (an :class:`InputError` naming ``key`` otherwise)."""
    n = num_replicas(strategy)
    if batch_images % n:
        raise InputError(f"config key {key!r} must give a global batch divisible by the {n} replicas, "
                         f"received: {batch_images} images per batch")
    return n
