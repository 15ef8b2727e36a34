"""Faces found in tight face crops, without and with the padded retry (:class:`tripletface.faces.cropper.FaceCropper`).

Tight crops are made from lfw-dev and the crop manifest of ``tripletface crop`` (runs/lfw112):

* ``box S``: each lfw-dev photo cut to its detected face box, scaled by S about its centre
  (S < 1 cuts into the face: forehead and chin leave the frame, as in many ID-photo folders);
* ``aligned S``: the 112 px aligned crop, its centre S of each side kept.

For each kind, the fraction of crops that get a face (status ``ok``) with ``pad_retry=False``
(before) and ``pad_retry=True`` (after), and, for the ``box`` kinds, how far the landmarks found
in the crop (mapped back by the crop's offset) lie from those found in the full photo, in
inter-ocular distances (the coordinates check of the padded path).

    python benchmarks/bench_tight.py                  # 500 crops per kind
    python benchmarks/bench_tight.py --limit 0 --crops runs/lfw112 --json tight.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import common  # noqa: E402


def tight_box(photo: np.ndarray, box, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo cut to ``box`` scaled by ``scale`` about its centre, and the cut's (x, y) offset."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    hw, hh = scale * (x2 - x1) / 2, scale * (y2 - y1) / 2
    left, top = max(0, int(round(cx - hw))), max(0, int(round(cy - hh)))
    right, bottom = min(photo.shape[1], int(round(cx + hw))), min(photo.shape[0], int(round(cy + hh)))
    return np.ascontiguousarray(photo[top:bottom, left:right]), np.array([left, top], np.float64)


def centre(img: np.ndarray, scale: float) -> np.ndarray:
    m = int(round((1 - scale) * img.shape[0] / 2))
    return np.ascontiguousarray(img[m:img.shape[0] - m, m:img.shape[1] - m])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=Path, default=REPO_ROOT / "runs" / "lfw112",
                    help="a `tripletface crop` output of lfw-dev (manifest.jsonl and its crops)")
    ap.add_argument("--photos", type=Path, default=common.data_root() / "lfw-dev")
    ap.add_argument("--limit", type=int, default=500, help="crops per kind, a seeded sample (0 = all)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from tripletface.faces.manifest import read_manifest
    from tripletface.faces.cropper import FaceCropper
    from tripletface.data.decode import read_image

    rows = [r for r in read_manifest(args.crops / "manifest.jsonl") if r["status"] == "ok"]
    if not rows:
        raise SystemExit(f"no ok rows in {args.crops / 'manifest.jsonl'}: run `tripletface crop` of lfw-dev first")
    random.Random(0).shuffle(rows)
    rows = rows[:args.limit] if args.limit else rows
    kinds: dict[str, tuple[list, list]] = {}
    photos = [read_image(args.photos / r["source"]) for r in rows]
    for s in (1.0, 0.8):
        cut = [tight_box(p, r["box"], s) for p, r in zip(photos, rows)]
        kinds[f"box {s:g}"] = ([c for c, _ in cut], [o for _, o in cut])
    aligned = [read_image(args.crops / r["output"]) for r in rows]
    kinds["aligned 0.8"] = ([centre(a, 0.8) for a in aligned], [None] * len(rows))

    results = {}
    croppers = {"before": FaceCropper(pad_retry=False), "after": FaceCropper(pad_retry=True)}
    for kind, (images, offsets) in kinds.items():
        entry = {"n": len(images)}
        for label, cropper in croppers.items():
            t0 = time.perf_counter()
            res = [r for b in range(0, len(images), 32) for r in cropper.process(images[b:b + 32])]
            entry[f"found_{label}"] = float(np.mean([r.ok for r in res]))
            entry[f"seconds_{label}"] = round(time.perf_counter() - t0, 1)
            if label == "after":
                entry["padded"] = sum(r.detect_path == "padded" for r in res)
                errs = []
                for r, off, row in zip(res, offsets, rows):
                    if r.ok and off is not None and r.detect_path == "padded":
                        ref = np.asarray(row["landmarks"], np.float64)
                        iod = np.linalg.norm(ref[1] - ref[0])
                        errs.append(float(np.mean(np.linalg.norm(np.asarray(r.landmarks) + off - ref, axis=1)) / iod))
                if errs:
                    entry["padded_landmark_error_iod_median"] = round(float(np.median(errs)), 3)
        results[kind] = entry
        print(f"{kind:12s} n={entry['n']}: found {entry['found_before']:.1%} -> {entry['found_after']:.1%} "
              f"({entry['padded']} by the padded retry"
              + (f", landmark error median {entry['padded_landmark_error_iod_median']} IOD" if
                 "padded_landmark_error_iod_median" in entry else "") + ")", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"tight_crops": results, "machine": common.machine()
                                         if hasattr(common, "machine") else None}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
