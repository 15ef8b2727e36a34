"""Image files as model input in TensorFlow: decode, preprocess, check, and batch for evaluation.

Step 3 of the data flow (:mod:`tripletface.data.samplers`), **decode**: ``load_image``
reads a file with :func:`tripletface.data.decode.read_image` (the decoder of ``crop``,
``embed``, ``evaluate`` and the service, in a ``tf.numpy_function``; ``decode_image`` does
the same for bytes), and ``preprocess_image`` (resize to the model's size, round) is the one
preprocessing every path uses: training, validation (``make_eval_dataset``, ``load_images``)
and serving. So a PNG or JPEG crop gives training the very pixels inference sees. An
unreadable file is an :class:`InputError` naming it: at once when decoded up front
(``check_images``, ``load_images``, the samplers' in-memory cache), or, for a file streamed
at the step that samples it, a one-line error that :func:`image_error` recovers from
TensorFlow's.
"""

from __future__ import annotations

import json
import os
import typing

import numpy as np

from tripletface.data.index import FaceIndex
from tripletface.errors import ImageError, InputError

__all__ = [
    "decode_image",
    "read_image_tensor",
    "image_error",
    "preprocess_image",
    "load_image",
    "load_images",
    "check_images",
    "make_eval_dataset",
]

_DECODE_BATCH = 64


def check_size(image_size) -> tuple[int, int]:
    """``image_size`` as ``(height, width)`` positive ints; ValueError naming the value otherwise."""
    try:
        h, w = (int(s) for s in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), received: {image_size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, received: {image_size!r}")
    return h, w


# Marks an unreadable file in the error TensorFlow raises from the pipeline (see image_error).
_IMAGE_ERROR = "tripletface-unreadable-image"


def path_bytes(paths: typing.Sequence[str | os.PathLike]) -> list[bytes]:
    """File names as bytes for a string tensor: every name round-trips (os.fsdecode), UTF-8 or not."""
    return [os.fsencode(p) for p in paths]


def _raise_for_tf(err: ImageError, name: str):
    """Re-raise ``err`` in a ``tf.numpy_function`` as one ASCII line that :func:`image_error` parses
    back (TensorFlow cannot carry a message that is not UTF-8, and adds its traceback after it)."""
    raise ValueError(f"{_IMAGE_ERROR} {json.dumps([name, getattr(err, 'reason', str(err))], ensure_ascii=True)}")


def _read_file(path) -> np.ndarray:
    """``tf.numpy_function`` body: :func:`tripletface.data.decode.read_image` of one file name (bytes)."""
    from tripletface.data.decode import read_image

    if isinstance(path, np.ndarray):  # eagerly a 0-d array, in a graph the bytes themselves
        path = path.item()
    name = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    try:
        return read_image(name)
    except ImageError as e:
        _raise_for_tf(e, name)


def _decode_bytes(contents) -> np.ndarray:
    from tripletface.data.decode import decode_image_bytes

    if isinstance(contents, np.ndarray):
        contents = contents.item()
    try:
        return decode_image_bytes(contents, name="<bytes>")
    except ImageError as e:
        _raise_for_tf(e, "<bytes>")


def image_error(err: BaseException) -> InputError | None:
    """The one-line :class:`InputError` naming the file, for a TensorFlow error that the pipeline
    raised on an unreadable image (streamed files are read at the step that samples them);
    None for any other error."""
    import re

    text = getattr(err, "message", None) or str(err)
    found = re.search(re.escape(_IMAGE_ERROR) + r" (\[[^\n]*?\])(?=\n|$)", text)
    if not found:
        return None
    try:
        name, reason = json.loads(found.group(1))
    except (ValueError, TypeError):
        return None
    return InputError(f"{name}: unreadable image ({reason}); fix or remove the file and run again")


def decode_image(contents):
    """Encoded image bytes (scalar string tensor) -> uint8 ``(h, w, 3)`` RGB tensor.

    :func:`tripletface.data.decode.decode_image_bytes` in a ``tf.numpy_function``: the one decoder
    of every command (Pillow; EXIF orientation applied, greyscale and 16-bit made 8-bit RGB,
    alpha composited on white), so training sees the pixels ``embed``, ``evaluate`` and the
    service see. An undecodable file raises ``tf.errors.InvalidArgumentError`` (see
    :func:`image_error`).
    """
    import tensorflow as tf

    contents = tf.convert_to_tensor(contents, tf.string)
    image = tf.numpy_function(_decode_bytes, [contents], tf.uint8, stateful=False)
    return tf.ensure_shape(image, [None, None, 3])


def read_image_tensor(path):
    """One file (scalar string tensor, or str) -> uint8 ``(h, w, 3)`` RGB tensor, read by
    :func:`tripletface.data.decode.read_image` (as :func:`decode_image`, from the file)."""
    import tensorflow as tf

    if not tf.is_tensor(path):
        path = tf.constant(os.fsencode(path))
    image = tf.numpy_function(_read_file, [path], tf.uint8, stateful=False)
    return tf.ensure_shape(image, [None, None, 3])


def preprocess_image(image, image_size):
    """uint8 or float ``(h, w, 3)`` -> float32 ``(H, W, 3)`` in [0, 255], the model's input.

    Resized (bilinear, ``tf.image.resize`` as in ``embedder.resize_images``) only when
    the size differs, then rounded to whole grey levels, so the result is exactly what
    the uint8 in-memory cache holds. Training, validation and serving all use this.
    """
    import tensorflow as tf

    h, w = check_size(image_size)
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], h), tf.equal(shape[1], w))
    image = tf.cond(same, lambda: image,
                    lambda: tf.round(tf.clip_by_value(tf.image.resize(image, (h, w)), 0.0, 255.0)))
    return tf.ensure_shape(image, [h, w, 3])


def load_image(path, image_size):
    """Read, decode and preprocess one file (string tensor or str) -> float32 ``(H, W, 3)``."""
    return preprocess_image(read_image_tensor(path), image_size)


def _why_unreadable(path: str) -> str:
    """Read one file again to report why it failed: the reason :func:`tripletface.data.decode.read_image` gives."""
    from tripletface.data.decode import read_image

    try:
        read_image(path)
    except ImageError as e:
        return getattr(e, "reason", None) or str(e)
    return "cannot be decoded"


def decode_all(paths: typing.Sequence[str], image_size=None, what: str = "images", sink=None) -> np.ndarray | None:
    """Decode every file once in a parallel map.

    With ``image_size`` returns uint8 ``(N, H, W, 3)`` (preprocessed), or, given ``sink``,
    calls ``sink(ids, images)`` for each decoded batch instead and returns None (no array of
    all images is held); without ``image_size``, only checks that each file decodes and
    returns None. Raises InputError naming the first file that cannot be read or decoded.
    """
    import tensorflow as tf
    from tqdm import tqdm

    paths = [os.fspath(p) for p in paths]
    n = len(paths)
    out = np.zeros((n, *image_size, 3), np.uint8) if image_size is not None and sink is None else None
    if n == 0:
        return out

    if image_size is not None:
        def fn(i, p):
            return i, tf.cast(load_image(p, image_size), tf.uint8)
    else:
        def fn(i, p):
            return i, tf.shape(read_image_tensor(p))

    ds = tf.data.Dataset.from_tensor_slices((np.arange(n, dtype=np.int64), tf.constant(path_bytes(paths))))
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    ds = ds.batch(_DECODE_BATCH).prefetch(tf.data.AUTOTUNE)
    seen = np.zeros(n, bool)
    with tqdm(total=n, desc=f"decoding {what}", unit="img", disable=None, leave=False) as bar:
        for idx, value in ds.as_numpy_iterator():
            seen[idx] = True
            if out is not None:
                out[idx] = value
            elif sink is not None:
                sink(idx, value)
            bar.update(len(idx))
    bad = np.flatnonzero(~seen)
    if len(bad):
        first = paths[bad[0]]
        more = f" ({len(bad) - 1} more unreadable file(s) in the data)" if len(bad) > 1 else ""
        raise InputError(f"{first}: unreadable image ({_why_unreadable(first)}){more}")
    return out


def check_images(index_or_paths: FaceIndex | typing.Sequence[str]) -> None:
    """Decode every file once (parallel); raise InputError naming the first that fails.

    ``make_pk_dataset`` and the other folder-backed datasets already do this (or decode
    into the cache, which checks too); call it for files used otherwise.
    """
    paths = index_or_paths.paths if isinstance(index_or_paths, FaceIndex) else index_or_paths
    decode_all(paths, None, what="images (check)")


def load_images(paths: typing.Sequence[str], image_size) -> np.ndarray:
    """Decode and preprocess files into float32 ``(N, H, W, 3)`` in [0, 255] (no augmentation).

    The same preprocessing as training; raises InputError naming an unreadable file.
    """
    size = check_size(image_size)
    return decode_all(paths, size).astype(np.float32)


def make_eval_dataset(paths: typing.Sequence[str], image_size, batch_size: int):
    """A finite dataset of float32 ``(n, H, W, 3)`` batches in file order, no augmentation."""
    import tensorflow as tf

    size = check_size(image_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, received: {batch_size!r}")
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(path_bytes(paths), dtype=tf.string))
    ds = ds.map(lambda p: load_image(p, size), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
