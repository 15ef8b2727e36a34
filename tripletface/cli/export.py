"""``tripletface export --model MODEL --format savedmodel|tflite|onnx OUT [--quantize int8|float16]``:
write a serving artifact, an aligned face (uint8) in and the embedding out
(:func:`tripletface.inference.export.export_model`, which documents the graph and the formats)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tripletface.errors import InputError
from tripletface.folders import check_apart
from tripletface.inference.export import (FORMATS, QUANTIZATIONS, export_model, metadata_path,
                                          read_export_metadata)

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.flags import add_flip_argument

    parser.add_argument("out", metavar="OUT", help="SavedModel folder, or .tflite / .onnx file to write")
    parser.add_argument("--model", default=None, help="a .keras model (default: the bundled model)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, required=True, help="artifact format")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default=None,
                        help="tflite only: int8 (dynamic-range: int8 weights) or float16 weights")
    add_flip_argument(parser)
    parser.add_argument("--no-fold-batch-norm", dest="fold_batch_norm", action="store_false",
                        help="keep the BatchNorm layers (default: fold each one that follows a convolution into it)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from tripletface.inference.embedder import Embedder, resolve_model_path

    out = Path(args.out)
    model_path = resolve_model_path(args.model)
    check_apart(model_path, out, "the model", "OUT")  # --overwrite must never delete the model it exports
    if out.exists() and not args.overwrite:  # fail before loading anything
        raise InputError(f"{out}: already exists (pass --overwrite to replace it)")
    if args.quantize and args.fmt != "tflite":
        raise InputError(f"--quantize {args.quantize} is for --format tflite only, received --format {args.fmt}")
    embedder = Embedder.load(args.model)
    print(f"exporting {embedder.name} ({embedder.image_size[0]}x{embedder.image_size[1]}, {embedder.dim}-d) "
          f"to {args.fmt}{' ' + args.quantize if args.quantize else ''} ...", file=sys.stderr)
    export_model(embedder, out, args.fmt, quantize=args.quantize, flip_tta=args.flip_tta, overwrite=args.overwrite,
                 fold_batch_norm=getattr(args, "fold_batch_norm", True))
    meta = metadata_path(out, args.fmt)
    folded = read_export_metadata(out).get("batch_norm_folded", 0)
    print(f"wrote {out} (metadata: {meta}; {folded} BatchNorm layers folded into their convolutions)")
    return 0
