"""``tripletface embed --model MODEL INPUT_DIR --output embeddings.npz [--aligned]``.

Every image under INPUT_DIR (recursively; hidden files and folders skipped) is embedded:
raw photos are detected and aligned with the settings stored in the model; with
``--aligned`` the files are taken as aligned crops.

The ``.npz`` maps each image's path relative to INPUT_DIR, without extension and with
``/`` separators (``Zico/Zico_0001``), to its embedding (float32, unit length); it holds
plain arrays only (``np.load(f, allow_pickle=False)`` reads it). Images that fail are
listed in the sidecar ``<output stem>.failures.jsonl``, one JSON object a line with
``key``, ``path``, ``status`` and ``reason``, never silently dropped; the sidecar is
written (possibly empty) on every run, so it never describes an older run. An ``--output`` inside
INPUT_DIR is refused before anything is written.

Example::

    tripletface embed --model model.keras photos/ --output photos.npz
    np.load("photos.npz")["Zico/Zico_0001"]       # (D,) float32
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tripletface.atomic import replaced_atomically
from tripletface.errors import DiskFullError, InputError, disk_full
from tripletface.folders import check_apart

__all__ = ["add_arguments", "run", "list_images", "image_key", "output_paths", "write_npz_atomic"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.main import add_flip_argument, add_input_argument, add_progress_argument, number

    add_input_argument(parser, "folder of images (searched recursively)")
    parser.add_argument("--output", required=True, help="the .npz to write (.npz is appended if missing)")
    parser.add_argument("--model", default=None, help="a .keras model (default: the bundled model)")
    parser.add_argument("--aligned", action="store_true", help="inputs are aligned crops: use them as they are")
    parser.add_argument("--batch-size", type=number(int, 1), default=64, help="images per forward pass (default 64)")
    add_flip_argument(parser)
    add_progress_argument(parser)


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


def run(args: argparse.Namespace) -> int:
    from tripletface.inference.embedder import Embedder, Failure, print_failures

    root = Path(args.input_dir)
    files = list_images(root)
    out, side = output_paths(args.output)
    if out.is_dir():
        raise InputError(f"{out}: --output is a folder; give a file name ending in .npz")
    check_apart(root, out, "INPUT_DIR", "--output")  # never written into the photos folder

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

    embedder = Embedder.load(args.model, batch_size=args.batch_size, flip_tta=args.flip_tta)
    vectors, failures = embedder.embed_files(unique, aligned=args.aligned, progress=args.progress)
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
    print(f"embedded {len(arrays)} of {len(files)} images ({embedder.dim}-d) -> {out}; "
          f"{len(failures)} failed -> {side}", file=sys.stderr)
    print_failures(failures, more=f" (see {side})")
    if not arrays:
        raise InputError(f"{root}: none of the {len(files)} images could be embedded; reasons in {side}")
    return 0
