"""Training on listed triplets: a CSV of ``anchor,positive,negative`` image paths -> batches.

:func:`read_triplets_file` reads and checks the file (every image exists, anchor and
positive share an identity folder, the negative does not); :func:`make_triplets_file_dataset`
feeds its triplets in the output format of
:func:`tripletface.data.samplers.make_triplet_dataset` (``[B anchors, B positives, B
negatives]``), labelled by a training index when given (so validation identities stay out).
"""

from __future__ import annotations

import csv
import os
import typing
from pathlib import Path

import numpy as np

from tripletface.data.images import check_size
from tripletface.data.index import IMAGE_EXTENSIONS, FaceIndex, check_index
from tripletface.data.pipeline import ImageSource, augmented, batch_triplets, check_positive_int, step_key
from tripletface.errors import InputError

if typing.TYPE_CHECKING:  # pragma: no cover
    from tripletface.config import AugmentConfig

__all__ = ["read_triplets_file", "make_triplets_file_dataset"]


# Kept apart from tripletface.evaluation.evaluate.read_triplets_csv, which reads the same CSV layout
# (header, blank and ``#`` lines, 3 columns): training must reject a bad file before any step -- a
# missing image, or a triplet whose identity folders are wrong, is an InputError naming the line,
# since it would train on wrong labels -- while evaluation takes the rows as they are and counts a
# triplet whose image cannot be embedded as unscored. Only the ~12 lines of row syntax are alike, and
# their messages differ (each asserted by its own tests).
def read_triplets_file(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[tuple[str, str, str]]:
    """Read a CSV of ``anchor,positive,negative`` image paths (relative to ``root``).

    ``root`` defaults to the file's folder; absolute paths are used as they are. A
    first line without image file names is a header and skipped; blank lines and lines
    starting with ``#`` are skipped. The identity of an image is its folder: anchor and
    positive must share it, the negative must not.

    Returns:
        a list of ``(anchor, positive, negative)`` path strings.

    Raises:
        InputError: naming the file and line, for a missing file, a malformed line, a
            missing image or a triplet whose identities are wrong.
    """
    path = Path(path)
    base = Path(root) if root not in (None, "") else path.parent
    if not path.is_file():
        raise InputError(f"triplets file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"triplets file {path}: not UTF-8 text") from None
    except OSError as e:
        raise InputError(f"triplets file {path}: cannot read ({e.strerror or e})") from None
    triplets = []
    first = True
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if first:
            first = False
            if not any(os.path.splitext(c)[1].lower() in IMAGE_EXTENSIONS for c in cells):
                continue  # header
        where = f"{path}:{lineno}"
        if len(cells) != 3 or not all(cells):
            raise InputError(f"{where}: expected 3 comma-separated image paths (anchor,positive,negative), "
                             f"found {len([c for c in cells if c])}")
        files = [c if os.path.isabs(c) else os.path.join(base, c) for c in cells]
        for role, f in zip(("anchor", "positive", "negative"), files):
            if not os.path.isfile(f):
                raise InputError(f"{where}: {role} image not found: {f}")
        folders = [os.path.dirname(os.path.abspath(f)) for f in files]
        if folders[0] != folders[1]:
            raise InputError(f"{where}: anchor and positive are in different identity folders "
                             f"({os.path.basename(folders[0])} vs {os.path.basename(folders[1])})")
        if folders[2] == folders[0]:
            raise InputError(f"{where}: negative is from the anchor's identity folder {os.path.basename(folders[0])}")
        triplets.append(tuple(files))
    if not triplets:
        raise InputError(f"triplets file {path} holds no triplets")
    return triplets


def make_triplets_file_dataset(triplets: typing.Sequence[tuple[str, str, str]], batch_size: int, image_size,
                               aug_cfg: "AugmentConfig | None" = None, seed: int = 0, *,
                               index: FaceIndex | None = None, cache: bool = True, repeat: bool = True,
                               shuffle: bool | None = None, max_cache_bytes: int | None = None):
    """Batches of listed triplets, in the output format of
    :func:`tripletface.data.samplers.make_triplet_dataset`.

    Labels come from ``index`` when given (then triplets with an image outside it, e.g.
    of a validation identity, are left out), else from the identity folder names sorted.
    ``repeat`` (default) cycles forever, reshuffled each pass from ``(seed, pass)`` and
    augmented; ``repeat=False`` gives one pass in file order (``shuffle`` False) with a
    smaller last batch, e.g. for validation with ``aug_cfg=None``.
    """
    import tensorflow as tf

    batch_size = check_positive_int("batch_size", batch_size)
    size = check_size(image_size)
    shuffle = repeat if shuffle is None else bool(shuffle)
    triplets = [tuple(str(p) for p in t) for t in triplets]
    if not triplets:
        raise InputError("no triplets to train on")
    if any(len(t) != 3 for t in triplets):
        raise ValueError("triplets must be (anchor, positive, negative) path tuples")
    if index is not None:
        check_index(index)
        label_of = {os.path.abspath(p): int(l) for p, l in zip(index.paths, index.labels)}
        kept = [t for t in triplets if all(os.path.abspath(p) in label_of for p in t)]
        if not kept:
            raise InputError(f"none of the {len(triplets)} triplets uses only images of the training identities "
                             f"({index.describe()})")
        triplets = kept
        labels = np.array([[label_of[os.path.abspath(p)] for p in t] for t in triplets], np.int32)
    else:
        folders = sorted({os.path.dirname(os.path.abspath(p)) for t in triplets for p in t})
        folder_label = {f: i for i, f in enumerate(folders)}
        labels = np.array([[folder_label[os.path.dirname(os.path.abspath(p))] for p in t] for t in triplets],
                          np.int32)
    unique = sorted({p for t in triplets for p in t})
    position = {p: i for i, p in enumerate(unique)}
    ids = np.array([[position[p] for p in t] for t in triplets], np.int64)
    source = ImageSource(unique, size, cache, "triplet images", max_cache_bytes)
    load = augmented(source, aug_cfg, size)
    ids_t, labels_t = tf.constant(ids), tf.constant(labels)
    n = len(triplets)

    def one_pass(epoch):
        if shuffle:
            keys = tf.random.stateless_uniform([n], tf.stack([tf.constant(int(seed) + 1, tf.int64), epoch]))
            return tf.data.Dataset.from_tensor_slices(tf.argsort(keys))
        return tf.data.Dataset.range(n)

    passes = tf.data.Dataset.counter() if repeat else tf.data.Dataset.range(1)
    ds = passes.flat_map(one_pass).enumerate()

    def element(e, t):
        seeds = tf.random.experimental.stateless_split(step_key(tf, seed, e), 3)
        images = tf.stack([load(ids_t[t, j], seeds[j]) for j in range(3)])
        return images, labels_t[t]

    ds = ds.map(element, num_parallel_calls=tf.data.AUTOTUNE)
    return batch_triplets(tf, ds, batch_size, drop_remainder=repeat)
