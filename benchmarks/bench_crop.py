"""Benchmark ``tripletface crop`` against the plain ``mtcnn`` package, one image at a time.

Both run in this process on the same LFW images (an evenly spaced ``--limit`` subset of
``lfw-dev``; the baseline on its first ``--baseline-limit`` images, as it is slow):

* ``tripletface crop``: the whole job -- decode, detect (batched, reduced scale), select,
  align, quality, PNG write, manifest -- timed after the detector has loaded;
* baseline: ``PIL`` decode + ``mtcnn.MTCNN().detect_faces(image)`` per image (detection
  only, no alignment or writing), timed after one warm-up call.

Targets (issue 2): crop >= 4x the baseline's images/second, and >= 99% of images giving a face.

``--ratio`` (issue 14) instead measures, in one warm process, the steady throughput of
``crop_folder`` (the whole call, as ``tripletface crop`` makes it) and of
``Embedder.embed_files(aligned=False)`` (bundled model, batch 64) against the ``mtcnn``
package's own batched call, ``MTCNN().detect_faces(list)`` on chunks of ``crop.detect_batch``
photos decoded and half-scaled beforehand (detection only; tripletface detects at
``detect_scale`` 0.5): each contender gets one untimed pass, then they alternate for
``--rounds`` rounds on the same photos. ``--repo`` times another checkout's tripletface (e.g.
a ``git worktree`` of HEAD) with this script. Target: ratio >= 0.9, >= 99% of faces found.

    python benchmarks/bench_crop.py                 # 1500 images, baseline on 200
    python benchmarks/bench_crop.py --limit 0 --json bench_crop.json   # all of lfw-dev
    python benchmarks/bench_crop.py --ratio --limit 300 --rounds 3     # issue 14's ratios
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
    from tripletface.faces.crop import crop_folder
    from tripletface.faces.manifest import MANIFEST, read_manifest

    cfg = load_config(overrides={"crop.workers": workers})
    with tempfile.TemporaryDirectory(prefix="bench_crop_") as tmp:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        link_dataset(files, src)
        summary = crop_folder(src, out, cfg.crop, progress=sys.stderr.isatty())
        rows = read_manifest(out / MANIFEST)
    ok = sum(r["status"] == "ok" for r in rows)
    return {"images": len(rows), "seconds": summary.seconds, "images_per_second": summary.images_per_second,
            "detector_load_seconds": summary.load_seconds, "face_fraction": ok / max(1, len(rows)),
            "faces": ok, "statuses": dict(summary.counts), "settings": {
                "detector": cfg.crop.detector, "size": cfg.crop.size, "detect_scale": cfg.crop.detect_scale,
                "detect_batch": cfg.crop.detect_batch, "workers": workers or os.cpu_count()}}


def run_ratio(files: list[Path], rounds: int, overrides: list[str], embed: bool) -> dict:
    """Steady img/s of crop_folder (and embed_files) against mtcnn's batched call, alternated."""
    import shutil

    import numpy as np
    from mtcnn import MTCNN
    from PIL import Image

    from tripletface.config import load_config
    from tripletface.faces.crop import crop_folder

    cfg = load_config(overrides=overrides).crop
    scale, batch = float(cfg.detect_scale), int(cfg.detect_batch)
    halves = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            halves.append(np.asarray(im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                                               Image.BILINEAR)))
    detector = MTCNN()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ratio_"))
    link_dataset(files, tmp / "in")
    runs = {"n": 0}

    def mtcnn_pass():
        t0 = time.perf_counter()
        found = sum(bool(faces) for s in range(0, len(halves), batch)
                    for faces in detector.detect_faces(halves[s:s + batch]))
        return len(halves) / (time.perf_counter() - t0), found

    def crop_pass():
        runs["n"] += 1
        out = tmp / f"out{runs['n']}"
        t0 = time.perf_counter()
        summary = crop_folder(tmp / "in", out, cfg, progress=False)
        seconds = time.perf_counter() - t0
        shutil.rmtree(out, ignore_errors=True)
        return summary.processed / seconds, summary.counts.get("ok", 0)

    contenders = {"mtcnn": mtcnn_pass, "crop": crop_pass}
    if embed:
        from tripletface.inference.embedder import Embedder

        emb = Embedder.load(None, batch_size=64)
        paths = [str(f) for f in files]

        def embed_pass():
            t0 = time.perf_counter()
            _, failures = emb.embed_files(paths, aligned=False)
            return len(paths) / (time.perf_counter() - t0), len(paths) - len(failures)

        contenders["embed"] = embed_pass
    try:
        for fn in contenders.values():
            fn()  # untimed: first calls, tracing
        per_round = {k: [] for k in contenders}
        found = {}
        for r in range(rounds):
            for k, fn in contenders.items():
                speed, found[k] = fn()
                per_round[k].append(speed)
            line = ", ".join(f"{k} {per_round[k][-1]:.1f}" for k in contenders)
            ratios = ", ".join(f"{k}/mtcnn {per_round[k][-1] / per_round['mtcnn'][-1]:.3f}"
                               for k in contenders if k != "mtcnn")
            print(f"round {r + 1}: img/s {line}; {ratios}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"images": len(files), "rounds": rounds, "detect_batch": batch, "detect_scale": scale,
           "img_s": per_round, "found": found}
    out["ratios"] = {k: [a / b for a, b in zip(per_round[k], per_round["mtcnn"])] for k in contenders if k != "mtcnn"}
    out["median_ratio"] = {k: common.median(v) for k, v in out["ratios"].items()}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=common.data_root() / "lfw-dev", help="lfw-dev folder")
    parser.add_argument("--limit", type=int, default=1500, help="images for crop (0 = all)")
    parser.add_argument("--baseline-limit", type=int, default=200, help="images for the one-at-a-time baseline")
    parser.add_argument("--workers", type=int, default=0, help="crop threads (0 = CPUs)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--ratio", action="store_true",
                        help="steady crop (and embed) vs mtcnn's batched call at the same scale (issue 14)")
    parser.add_argument("--rounds", type=int, default=3, help="--ratio: alternated rounds")
    parser.add_argument("--no-embed", dest="embed", action="store_false", help="--ratio: crop only")
    parser.add_argument("--repo", type=Path, default=None,
                        help="--ratio: time the tripletface of this checkout (e.g. a git worktree of HEAD)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="--ratio: config override for crop (e.g. crop.png_compression=3)")
    args = parser.parse_args(argv)
    if args.repo is not None:
        sys.path.insert(0, str(args.repo.resolve()))
    if not args.data.is_dir():
        print(f"error: {args.data}: LFW data not found (set TRIPLETFACE_DATA or --data)", file=sys.stderr)
        return 2
    files = common.image_sample(args.data, args.limit)
    if not files:
        print(f"error: {args.data}: no images", file=sys.stderr)
        return 2
    if args.ratio:
        import tripletface

        result = run_ratio(files, args.rounds, args.overrides, args.embed)
        result.update({"tripletface": str(Path(tripletface.__file__).parent), "overrides": args.overrides,
                       "machine": common.machine_info()})
        ok = True
        for k, v in result["median_ratio"].items():
            faces = result["found"][k] / result["images"]
            ok = ok and v >= 0.9 and faces >= 0.99
            print(f"{k}: median steady ratio {v:.3f} of mtcnn detect_faces(list) (target >= 0.9); faces "
                  f"{result['found'][k]}/{result['images']} = {faces:.2%} (target >= 99%)")
        print(f"tripletface from {result['tripletface']} -> {'PASS' if ok else 'FAIL'}")
        result["passed"] = ok
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return 0
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
