"""Searching a gallery: the nearest identities of one embedding, exact or with a FAISS index.

Search is exact (brute force, NumPy) by default. ``enroll --index faiss`` makes the gallery
use an approximate FAISS HNSW index (``pip install 'tripletface[faiss]'``), saved beside it as
``G.<checksum>.faiss`` (named after the rows it indexes, so it is never stale) and rebuilt
on every enroll; ``identify`` follows the gallery's choice unless
``--index`` says otherwise.
"""

from __future__ import annotations

import glob
import re
import sys
from pathlib import Path

import numpy as np

from tripletface.atomic import replaced_atomically
from tripletface.errors import InputError
from tripletface.inference.gallery import INDEXES, Gallery

__all__ = ["nearest_identities", "import_faiss", "build_faiss_index", "faiss_path", "save_faiss_index",
           "load_faiss_index"]


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


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise InputError("the faiss index needs the faiss-cpu package: pip install 'tripletface[faiss]' "
                         "(or use the default exact search: --index exact)") from None
    return faiss


def build_faiss_index(g: Gallery):
    """An HNSW (approximate, L2) FAISS index over the gallery's rows, in row order."""
    faiss = import_faiss()
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


def save_faiss_index(g: Gallery, path: Path) -> None:
    """Write the index of ``g``'s rows beside the gallery and remove the indexes of older rows."""
    faiss = import_faiss()
    target = faiss_path(path, g.checksum())
    with replaced_atomically(target) as tmp:
        faiss.write_index(build_faiss_index(g), str(tmp))
    stem = path.name[: -len(".npz")]
    for old in path.parent.glob(f"{glob.escape(stem)}.*.faiss"):
        if old != target and re.fullmatch(re.escape(stem) + r"\.[0-9a-f]{16}\.faiss", old.name):
            old.unlink(missing_ok=True)


def load_faiss_index(g: Gallery, path: Path):
    """The saved index of exactly these rows, else one built now (with a note when the gallery uses faiss)."""
    faiss = import_faiss()
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
