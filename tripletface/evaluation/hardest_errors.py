"""The hardest mistakes at a threshold: the closest false accepts and the farthest false rejects,
written as thumbnails for the report's pages (``errors/*.jpg``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["ERRORS_DIR", "THUMB_SIZE", "hardest_errors", "write_examples"]

ERRORS_DIR = "errors"  # thumbnails of the hardest false accepts and rejects
THUMB_SIZE = 112


def hardest_errors(distances, issame, threshold: float, k: int = 5) -> dict:
    """Indices of the worst mistakes at ``threshold`` (same = distance < threshold).

    ``false_accepts``: mismatched pairs decided same, smallest distance first (the most
    confident wrong accepts); ``false_rejects``: matched pairs decided different, largest
    distance first. At most ``k`` of each; unscored (NaN) pairs have no distance and are left
    out (they are in the failure counts). Ties go to the earlier pair.
    """
    d = np.asarray(distances, dtype=np.float64)
    s = np.asarray(issame).astype(bool)
    t = float(threshold)
    fa = np.flatnonzero(np.isfinite(d) & ~s & (d < t))
    fr = np.flatnonzero(np.isfinite(d) & s & (d >= t))
    fa = fa[np.argsort(d[fa], kind="stable")][:k]
    fr = fr[np.argsort(-d[fr], kind="stable")][:k]
    return {"false_accepts": [int(i) for i in fa], "false_rejects": [int(i) for i in fr]}


def _thumbnail(src, dst: Path, size: int = THUMB_SIZE) -> bool:
    """``src`` shrunk to fit ``size`` px, written as JPEG to ``dst``; False when it cannot be read."""
    from PIL import Image

    from tripletface.errors import ImageError
    from tripletface.data.decode import read_image

    try:
        im = Image.fromarray(read_image(src))
    except ImageError:
        return False
    im.thumbnail((size, size))
    im.save(dst, format="JPEG", quality=90)
    return True


def write_examples(out: Path, d: np.ndarray, s: np.ndarray, pair_files, threshold: float,
                   source: str, k: int) -> dict:
    """Thumbnails of the hardest false accepts/rejects under ``out/ERRORS_DIR`` -> a JSON-ready record."""
    if len(pair_files) != d.size:
        raise ValueError(f"pair_files must have one (image_a, image_b) per pair ({d.size}), received: "
                         f"{len(pair_files)}")
    folder = out / ERRORS_DIR
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.jpg"):  # a rerun shows this run's pairs only
        old.unlink()
    record = {"threshold": float(threshold), "threshold_source": source}
    for kind, idx in hardest_errors(d, s, threshold, k).items():
        rows = []
        for rank, i in enumerate(idx, 1):
            row = {"pair": i, "distance": float(d[i]), "same": bool(s[i])}
            for side, src in zip("ab", pair_files[i]):
                name = f"{kind}_{rank}_{side}.jpg"
                row[f"image_{side}"] = str(src)
                row[f"thumb_{side}"] = f"{ERRORS_DIR}/{name}" if _thumbnail(src, folder / name) else None
            rows.append(row)
        record[kind] = rows
    return record
