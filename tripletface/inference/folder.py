"""Embedding a folder of images into an ``.npz`` (``tripletface embed``), and listing its images.

Every image under the folder (recursively; hidden files and folders skipped, :func:`list_images`)
is embedded. The ``.npz`` maps each image's path relative to the folder, without extension and
with ``/`` separators (``Zico/Zico_0001``, :func:`image_key`), to its embedding (float32, unit
length); it holds plain arrays only (``np.load(f, allow_pickle=False)`` reads it). Images that
fail are listed in the sidecar ``<output stem>.failures.jsonl``, one JSON object a line with
``key``, ``path``, ``status`` and ``reason``, never silently dropped; the sidecar is written
(possibly empty) on every run, so it never describes an older run. Both are written atomically.

Example::

    files = list_images(Path("photos"))
    n, failures = embed_folder(embedder, Path("photos"), files, *output_paths("photos.npz"))
    np.load("photos.npz")["Zico/Zico_0001"]       # (D,) float32
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tripletface.atomic import replaced_atomically
from tripletface.errors import DiskFullError, InputError, disk_full

__all__ = ["list_images", "image_key", "output_paths", "write_npz_atomic", "embed_folder"]


def list_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted; hidden files and folders are skipped."""
    from tripletface.data.decode import IMAGE_EXTENSIONS, is_image_file

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: input folder not found" if not root.exists() else f"{root}: not a folder")
    files = sorted(p for p in root.rglob("*")
                   if is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(root).parts)
                   and (p.is_file() or p.is_symlink()))
    if not files:
        raise InputError(f"{root}: no images found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def image_key(root: Path, path: Path) -> str:
    """``root/Zico/Zico_0001.jpg`` -> ``"Zico/Zico_0001"``."""
    return Path(path).relative_to(root).with_suffix("").as_posix()


def output_paths(output) -> tuple[Path, Path]:
    """(the .npz, its failures sidecar) for ``--output``."""
    out = Path(output)
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")
    return out, out.with_name(out.name[: -len(".npz")] + ".failures.jsonl")


def write_npz_atomic(path: Path, arrays: dict) -> None:
    """``np.savez`` to a temporary file, then rename: readers never see a half-written file."""
    with replaced_atomically(path, ".npz") as tmp:
        np.savez(tmp, **arrays)


def embed_folder(embedder, root: Path, files: list[Path], out: Path, side: Path, aligned: bool = False,
                 progress: bool = True) -> tuple[int, list]:
    """Embed ``files`` (images under ``root``, from :func:`list_images`) into the ``.npz`` ``out``
    and list the failures in ``side`` -> (number of images embedded, failures).

    Keys must be unique: ``a/x.jpg`` and ``a/x.png`` would both be ``"a/x"``; the first is kept,
    the others are failures (``duplicate_key``). A full disk is a :class:`DiskFullError` naming
    the file, left unchanged.
    """
    from tripletface.inference.embedder import Failure

    # Keys must be unique: a/x.jpg and a/x.png would both be "a/x". Keep the first, list the rest.
    seen: dict[str, Path] = {}
    unique, duplicates = [], []
    for p in files:
        k = image_key(root, p)
        if k in seen:
            duplicates.append(Failure(str(p), "duplicate_key", f"same key {k!r} as {seen[k].name}; not embedded"))
        else:
            seen[k] = p
            unique.append(p)

    vectors, failures = embedder.embed_files(unique, aligned=aligned, progress=progress)
    failed = {f.path for f in failures}
    arrays = {image_key(root, p): vectors[i] for i, p in enumerate(unique) if str(p) not in failed}
    failures = failures + duplicates
    lines = [json.dumps({"key": image_key(root, Path(f.path)), **f.to_dict()}) + "\n" for f in failures]
    path = out  # the file being written, for the message
    try:
        write_npz_atomic(out, arrays)
        path = side
        with replaced_atomically(side) as tmp:
            tmp.write_text("".join(lines), encoding="utf-8")
    except OSError as e:
        if not disk_full(e):
            raise
        raise DiskFullError(f"{path}: no space left on device while writing; {path} is unchanged (no partial "
                            "file): free some space and run the same command again") from None
    return len(arrays), failures
