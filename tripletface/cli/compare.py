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

__all__ = ["add_arguments", "run", "compare"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.flags import number

    parser.add_argument("image_a", metavar="IMG_A", help="a photo (or an aligned crop with --aligned)")
    parser.add_argument("image_b", metavar="IMG_B", help="the other photo (or aligned crop)")
    parser.add_argument("--model", default=None, help="a .keras model (default: the bundled model)")
    parser.add_argument("--threshold", type=number(float, 0), default=None,
                        help="decision threshold on the distance (default: the one stored in the model)")
    parser.add_argument("--aligned", action="store_true", help="inputs are aligned crops: skip detection")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def compare(embedder, path_a, path_b, threshold: float | None = None, aligned: bool = False) -> dict:
    """Compare two images with ``embedder`` -> a JSON-ready result dict: the decision of
    :func:`tripletface.inference.matching.verify`, with the two paths.

    Keys: ``image_a``, ``image_b``, ``distance``, ``threshold``, ``threshold_source``, ``metric``,
    ``verdict`` (``"same"`` when ``distance < threshold``, else ``"different"``), ``same``, ``model``.

    Raises :class:`ImageError` / :class:`NoFaceError` naming the first image that could not be
    embedded (a face that was not found never yields a verdict), :class:`ModelError` when no
    threshold is given and the model stores none.
    """
    from tripletface.inference.matching import verify

    return {"image_a": str(path_a), "image_b": str(path_b), **verify(path_a, path_b, embedder, threshold, aligned)}


def run(args: argparse.Namespace) -> int:
    from tripletface.data.decode import check_image_file
    from tripletface.inference.embedder import Embedder
    from tripletface.inference.matching import check_threshold

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
