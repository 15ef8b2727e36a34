"""Benchmark ``tripletface crop`` against the plain ``mtcnn`` package, one image at a time.

Both run in this process on the same LFW images (an evenly spaced ``--limit`` subset of
``lfw-dev``; the baseline on its first ``--baseline-limit`` images, as it is slow):

* ``tripletface crop``: the whole job -- decode, detect (batched, reduced scale), select,
  align, quality, PNG write, manifest -- timed after the detector has loaded;
* baseline: ``PIL`` decode + ``mtcnn.MTCNN().detect_faces(image)`` per image (detection
  only, no alignment or writing), timed after one warm-up call.

Targets (issue 2): crop >= 4x the baseline's images/second, and >= 99% of images giving a face.

    python benchmarks/bench_crop.py                 # 1500 images, baseline on 200
    python benchmarks/bench_crop.py --limit 0 --json bench_crop.json   # all of lfw-dev
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import common  # noqa: E402


def link_dataset(files: list[Path], root: Path) -> None:
    for f in files:
        (root / f.parent.name).mkdir(parents=True, exist_ok=True)
        os.symlink(f.resolve(), root / f.parent.name / f.name)


def run_baseline(files: list[Path]) -> dict:
    import numpy as np
    from mtcnn import MTCNN
    from PIL import Image

    detector = MTCNN()
    detector.detect_faces(np.asarray(Image.open(files[0]).convert("RGB")))  # warm-up
    found = 0
    t0 = time.perf_counter()
    for f in files:
        faces = detector.detect_faces(np.asarray(Image.open(f).convert("RGB")))
        found += bool(faces)
    seconds = time.perf_counter() - t0
    return {"images": len(files), "seconds": seconds, "images_per_second": len(files) / seconds,
            "face_fraction": found / len(files)}


def run_crop(files: list[Path], workers: int) -> dict:
    from tripletface.config import load_config
    from tripletface.crop import MANIFEST, crop_dataset, read_manifest

    cfg = load_config(overrides={"crop.workers": workers})
    with tempfile.TemporaryDirectory(prefix="bench_crop_") as tmp:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        link_dataset(files, src)
        summary = crop_dataset(src, out, cfg.crop, progress=sys.stderr.isatty())
        rows = read_manifest(out / MANIFEST)
    ok = sum(r["status"] == "ok" for r in rows)
    return {"images": len(rows), "seconds": summary.seconds, "images_per_second": summary.images_per_second,
            "detector_load_seconds": summary.load_seconds, "face_fraction": ok / max(1, len(rows)),
            "faces": ok, "statuses": dict(summary.counts), "settings": {
                "detector": cfg.crop.detector, "size": cfg.crop.size, "detect_scale": cfg.crop.detect_scale,
                "detect_batch": cfg.crop.detect_batch, "workers": workers or os.cpu_count()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=common.data_root() / "lfw-dev", help="lfw-dev folder")
    parser.add_argument("--limit", type=int, default=1500, help="images for crop (0 = all)")
    parser.add_argument("--baseline-limit", type=int, default=200, help="images for the one-at-a-time baseline")
    parser.add_argument("--workers", type=int, default=0, help="crop threads (0 = CPUs)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data}: LFW data not found (set TRIPLETFACE_DATA or --data)", file=sys.stderr)
        return 2
    files = common.image_sample(args.data, args.limit)
    if not files:
        print(f"error: {args.data}: no images", file=sys.stderr)
        return 2
    base_files = files[: max(1, min(args.baseline_limit, len(files)))]

    crop = run_crop(files, args.workers)
    base = run_baseline(base_files)
    ratio = crop["images_per_second"] / base["images_per_second"]
    result = {"crop": crop, "baseline_mtcnn_one_at_a_time": base, "speedup": ratio,
              "targets": {"speedup": 4.0, "face_fraction": 0.99},
              "passed": ratio >= 4.0 and crop["face_fraction"] >= 0.99,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()}, "data": str(args.data)}

    print(f"{'':36s}{'images':>8s}{'img/s':>9s}{'faces':>9s}")
    print(f"{'tripletface crop (whole job)':36s}{crop['images']:8d}{crop['images_per_second']:9.1f}"
          f"{crop['face_fraction']:9.2%}")
    print(f"{'mtcnn, one image at a time':36s}{base['images']:8d}{base['images_per_second']:9.1f}"
          f"{base['face_fraction']:9.2%}")
    print(f"speed-up {ratio:.1f}x (target >= 4x); faces found {crop['faces']}/{crop['images']} = "
          f"{crop['face_fraction']:.2%} (target >= 99%) -> {'PASS' if result['passed'] else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
