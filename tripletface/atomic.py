"""Atomic file replacement: readers see the old file or the new one, never half of one.

    with replaced_atomically(path, ".npz") as tmp:
        np.savez(tmp, **arrays)          # write the whole new content to tmp
    # tmp has replaced path; on any error tmp is removed and path is untouched

The temporary file sits beside ``path`` (same file system, so the rename is atomic) and is
hidden (``.<name>.tmp<pid><suffix>``); ``suffix`` is for writers that insist on an extension
(``np.savez`` appends ``.npz``, Keras wants ``.keras``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

__all__ = ["replaced_atomically"]


@contextlib.contextmanager
def replaced_atomically(path, suffix: str = "", fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path; when the block ends without error it replaces ``path``.

    Args:
        path: the file to replace (its folder is created).
        suffix: appended to the temporary name.
        fsync: flush the temporary file to disk before the rename (survives a power cut).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
