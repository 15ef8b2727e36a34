"""``tripletface embed --model MODEL INPUT_DIR --output embeddings.npz [--aligned]``.

Every image under INPUT_DIR (recursively; hidden files and folders skipped) is embedded
(:func:`tripletface.inference.folder.embed_folder`): raw photos are detected and aligned with the
settings stored in the model; with ``--aligned`` the files are taken as aligned crops.

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
import sys
from pathlib import Path

from tripletface.errors import InputError
from tripletface.folders import check_apart

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.flags import add_flip_argument, add_input_argument, add_progress_argument, number

    add_input_argument(parser, "folder of images (searched recursively)")
    parser.add_argument("--output", required=True, help="the .npz to write (.npz is appended if missing)")
    parser.add_argument("--model", default=None, help="a .keras model (default: the bundled model)")
    parser.add_argument("--aligned", action="store_true", help="inputs are aligned crops: use them as they are")
    parser.add_argument("--batch-size", type=number(int, 1), default=64, help="images per forward pass (default 64)")
    add_flip_argument(parser)
    add_progress_argument(parser)


def run(args: argparse.Namespace) -> int:
    from tripletface.inference.embedder import Embedder, print_failures
    from tripletface.inference.folder import embed_folder, list_images, output_paths

    root = Path(args.input_dir)
    files = list_images(root)
    out, side = output_paths(args.output)
    if out.is_dir():
        raise InputError(f"{out}: --output is a folder; give a file name ending in .npz")
    check_apart(root, out, "INPUT_DIR", "--output")  # never written into the photos folder

    embedder = Embedder.load(args.model, batch_size=args.batch_size, flip_tta=args.flip_tta)
    n, failures = embed_folder(embedder, root, files, out, side, aligned=args.aligned, progress=args.progress)
    print(f"embedded {n} of {len(files)} images ({embedder.dim}-d) -> {out}; "
          f"{len(failures)} failed -> {side}", file=sys.stderr)
    print_failures(failures, more=f" (see {side})")
    if not n:
        raise InputError(f"{root}: none of the {len(files)} images could be embedded; reasons in {side}")
    return 0
