"""``tripletface identify --gallery G IMG``: the nearest identities of a face in a gallery, or
``unknown`` (:func:`tripletface.inference.open_set.identify`; which threshold decides:
:func:`tripletface.inference.open_set.search_threshold`)."""

from __future__ import annotations

import argparse
import json

from tripletface.config.choice_lists import GALLERY_INDEXES as INDEXES

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.flags import number

    parser.add_argument("--gallery", required=True, help="gallery file (.npz; the suffix is added if missing)")
    parser.add_argument("--model", default=None, help="a .keras model (default: the bundled model)")
    parser.add_argument("--aligned", action="store_true", help="inputs are aligned crops: skip detection")
    parser.add_argument("image", metavar="IMG", help="a photo (or an aligned crop with --aligned)")
    parser.add_argument("--top-k", type=number(int, 1), default=5, help="how many identities to list (default 5)")
    parser.add_argument("--threshold", type=number(float, 0), default=None,
                        help="decision threshold (default: the gallery's, from `tripletface calibrate "
                             "--gallery`, else the model's 1:1 verification threshold)")
    parser.add_argument("--index", choices=INDEXES, default=None,
                        help="search with this index (default: the gallery's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from tripletface.data.decode import check_image_file
    from tripletface.inference.embedder import Embedder
    from tripletface.inference.matching import check_threshold
    from tripletface.inference.gallery import gallery_path, load_gallery
    from tripletface.inference.open_set import identify

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
