"""The training data's index: image files with identity labels, from one crop folder or several.

The first steps of the data flow (the rest: :mod:`tripletface.data.samplers`):

1. **index** ``index_folder(root)`` lists ``root/<identity>/<image>`` into a :class:`FaceIndex`
   (paths, integer labels, identity names). Identities with one image are kept: they can
   only be negatives. ``index_folders`` joins several folders (*sources*) into one index.
2. **split** ``split_by_identity(index, val_fraction, seed)`` holds out whole identities,
   before anything is shuffled, so no identity is in both splits.

Also here: the share of each source in P×K batches (:func:`source_weights`,
:func:`identity_weights`). What narrows an index before the split (the exclusion list,
crop's quality scores) is :mod:`tripletface.data.filters`. Nothing is decoded here.

Example::

    index = index_folder("cropped_data/train")
    train_index, val_index = split_by_identity(index, 0.1, seed=1234)
"""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tripletface.config.choice_lists import SOURCE_BALANCES
from tripletface.data import decode as _imageio
from tripletface.errors import InputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "FaceIndex",
    "index_folder",
    "index_folders",
    "source_names",
    "split_by_identity",
    "source_weights",
    "identity_weights",
]

# File name endings (lower case, with the dot) indexed as images; other files are ignored. The one
# list of every command (tripletface.data.decode.IMAGE_EXTENSIONS): a crop that `crop` writes or reads is indexed.
IMAGE_EXTENSIONS = frozenset("." + e for e in _imageio.IMAGE_EXTENSIONS)


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
        :func:`tripletface.data.filters.exclude_identities` is the checked version training uses)."""
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


def index_folder(root: str | os.PathLike) -> FaceIndex:
    """Index ``root/<identity>/<image>``: one label per identity folder, sorted by name.

    Images are files with an extension in :data:`IMAGE_EXTENSIONS` (any case); hidden
    files and folders are skipped; identity folders without images are left out.
    Decoding is not checked here (see :func:`tripletface.data.images.check_images`). One
    directory listing per identity: 2 s for 500k files (docs/PERFORMANCE.md, "Scale").

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


def source_weights(index: FaceIndex, weights: typing.Sequence[float] = (), balance: str = "identities") -> np.ndarray:
    """The sampling weight of each source, normalised to sum 1.

    ``weights`` (``data.source_weights``, one per source) or, when empty, as ``balance``
    (``data.source_balance``) says: ``"identities"`` weighs each source by its number of identities
    with 2+ images, which makes every such identity equally likely whatever its source (the
    single-folder behaviour); ``"sources"`` gives each source with such identities an equal share,
    however many folders there are.
    """
    n = index.num_sources
    counts = np.array([row["identities_2plus"] for row in index.source_summary()], np.float64)
    if len(weights) == 0:
        if balance not in SOURCE_BALANCES:
            raise InputError(f"data.source_balance must be one of {', '.join(SOURCE_BALANCES)}, received: {balance!r}")
        w = counts if balance == "identities" else (counts > 0).astype(np.float64)
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


def identity_weights(index: FaceIndex, weights: typing.Sequence[float] = (), balance: str = "identities") -> np.ndarray:
    """Per identity with 2+ images (:meth:`FaceIndex.anchor_identities` order), the probability
    that P×K sampling's first draw picks it: its source's weight shared equally among the
    source's identities with 2+ images."""
    anchors = index.anchor_identities()
    src = index.source_ids()[anchors]
    w = source_weights(index, weights, balance)
    per_source = np.bincount(src, minlength=index.num_sources).astype(np.float64)
    p = w[src] / np.maximum(per_source[src], 1.0)
    return p / p.sum()


def check_index(index) -> None:
    """Raise ValueError unless ``index`` is a :class:`FaceIndex` (the samplers' first check)."""
    if not isinstance(index, FaceIndex):
        raise ValueError(f"index must be a FaceIndex, received: {type(index).__name__}")


def identity_layout(index: FaceIndex):
    """Image ids grouped by label: (order, starts, counts) so identity l owns order[starts[l]:+counts[l]]."""
    order = np.argsort(index.labels, kind="stable").astype(np.int64)
    counts = index.counts().astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return order, starts, counts
