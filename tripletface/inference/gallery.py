"""The gallery file of 1:N identification: its format, reading, writing and locking.

A gallery is a plain ``.npz`` of four arrays, readable with ``np.load(G, allow_pickle=False)``:

* ``embeddings`` -- (N, D) float32, unit rows;
* ``names``      -- (N,) str, the identity of each row (its folder under DIR);
* ``keys``       -- (N,) str, ``identity/image`` without extension: enrolling the same image
  again replaces its row instead of adding one, so enrolling is idempotent;
* ``meta``       -- a JSON string: format, the fingerprint of the model's weights, dimension,
  metric and the search index; after ``calibrate --gallery`` also the open-set ``threshold``,
  its ``threshold_source`` and the ``calibration`` record.

A gallery built by another model (other weights), or edited so that its arrays disagree, is
refused with a one-line error. Writes are atomic and serialised by a lock file beside the
gallery (``G.lock``), so concurrent enrolls wait for each other instead of losing rows.

Searching a gallery is :mod:`tripletface.inference.search`; enrolling, identifying and the
open-set threshold are :mod:`tripletface.inference.open_set`.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tripletface.atomic import replaced_atomically
from tripletface.config.choice_lists import GALLERY_INDEXES
from tripletface.errors import DiskFullError, InputError, ModelError, disk_full

__all__ = ["FORMAT", "INDEXES", "Gallery", "gallery_path", "load_gallery", "save_gallery", "locked", "check_model"]

FORMAT = "tripletface-gallery/1"
INDEXES = GALLERY_INDEXES  # the command line offers them without loading NumPy
_ARRAYS = ("embeddings", "names", "keys", "meta")


@dataclass
class Gallery:
    """Rows of (key, identity name, embedding) plus the gallery's ``meta`` dict."""

    embeddings: np.ndarray
    names: np.ndarray
    keys: np.ndarray
    meta: dict = field(default_factory=dict)

    @classmethod
    def new(cls, embedder, index: str = "exact") -> "Gallery":
        """An empty gallery bound to ``embedder``'s model."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        meta = {"format": FORMAT, "model_fingerprint": embedder.fingerprint, "model": embedder.name,
                "dim": embedder.dim, "metric": "euclidean", "index": index, "created": now, "updated": now}
        return cls(np.zeros((0, embedder.dim), np.float32), np.zeros(0, "<U1"), np.zeros(0, "<U1"), meta)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def identities(self) -> list[str]:
        return sorted(set(self.names.tolist()))

    def add(self, keys, names, embeddings) -> tuple[int, int]:
        """Add rows, replacing rows with the same key; returns ``(added, replaced)``."""
        keys = [str(k) for k in keys]
        names = [str(n) for n in names]
        embeddings = np.asarray(embeddings, np.float32).reshape(len(keys), -1)
        if not (len(keys) == len(names) == len(embeddings)):
            raise ValueError(f"keys, names and embeddings must have one length, received: "
                             f"{len(keys)}, {len(names)}, {len(embeddings)}")
        if len(keys) and embeddings.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"embeddings must have {self.embeddings.shape[1]} columns, received: {embeddings.shape}")
        all_keys, all_names = self.keys.tolist(), self.names.tolist()
        rows = list(self.embeddings)
        where = {k: i for i, k in enumerate(all_keys)}
        added = replaced = 0
        for k, n, e in zip(keys, names, embeddings):
            if k in where:
                i = where[k]
                all_names[i], rows[i] = n, e
                replaced += 1
            else:
                where[k] = len(all_keys)
                all_keys.append(k)
                all_names.append(n)
                rows.append(e)
                added += 1
        self.keys = np.array(all_keys, dtype=str) if all_keys else np.zeros(0, "<U1")
        self.names = np.array(all_names, dtype=str) if all_names else np.zeros(0, "<U1")
        self.embeddings = np.stack(rows).astype(np.float32) if rows else self.embeddings[:0]
        return added, replaced

    def checksum(self) -> str:
        """Hash of the rows (keys, names, embeddings): names the FAISS index file of these rows."""
        h = hashlib.sha256()
        for a in (self.keys.astype(str), self.names.astype(str), self.embeddings.astype(np.float32)):
            h.update(str(a.dtype).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]


def gallery_path(arg) -> Path:
    """``--gallery`` as a path ending in ``.npz`` (appended when missing, as ``np.savez`` would)."""
    p = Path(arg)
    return p if p.suffix == ".npz" else p.with_name(p.name + ".npz")


def load_gallery(path) -> Gallery:
    """Read and check a gallery; :class:`ModelError` for anything that is not a consistent gallery."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: gallery not found; create it with `tripletface enroll --gallery {path} DIR`")
    if not path.is_file():
        raise InputError(f"{path}: gallery is not a file")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _ARRAYS if k not in z.files]
            if missing:
                raise ModelError(f"{path}: not a tripletface gallery (missing arrays: {', '.join(missing)})")
            emb, names, keys, meta_raw = (z[k] for k in _ARRAYS)
    except ModelError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelError(f"{path}: unreadable gallery ({reason})") from None
    try:
        meta = json.loads(str(meta_raw))
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{path}: not a tripletface gallery (meta is not a {FORMAT} JSON record)")
    if emb.ndim != 2 or emb.dtype.kind != "f":
        raise ModelError(f"{path}: embeddings must be a 2-D float array, found shape {emb.shape} dtype {emb.dtype}")
    for name, a in (("names", names), ("keys", keys)):
        if a.ndim != 1 or a.dtype.kind != "U":
            raise ModelError(f"{path}: {name} must be a 1-D array of strings, found shape {a.shape} dtype {a.dtype}")
    if not (len(emb) == len(names) == len(keys)):
        raise ModelError(f"{path}: gallery arrays disagree in length (embeddings {len(emb)}, names {len(names)}, "
                         f"keys {len(keys)}); it was edited or damaged: re-enroll into a new gallery")
    if emb.shape[1] != meta.get("dim"):
        raise ModelError(f"{path}: embedding dimension {emb.shape[1]} does not match the gallery's dim "
                         f"{meta.get('dim')!r}; it was edited or damaged: re-enroll into a new gallery")
    if not np.all(np.isfinite(emb)):
        raise ModelError(f"{path}: gallery holds non-finite embeddings; re-enroll into a new gallery")
    if len(set(keys.tolist())) != len(keys):
        raise ModelError(f"{path}: gallery holds duplicate keys; re-enroll into a new gallery")
    if meta.get("index", "exact") not in INDEXES:
        raise ModelError(f"{path}: unknown index {meta.get('index')!r} (known: {', '.join(INDEXES)})")
    t = meta.get("threshold")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < float("inf")):
        raise ModelError(f"{path}: gallery threshold must be a finite number >= 0, found {t!r}; "
                         "recalibrate with `tripletface calibrate --gallery`")
    return Gallery(emb.astype(np.float32), names, keys, meta)


def save_gallery(g: Gallery, path) -> None:
    """Write atomically (temporary file, fsync, rename); plain arrays only, no pickle."""
    path = Path(path)
    g.meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        with replaced_atomically(path, ".npz", fsync=True) as tmp:
            np.savez(tmp, embeddings=g.embeddings.astype(np.float32), names=g.names.astype(str),
                     keys=g.keys.astype(str), meta=np.array(json.dumps(g.meta)))
    except OSError as e:
        if not disk_full(e):
            raise
        raise DiskFullError(f"{path}: no space left on device while saving the gallery; the gallery file is "
                            "unchanged: free some space and enroll again") from None


@contextmanager
def locked(path):
    """An exclusive lock on ``<gallery>.lock``: concurrent enrolls wait instead of losing rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        try:
            import fcntl
        except ImportError:  # Windows: a byte-range lock, retried until free
            import msvcrt

            while True:
                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    continue
            try:
                yield
            finally:
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_model(g: Gallery, embedder, path) -> None:
    """Refuse a gallery whose embeddings came from other weights (they are not comparable)."""
    if g.meta.get("model_fingerprint") != embedder.fingerprint or g.meta.get("dim") != embedder.dim:
        raise ModelError(f"{path}: gallery was built by another model ({g.meta.get('model', '?')}, fingerprint "
                         f"{g.meta.get('model_fingerprint')}), not {embedder.name} (fingerprint "
                         f"{embedder.fingerprint}); use that model or enroll into a new gallery")
