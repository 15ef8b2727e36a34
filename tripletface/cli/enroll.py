"""``tripletface enroll --gallery G DIR``: add identities (one folder each, ``DIR/<identity>/<image>``)
to a gallery (:func:`tripletface.inference.open_set.enroll`; the file format is
:mod:`tripletface.inference.gallery`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tripletface.errors import InputError
from tripletface.folders import check_apart
from tripletface.config.choice_lists import GALLERY_INDEXES as INDEXES

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.flags import add_input_argument, add_progress_argument

    parser.add_argument("--gallery", required=True, help="gallery file (.npz; the suffix is added if missing)")
    parser.add_argument("--model", default=None, help="a .keras model (default: the bundled model)")
    parser.add_argument("--aligned", action="store_true", help="inputs are aligned crops: skip detection")
    add_input_argument(parser, "one folder per identity: INPUT_DIR/<identity>/<image>")
    add_progress_argument(parser)
    parser.add_argument("--index", choices=INDEXES, default=None,
                        help="search index the gallery uses: exact (default for a new gallery) or faiss "
                             "(approximate, for very large galleries; needs faiss-cpu)")


def run(args: argparse.Namespace) -> int:
    from tripletface.inference.embedder import Embedder
    from tripletface.inference.gallery import gallery_path
    from tripletface.inference.open_set import enroll

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
