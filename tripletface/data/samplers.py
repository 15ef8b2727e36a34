"""Training batches from an index: P×K and explicit triplets, and the dataset a config asks for.

The data flow, each step its own function:

1. **index** and 2. **split**: :mod:`tripletface.data.index` (``index_folder``,
   ``split_by_identity``: whole identities held out before anything is shuffled), narrowed
   by :mod:`tripletface.data.filters`.
3. **decode**: :mod:`tripletface.data.images` (``load_image``, ``preprocess_image``, the
   preprocessing of training, validation and serving alike). With ``cache`` (the default)
   the decoded, un-augmented images stay in memory as one uint8 tensor, decoded (and so
   checked: an unreadable image is an :class:`InputError` naming it, before any step) at
   set-up, and batches are gathered from it by index. What does not fit the cache (a
   quarter of RAM), and everything with ``cache=False``, is streamed: read when sampled, no
   pass at set-up; an unreadable file then stops training at that step with a one-line
   error naming it (:func:`tripletface.data.images.image_error`). See
   :class:`tripletface.data.pipeline.ImageSource`.
4. **sample** an infinite stream of batches, deterministic for a given seed (batch ``b``
   draws from the stateless seed ``(seed, b)``):

   - ``make_pk_dataset``: P identities × K images (online mining). Only identities with
     2+ images are drawn; an identity with fewer than K images repeats some (every one
     of its images is used first).
   - ``make_triplet_dataset``: the original explicit random triplets; anchor and positive
     are two different images of an identity with 2+ images, the negative is any image
     of any other identity (single-image identities appear here, only as negatives).
   - ``make_triplets_file_dataset``: triplets listed in a CSV file (``read_triplets_file``),
     in :mod:`tripletface.data.triplets`.
   - ``make_synthetic_dataset`` / ``make_synthetic_triplet_dataset``: generated identities
     for smoke and throughput runs, no files (:mod:`tripletface.data.synthetic`).

5. **augment** (train branch only) per image, ``tripletface.data.augment.build_augment``, with a
   per-image seed, then batch and prefetch (AUTOTUNE).

:func:`build_train_dataset` picks the dataset ``data.source`` × ``data.sampling`` names.

Every training dataset yields ``(images, labels)``: images float32 ``(n, H, W, 3)`` with
values in ``[0, 255]`` (the model normalises), labels int32 ``(n,)`` identity labels. For
P×K ``n = P*K``, identity-major (``[id0 × K, id1 × K, ...]``); for triplets ``n = 3B``
ordered ``[B anchors, B positives, B negatives]``.

Example::

    index = index_folder("cropped_data/train")
    train_index, val_index = split_by_identity(index, 0.1, seed=1234)
    ds = make_pk_dataset(train_index, p=16, k=4, image_size=(112, 112), aug_cfg=cfg.augment, seed=1234)
    images, labels = next(iter(ds))      # (64, 112, 112, 3) float32, (64,) int32
"""

from __future__ import annotations

import typing

import numpy as np

from tripletface.data.images import check_size
from tripletface.data.index import FaceIndex, check_index, identity_layout, identity_weights, index_folders
from tripletface.data.pipeline import ImageSource, augmented, batch_triplets, check_positive_int, step_key
from tripletface.data.synthetic import make_synthetic_dataset, make_synthetic_triplet_dataset
from tripletface.data.triplets import make_triplets_file_dataset, read_triplets_file
from tripletface.errors import InputError

if typing.TYPE_CHECKING:  # pragma: no cover
    from tripletface.config import AugmentConfig, Config

__all__ = ["make_pk_dataset", "make_triplet_dataset", "build_train_dataset"]


# --------------------------------------------------------------------------- P×K batches

def make_pk_dataset(index: FaceIndex, p: int, k: int, image_size, aug_cfg: "AugmentConfig | None" = None,
                    seed: int = 0, cache: bool = True, max_cache_bytes: int | None = None,
                    singletons: float = 0.0, weights: np.ndarray | None = None):
    """Infinite P×K batches: ``images`` float32 ``(P*K, H, W, 3)`` in [0, 255], ``labels`` int32 ``(P*K,)``.

    Batch ``b`` draws, from the stateless seed ``(seed, b)``, P distinct identities among
    those with 2+ images, then K images of each (without replacement; an identity with
    fewer than K images uses all of them, then repeats random ones). Single-image
    identities never appear here (they can serve only as negatives, see
    :func:`make_triplet_dataset`). Rows are identity-major: ``[id0 × K, id1 × K, ...]``.
    The images are augmented per image with a seed derived from ``(seed, b)``.

    ``singletons`` (a fraction in [0, 1)) lets that share of the P identities come from
    single-image identities, shown K times under different augmentations: their
    "positives" are augmented views of one photo (instance discrimination), which puts
    the thousands of one-photo identities of a set like LFW to work as more than negatives.

    ``weights`` (one per identity with 2+ images, in :meth:`FaceIndex.anchor_identities`
    order; see :func:`identity_weights`) makes the P identities a weighted draw without
    replacement (Gumbel top-k: the P largest of ``log w + Gumbel noise``), e.g. to give each
    source of a several-folder index its share; None or equal weights is the uniform draw.

    Raises:
        InputError: P is larger than the number of identities with 2+ images, or an
            image cannot be decoded (named).
    """
    import tensorflow as tf

    check_index(index)
    p = check_positive_int("p", p)
    k = check_positive_int("k", k)
    if k < 2:
        raise ValueError(f"k must be >= 2 so each identity has a positive, received: {k}")
    size = check_size(image_size)
    if not 0.0 <= singletons < 1.0:
        raise ValueError(f"singletons must be in [0, 1), received: {singletons}")
    anchors = index.anchor_identities()
    single = np.flatnonzero(index.counts() == 1)
    p_single = min(int(round(p * singletons)), len(single)) if singletons else 0
    p_multi = p - p_single
    if p_multi > len(anchors):
        raise InputError(f"P={p_multi} identities per batch (data.batch_size / data.k) is more than the "
                         f"{len(anchors)} identities with 2+ images in the training data; lower "
                         f"data.batch_size or raise data.k")
    order, starts, counts = identity_layout(index)
    width = int(max(k, counts[anchors].max()))
    single_t = tf.constant(single if len(single) else np.zeros(1, np.int64), tf.int64)
    n_single = len(single)
    source = ImageSource(index.paths, size, cache, "training images", max_cache_bytes)
    load = augmented(source, aug_cfg, size)
    anchors_t = tf.constant(anchors, tf.int64)
    order_t, starts_t, counts_t = (tf.constant(a, tf.int64) for a in (order, starts, counts))
    labels_t = tf.constant(index.labels, tf.int32)
    n_anchor = len(anchors)
    log_w = None
    if weights is not None:
        weights = np.asarray(weights, np.float64).reshape(-1)
        if weights.shape != (n_anchor,) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError(f"weights must be {n_anchor} finite values >= 0 (one per identity with 2+ images), "
                             f"received shape {weights.shape}")
        if int((weights > 0).sum()) < p_multi:
            raise InputError(f"P={p_multi} identities per batch but only {int((weights > 0).sum())} identities "
                             "have a sampling weight > 0 (data.source_weights)")
        if not np.allclose(weights, weights.max()):
            log_w = tf.constant(np.log(np.maximum(weights, 1e-300)) + np.where(weights > 0, 0.0, -1e30), tf.float32)

    def sample(b):
        keys = tf.random.experimental.stateless_split(step_key(tf, seed, b), 5)
        # P distinct identities: the P largest of n_anchor uniform keys (weighted: log w + Gumbel noise)
        u = tf.random.stateless_uniform([n_anchor], keys[0], minval=1e-12, maxval=1.0)
        if log_w is not None:
            u = log_w - tf.math.log(-tf.math.log(u))
        pick = tf.math.top_k(u, p_multi).indices
        ids = tf.gather(anchors_t, pick)
        if p_single:
            pick1 = tf.math.top_k(tf.random.stateless_uniform([n_single], keys[4]), p_single).indices
            ids = tf.concat([ids, tf.gather(single_t, pick1)], axis=0)
        count, start = tf.gather(counts_t, ids), tf.gather(starts_t, ids)
        # K distinct offsets per identity (top-k of random keys over its images) ...
        scores = tf.random.stateless_uniform([p, width], keys[1])
        valid = tf.range(width, dtype=tf.int64)[None, :] < count[:, None]
        offsets = tf.cast(tf.math.top_k(tf.where(valid, scores, -1.0), k).indices, tf.int64)
        # ... and where an identity has fewer than K images, random repeats for the rest
        repeats = tf.cast(tf.floor(tf.random.stateless_uniform([p, k], keys[2])
                                   * tf.cast(count[:, None], tf.float32)), tf.int64)
        offsets = tf.where(offsets < count[:, None], offsets, tf.minimum(repeats, count[:, None] - 1))
        image_ids = tf.reshape(tf.gather(order_t, start[:, None] + offsets), [-1])
        seeds = tf.random.experimental.stateless_split(keys[3], p * k)
        return image_ids, tf.gather(labels_t, image_ids), seeds

    ds = tf.data.Dataset.counter().map(sample)
    ds = ds.unbatch().map(lambda i, label, s: (load(i, s), label), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(p * k, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def make_triplet_dataset(index: FaceIndex, batch_size: int, image_size, aug_cfg: "AugmentConfig | None" = None,
                         seed: int = 0, cache: bool = True, max_cache_bytes: int | None = None):
    """Infinite batches of B random triplets (the original design).

    Yields ``images`` float32 ``(3B, H, W, 3)`` ordered ``[B anchors, B positives, B
    negatives]`` and ``labels`` int32 ``(3B,)``, the true identity labels. Triplet ``e``
    draws from the stateless seed ``(seed, e)``: an anchor identity uniformly among those
    with 2+ images, two different images of it, and a negative uniformly among all
    images of all other identities (never the anchor's; single-image identities
    included).
    """
    import tensorflow as tf

    check_index(index)
    batch_size = check_positive_int("batch_size", batch_size)
    size = check_size(image_size)
    anchors = index.anchor_identities()
    if len(anchors) < 1 or index.num_identities < 2:
        raise InputError(f"triplets need an identity with 2+ images and another identity; the data has "
                         f"{index.describe()}")
    order, starts, counts = identity_layout(index)
    source = ImageSource(index.paths, size, cache, "training images", max_cache_bytes)
    load = augmented(source, aug_cfg, size)
    anchors_t = tf.constant(anchors, tf.int64)
    order_t, starts_t, counts_t = (tf.constant(a, tf.int64) for a in (order, starts, counts))
    labels_t = tf.constant(index.labels, tf.int32)
    n_images, n_anchor = len(index), len(anchors)

    def draw(key, n):
        """An integer uniform in [0, n) (n an int64 tensor or int)."""
        u = tf.random.stateless_uniform([], key, dtype=tf.float64)
        return tf.minimum(tf.cast(tf.floor(u * tf.cast(n, tf.float64)), tf.int64), tf.cast(n, tf.int64) - 1)

    def sample(e):
        keys = tf.random.experimental.stateless_split(step_key(tf, seed, e), 5)
        identity = tf.gather(anchors_t, draw(keys[0], n_anchor))
        count, start = tf.gather(counts_t, identity), tf.gather(starts_t, identity)
        a = draw(keys[1], count)
        pos = draw(keys[2], count - 1)
        pos = pos + tf.cast(pos >= a, tf.int64)
        # a uniform image outside [start, start + count): skip over the anchor's block
        neg = draw(keys[3], n_images - count)
        neg = neg + count * tf.cast(neg >= start, tf.int64)
        ids = tf.stack([tf.gather(order_t, start + a), tf.gather(order_t, start + pos), tf.gather(order_t, neg)])
        seeds = tf.random.experimental.stateless_split(keys[4], 3)
        images = tf.stack([load(ids[j], seeds[j]) for j in range(3)])
        return images, tf.gather(labels_t, ids)

    ds = tf.data.Dataset.counter().map(sample, num_parallel_calls=tf.data.AUTOTUNE)
    return batch_triplets(tf, ds, batch_size, drop_remainder=True)


# --------------------------------------------------------------------------- dispatch

def build_train_dataset(cfg: "Config", index: FaceIndex | None = None):
    """The training dataset ``cfg`` asks for (``data.source`` × ``data.sampling``).

    ``index`` is the training index (after :func:`tripletface.data.index.split_by_identity`);
    when None it is made from ``data.train_dir`` (or ``data.train_dirs``). P×K batches over
    several sources draw identities with ``data.source_weights``
    (:func:`tripletface.data.index.identity_weights`). P = ``cfg.data.p``, K = ``cfg.data.k``;
    triplet modes take ``data.batch_size`` triplets per batch. ``triplets_file`` paths are relative to
    ``data.train_dir`` and triplets touching identities outside ``index`` are left out.
    """
    data = cfg.data
    size = check_size(cfg.model.image_size)
    if data.source == "synthetic":
        if data.sampling == "pk":
            return make_synthetic_dataset(data.p, data.k, size, data.synthetic_identities, data.seed)
        return make_synthetic_triplet_dataset(data.batch_size, size, data.synthetic_identities, data.seed)
    if data.source != "folder":
        raise ValueError(f"data.source must be folder or synthetic, received: {data.source!r}")
    if index is None:
        index = index_folders(data.dirs)
    if data.sampling == "pk":
        weights = identity_weights(index, data.source_weights, data.source_balance) if index.num_sources > 1 else None
        return make_pk_dataset(index, data.p, data.k, size, cfg.augment, data.seed, cache=data.cache,
                               singletons=data.singletons, weights=weights)
    if data.sampling == "triplets":
        return make_triplet_dataset(index, data.batch_size, size, cfg.augment, data.seed, cache=data.cache)
    if data.sampling == "triplets_file":
        if not data.triplets_file:
            raise InputError("data.sampling=triplets_file needs data.triplets_file (a CSV of "
                             "anchor,positive,negative paths)")
        triplets = read_triplets_file(data.triplets_file, root=data.train_dir)
        return make_triplets_file_dataset(triplets, data.batch_size, size, cfg.augment, data.seed,
                                          index=index, cache=data.cache)
    raise ValueError(f"data.sampling must be pk, triplets or triplets_file, received: {data.sampling!r}")
