"""1:N identification: ``tripletface enroll --gallery G DIR`` and ``tripletface identify --gallery G IMG``.

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

Search is exact (brute force, NumPy) by default. ``enroll --index faiss`` makes the gallery
use an approximate FAISS HNSW index (``pip install 'tripletface[faiss]'``), saved beside it as
``G.<checksum>.faiss`` (named after the rows it indexes, so it is never stale) and rebuilt
on every enroll; ``identify`` follows the gallery's choice unless
``--index`` says otherwise.

The answer is the nearest identity when its distance is under the threshold, else
``unknown``. Open-set 1:N search needs its own threshold: the more identities a gallery
holds, the likelier a stranger lands near one of them, so the 1:1 verification threshold
stored in the model lets false identifications grow with the gallery.
``tripletface calibrate --gallery G --probes DIR --target fpir=0.01`` embeds photos of
people *not* enrolled, searches each in the gallery and stores in ``meta`` the largest
threshold at which at most that fraction of them would be identified as someone (the false
positive identification rate, FPIR), with how it was chosen. ``identify`` (and the service's
``/identify``) use, in this order: ``--threshold``, the gallery's calibrated threshold, the
model's 1:1 threshold; and say which (with a note when the gallery changed since calibration).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import re
import sys
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tripletface.atomic import replaced_atomically
from tripletface.errors import DiskFullError, InputError, ModelError, disk_full
from tripletface.folders import check_apart

__all__ = ["FORMAT", "INDEXES", "Gallery", "gallery_path", "load_gallery", "save_gallery", "locked",
           "check_model", "nearest_identities", "enroll", "identify", "search_threshold", "threshold_at_fpir",
           "calibrate_gallery", "add_arguments_for", "run_for"]

FORMAT = "tripletface-gallery/1"
INDEXES = ("exact", "faiss")
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


# --------------------------------------------------------------------------- search


def nearest_identities(g: Gallery, query: np.ndarray, top_k: int = 5, index: str = "exact",
                       faiss_index=None) -> list[tuple[str, float]]:
    """The ``top_k`` nearest identities (distance of each identity's closest row), best first.

    ``index="exact"`` compares with every row; ``"faiss"`` searches ``faiss_index`` (or an HNSW
    index built on the spot) for enough rows to find ``top_k`` identities, usually.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k <= 0:
        raise ValueError(f"top_k must be a positive integer, received: {top_k!r}")
    if index not in INDEXES:
        raise ValueError(f"index must be one of {INDEXES}, received: {index!r}")
    query = np.asarray(query, np.float32).reshape(-1)
    if len(g) == 0:
        return []
    if query.shape[0] != g.embeddings.shape[1]:
        raise ValueError(f"query must have {g.embeddings.shape[1]} values, received: {query.shape[0]}")
    if index == "faiss":
        k = min(len(g), max(top_k * 16, 64))
        d, idx = _faiss_search(faiss_index if faiss_index is not None else build_faiss_index(g), query, k)
    else:
        d, idx = _exact_search(g, query, top_k)
    out: dict[str, float] = {}
    for dist, i in zip(d, idx):
        if i < 0:  # faiss pads with -1 when it finds fewer than k
            continue
        name = str(g.names[i])
        if name not in out:
            out[name] = float(dist)
            if len(out) == top_k:
                break
    return sorted(out.items(), key=lambda t: t[1])


def _exact_search(g: Gallery, query: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows nearest ``query``, enough of them to hold the ``top_k`` nearest identities, with
    exact distances, nearest first.

    Ranks all rows with one float32 matrix-vector product (``|e|^2 - 2 e.q``), keeps the
    nearest few with ``argpartition`` (a full sort only when they hold fewer than ``top_k``
    identities), then measures the kept rows' distances exactly in float64.
    """
    emb = g.embeddings
    score = np.einsum("ij,ij->i", emb, emb) - 2.0 * (emb @ query)  # distance^2 - |q|^2
    n = len(score)
    k = min(n, max(top_k * 16, 64))
    while True:
        idx = np.argpartition(score, k - 1)[:k] if k < n else np.arange(n)
        if k == n or len({g.names[i] for i in idx}) >= top_k:
            break
        k = min(n, k * 4)
    d = np.sqrt(np.maximum(np.sum((emb[idx].astype(np.float64) - query[None]) ** 2, axis=1), 0.0))
    order = np.lexsort((idx, d))  # by distance, ties by row
    return d[order], idx[order]


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise InputError("the faiss index needs the faiss-cpu package: pip install 'tripletface[faiss]' "
                         "(or use the default exact search: --index exact)") from None
    return faiss


def build_faiss_index(g: Gallery):
    """An HNSW (approximate, L2) FAISS index over the gallery's rows, in row order."""
    faiss = _import_faiss()
    index = faiss.IndexHNSWFlat(int(g.embeddings.shape[1]), 32)
    index.add(np.ascontiguousarray(g.embeddings, np.float32))
    return index


def _faiss_search(index, query: np.ndarray, k: int):
    index.hnsw.efSearch = max(64, 2 * k)
    d, i = index.search(np.ascontiguousarray(query[None], np.float32), k)
    return np.sqrt(np.maximum(d[0].astype(np.float64), 0.0)), i[0]  # faiss L2 distances are squared


def faiss_path(path, checksum: str) -> Path:
    """``G.npz`` -> ``G.<checksum>.faiss``: the index file of exactly these gallery rows."""
    path = Path(path)
    return path.with_name(f"{path.name[: -len('.npz')]}.{checksum}.faiss")


def _save_faiss(g: Gallery, path: Path) -> None:
    """Write the index of ``g``'s rows beside the gallery and remove the indexes of older rows."""
    faiss = _import_faiss()
    target = faiss_path(path, g.checksum())
    with replaced_atomically(target) as tmp:
        faiss.write_index(build_faiss_index(g), str(tmp))
    stem = path.name[: -len(".npz")]
    for old in path.parent.glob(f"{glob.escape(stem)}.*.faiss"):
        if old != target and re.fullmatch(re.escape(stem) + r"\.[0-9a-f]{16}\.faiss", old.name):
            old.unlink(missing_ok=True)


def _load_faiss(g: Gallery, path: Path):
    """The saved index of exactly these rows, else one built now (with a note when the gallery uses faiss)."""
    faiss = _import_faiss()
    target = faiss_path(path, g.checksum())
    if target.is_file():
        try:
            index = faiss.read_index(str(target))
        except RuntimeError:
            index = None
        if index is not None and index.ntotal == len(g):
            return index
    if g.meta.get("index") == "faiss":
        print(f"note: {target.name} is missing; building the index in memory", file=sys.stderr)
    return build_faiss_index(g)


# --------------------------------------------------------------------------- library API


def enroll(embedder, input_dir, gallery, aligned: bool = False, index: str | None = None,
           progress: bool = False) -> dict:
    """Embed ``input_dir/<identity>/<image>`` files into the gallery file ``gallery`` (created if new).

    Returns a summary dict: ``enrolled``, ``added``, ``replaced``, ``failures`` (list of
    :class:`~tripletface.inference.embedder.Failure`), ``skipped`` (files not in an identity folder),
    ``size``, ``identities``, ``gallery``.
    """
    from tripletface.cli.embed import image_key, list_images

    if index is not None and index not in INDEXES:
        raise InputError(f"--index must be one of {', '.join(INDEXES)}, received: {index!r}")
    root = Path(input_dir)
    check_apart(root, gallery_path(gallery), "the input folder", "--gallery")  # never written into DIR
    all_files = list_images(root)
    files = [p for p in all_files if len(p.relative_to(root).parts) >= 2]
    skipped = [p for p in all_files if len(p.relative_to(root).parts) < 2]
    if not files:
        raise InputError(f"{root}: no identity folders with images (expected {root}/<identity>/<image>)")
    path = gallery_path(gallery)
    if path.exists():  # fail before minutes of embedding, not after
        check_model(load_gallery(path), embedder, path)
    if index == "faiss":
        _import_faiss()
    vectors, failures = embedder.embed_files(files, aligned=aligned, progress=progress)
    failed = {f.path for f in failures}
    ok = [i for i, p in enumerate(files) if str(p) not in failed]
    keys = [image_key(root, files[i]) for i in ok]
    names = [files[i].relative_to(root).parts[0] for i in ok]
    with locked(path):
        if path.exists():
            g = load_gallery(path)  # again, under the lock: another enroll may have written it
            check_model(g, embedder, path)
        else:
            g = Gallery.new(embedder, index or "exact")
        added = replaced = 0
        if ok:  # nothing enrolled: the gallery file is neither created nor rewritten
            if index is not None:
                g.meta["index"] = index
            added, replaced = g.add(keys, names, vectors[ok])
            save_gallery(g, path)
            if g.meta.get("index") == "faiss":
                _save_faiss(g, path)
    return {"gallery": str(path), "enrolled": len(ok), "added": added, "replaced": replaced,
            "failures": failures, "skipped": [str(p) for p in skipped], "size": len(g),
            "identities": len(g.identities), "enrolled_identities": len(set(names)),
            "index": g.meta.get("index", "exact")}


def search_threshold(g: Gallery, embedder, override: float | None = None, path=None) -> tuple[float, str]:
    """``(threshold, where it came from)`` for 1:N search in ``g``: ``override``, else the
    gallery's calibrated threshold, else the model's 1:1 verification threshold (said so)."""
    from tripletface.inference.embedder import check_threshold

    if override is not None:
        return check_threshold(override), "--threshold"
    t = g.meta.get("threshold")
    if t is not None:
        source = f"gallery calibration: {g.meta.get('threshold_source') or 'stored in the gallery'}"
        cal = g.meta.get("calibration") or {}
        if cal.get("gallery_checksum") not in (None, g.checksum()):
            source += (f"; the gallery changed since (it held {cal.get('gallery_identities', '?')} identities, now "
                       f"{len(g.identities)}): recalibrate")
        return float(t), source
    t, source = embedder.decision_threshold(None)
    return t, (f"the model's 1:1 verification threshold ({source}); not calibrated for 1:N search: run "
               f"`tripletface calibrate --gallery {path or 'G'} --probes DIR`")


def threshold_at_fpir(nearest, fpir: float) -> tuple[float, float, bool]:
    """The largest threshold at which at most ``fpir`` of the non-mated probes are identified.

    ``nearest``: each probe's distance to its nearest gallery identity (a probe is identified,
    falsely, when that distance is < the threshold). Returns ``(threshold, fpir reached,
    reachable)``; ``reachable`` is False when ``fpir < 1 / probes`` (no probe may be identified:
    the threshold is the smallest distance, an estimate). Thresholds are the midpoints between
    distinct distances, as in :func:`tripletface.evaluation.verification.far_point`.
    """
    from tripletface.evaluation.verification import _candidate_thresholds

    d = np.sort(np.asarray(nearest, np.float64))
    if d.ndim != 1 or d.size == 0 or not np.all(np.isfinite(d)):
        raise ValueError(f"nearest must be a non-empty 1-D array of finite distances, received shape {d.shape}")
    if not 0 < fpir < 1:
        raise ValueError(f"fpir must be in (0, 1), received: {fpir!r}")
    allowed = int(np.floor(fpir * d.size + 1e-9))
    candidates = _candidate_thresholds(d)
    identified = np.searchsorted(d, candidates, side="left")  # probes with distance < t
    t = float(candidates[np.flatnonzero(identified <= allowed)[-1]])
    return t, float(np.mean(d < t)), allowed >= 1


def calibrate_gallery(embedder, gallery, probes_dir, fpir: float = 0.01, aligned: bool = False,
                      progress: bool = False) -> dict:
    """Choose ``gallery``'s open-set threshold at a target FPIR on photos of people not enrolled.

    ``probes_dir``: ``DIR/<identity>/<image>`` (or images directly in DIR) of people who are
    not in the gallery; a probe folder named like an enrolled identity is refused. Each probe
    is searched in the gallery (exact search); the threshold is :func:`threshold_at_fpir` of
    their nearest distances. It is stored in the gallery's meta (``threshold``,
    ``threshold_source``, ``calibration``) with one atomic rewrite under the gallery's lock;
    the rows are unchanged. Returns the values stored plus ``failures`` (probes not embedded).
    """
    from tripletface.cli.embed import list_images

    root = Path(probes_dir)
    files = list_images(root)
    if not files:
        raise InputError(f"{root}: no probe images (expected {root}/<identity>/<image>)")
    path = gallery_path(gallery)
    g = load_gallery(path)
    check_model(g, embedder, path)
    if len(g) == 0:
        raise InputError(f"{path}: the gallery is empty; enroll people first")
    probe_ids = {p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) >= 2}
    enrolled = sorted(probe_ids & set(g.identities))
    if enrolled:
        raise InputError(f"{root}: probes must be of people not enrolled, but {len(enrolled)} probe folders are "
                         f"gallery identities ({', '.join(enrolled[:5])}{', ...' if len(enrolled) > 5 else ''})")
    vectors, failures = embedder.embed_files(files, aligned=aligned, progress=progress)
    ok = np.flatnonzero(np.all(np.isfinite(vectors), axis=1))
    if ok.size == 0:
        raise InputError(f"{root}: no probe could be embedded ({len(failures)} failed)")
    with locked(path):
        g = load_gallery(path)  # again, under the lock: an enroll may have written it meanwhile
        check_model(g, embedder, path)
        nearest = np.array([nearest_identities(g, vectors[i], 1)[0][1] for i in ok])
        t, reached, reachable = threshold_at_fpir(nearest, fpir)
        source = (f"tripletface calibrate --target fpir={fpir:g} on {ok.size} probes of people not enrolled "
                  f"(FPIR {reached:.4f}; gallery of {len(g.identities)} identities)"
                  + ("" if reachable else f"; target below 1/{ok.size} probes: not measurable, FPIR 0 on them"))
        cal = {"probes": str(root), "target": f"fpir={fpir:g}", "fpir_target": float(fpir), "fpir": reached,
               "fpir_reachable": bool(reachable), "probes_used": int(ok.size), "probes_failed": len(failures),
               "probe_identities": len(probe_ids), "aligned": bool(aligned), "flip_tta": embedder.flip_tta,
               "gallery_identities": len(g.identities), "gallery_size": len(g), "gallery_checksum": g.checksum(),
               "model_threshold": embedder.threshold, "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
        g.meta.update(threshold=t, threshold_source=source, calibration=cal)
        save_gallery(g, path)
    return {"gallery": str(path), "threshold": t, "threshold_source": source, "calibration": cal,
            "failures": failures}


def identify(embedder, gallery, image, top_k: int = 5, threshold: float | None = None, aligned: bool = False,
             index: str | None = None, loaded: Gallery | None = None) -> dict:
    """Nearest identities of the face in ``image`` -> a JSON-ready result dict.

    ``gallery`` is the gallery file (``loaded``: its contents, when already read). ``identity``
    is the nearest identity when its distance is under the threshold (``threshold``, else the
    gallery's calibrated one, else the model's 1:1 one: see :func:`search_threshold`; its
    source is in ``threshold_source``), else ``"unknown"``; ``matches`` lists up to ``top_k``
    identities with their distances and whether each is under the threshold.
    """
    from tripletface.cli.compare import check_image_file

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
        raise InputError(f"--top-k must be a positive integer, received: {top_k!r}")
    if index is not None and index not in INDEXES:
        raise InputError(f"--index must be one of {', '.join(INDEXES)}, received: {index!r}")
    check_image_file(image)
    path = gallery_path(gallery)
    g = loaded if loaded is not None else load_gallery(path)
    check_model(g, embedder, path)
    threshold, source = search_threshold(g, embedder, threshold, path)
    index = index or g.meta.get("index", "exact")
    faiss_index = _load_faiss(g, path) if index == "faiss" and len(g) else None
    vectors, failures = embedder.embed_files([image], aligned=aligned)
    if failures:
        raise failures[0].error()
    matches = nearest_identities(g, vectors[0], top_k, index, faiss_index=faiss_index)
    best = matches[0] if matches else None
    answer = best[0] if best is not None and best[1] < threshold else "unknown"
    return {"image": str(image), "identity": answer, "distance": None if best is None else best[1],
            "threshold": float(threshold), "threshold_source": source, "metric": "euclidean",
            "matches": [{"identity": n, "distance": d, "match": bool(d < threshold)} for n, d in matches],
            "gallery": str(path), "gallery_size": len(g), "gallery_identities": len(g.identities), "index": index}


# --------------------------------------------------------------------------- CLI


def add_arguments_for(name: str, parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.main import add_input_argument, add_progress_argument, number

    parser.add_argument("--gallery", required=True, help="gallery file (.npz; the suffix is added if missing)")
    parser.add_argument("--model", default=None, help="a .keras model (default: the bundled model)")
    parser.add_argument("--aligned", action="store_true", help="inputs are aligned crops: skip detection")
    if name == "enroll":
        add_input_argument(parser, "one folder per identity: INPUT_DIR/<identity>/<image>")
        add_progress_argument(parser)
        parser.add_argument("--index", choices=INDEXES, default=None,
                            help="search index the gallery uses: exact (default for a new gallery) or faiss "
                                 "(approximate, for very large galleries; needs faiss-cpu)")
    else:
        parser.add_argument("image", metavar="IMG", help="a photo (or an aligned crop with --aligned)")
        parser.add_argument("--top-k", type=number(int, 1), default=5, help="how many identities to list (default 5)")
        parser.add_argument("--threshold", type=number(float, 0), default=None,
                            help="decision threshold (default: the gallery's, from `tripletface calibrate "
                                 "--gallery`, else the model's 1:1 verification threshold)")
        parser.add_argument("--index", choices=INDEXES, default=None,
                            help="search with this index (default: the gallery's)")
        parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_for(name: str, args: argparse.Namespace) -> int:
    return _enroll_cmd(args) if name == "enroll" else _identify_cmd(args)


def _enroll_cmd(args) -> int:
    from tripletface.inference.embedder import Embedder

    root = Path(args.input_dir)
    if not root.is_dir():
        raise InputError(f"{root}: input folder not found" if not root.exists() else f"{root}: not a folder")
    check_apart(root, gallery_path(args.gallery), "the input folder", "--gallery")  # before the model loads
    embedder = Embedder.load(args.model)
    r = enroll(embedder, root, args.gallery, aligned=args.aligned, index=args.index, progress=args.progress)
    for p in r["skipped"]:
        print(f"skipped {p}: not inside an identity folder", file=sys.stderr)
    for f in r["failures"]:
        print(f"skipped {f.message}", file=sys.stderr)
    print(f"enrolled {r['enrolled']} images of {r['enrolled_identities']} identities ({r['added']} new, "
          f"{r['replaced']} replaced, {len(r['failures'])} failed); gallery {r['gallery']} holds {r['size']} "
          f"images of {r['identities']} identities ({r['index']} search)")
    if r["enrolled"] == 0:
        raise InputError(f"{root}: none of the images could be enrolled ({len(r['failures'])} failed)")
    return 0


def _identify_cmd(args) -> int:
    from tripletface.cli.compare import check_image_file
    from tripletface.inference.embedder import Embedder, check_threshold

    if args.threshold is not None:
        check_threshold(args.threshold)
    check_image_file(args.image)
    g = load_gallery(gallery_path(args.gallery))  # a missing or broken gallery fails before the model loads
    embedder = Embedder.load(args.model)
    r = identify(embedder, args.gallery, args.image, args.top_k, args.threshold, args.aligned, args.index, loaded=g)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"identity:  {r['identity']}")
        print(f"threshold: {r['threshold']:.4f} ({r['threshold_source']})")
        for m in r["matches"]:
            print(f"  {m['identity']:<32} {m['distance']:.4f}{'  < threshold' if m['match'] else ''}")
    return 0
