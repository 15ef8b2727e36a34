"""Open-set 1:N identification: enrolling people into a gallery, identifying a face in it, and
the threshold that decides between "this person" and ``unknown``.

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

The gallery file is :mod:`tripletface.inference.gallery`; its search,
:mod:`tripletface.inference.search`; the commands, :mod:`tripletface.cli.enroll` and
:mod:`tripletface.cli.identify`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tripletface.errors import InputError
from tripletface.folders import check_apart
from tripletface.inference.gallery import (INDEXES, Gallery, check_model, gallery_path, load_gallery, locked,
                                           save_gallery)
from tripletface.inference.matching import check_threshold
from tripletface.inference.search import import_faiss, load_faiss_index, nearest_identities, save_faiss_index

__all__ = ["enroll", "identify", "search_threshold", "threshold_at_fpir", "calibrate_gallery"]


def enroll(embedder, input_dir, gallery, aligned: bool = False, index: str | None = None,
           progress: bool = False) -> dict:
    """Embed ``input_dir/<identity>/<image>`` files into the gallery file ``gallery`` (created if new).

    Returns a summary dict: ``enrolled``, ``added``, ``replaced``, ``failures`` (list of
    :class:`~tripletface.inference.embedder.Failure`), ``skipped`` (files not in an identity folder),
    ``size``, ``identities``, ``gallery``.
    """
    from tripletface.inference.folder import image_key, list_images

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
        import_faiss()
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
                save_faiss_index(g, path)
    return {"gallery": str(path), "enrolled": len(ok), "added": added, "replaced": replaced,
            "failures": failures, "skipped": [str(p) for p in skipped], "size": len(g),
            "identities": len(g.identities), "enrolled_identities": len(set(names)),
            "index": g.meta.get("index", "exact")}


def search_threshold(g: Gallery, embedder, override: float | None = None, path=None) -> tuple[float, str]:
    """``(threshold, where it came from)`` for 1:N search in ``g``: ``override``, else the
    gallery's calibrated threshold, else the model's 1:1 verification threshold (said so)."""
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
    from tripletface.evaluation.thresholds import candidate_thresholds as _candidate_thresholds

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
    from tripletface.inference.folder import list_images

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
    from tripletface.data.decode import check_image_file

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
    faiss_index = load_faiss_index(g, path) if index == "faiss" and len(g) else None
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
