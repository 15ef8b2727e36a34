#!/usr/bin/env python
"""Fuzz tripletface's image decoders: no crash, no hang, every rejection a clean error.

Every input goes through each target:

* ``imageio`` -- :func:`tripletface.data.decode.read_image`, the reader of ``crop``, ``embed``,
  ``compare``, ``enroll`` and ``identify``. Clean rejection: :class:`~tripletface.errors.ImageError`
  with a one-line ``"<path>: <reason>"`` message and a known ``.status``.
* ``serve`` -- :func:`tripletface.serve.uploads.decode_upload`, the service's upload check and decoder
  (when ``tripletface/serve/uploads.py`` exists). Clean rejection: a ``ServiceError`` with a 4xx code
  and a one-line message naming the form field.
* ``tf`` -- :func:`tripletface.data.images.decode_image` in graph mode, as the ``tf.data`` training
  and evaluation pipelines run it. Clean rejection: ``tf.errors.InvalidArgumentError``, and
  then a one-line reason from ``images._why_unreadable`` (what the pipeline puts in its
  ``InputError`` naming the file).

A finding is: any other exception, an accepted image that is not ``uint8 (h, w, 3)`` or is
over the pixel limit, an input slower than the per-image time limit (``--time-limit``,
default 10 s), or a crash of the interpreter (segfault, abort: caught by libFuzzer, or by
the watchdog in ``--mutate`` mode).

Two engines:

* **atheris** (coverage-guided libFuzzer; Pillow's Python plugins and ``tripletface.data.decode``
  are instrumented; ``pip install atheris``). Arguments are libFuzzer's::

      python fuzz/fuzz_images.py -runs=2000 -seed=1 CORPUS_DIR           # the CI run
      python fuzz/fuzz_images.py -max_total_time=3600 -timeout=20 -rss_limit_mb=4096 \\
          -artifact_prefix=fuzz/findings/ CORPUS_DIR                      # a long run

  ``CORPUS_DIR`` is filled with the seeds first when empty (and libFuzzer adds the inputs
  that reach new code to it).
* **--mutate** (no atheris needed): seeded random mutations (bit flips, magic numbers in the
  header, truncation, splicing, chunk copies) of the same seeds::

      python fuzz/fuzz_images.py --mutate --runs 5000 --seed 1 --artifacts fuzz/findings

Other commands::

      python fuzz/fuzz_images.py --make-seeds DIR      # the seed files (JPEG/PNG/PGM/WebP/...)
      python fuzz/fuzz_images.py --replay FILE ...     # re-run saved inputs (crash-*, regressions)

Seeds are made by Pillow at start-up (nothing binary is committed); the inputs that once
broke a decoder live in ``fuzz/regressions.py`` and are replayed by ``tests/test_fuzz.py``.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import os
import random
import resource
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

MAX_PIXELS = 4_000_000  # read_image's pixel limit in the harness (the default is 40M)
TF_MAX_BYTES = 1 << 29  # TensorFlow's own bound on a decoded image (jpeg_mem.cc); checked on output
TIME_LIMIT = 10.0  # seconds per input per target


class Finding(Exception):
    """An input that a decoder handled badly (not a clean rejection)."""


# --------------------------------------------------------------------------- seeds


def _face_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A small smooth RGB image with edges (decoders take more branches than on flat colour)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(1, w - 1)), (yy * 255 // max(1, h - 1)), ((xx ^ yy) * 8) % 256], -1)
    img = img + rng.integers(0, 24, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_seeds() -> dict[str, bytes]:
    """name -> bytes of small valid images: JPEG (baseline, progressive, grey, CMYK, EXIF),
    PNG (RGB, RGBA, palette+tRNS, 16-bit grey, interlaced), PGM (P5 8/16-bit, P2), WebP
    (lossy, lossless, alpha), BMP, GIF, TIFF."""
    from PIL import Image, features

    rgb = _face_like(24, 32)
    im = Image.fromarray(rgb)
    grey = im.convert("L")
    out: dict[str, bytes] = {}

    def save(name, img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out[name] = buf.getvalue()

    save("rgb.jpg", im, "JPEG", quality=90)
    save("progressive.jpg", im, "JPEG", quality=80, progressive=True, optimize=True)
    save("grey.jpg", grey, "JPEG", quality=85)
    save("cmyk.jpg", im.convert("CMYK"), "JPEG", quality=85)
    exif = im.getexif()
    exif[0x0112] = 6  # orientation: rotate
    save("exif.jpg", im, "JPEG", quality=75, exif=exif.tobytes())
    save("rgb.png", im, "PNG")
    rgba = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]), "RGBA")
    save("rgba.png", rgba, "PNG")
    pal = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette_trns.png", pal, "PNG", transparency=3)
    save("grey16.png", Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "PNG")
    save("interlaced.png", grey, "PNG", interlace=1)  # Pillow ignores interlace on save; harmless
    save("grey.pgm", grey, "PPM")  # P5, maxval 255
    save("rgb.ppm", im, "PPM")  # P6
    g16 = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257).convert("I;16")
    try:
        save("grey16.pgm", g16, "PPM")  # P5, maxval 65535
    except (OSError, ValueError):
        pass
    h, w = 6, 8
    out["ascii.pgm"] = (f"P2\n# ascii grey\n{w} {h}\n255\n" +
                        "\n".join(" ".join(str((x * 31 + y * 7) % 256) for x in range(w)) for y in range(h)) +
                        "\n").encode()
    if features.check("webp"):
        save("lossy.webp", im, "WEBP", quality=70)
        save("lossless.webp", im, "WEBP", lossless=True)
        save("alpha.webp", rgba, "WEBP", quality=60)
    save("rgb.bmp", im, "BMP")
    save("pal.gif", pal, "GIF")
    save("rgb.tif", im, "TIFF")
    return out


def write_seeds(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in make_seeds().items():
        p = directory / name
        p.write_bytes(data)
        paths.append(p)
    return paths


def regression_inputs() -> dict[str, bytes]:
    """The inputs that once broke a decoder (``fuzz/regressions.py``)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from regressions import REGRESSIONS

    return {name: data for name, (data, _why) in REGRESSIONS.items()}


# --------------------------------------------------------------------------- targets


def default_targets() -> tuple[str, ...]:
    """imageio and tf, plus serve where ``tripletface.serve.uploads`` exists."""
    import importlib.util

    return ("imageio", "serve", "tf") if importlib.util.find_spec("tripletface.serve.uploads") else ("imageio", "tf")


class Targets:
    """Runs one input through every decoder and classifies the outcome.

    ``check(data)`` returns ``{target: "accepted" | "rejected"}`` or raises :class:`Finding`.
    """

    KNOWN = ("imageio", "serve", "tf")

    def __init__(self, names=None, max_pixels: int = MAX_PIXELS, time_limit: float = TIME_LIMIT,
                 workdir: str | os.PathLike | None = None):
        names = default_targets() if names is None else names
        unknown = set(names) - set(self.KNOWN)
        if unknown:
            raise ValueError(f"targets must be among {', '.join(self.KNOWN)}; received: {sorted(unknown)}")
        self.names = tuple(names)
        self.max_pixels = max_pixels
        self.time_limit = time_limit
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self._dir = tempfile.mkdtemp(prefix="tf-fuzz-", dir=workdir or shm)
        self.path = os.path.join(self._dir, "input.img")
        self.slowest = {n: 0.0 for n in self.names}
        self.counts = {n: {"accepted": 0, "rejected": 0} for n in self.names}
        self._tf_decode = None
        if "tf" in self.names:
            self._setup_tf()
        self._warm_up()

    def _warm_up(self):
        """Run each decoder once, untimed: tracing the tf.function and importing Pillow's plugins
        take seconds on a busy machine and must not count against the first input's time limit."""
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(buf, "PNG")
        for name in self.names:
            getattr(self, f"_check_{name}")(buf.getvalue())
            getattr(self, f"_check_{name}")(b"P5 2 2 255\n" + bytes(4))

    def _setup_tf(self):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        from tripletface.data.images import decode_image

        self._tf = tf
        self._tf_decode = tf.function(decode_image, input_signature=[tf.TensorSpec([], tf.string)])

    def close(self):
        import shutil

        shutil.rmtree(self._dir, ignore_errors=True)

    def check(self, data: bytes) -> dict:
        result = {}
        for name in self.names:
            t0 = time.perf_counter()
            outcome = getattr(self, f"_check_{name}")(data)
            dt = time.perf_counter() - t0
            self.slowest[name] = max(self.slowest[name], dt)
            if dt > self.time_limit:
                raise Finding(f"{name}: {dt:.1f} s for one {len(data)}-byte input (limit {self.time_limit} s)")
            self.counts[name][outcome] += 1
            result[name] = outcome
        return result

    def _check_imageio(self, data: bytes) -> str:
        from tripletface.errors import ImageError
        from tripletface.data.decode import STATUSES, read_image

        with open(self.path, "wb") as fh:
            fh.write(data)
        try:
            img = read_image(self.path, max_pixels=self.max_pixels)
        except ImageError as e:
            msg = str(e)
            if "\n" in msg or not msg.startswith(f"{self.path}: ") or getattr(e, "status", None) not in STATUSES:
                raise Finding(f"imageio: malformed ImageError (status {getattr(e, 'status', None)!r}): {msg!r}")
            return "rejected"
        if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
            raise Finding(f"imageio: accepted image is {type(img).__name__} {getattr(img, 'dtype', '')} "
                          f"{getattr(img, 'shape', '')}, not uint8 (h, w, 3)")
        if img.shape[0] * img.shape[1] > self.max_pixels or min(img.shape[:2]) < 1:
            raise Finding(f"imageio: accepted a {img.shape[1]}x{img.shape[0]} image (limit {self.max_pixels} pixels)")
        return "accepted"

    def _check_serve(self, data: bytes) -> str:
        from tripletface.serve.errors import ServiceError
        from tripletface.serve.uploads import decode_upload

        try:
            img = decode_upload(data, max_pixels=self.max_pixels, field="image")
        except ServiceError as e:
            if not 400 <= e.code < 500 or "\n" in e.message or not e.message.startswith("image: "):
                raise Finding(f"serve: malformed ServiceError ({e.code}, {e.status}): {e.message!r}")
            return "rejected"
        if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
            raise Finding(f"serve: accepted image is {getattr(img, 'dtype', '')} {getattr(img, 'shape', '')}")
        if img.shape[0] * img.shape[1] > self.max_pixels or min(img.shape[:2]) < 1:
            raise Finding(f"serve: accepted a {img.shape[1]}x{img.shape[0]} image (limit {self.max_pixels} pixels)")
        return "accepted"

    def _check_tf(self, data: bytes) -> str:
        tf = self._tf
        try:
            img = self._tf_decode(tf.constant(data)).numpy()
        except tf.errors.InvalidArgumentError:
            # the pipeline then names the file with a one-line reason, found by decoding it eagerly
            from tripletface.data.images import _why_unreadable

            with open(self.path, "wb") as fh:
                fh.write(data)
            reason = _why_unreadable(self.path)
            if not isinstance(reason, str) or not reason or "\n" in reason:
                raise Finding(f"tf: rejected, but the reason is not one line: {reason!r}")
            return "rejected"
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
            raise Finding(f"tf: accepted image is {img.dtype} {img.shape}, not uint8 (h, w, 3)")
        if img.nbytes > TF_MAX_BYTES:
            raise Finding(f"tf: accepted a {img.shape[1]}x{img.shape[0]} image ({img.nbytes} bytes)")
        return "accepted"


# --------------------------------------------------------------------------- random mutation (no atheris)

_MAGIC8 = (0x00, 0x01, 0x7F, 0x80, 0xFF)
_MAGIC_INT = (0, 1, 2, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 46341, 65500)


def mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """One to four random edits of ``data``; offsets favour the first 64 bytes (headers)."""
    buf = bytearray(data)

    def offset(n=1):
        limit = max(1, len(buf) - n + 1)
        return rng.randrange(min(limit, 64)) if rng.random() < 0.5 else rng.randrange(limit)

    for _ in range(rng.randint(1, 4)):
        if not buf:
            buf.extend(rng.randbytes(rng.randint(1, 16)))
            continue
        op = rng.randrange(9)
        if op == 0:  # flip bits
            for _ in range(rng.randint(1, 8)):
                i = offset()
                buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # interesting byte
            buf[offset()] = rng.choice(_MAGIC8)
        elif op == 2 and len(buf) >= 4:  # interesting 16/32-bit integer, either byte order
            size = rng.choice((2, 4))
            value = rng.choice(_MAGIC_INT) & ((1 << (8 * size)) - 1)
            i = offset(size)
            buf[i:i + size] = struct.pack((">" if rng.random() < 0.5 else "<") + ("H" if size == 2 else "I"), value)
        elif op == 3:  # truncate
            del buf[rng.randrange(len(buf)):]
        elif op == 4:  # delete a chunk
            i = rng.randrange(len(buf))
            del buf[i:i + rng.randint(1, 64)]
        elif op == 5:  # duplicate a chunk
            i = rng.randrange(len(buf))
            chunk = buf[i:i + rng.randint(1, 64)]
            j = rng.randrange(len(buf) + 1)
            buf[j:j] = chunk
        elif op == 6:  # random bytes
            i = offset()
            buf[i:i + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
        elif op == 7 and others:  # splice with another seed
            other = rng.choice(others)
            cut = rng.randrange(len(buf) + 1)
            buf = buf[:cut] + other[rng.randrange(len(other) + 1):]
        else:  # overwrite a byte with a random one
            buf[offset()] = rng.randrange(256)
    return bytes(buf[: 1 << 16])


def run_mutation(runs: int, seed: int, targets: Targets, artifacts: Path | None = None,
                 hard_timeout: float = 60.0, log=sys.stderr) -> dict:
    """``runs`` seeded random mutations of the seeds (and the regression inputs) through ``targets``.

    Returns a summary dict; findings are collected (and saved under ``artifacts``), not raised.
    A watchdog (faulthandler) ends the process with a traceback if one input takes longer
    than ``hard_timeout`` seconds (a hang inside C code never returns to Python).
    """
    seeds = list(make_seeds().values()) + list(regression_inputs().values())
    rng = random.Random(seed)
    findings = []
    t0 = time.perf_counter()
    for data in seeds:  # the unmutated seeds first: the valid images must be accepted
        targets.check(data)
    for i in range(runs):
        data = mutate(seeds[i % len(seeds)], rng, seeds)
        faulthandler.dump_traceback_later(hard_timeout, exit=True)
        try:
            targets.check(data)
        except Exception as e:  # noqa: BLE001 - a finding is any exception: record it, go on
            findings.append({"run": i, "size": len(data), "error": f"{type(e).__name__}: {e}"[:500]})
            if artifacts is not None:
                artifacts.mkdir(parents=True, exist_ok=True)
                (artifacts / f"mutate-{seed}-{i}.bin").write_bytes(data)
            print(f"finding at run {i}: {type(e).__name__}: {str(e)[:300]}", file=log)
        finally:
            faulthandler.cancel_dump_traceback_later()
    seconds = time.perf_counter() - t0
    return {"engine": "mutate", "runs": runs, "seeds": len(seeds), "seconds": round(seconds, 2),
            "findings": findings, "counts": targets.counts,
            "slowest_s": {k: round(v, 3) for k, v in targets.slowest.items()},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


# --------------------------------------------------------------------------- atheris


def run_atheris(argv: list[str], target_names) -> None:
    """Hand over to libFuzzer (never returns: libFuzzer exits the process)."""
    import atheris

    with atheris.instrument_imports(include=["PIL", "tripletface"]):
        from PIL import Image

        Image.init()  # imports every format plugin now, so they are instrumented
        import tripletface.data.decode  # noqa: F401

        if "serve" in target_names:
            import tripletface.serve.uploads  # noqa: F401

    targets = Targets(target_names)
    corpus = [a for a in argv[1:] if not a.startswith("-")]
    for d in corpus:
        p = Path(d)
        if p.is_dir() and not any(p.iterdir()):
            write_seeds(p)
            for name, data in regression_inputs().items():
                (p / f"regression-{name}").write_bytes(data)
    if not any(a.startswith("-max_len") for a in argv):
        argv = argv + ["-max_len=16384"]
    if not any(a.startswith("-timeout") for a in argv):
        argv = argv + [f"-timeout={int(TIME_LIMIT * 2)}"]
    if not any(a.startswith("-rss_limit_mb") for a in argv):
        # TensorFlow grows by ~2 KB per decoded input here (not tripletface's memory); 2 GB, the
        # libFuzzer default, would end a run of ~700k executions as a false 'oom'
        argv = argv + ["-rss_limit_mb=6144"]

    def test_one_input(data: bytes) -> None:
        targets.check(data)

    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    ours = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    ours.add_argument("--mutate", action="store_true", help="seeded random mutation instead of atheris")
    ours.add_argument("--runs", type=int, default=2000, help="--mutate: number of inputs")
    ours.add_argument("--seed", type=int, default=0, help="--mutate: random seed")
    ours.add_argument("--artifacts", default=None, help="--mutate: folder for inputs that found something")
    ours.add_argument("--targets", default=None,
                      help="comma-separated among imageio,serve,tf (default: all that exist)")
    ours.add_argument("--time-limit", type=float, default=TIME_LIMIT, help="seconds per input per target")
    ours.add_argument("--make-seeds", metavar="DIR", default=None)
    ours.add_argument("--replay", nargs="+", metavar="FILE", default=None)
    ours.add_argument("--help", "-h", action="store_true")
    args, rest = ours.parse_known_args(argv[1:])
    if args.help:
        print(__doc__)
        return 0
    names = tuple(t for t in args.targets.split(",") if t) if args.targets else default_targets()
    if args.make_seeds:
        for p in write_seeds(Path(args.make_seeds)):
            print(p)
        return 0
    if args.replay:
        targets = Targets(names, time_limit=args.time_limit)
        bad = 0
        for f in args.replay:
            try:
                print(f"{f}: {targets.check(Path(f).read_bytes())}")
            except Exception as e:  # noqa: BLE001
                bad += 1
                print(f"{f}: FINDING {type(e).__name__}: {e}")
        targets.close()
        return 1 if bad else 0
    if args.mutate:
        import json

        targets = Targets(names, time_limit=args.time_limit)
        summary = run_mutation(args.runs, args.seed, targets, Path(args.artifacts) if args.artifacts else None)
        targets.close()
        print(json.dumps(summary))
        return 1 if summary["findings"] else 0
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("error: atheris is not installed (pip install atheris); use --mutate for the random-mutation "
              "engine", file=sys.stderr)
        return 2
    run_atheris([argv[0], *rest], names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
