"""What narrows a training index before the split: the exclusion list and crop's quality scores.

:func:`exclude_identities` keeps named identities (e.g. the people an evaluation holds out)
out of training, and refuses a name found in no training folder; :func:`quality_filter`
drops the crops that ``tripletface crop`` measured as blurred, turned or small. Both take
and return a :class:`tripletface.data.index.FaceIndex`.
"""

from __future__ import annotations

import os
import typing

import numpy as np

from tripletface.data.index import FaceIndex
from tripletface.errors import InputError

__all__ = ["exclude_identities", "quality_filter"]


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
