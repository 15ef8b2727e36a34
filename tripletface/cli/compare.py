"""``tripletface compare IMG_A IMG_B [--model MODEL]`` (and ``python inference.py IMG_A IMG_B``).

Prints the distance, the threshold (and where it came from) and the verdict; ``--json``
prints one JSON object instead. The threshold is the one stored in the model (set by
training or ``tripletface calibrate``) unless ``--threshold`` is given.

Exit status: 0 whenever the two faces were compared, whatever the verdict; otherwise a
one-line ``error: <file>: <reason>`` on stderr and

* 3 -- a file that is missing, a directory, empty or not a readable image;
* 4 -- no (usable) face found in an image: never answered 'same' or 'different';
* 5 -- the model cannot be used (missing, unsafe, no stored threshold);
* 2 -- a bad argument (e.g. a negative ``--threshold``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tripletface.errors import ImageError

__all__ = ["add_arguments", "run", "compare", "check_image_file"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.main import number

    parser.add_argument("image_a", metavar="IMG_A", help="a photo (or an aligned crop with --aligned)")
    parser.add_argument("image_b", metavar="IMG_B", help="the other photo (or aligned crop)")
    parser.add_argument("--model", default=None, help="a .keras model (default: the bundled model)")
    parser.add_argument("--threshold", type=number(float, 0), default=None,
                        help="decision threshold on the distance (default: the one stored in the model)")
    parser.add_argument("--aligned", action="store_true", help="inputs are aligned crops: skip detection")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def check_image_file(path) -> None:
    """Cheap checks before any model is loaded: the path is an existing, non-empty file.

    Raises :class:`ImageError` ``"<path>: <reason>"`` (the reasons :func:`tripletface.data.decode.read_image`
    gives for the same cases). Whether it decodes is found out when it is read.
    """
    p = Path(path)
    if not p.exists():
        reason = "broken symlink (target does not exist)" if p.is_symlink() else "file not found"
    elif p.is_dir():
        reason = "is a directory, not an image file"
    elif not p.is_file():
        reason = "not a regular file"
    elif p.stat().st_size == 0:
        reason = "empty file (0 bytes)"
    elif not os.access(p, os.R_OK):
        reason = "permission denied"
    else:
        return
    err = ImageError(f"{path}: {reason}")
    err.status, err.reason, err.path = ("missing" if not p.exists() else "unreadable"), reason, str(path)
    raise err


def compare(embedder, path_a, path_b, threshold: float | None = None, aligned: bool = False) -> dict:
    """Compare two images with ``embedder`` -> a JSON-ready result dict.

    Keys: ``image_a``, ``image_b``, ``distance``, ``threshold``, ``threshold_source``, ``metric``,
    ``verdict`` (``"same"`` when ``distance < threshold``, else ``"different"``), ``same``, ``model``.

    Raises :class:`ImageError` / :class:`NoFaceError` naming the first image that could not be
    embedded (a face that was not found never yields a verdict), :class:`ModelError` when no
    threshold is given and the model stores none.
    """
    from tripletface.inference.embedder import distance

    threshold, source = embedder.decision_threshold(threshold)  # before any work
    for p in (path_a, path_b):
        check_image_file(p)
    vectors, failures = embedder.embed_files([path_a, path_b], aligned=aligned)
    if failures:
        raise failures[0].error()
    d = float(distance(vectors[0], vectors[1]))
    same = d < threshold
    return {
        "image_a": str(path_a),
        "image_b": str(path_b),
        "distance": d,
        "threshold": float(threshold),
        "threshold_source": source,
        "metric": str(embedder.metadata.get("metric", "euclidean")),
        "verdict": "same" if same else "different",
        "same": bool(same),
        "model": embedder.name,
    }


def run(args: argparse.Namespace) -> int:
    from tripletface.inference.embedder import Embedder, check_threshold

    if args.threshold is not None:
        check_threshold(args.threshold)
    for p in (args.image_a, args.image_b):  # cheap checks before loading TensorFlow
        check_image_file(p)
    embedder = Embedder.load(args.model)
    r = compare(embedder, args.image_a, args.image_b, args.threshold, aligned=args.aligned)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"distance:  {r['distance']:.4f} ({r['metric']}, on L2-normalised embeddings)")
        print(f"threshold: {r['threshold']:.4f} ({r['threshold_source']})")
        print(f"verdict:   {r['verdict']}")
    return 0
