"""``tripletface crop``: detect, align and crop every face of a dataset folder.

Flags only; the work is :func:`tripletface.faces.crop.crop_folder` (its module doc describes the
output folder, the manifest, resuming and sharding).

Example::

    tripletface crop dataset cropped_data --test-fraction 0.1
    python crop_faces.py --input_dir dataset --output_dir cropped_data
"""

from __future__ import annotations

import argparse
from typing import Optional

from tripletface.errors import InputError

__all__ = ["add_arguments", "run", "parse_shard"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.flags import add_config_arguments, add_config_flag, add_progress_argument, number

    parser.add_argument("input_pos", nargs="?", metavar="INPUT_DIR",
                        help="dataset folder: INPUT_DIR/<identity>/<image> (default: dataset)")
    parser.add_argument("output_pos", nargs="?", metavar="OUTPUT_DIR",
                        help="where crops and manifest.jsonl go (default: cropped_data)")
    parser.add_argument("--input_dir", "--input-dir", dest="input_opt", default=None, metavar="DIR",
                        help="same as INPUT_DIR")
    parser.add_argument("--output_dir", "--output-dir", dest="output_opt", default=None, metavar="DIR",
                        help="same as OUTPUT_DIR")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="process only shard I of N (I = 0..N-1), split by identity")
    add_config_flag(parser, "--workers", key="crop.workers", metavar="N", help="reader/writer threads")
    add_config_flag(parser, "--test-fraction", "--test_fraction", key="crop.test_fraction", metavar="F",
                    help="fraction of identities put in OUTPUT_DIR/test")
    add_config_flag(parser, "--size", key="crop.size", metavar="PX", help="side of the aligned crop (default 112)")
    add_config_flag(parser, "--detector", key="crop.detector", help="face detector")
    add_config_flag(parser, "--template", key="crop.template",
                    help="arcface = 5-point alignment (default); box = no alignment")
    parser.add_argument("--limit", type=number(int, 1), default=None, metavar="N",
                        help="only the first N images (sorted)")
    parser.add_argument("--overwrite", action="store_true",
                        help="ignore an existing manifest (e.g. made with other settings) and redo everything")
    add_progress_argument(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tripletface.cli.flags import config_from_args
    from tripletface.faces.crop import crop_folder

    positional = [p for p in (args.input_pos, args.output_pos) if p is not None]
    input_dir = args.input_opt if args.input_opt is not None else (positional.pop(0) if positional else None)
    output_dir = args.output_opt if args.output_opt is not None else (positional.pop(0) if positional else None)
    if positional:
        raise InputError(f"unexpected argument {positional[0]!r}: give each folder once, "
                         "as INPUT_DIR OUTPUT_DIR or with --input_dir/--output_dir")
    input_dir = input_dir or "dataset"
    output_dir = output_dir or "cropped_data"

    cfg = config_from_args(args)  # --workers, --size, ... are --set crop.KEY=VALUE (cli.add_config_flag)
    shard = parse_shard(args.shard)
    summary = crop_folder(input_dir, output_dir, cfg.crop, shard=shard, overwrite=args.overwrite,
                          limit=args.limit, progress=args.progress)
    print(summary.line())
    return 0


def parse_shard(text: Optional[str]) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; None -> ``(0, 1)``."""
    if text is None:
        return 0, 1
    try:
        i_s, n_s = str(text).split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise InputError(f"--shard must look like I/N (e.g. 0/4), received: {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard I/N needs N >= 1 and 0 <= I < N, received: {text!r}")
    return i, n

