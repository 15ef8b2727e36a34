"""The building blocks the training datasets share: where sampled ids become images, and seeds.

:class:`ImageSource` turns image ids into float32 images, from an in-memory uint8 cache
(decoded, and so checked, at set-up) or streamed from disk when sampled; :func:`augmented`
adds the train-branch augmentation with a per-image seed; :func:`step_key` is the
stateless seed ``(seed, step)`` that makes every stream deterministic; :func:`batch_triplets`
orders triplet batches ``[B anchors, B positives, B negatives]``. Used by
:mod:`tripletface.data.samplers` and :mod:`tripletface.data.triplets`.
"""

from __future__ import annotations

import os
import sys
import typing

import numpy as np

from tripletface.data.images import check_size, decode_all, load_image, path_bytes


def cache_budget_bytes() -> int:
    """A quarter of physical memory (4 GiB when unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    except (AttributeError, ValueError, OSError):
        return 4 << 30


class ImageSource:
    """Where sampled image ids become float32 images.

    With ``cache``, the first images (in id order) that fit the budget (a quarter of RAM, or
    ``max_cache_bytes``) are decoded once at set-up into one uint8 tensor, which also checks
    them (an unreadable one is an :class:`InputError` before any step). The rest -- all of
    them without ``cache`` -- are streamed: read from disk when sampled, with no pass over
    them at set-up, so an unreadable one stops the step that samples it with an error that
    :func:`tripletface.data.images.image_error` turns into a one-line :class:`InputError`
    naming the file.
    """

    def __init__(self, paths: typing.Sequence[str], image_size, cache: bool, what: str = "images",
                 max_cache_bytes: int | None = None):
        import tensorflow as tf

        self.image_size = check_size(image_size)
        h, w = self.image_size
        paths = list(paths)
        budget = cache_budget_bytes() if max_cache_bytes is None else max_cache_bytes
        self.n_cached = min(len(paths), max(0, int(budget)) // (h * w * 3)) if cache else 0
        self.cached = self.n_cached == len(paths)
        if self.n_cached or self.cached:
            # Filled batch by batch into a variable: decoding into one array and converting it held
            # three copies at the peak (measured: 17 GB for 500k crops at 64 px, a 5.5 GB cache), and a
            # variable is captured by reference by the tf.data functions that gather from it.
            self._images = tf.Variable(tf.zeros((self.n_cached, h, w, 3), tf.uint8), trainable=False,
                                       name="image_cache")
            decode_all(paths[:self.n_cached], self.image_size, what,
                       sink=lambda ids, images: self._images.scatter_nd_update(ids[:, None], images))
        if not self.cached:
            if cache:
                print(f"data: {self.n_cached} of {len(paths)} {what} fit the in-memory cache "
                      f"({budget / 2**30:.1f} GiB); the other {len(paths) - self.n_cached} are read from disk "
                      "when sampled", file=sys.stderr)
            self._paths = tf.constant(path_bytes(paths[self.n_cached:]), dtype=tf.string)

    def load(self, image_id):
        import tensorflow as tf

        if self.cached:
            return tf.cast(tf.gather(self._images, image_id), tf.float32)
        n = self.n_cached

        def from_file():
            return load_image(tf.gather(self._paths, tf.cast(image_id, tf.int64) - n), self.image_size)

        if not n:
            return from_file()
        return tf.cond(tf.cast(image_id, tf.int64) < n,
                       lambda: tf.cast(tf.gather(self._images, image_id), tf.float32), from_file)


def check_positive_int(name: str, value) -> int:
    """``value`` as an int; ValueError naming ``name`` unless it is a positive integer (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, received: {value!r}")
    return int(value)


def step_key(tf, seed: int, step):
    """The stateless seed ``(seed, step)`` of batch or element number ``step``."""
    return tf.stack([tf.constant(int(seed), tf.int64), tf.cast(step, tf.int64)])


def augmented(source: ImageSource, aug_cfg, image_size):
    """``fn(image_id, seed) -> float32 image``: load from ``source``, then augment."""
    from tripletface.data.augment import build_augment, enabled_ops

    augment = build_augment(aug_cfg, image_size)
    if not enabled_ops(aug_cfg):
        return lambda image_id, seed: source.load(image_id)
    return lambda image_id, seed: augment(source.load(image_id), seed)


def batch_triplets(tf, ds, batch_size: int, drop_remainder: bool):
    """Elements (3, H, W, 3), (3,) -> batches (3B, H, W, 3), (3B,) ordered [anchors, positives, negatives]."""
    def reorder(images, labels):
        images = tf.transpose(images, [1, 0, 2, 3, 4])
        shape = tf.shape(images)
        images = tf.reshape(images, tf.concat([[-1], shape[2:]], 0))
        return images, tf.reshape(tf.transpose(labels), [-1])

    ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(reorder)
    return ds.prefetch(tf.data.AUTOTUNE)
