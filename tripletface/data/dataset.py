"""Training data: index aligned crops, split by identity, and feed labelled batches with tf.data.

The data flow, each step its own function:

1. **index** ``index_folder(root)`` lists ``root/<identity>/<image>`` into a :class:`FaceIndex`
   (paths, integer labels, identity names). Identities with one image are kept: they can
   only be negatives.
2. **split** ``split_by_identity(index, val_fraction, seed)`` holds out whole identities,
   before anything is shuffled, so no identity is in both splits.
3. **decode** ``load_image`` reads a file with :func:`tripletface.data.decode.read_image` (the
   decoder of ``crop``, ``embed``, ``evaluate`` and the service, in a ``tf.numpy_function``;
   ``decode_image`` does the same for bytes), and ``preprocess_image`` (resize to the
   model's size, round) is the one preprocessing every path uses: training, validation
   (``make_eval_dataset``, ``load_images``) and serving. So a PNG or JPEG crop gives
   training the very pixels inference sees. With ``cache`` (the default) the decoded,
   un-augmented images stay in memory as one uint8 tensor, decoded (and so checked: an
   unreadable image is an :class:`InputError` naming it, before any step) at set-up, and
   batches are gathered from it by index. What does not fit the cache (a quarter of RAM),
   and everything with ``cache=False``, is streamed: read when sampled, no pass at
   set-up; an unreadable file then stops training at that step with a one-line error
   naming it (:func:`image_error`).
4. **sample** an infinite stream of batches, deterministic for a given seed (batch ``b``
   draws from the stateless seed ``(seed, b)``):

   - ``make_pk_dataset``: P identities × K images (online mining). Only identities with
     2+ images are drawn; an identity with fewer than K images repeats some (every one
     of its images is used first).
   - ``make_triplet_dataset``: the original explicit random triplets; anchor and positive
     are two different images of an identity with 2+ images, the negative is any image
     of any other identity (single-image identities appear here, only as negatives).
   - ``make_triplets_file_dataset``: triplets listed in a CSV file (``read_triplets_file``).
   - ``make_synthetic_dataset`` / ``make_synthetic_triplet_dataset``: generated identities
     for smoke and throughput runs, no files.

5. **augment** (train branch only) per image, ``tripletface.data.augment.build_augment``, with a
   per-image seed, then batch and prefetch (AUTOTUNE).

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

import csv
import json
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tripletface.data import decode as _imageio
from tripletface.errors import ImageError, InputError

if typing.TYPE_CHECKING:  # pragma: no cover
    from tripletface.config.config import AugmentConfig, Config

__all__ = [
    "IMAGE_EXTENSIONS",
    "FaceIndex",
    "index_folder",
    "index_folders",
    "source_names",
    "exclude_identities",
    "split_by_identity",
    "source_weights",
    "identity_weights",
    "decode_image",
    "read_image_tensor",
    "image_error",
    "preprocess_image",
    "load_image",
    "load_images",
    "check_images",
    "make_eval_dataset",
    "make_pk_dataset",
    "make_triplet_dataset",
    "read_triplets_file",
    "make_triplets_file_dataset",
    "make_synthetic_dataset",
    "make_synthetic_triplet_dataset",
    "make_val_pairs",
    "make_val_triplets",
    "build_train_dataset",
]

# File name endings (lower case, with the dot) indexed as images; other files are ignored. The one
# list of every command (tripletface.data.decode.IMAGE_EXTENSIONS): a crop that `crop` writes or reads is indexed.
IMAGE_EXTENSIONS = frozenset("." + e for e in _imageio.IMAGE_EXTENSIONS)

_DECODE_BATCH = 64


# --------------------------------------------------------------------------- index

@dataclass(frozen=True, eq=False)
class FaceIndex:
    """Image files with integer identity labels, from one crop folder or several.

    Attributes:
        paths: image file paths, grouped by identity.
        labels: int32 ``(len(paths),)``; ``labels[i]`` indexes ``names``.
        names: identity names, one per label: the folder name for one source,
            ``<source>/<folder>`` when the index holds several (so two sources'
            ``person_1`` never merge).
        root: the folder the index was made from ("" when derived; the first source's
            folder for several).
        sources: the source names (see :func:`index_folders`); empty for a one-folder index.
        identity_source: int32 ``(len(names),)``, the source of each identity (indexes
            ``sources``); None for a one-folder index.
    """

    paths: tuple
    labels: np.ndarray
    names: tuple
    root: str = ""
    sources: tuple = ()
    identity_source: typing.Optional[np.ndarray] = None

    def __post_init__(self):
        labels = np.asarray(self.labels, dtype=np.int32).reshape(-1)
        labels.setflags(write=False)
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "sources", tuple(str(n) for n in self.sources))
        if len(labels) != len(self.paths):
            raise ValueError(f"labels must have one entry per path ({len(self.paths)}), received: {len(labels)}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.names)):
            raise ValueError(f"labels must be in [0, {len(self.names)}), received range "
                             f"[{labels.min()}, {labels.max()}]")
        if self.identity_source is not None:
            src = np.asarray(self.identity_source, dtype=np.int32).reshape(-1)
            if len(src) != len(self.names) or (len(src) and (src.min() < 0 or src.max() >= len(self.sources))):
                raise ValueError(f"identity_source must give one source in [0, {len(self.sources)}) per identity "
                                 f"({len(self.names)}), received {len(src)} entries")
            src.setflags(write=False)
            object.__setattr__(self, "identity_source", src)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"FaceIndex(root={self.root!r}, {self.describe()})"

    @property
    def num_identities(self) -> int:
        return len(self.names)

    @property
    def num_sources(self) -> int:
        return max(1, len(self.sources))

    def source_ids(self) -> np.ndarray:
        """The source of each identity, int32 ``(num_identities,)`` (all 0 for one folder)."""
        if self.identity_source is None:
            return np.zeros(len(self.names), np.int32)
        return np.asarray(self.identity_source)

    def counts(self) -> np.ndarray:
        """Images per identity, int64 ``(num_identities,)``."""
        return np.bincount(self.labels, minlength=len(self.names))

    def anchor_identities(self) -> np.ndarray:
        """Labels of the identities with 2 or more images (those that can be anchors)."""
        return np.flatnonzero(self.counts() >= 2)

    def subset(self, identities: typing.Iterable[int]) -> "FaceIndex":
        """The images of ``identities`` (labels), relabelled ``0..m-1`` in sorted label order."""
        keep = np.unique(np.asarray(list(identities), dtype=np.int64))
        new_label = np.full(len(self.names), -1, dtype=np.int64)
        new_label[keep] = np.arange(len(keep))
        rows = np.flatnonzero(new_label[self.labels] >= 0)
        src = None if self.identity_source is None else np.asarray(self.identity_source)[keep]
        return FaceIndex(tuple(self.paths[i] for i in rows), new_label[self.labels[rows]],
                         tuple(self.names[i] for i in keep), self.root, self.sources, src)

    def keep_images(self, keep) -> "FaceIndex":
        """The images where the boolean mask ``keep`` is true; identities left with none are dropped."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(self.paths),):
            raise ValueError(f"keep must have one entry per path ({len(self.paths)}), received shape: {keep.shape}")
        rows = np.flatnonzero(keep)
        kept = FaceIndex(tuple(self.paths[i] for i in rows), self.labels[rows], self.names, self.root,
                         self.sources, self.identity_source)
        return kept.subset(np.unique(kept.labels))

    def without(self, names: typing.Iterable[str]) -> "FaceIndex":
        """This index minus the identities called ``names`` (unknown names are ignored here;
        :func:`exclude_identities` is the checked version training uses)."""
        drop = set(names)
        return self.subset(i for i, n in enumerate(self.names) if n not in drop)

    def describe(self) -> str:
        counts = self.counts()
        text = (f"{_plural(len(self), 'image')} of {_plural(len(self.names), 'identity')} "
                f"({int((counts >= 2).sum())} with 2+ images)")
        if len(self.sources) > 1:
            text += f" from {len(self.sources)} sources ({', '.join(self.sources)})"
        return text

    def source_summary(self) -> list[dict]:
        """Per source: its name, images, identities and identities with 2+ images."""
        counts, src = self.counts(), self.source_ids()
        names = self.sources or (Path(self.root).name if self.root else "data",)
        out = []
        for s, name in enumerate(names):
            mine = src == s
            out.append({"name": name, "images": int(counts[mine].sum()), "identities": int(mine.sum()),
                        "identities_2plus": int((counts[mine] >= 2).sum())})
        return out


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"1 {word}"
    return f"{n} {word[:-1] + 'ies' if word.endswith('y') else word + 's'}"


def _visible(name: str) -> bool:
    return not name.startswith(".")


def quality_filter(index: FaceIndex, manifest: list[dict], manifest_dir: str | os.PathLike,
                   min_blur: float = 0.0, max_pose: float = 0.0,
                   min_face_size: float = 0.0) -> tuple[FaceIndex, int]:
    """Drop training crops that ``tripletface crop`` measured as blurred, turned or small.

    ``manifest`` holds crop's rows (``output`` relative to ``manifest_dir``, ``blur`` = variance
    of the crop's Laplacian, ``pose`` = nose offset in eye distances, ``face_size`` = the face's
    size in the original photo, pixels). A crop is dropped when ``blur < min_blur``,
    ``|pose| > max_pose`` or ``face_size < min_face_size`` (a 0 threshold is off). Images the
    manifest does not score are kept. Returns the filtered index and how many images were dropped.
    """
    scores = {}
    for row in manifest:
        if row.get("status") == "ok" and isinstance(row.get("output"), str):
            scores[os.path.abspath(os.path.join(manifest_dir, row["output"]))] = row
    keep = np.ones(len(index), dtype=bool)
    for i, path in enumerate(index.paths):
        row = scores.get(os.path.abspath(path))
        if row is None:
            continue
        blur, pose = row.get("blur"), row.get("pose")
        if min_blur > 0 and isinstance(blur, (int, float)) and blur < min_blur:
            keep[i] = False
        if max_pose > 0 and isinstance(pose, (int, float)) and abs(pose) > max_pose:
            keep[i] = False
        size = row.get("face_size")
        if min_face_size > 0 and isinstance(size, (int, float)) and size < min_face_size:
            keep[i] = False
    return index.keep_images(keep), int((~keep).sum())


def index_folder(root: str | os.PathLike) -> FaceIndex:
    """Index ``root/<identity>/<image>``: one label per identity folder, sorted by name.

    Images are files with an extension in :data:`IMAGE_EXTENSIONS` (any case); hidden
    files and folders are skipped; identity folders without images are left out.
    Decoding is not checked here (see :func:`check_images`). One directory listing per
    identity: 2 s for 500k files (docs/PERFORMANCE.md, "Scale").

    Raises:
        InputError: the folder is missing or holds no images, or fewer than 2 identities
            have 2 or more images.
    """
    root_path = Path(root)
    if not root_path.exists():
        raise InputError(f"train folder {root_path} does not exist")
    if not root_path.is_dir():
        raise InputError(f"train folder {root_path} is not a folder")
    paths, labels, names = [], [], []
    loose = 0
    try:
        entries = sorted(os.scandir(root_path), key=lambda e: e.name)
    except OSError as e:
        raise InputError(f"train folder {root_path}: cannot list ({e.strerror or e})") from None
    for entry in entries:
        if not _visible(entry.name):
            continue
        if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
            loose += 1
            continue
        if not entry.is_dir():
            continue
        try:
            files = sorted(f.name for f in os.scandir(entry.path)
                           if _visible(f.name) and os.path.splitext(f.name)[1].lower() in IMAGE_EXTENSIONS
                           and f.is_file())
        except OSError as e:
            raise InputError(f"identity folder {entry.path}: cannot list ({e.strerror or e})") from None
        if not files:
            continue
        label = len(names)
        names.append(entry.name)
        paths.extend(os.path.join(entry.path, f) for f in files)
        labels.extend([label] * len(files))
    exts = ", ".join(sorted(e[1:] for e in IMAGE_EXTENSIONS))
    if not paths:
        hint = (f"; its {loose} images lie directly in it, put them in one folder per identity" if loose else "")
        raise InputError(f"train folder {root_path} holds no images (expected {root_path}/<identity>/<image> "
                         f"with extension {exts}){hint}")
    index = FaceIndex(tuple(paths), np.asarray(labels), tuple(names), str(root_path))
    n_multi = len(index.anchor_identities())
    if n_multi < 2:
        raise InputError(f"train folder {root_path}: {_plural(n_multi, 'identity')} with "
                         f"2 or more images ({index.describe()}); training needs at least 2")
    return index


def source_names(roots: typing.Sequence[str | os.PathLike]) -> tuple[str, ...]:
    """A short unique name per source folder: its last path component, or as many trailing
    components as it takes to tell two folders apart (``a/train`` and ``b/train``)."""
    parts = [Path(os.path.abspath(r)).parts for r in roots]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return tuple(names)
    raise InputError("the same training folder is listed twice in data.train_dirs: "
                     + ", ".join(str(r) for r in roots))


def index_folders(roots: typing.Sequence[str | os.PathLike]) -> FaceIndex:
    """Index several crop folders as one :class:`FaceIndex` (one folder: :func:`index_folder`).

    Each folder is a *source*, named by :func:`source_names`; its identities are named
    ``<source>/<identity>``, so two sources' ``person_1`` stay two people. Labels run over
    all sources, source by source. Time and memory are linear in the number of files (one
    directory listing each, no decoding).
    """
    roots = [str(r) for r in roots]
    if not roots:
        raise InputError("no training folder given (data.train_dir / data.train_dirs)")
    if len(roots) == 1:
        return index_folder(roots[0])
    names_of = source_names(roots)
    paths, labels, names, src = [], [], [], []
    for s, (root, sname) in enumerate(zip(roots, names_of)):
        one = index_folder(root)
        paths.extend(one.paths)
        labels.append(np.asarray(one.labels, np.int64) + len(names))
        names.extend(f"{sname}/{n}" for n in one.names)
        src.extend([s] * one.num_identities)
    return FaceIndex(tuple(paths), np.concatenate(labels), tuple(names), roots[0], names_of, np.asarray(src))


def exclude_identities(index: FaceIndex, names: typing.Iterable[str], allow_missing: bool = False,
                       what: str = "the exclusion list") -> tuple[FaceIndex, int]:
    """``index`` minus the identities ``names``; returns it and how many identities were dropped.

    A name is an identity folder name, which drops that identity from every source that has
    it, or ``<source>/<identity>`` for one source only. A name found in no source is an
    :class:`InputError` (the list is what keeps evaluation identities out of training: a
    typo must not pass silently), unless ``allow_missing``.
    """
    names = [n.strip() for n in names if n and n.strip()]
    full = {n: i for i, n in enumerate(index.names)}
    by_folder: dict[str, list[int]] = {}
    for i, n in enumerate(index.names):
        by_folder.setdefault(n.rsplit("/", 1)[-1] if index.sources else n, []).append(i)
    drop, missing = set(), []
    for n in names:
        if n in full:
            drop.add(full[n])
        elif n in by_folder:
            drop.update(by_folder[n])
        else:
            missing.append(n)
    if missing and not allow_missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{what}: identity {missing[0]!r}{more} is in no training folder; fix the list or "
                         "pass --allow-missing (data.allow_missing_exclusions=true)")
    keep = [i for i in range(index.num_identities) if i not in drop]
    return index.subset(keep), len(drop)


def split_by_identity(index: FaceIndex, val_fraction: float, seed: int) -> tuple[FaceIndex, FaceIndex]:
    """Hold out whole identities for validation; deterministic for a seed.

    Validation identities are drawn only among those with 2+ images:
    ``max(2, round(val_fraction * n))`` of the ``n`` such identities (at least 2, so
    mismatched pairs exist), separately in every source of a several-folder index, so
    each source is validated. All other identities, single-image ones included, train.
    ``val_fraction == 0`` gives an empty validation index. Both indexes are relabelled
    ``0..m-1``; names keep the identities apart.

    Raises:
        ValueError: ``val_fraction`` outside ``[0, 1)``.
        InputError: fewer than 2 identities with 2+ images would be left on either side.
    """
    if isinstance(val_fraction, bool) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), received: {val_fraction!r}")
    if val_fraction == 0:
        return index, FaceIndex((), np.zeros(0, np.int32), (), index.root, index.sources,
                                None if index.identity_source is None else np.zeros(0, np.int32))
    rng = np.random.default_rng(seed)
    multi = index.counts() >= 2
    src = index.source_ids()
    val_parts = []
    for s in range(index.num_sources):
        eligible = np.flatnonzero(multi & (src == s))
        n_val = max(2, int(round(val_fraction * len(eligible))))
        if len(eligible) - n_val < 2:
            where = f" of source {index.sources[s]}" if index.sources else ""
            raise InputError(f"cannot hold out {n_val} of the {len(eligible)} identities with 2+ images{where} for "
                             f"validation (data.val_fraction={val_fraction}) and keep 2 for training; "
                             f"add identities or set data.val_fraction=0")
        val_parts.append(rng.choice(eligible, size=n_val, replace=False))
    val = np.sort(np.concatenate(val_parts))
    train = np.setdiff1d(np.arange(index.num_identities), val)
    return index.subset(train), index.subset(val)


def source_weights(index: FaceIndex, weights: typing.Sequence[float] = ()) -> np.ndarray:
    """The sampling weight of each source, normalised to sum 1.

    ``weights`` (``data.source_weights``, one per source) or, when empty, each source's
    number of identities with 2+ images, which makes every such identity equally likely
    whatever its source (the single-folder behaviour).
    """
    n = index.num_sources
    counts = np.array([row["identities_2plus"] for row in index.source_summary()], np.float64)
    if len(weights) == 0:
        w = counts
    else:
        if len(weights) != n:
            raise InputError(f"data.source_weights has {len(weights)} weights for {n} training folders; "
                             "give one per folder, in data.train_dirs order")
        w = np.asarray(weights, np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise InputError(f"data.source_weights must be finite and >= 0, received: {list(weights)}")
        w = np.where(counts > 0, w, 0.0)
    if w.sum() <= 0:
        raise InputError("data.source_weights leave no source to sample from")
    return w / w.sum()


def identity_weights(index: FaceIndex, weights: typing.Sequence[float] = ()) -> np.ndarray:
    """Per identity with 2+ images (:meth:`FaceIndex.anchor_identities` order), the probability
    that P×K sampling's first draw picks it: its source's weight shared equally among the
    source's identities with 2+ images."""
    anchors = index.anchor_identities()
    src = index.source_ids()[anchors]
    w = source_weights(index, weights)
    per_source = np.bincount(src, minlength=index.num_sources).astype(np.float64)
    p = w[src] / np.maximum(per_source[src], 1.0)
    return p / p.sum()


# --------------------------------------------------------------------------- decode and preprocess

def _check_size(image_size) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), received: {image_size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, received: {image_size!r}")
    return h, w


# Marks an unreadable file in the error TensorFlow raises from the pipeline (see image_error).
_IMAGE_ERROR = "tripletface-unreadable-image"


def _path_bytes(paths: typing.Sequence[str | os.PathLike]) -> list[bytes]:
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

    h, w = _check_size(image_size)
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


def _decode_all(paths: typing.Sequence[str], image_size=None, what: str = "images", sink=None) -> np.ndarray | None:
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

    ds = tf.data.Dataset.from_tensor_slices((np.arange(n, dtype=np.int64), tf.constant(_path_bytes(paths))))
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
    _decode_all(paths, None, what="images (check)")


def load_images(paths: typing.Sequence[str], image_size) -> np.ndarray:
    """Decode and preprocess files into float32 ``(N, H, W, 3)`` in [0, 255] (no augmentation).

    The same preprocessing as training; raises InputError naming an unreadable file.
    """
    size = _check_size(image_size)
    return _decode_all(paths, size).astype(np.float32)


def make_eval_dataset(paths: typing.Sequence[str], image_size, batch_size: int):
    """A finite dataset of float32 ``(n, H, W, 3)`` batches in file order, no augmentation."""
    import tensorflow as tf

    size = _check_size(image_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, received: {batch_size!r}")
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(_path_bytes(paths), dtype=tf.string))
    ds = ds.map(lambda p: load_image(p, size), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- image source

def _cache_budget_bytes() -> int:
    """A quarter of physical memory (4 GiB when unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    except (AttributeError, ValueError, OSError):
        return 4 << 30


class _ImageSource:
    """Where sampled image ids become float32 images.

    With ``cache``, the first images (in id order) that fit the budget (a quarter of RAM, or
    ``max_cache_bytes``) are decoded once at set-up into one uint8 tensor, which also checks
    them (an unreadable one is an :class:`InputError` before any step). The rest -- all of
    them without ``cache`` -- are streamed: read from disk when sampled, with no pass over
    them at set-up, so an unreadable one stops the step that samples it with an error that
    :func:`image_error` turns into a one-line :class:`InputError` naming the file.
    """

    def __init__(self, paths: typing.Sequence[str], image_size, cache: bool, what: str = "images",
                 max_cache_bytes: int | None = None):
        import tensorflow as tf

        self.image_size = _check_size(image_size)
        h, w = self.image_size
        paths = list(paths)
        budget = _cache_budget_bytes() if max_cache_bytes is None else max_cache_bytes
        self.n_cached = min(len(paths), max(0, int(budget)) // (h * w * 3)) if cache else 0
        self.cached = self.n_cached == len(paths)
        if self.n_cached or self.cached:
            # Filled batch by batch into a variable: decoding into one array and converting it held
            # three copies at the peak (measured: 17 GB for 500k crops at 64 px, a 5.5 GB cache), and a
            # variable is captured by reference by the tf.data functions that gather from it.
            self._images = tf.Variable(tf.zeros((self.n_cached, h, w, 3), tf.uint8), trainable=False,
                                       name="image_cache")
            _decode_all(paths[:self.n_cached], self.image_size, what,
                        sink=lambda ids, images: self._images.scatter_nd_update(ids[:, None], images))
        if not self.cached:
            if cache:
                print(f"data: {self.n_cached} of {len(paths)} {what} fit the in-memory cache "
                      f"({budget / 2**30:.1f} GiB); the other {len(paths) - self.n_cached} are read from disk "
                      "when sampled", file=sys.stderr)
            self._paths = tf.constant(_path_bytes(paths[self.n_cached:]), dtype=tf.string)

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


def _layout(index: FaceIndex):
    """Image ids grouped by label: (order, starts, counts) so identity l owns order[starts[l]:+counts[l]]."""
    order = np.argsort(index.labels, kind="stable").astype(np.int64)
    counts = index.counts().astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return order, starts, counts


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, received: {value!r}")
    return int(value)


def _check_index(index) -> None:
    if not isinstance(index, FaceIndex):
        raise ValueError(f"index must be a FaceIndex, received: {type(index).__name__}")


def _key(tf, seed: int, step):
    """The stateless seed ``(seed, step)`` of batch or element number ``step``."""
    return tf.stack([tf.constant(int(seed), tf.int64), tf.cast(step, tf.int64)])


def _augmented(source: _ImageSource, aug_cfg, image_size):
    """``fn(image_id, seed) -> float32 image``: load from ``source``, then augment."""
    from tripletface.data.augment import build_augment, enabled_ops

    augment = build_augment(aug_cfg, image_size)
    if not enabled_ops(aug_cfg):
        return lambda image_id, seed: source.load(image_id)
    return lambda image_id, seed: augment(source.load(image_id), seed)


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

    _check_index(index)
    p = _check_positive_int("p", p)
    k = _check_positive_int("k", k)
    if k < 2:
        raise ValueError(f"k must be >= 2 so each identity has a positive, received: {k}")
    size = _check_size(image_size)
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
    order, starts, counts = _layout(index)
    width = int(max(k, counts[anchors].max()))
    single_t = tf.constant(single if len(single) else np.zeros(1, np.int64), tf.int64)
    n_single = len(single)
    source = _ImageSource(index.paths, size, cache, "training images", max_cache_bytes)
    load = _augmented(source, aug_cfg, size)
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
        keys = tf.random.experimental.stateless_split(_key(tf, seed, b), 5)
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


# --------------------------------------------------------------------------- explicit triplets

def _batch_triplets(tf, ds, batch_size: int, drop_remainder: bool):
    """Elements (3, H, W, 3), (3,) -> batches (3B, H, W, 3), (3B,) ordered [anchors, positives, negatives]."""
    def reorder(images, labels):
        images = tf.transpose(images, [1, 0, 2, 3, 4])
        shape = tf.shape(images)
        images = tf.reshape(images, tf.concat([[-1], shape[2:]], 0))
        return images, tf.reshape(tf.transpose(labels), [-1])

    ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(reorder)
    return ds.prefetch(tf.data.AUTOTUNE)


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

    _check_index(index)
    batch_size = _check_positive_int("batch_size", batch_size)
    size = _check_size(image_size)
    anchors = index.anchor_identities()
    if len(anchors) < 1 or index.num_identities < 2:
        raise InputError(f"triplets need an identity with 2+ images and another identity; the data has "
                         f"{index.describe()}")
    order, starts, counts = _layout(index)
    source = _ImageSource(index.paths, size, cache, "training images", max_cache_bytes)
    load = _augmented(source, aug_cfg, size)
    anchors_t = tf.constant(anchors, tf.int64)
    order_t, starts_t, counts_t = (tf.constant(a, tf.int64) for a in (order, starts, counts))
    labels_t = tf.constant(index.labels, tf.int32)
    n_images, n_anchor = len(index), len(anchors)

    def draw(key, n):
        """An integer uniform in [0, n) (n an int64 tensor or int)."""
        u = tf.random.stateless_uniform([], key, dtype=tf.float64)
        return tf.minimum(tf.cast(tf.floor(u * tf.cast(n, tf.float64)), tf.int64), tf.cast(n, tf.int64) - 1)

    def sample(e):
        keys = tf.random.experimental.stateless_split(_key(tf, seed, e), 5)
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
    return _batch_triplets(tf, ds, batch_size, drop_remainder=True)


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
    """Batches of listed triplets, in the output format of :func:`make_triplet_dataset`.

    Labels come from ``index`` when given (then triplets with an image outside it, e.g.
    of a validation identity, are left out), else from the identity folder names sorted.
    ``repeat`` (default) cycles forever, reshuffled each pass from ``(seed, pass)`` and
    augmented; ``repeat=False`` gives one pass in file order (``shuffle`` False) with a
    smaller last batch, e.g. for validation with ``aug_cfg=None``.
    """
    import tensorflow as tf

    batch_size = _check_positive_int("batch_size", batch_size)
    size = _check_size(image_size)
    shuffle = repeat if shuffle is None else bool(shuffle)
    triplets = [tuple(str(p) for p in t) for t in triplets]
    if not triplets:
        raise InputError("no triplets to train on")
    if any(len(t) != 3 for t in triplets):
        raise ValueError("triplets must be (anchor, positive, negative) path tuples")
    if index is not None:
        _check_index(index)
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
    source = _ImageSource(unique, size, cache, "triplet images", max_cache_bytes)
    load = _augmented(source, aug_cfg, size)
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
        seeds = tf.random.experimental.stateless_split(_key(tf, seed, e), 3)
        images = tf.stack([load(ids_t[t, j], seeds[j]) for j in range(3)])
        return images, labels_t[t]

    ds = ds.map(element, num_parallel_calls=tf.data.AUTOTUNE)
    return _batch_triplets(tf, ds, batch_size, drop_remainder=repeat)


# --------------------------------------------------------------------------- synthetic identities

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
    """Infinite generated P×K batches in the format of :func:`make_pk_dataset`, no files.

    Each identity is a fixed random low-frequency colour pattern (from ``seed``); each
    image adds pattern jitter, a brightness shift and pixel noise, so the task is
    learnable but not trivial. No augmentation. For smoke and throughput runs.
    """
    import tensorflow as tf

    p, k = _check_positive_int("p", p), _check_positive_int("k", k)
    n_identities = _check_positive_int("n_identities", n_identities)
    size = _check_size(image_size)
    if p > n_identities:
        raise InputError(f"P={p} identities per batch is more than the {n_identities} synthetic identities "
                         f"(data.synthetic_identities)")
    patterns_t = tf.constant(_synthetic_patterns(n_identities, seed))

    def batch(b):
        keys = tf.random.experimental.stateless_split(_key(tf, seed, b), 2)
        ids = tf.math.top_k(tf.random.stateless_uniform([n_identities], keys[0]), p).indices
        labels = tf.repeat(ids, k)
        return _synthetic_images(tf, patterns_t, labels, keys[1], size), tf.cast(labels, tf.int32)

    return tf.data.Dataset.counter().map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def make_synthetic_triplet_dataset(batch_size: int, image_size, n_identities: int = 64, seed: int = 0):
    """Infinite generated triplet batches in the format of :func:`make_triplet_dataset`."""
    import tensorflow as tf

    batch_size = _check_positive_int("batch_size", batch_size)
    n_identities = _check_positive_int("n_identities", n_identities)
    size = _check_size(image_size)
    if n_identities < 2:
        raise InputError(f"triplets need 2 or more synthetic identities (data.synthetic_identities), "
                         f"received: {n_identities}")
    patterns_t = tf.constant(_synthetic_patterns(n_identities, seed))

    def batch(b):
        keys = tf.random.experimental.stateless_split(_key(tf, seed, b), 3)
        anchor = tf.random.stateless_uniform([batch_size], keys[0], 0, n_identities, dtype=tf.int32)
        other = tf.random.stateless_uniform([batch_size], keys[1], 1, n_identities, dtype=tf.int32)
        negative = (anchor + other) % n_identities
        labels = tf.concat([anchor, anchor, negative], 0)
        return _synthetic_images(tf, patterns_t, labels, keys[2], size), labels

    return tf.data.Dataset.counter().map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- validation pairs and triplets

def _check_val_index(index: FaceIndex, what: str) -> None:
    _check_index(index)
    if len(index.anchor_identities()) < 1 or index.num_identities < 2:
        raise InputError(f"validation {what} need an identity with 2+ images and another identity; "
                         f"the validation data has {index.describe()}")


def _unique_draws(draw, n: int, rng) -> list[tuple[int, int]]:
    """``n`` draws of ``draw(rng) -> (a, b)``, avoiding repeats while that is possible."""
    seen, out = set(), []
    attempts = 0
    while len(out) < n:
        a, b = draw(rng)
        attempts += 1
        pair = (min(a, b), max(a, b))
        if pair in seen and attempts < 50 * n:
            continue
        seen.add(pair)
        out.append((a, b))
    return out


def make_val_pairs(index: FaceIndex, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_pairs`` image pairs, ``n_pairs // 2`` matched and the rest mismatched, in random order.

    Matched: an identity with 2+ images drawn uniformly, two different images of it.
    Mismatched: two different identities drawn uniformly, one image of each. Pairs are
    not repeated while enough distinct ones exist. Deterministic for a seed.

    Returns:
        ``(idx_a, idx_b, same)``: int64 indices into ``index.paths`` and a bool array.
    """
    _check_val_index(index, "pairs")
    n_pairs = _check_positive_int("n_pairs", n_pairs)
    rng = np.random.default_rng(seed)
    order, starts, counts = _layout(index)
    anchors = index.anchor_identities()
    n_ids = index.num_identities

    def matched(r):
        ident = anchors[r.integers(len(anchors))]
        a, b = r.choice(counts[ident], size=2, replace=False)
        return int(order[starts[ident] + a]), int(order[starts[ident] + b])

    def mismatched(r):
        i, j = r.choice(n_ids, size=2, replace=False)
        return (int(order[starts[i] + r.integers(counts[i])]), int(order[starts[j] + r.integers(counts[j])]))

    n_same = n_pairs // 2
    pairs = _unique_draws(matched, n_same, rng) + _unique_draws(mismatched, n_pairs - n_same, rng)
    same = np.array([True] * n_same + [False] * (n_pairs - n_same))
    perm = rng.permutation(n_pairs)
    pairs_arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)[perm]
    return pairs_arr[:, 0], pairs_arr[:, 1], same[perm]


def make_val_triplets(index: FaceIndex, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` triplets ``(anchor, positive, negative)`` of indices into ``index.paths``.

    Sampled as in :func:`make_triplet_dataset` (negative never of the anchor's identity);
    deterministic for a seed.
    """
    _check_val_index(index, "triplets")
    n = _check_positive_int("n", n)
    rng = np.random.default_rng(seed)
    order, starts, counts = _layout(index)
    anchors = index.anchor_identities()
    n_images = len(index)
    out = np.zeros((n, 3), np.int64)
    for row in range(n):
        ident = anchors[rng.integers(len(anchors))]
        a, p = rng.choice(counts[ident], size=2, replace=False)
        neg = rng.integers(n_images - counts[ident])
        if neg >= starts[ident]:
            neg += counts[ident]
        out[row] = (order[starts[ident] + a], order[starts[ident] + p], order[neg])
    return out[:, 0], out[:, 1], out[:, 2]


# --------------------------------------------------------------------------- dispatch

def build_train_dataset(cfg: "Config", index: FaceIndex | None = None):
    """The training dataset ``cfg`` asks for (``data.source`` × ``data.sampling``).

    ``index`` is the training index (after :func:`split_by_identity`); when None it is
    made from ``data.train_dir`` (or ``data.train_dirs``). P×K batches over several sources
    draw identities with ``data.source_weights`` (:func:`identity_weights`). P = ``cfg.data.p``, K = ``cfg.data.k``; triplet modes
    take ``data.batch_size`` triplets per batch. ``triplets_file`` paths are relative to
    ``data.train_dir`` and triplets touching identities outside ``index`` are left out.
    """
    data = cfg.data
    size = _check_size(cfg.model.image_size)
    if data.source == "synthetic":
        if data.sampling == "pk":
            return make_synthetic_dataset(data.p, data.k, size, data.synthetic_identities, data.seed)
        return make_synthetic_triplet_dataset(data.batch_size, size, data.synthetic_identities, data.seed)
    if data.source != "folder":
        raise ValueError(f"data.source must be folder or synthetic, received: {data.source!r}")
    if index is None:
        index = index_folders(data.dirs)
    if data.sampling == "pk":
        weights = identity_weights(index, data.source_weights) if index.num_sources > 1 else None
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
