"""Generated identities for smoke and throughput runs: training batches with no files.

Each identity is a fixed random low-frequency colour pattern; each image adds jitter,
brightness and noise. The batches have the format of :mod:`tripletface.data.samplers`'
P×K and triplet datasets (``data.source=synthetic``).
"""

from __future__ import annotations

import numpy as np

from tripletface.data.images import check_size
from tripletface.data.pipeline import check_positive_int, step_key
from tripletface.errors import InputError

__all__ = ["make_synthetic_dataset", "make_synthetic_triplet_dataset"]


def _synthetic_patterns(n_identities: int, seed: int) -> np.ndarray:
    """One fixed low-frequency colour pattern per identity: float32 (n, 6, 6, 3) in [0, 255]."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 255.0, size=(n_identities, 6, 6, 3)).astype(np.float32)


def _synthetic_images(tf, patterns_t, labels, key, image_size):
    """Images of identities ``labels``: pattern + per-image pattern jitter, brightness and pixel noise."""
    n = tf.shape(labels)[0]
    keys = tf.random.experimental.stateless_split(key, 3)
    low = tf.gather(patterns_t, labels)
    low = low + 12.0 * tf.random.stateless_normal(tf.shape(low), keys[0])
    images = tf.image.resize(low, image_size, method="bicubic")
    images = images + tf.random.stateless_uniform(tf.stack([n, 1, 1, 1]), keys[1], -20.0, 20.0)
    images = images + 8.0 * tf.random.stateless_normal(tf.shape(images), keys[2])
    return tf.clip_by_value(images, 0.0, 255.0)


def make_synthetic_dataset(p: int, k: int, image_size, n_identities: int = 64, seed: int = 0):
    """Infinite generated P×K batches in the format of
    :func:`tripletface.data.samplers.make_pk_dataset`, no files.

    Each identity is a fixed random low-frequency colour pattern (from ``seed``); each
    image adds pattern jitter, a brightness shift and pixel noise, so the task is
    learnable but not trivial. No augmentation. For smoke and throughput runs.
    """
    import tensorflow as tf

    p, k = check_positive_int("p", p), check_positive_int("k", k)
    n_identities = check_positive_int("n_identities", n_identities)
    size = check_size(image_size)
    if p > n_identities:
        raise InputError(f"P={p} identities per batch is more than the {n_identities} synthetic identities "
                         f"(data.synthetic_identities)")
    patterns_t = tf.constant(_synthetic_patterns(n_identities, seed))

    def batch(b):
        keys = tf.random.experimental.stateless_split(step_key(tf, seed, b), 2)
        ids = tf.math.top_k(tf.random.stateless_uniform([n_identities], keys[0]), p).indices
        labels = tf.repeat(ids, k)
        return _synthetic_images(tf, patterns_t, labels, keys[1], size), tf.cast(labels, tf.int32)

    return tf.data.Dataset.counter().map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def make_synthetic_triplet_dataset(batch_size: int, image_size, n_identities: int = 64, seed: int = 0):
    """Infinite generated triplet batches in the format of
    :func:`tripletface.data.samplers.make_triplet_dataset`."""
    import tensorflow as tf

    batch_size = check_positive_int("batch_size", batch_size)
    n_identities = check_positive_int("n_identities", n_identities)
    size = check_size(image_size)
    if n_identities < 2:
        raise InputError(f"triplets need 2 or more synthetic identities (data.synthetic_identities), "
                         f"received: {n_identities}")
    patterns_t = tf.constant(_synthetic_patterns(n_identities, seed))

    def batch(b):
        keys = tf.random.experimental.stateless_split(step_key(tf, seed, b), 3)
        anchor = tf.random.stateless_uniform([batch_size], keys[0], 0, n_identities, dtype=tf.int32)
        other = tf.random.stateless_uniform([batch_size], keys[1], 1, n_identities, dtype=tf.int32)
        negative = (anchor + other) % n_identities
        labels = tf.concat([anchor, anchor, negative], 0)
        return _synthetic_images(tf, patterns_t, labels, keys[2], size), labels

    return tf.data.Dataset.counter().map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
