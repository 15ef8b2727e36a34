"""``tripletface calibrate``: choose a decision threshold and store it.

1:1 verification, in the model::

    tripletface calibrate --model M --data-dir DIR --pairs pairs.txt [--target accuracy|far=1e-3] \
        (--output NEW.keras | --in-place)

Picks the decision threshold on the given pairs -- at the best accuracy, or the largest
threshold whose false accept rate stays at or under a target -- and stores it in the model's
metadata with the metric and where it came from (``threshold``, ``metric``,
``threshold_source``, ``calibration``). ``compare`` then uses it by default and shows its
source. Only metadata changes: the weights, and so the galleries built with the model, stay
valid. The model file is never overwritten unasked: ``--output`` writes a new file,
``--in-place`` replaces ``M`` atomically and keeps the previous file as ``M.prev.keras``.

1:N identification, in the gallery::

    tripletface calibrate --gallery people.npz --probes strangers/ [--model M] [--target fpir=0.01]

Searches photos of people *not* enrolled (``strangers/<identity>/<image>``) in the gallery
and stores in it the largest threshold at which at most the target fraction of them would be
identified as someone (see :func:`tripletface.inference.open_set.calibrate_gallery`); ``identify`` then
uses it and says so. The gallery is rewritten atomically, its rows unchanged.

Pairs with an image that could not be embedded are kept, scored as wrong (see
:func:`tripletface.evaluation.verification.score_with_failures`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tripletface.errors import InputError
from tripletface.evaluation.calibrate import backup_path, calibrate, parse_target, save_calibrated

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.flags import add_input_argument, add_progress_argument

    parser.add_argument("--model", default=None,
                        help="the .keras model to calibrate (with --gallery: the gallery's model, default the "
                             "bundled one)")
    add_input_argument(parser, "images: DATA_DIR/<name>/<name>_NNNN.<jpg|png|jpeg>", "--data-dir",
                       required=False, metavar="DATA_DIR", dest="data_dir")
    parser.add_argument("--pairs", default=None, help="pairs file in the LFW format")
    parser.add_argument("--gallery", default=None,
                        help="calibrate this gallery's 1:N threshold instead (needs --probes); stored in the "
                             "gallery, rewritten atomically")
    parser.add_argument("--probes", default=None,
                        help="with --gallery: photos of people NOT enrolled, DIR/<identity>/<image>")
    parser.add_argument("--aligned", action="store_true", help="images are aligned crops: skip detection")
    parser.add_argument("--target", default=None,
                        help="'accuracy' (best accuracy on the pairs, the default) or 'far=<rate>' (e.g. far=1e-3); "
                             "with --gallery 'fpir=<rate>' (false positive identification rate, default fpir=0.01)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output", default=None, help="write the calibrated model to this new .keras file")
    where.add_argument("--in-place", action="store_true",
                       help="replace --model atomically, keeping the previous file as NAME.prev.keras "
                            "(one of --output / --in-place is required: the model is never overwritten unasked)")
    add_progress_argument(parser)


def run(args: argparse.Namespace) -> int:
    if args.gallery or args.probes:
        return _run_gallery(args)
    from tripletface.inference.embedder import Embedder

    target = args.target or "accuracy"
    parse_target(target)  # a bad target fails before any work
    for flag, value in (("--model", args.model), ("--data-dir", args.data_dir), ("--pairs", args.pairs)):
        if not value:
            raise InputError(f"calibrate needs {flag} (or --gallery G --probes DIR to calibrate a gallery)")
    if not args.output and not args.in_place:
        raise InputError(f"calibrate writes a model: give --output NEW.keras, or --in-place to replace "
                         f"{args.model} (the previous file is kept as {backup_path(args.model).name})")
    if not Path(args.data_dir).is_dir():
        raise InputError(f"{args.data_dir}: data folder not found")
    if not Path(args.pairs).is_file():
        raise InputError(f"{args.pairs}: pairs file not found")
    out = Path(args.output) if args.output else None
    if out is not None and out.suffix != ".keras":
        raise InputError(f"--output must end in .keras, received: {args.output!r}")
    embedder = Embedder.load(args.model)
    info = calibrate(embedder, Path(args.data_dir), Path(args.pairs), target, args.aligned, progress=args.progress)
    out = out or Path(embedder.name)
    backup = save_calibrated(embedder.model, Path(embedder.name), out)
    result = {"model": str(out), **({"previous_model": str(backup)} if backup else {}), **info}
    print(json.dumps(result, indent=2))
    return 0


def _run_gallery(args: argparse.Namespace) -> int:
    from tripletface.inference import gallery as G
    from tripletface.inference.embedder import Embedder, print_failures
    from tripletface.inference.open_set import calibrate_gallery

    if not (args.gallery and args.probes):
        raise InputError("calibrating a gallery needs both --gallery G and --probes DIR (photos of people "
                         "not enrolled)")
    for flag, value in (("--data-dir", args.data_dir), ("--pairs", args.pairs), ("--output", args.output),
                        ("--in-place", args.in_place)):
        if value:
            raise InputError(f"{flag} is for calibrating a model; with --gallery the threshold is stored in the "
                             "gallery (rewritten atomically)")
    _, fpir = parse_target(args.target or "fpir=0.01", kinds=("fpir",))
    probes = Path(args.probes)
    if not probes.is_dir():
        raise InputError(f"{probes}: probes folder not found" if not probes.exists() else f"{probes}: not a folder")
    G.load_gallery(G.gallery_path(args.gallery))  # a missing or broken gallery fails before the model loads
    embedder = Embedder.load(args.model)
    r = calibrate_gallery(embedder, args.gallery, probes, fpir, aligned=args.aligned, progress=args.progress)
    print_failures(r.pop("failures"), prefix="probe not embedded: ", more=" probes not embedded")
    print(json.dumps(r, indent=2))
    return 0
