"""Fuzzing the image decoders (``fuzz/fuzz_images.py``): the CI-sized runs and the regressions.

* a coverage-guided atheris run (2000 executions; skipped when atheris is not installed);
* a seeded random-mutation run (1000 inputs; needs nothing extra, always runs);
* every input the fuzzers once broke a decoder with (``fuzz/regressions.py``) is replayed.

Both engines push every input through ``tripletface.data.decode.read_image`` (crop, embed,
compare, enroll, identify), ``tripletface.serve.uploads.decode_upload`` (the service, where it
exists) and ``tripletface.data.images.decode_image`` (the tf.data pipelines).
The long runs are documented commands (docs/RELIABILITY.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz" / "fuzz_images.py"


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def harness():
    return _module("fuzz_images", FUZZ)


@pytest.fixture(scope="module")
def regressions():
    return _module("fuzz_regressions", ROOT / "fuzz" / "regressions.py").REGRESSIONS


@pytest.fixture(scope="module")
def targets(harness):
    t = harness.Targets()  # every decoder there is: imageio, serve (when present), tf
    yield t
    t.close()


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def test_seeds_are_valid_images_of_every_format(harness, targets):
    seeds = harness.make_seeds()
    assert {"rgb.jpg", "rgb.png", "grey.pgm", "grey16.pgm", "lossy.webp", "lossless.webp"} <= set(seeds)
    for name, data in seeds.items():
        assert targets.check(data)["imageio"] == "accepted", name
    # the tf.data decoder is imageio's: it reads every seed imageio reads (TIFF, PPM and ASCII PGM too)
    for name, data in seeds.items():
        assert targets.check(data)["tf"] == "accepted", name
    if "serve" in targets.names:  # the service takes JPEG, PNG, WebP and BMP uploads
        for name in ("rgb.jpg", "cmyk.jpg", "exif.jpg", "rgba.png", "palette_trns.png", "alpha.webp", "rgb.bmp"):
            assert targets.check(seeds[name])["serve"] == "accepted", name
        assert targets.check(seeds["rgb.tif"])["serve"] == "rejected"


@pytest.mark.parametrize("name", [
    "ppm_eof_in_header", "ppm_bad_number", "ppm_token_too_long", "png_zero_length_ihdr",
    "pgm_negative_width_binary", "pgm_binary_in_width", "pgm_int32_overflow"])
def test_regression_inputs_are_clean_rejections(regressions, targets, tmp_path, name):
    """Each once raised a raw ValueError / UnicodeDecodeError; now a one-line error naming the file."""
    from tripletface.data.images import check_images
    from tripletface.errors import ImageError, InputError
    from tripletface.data.decode import read_image

    data, _why = regressions[name]
    assert set(targets.check(data).values()) == {"rejected"}
    bad = tmp_path / f"{name}.pgm"
    bad.write_bytes(data)
    with pytest.raises(ImageError) as err:
        read_image(bad)
    assert str(err.value).startswith(f"{bad}: ") and "\n" not in str(err.value)
    assert err.value.status in ("unreadable", "not_an_image", "too_large")
    with pytest.raises(InputError) as err:  # what `train` / `evaluate` report for it
        check_images([str(bad)])
    assert str(err.value).startswith(f"{bad}: unreadable image (") and "\n" not in str(err.value)


def test_pgm_header_checks_keep_valid_files(tmp_path):
    """The stricter PGM header parsing still reads 8- and 16-bit files with comments."""
    import tensorflow as tf

    from tripletface.data.images import decode_image

    grey = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7
    (tmp_path / "a.pgm").write_bytes(b"P5\n# a comment\n7 5\n255\n" + grey.tobytes())
    out = decode_image(tf.io.read_file(str(tmp_path / "a.pgm"))).numpy()
    np.testing.assert_array_equal(out[:, :, 1], grey)
    (tmp_path / "b.pgm").write_bytes(b"P5 7 5 65535\n" + (grey.astype(">u2") * 257).tobytes())
    np.testing.assert_array_equal(decode_image(tf.io.read_file(str(tmp_path / "b.pgm"))).numpy()[:, :, 0], grey)


def test_mutation_fuzz_1000_inputs(tmp_path):
    """Seeded random mutation (no atheris needed): 1000 inputs, no finding."""
    r = subprocess.run([sys.executable, str(FUZZ), "--mutate", "--runs", "1000", "--seed", "0",
                        "--artifacts", str(tmp_path / "findings")],
                       capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["findings"] == []
    assert {"imageio", "tf"} <= set(summary["counts"])
    for target, counts in summary["counts"].items():
        assert counts["accepted"] + counts["rejected"] == 1000 + summary["seeds"]
        assert counts["accepted"] > 0 and counts["rejected"] > 0  # the mutations reach both outcomes
        assert summary["slowest_s"][target] < 10
    assert not (tmp_path / "findings").exists()


def test_atheris_fuzz_2000_executions(tmp_path):
    """Coverage-guided (libFuzzer via atheris): 2000 executions from the seeds, no crash, no timeout."""
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris; Linux/macOS x86_64 "
                                          "wheels): the random-mutation test above still runs")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    r = subprocess.run([sys.executable, str(FUZZ), "-runs=2000", "-seed=1", "-timeout=20", "-rss_limit_mb=4096",
                        f"-artifact_prefix={tmp_path}/", str(corpus)],
                       capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path)
    keys = ("ERROR", "Finding", "Traceback", "Error", "==", "SUMMARY", "deadly", "timeout", "memory", "rss", "Done")
    tail = "\n".join([line for line in r.stderr.splitlines() if any(k in line for k in keys)][-40:])
    assert r.returncode == 0, tail
    assert "Done 2000 runs" in r.stderr, tail
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*")), tail
    assert not list(tmp_path.glob("oom-*")), tail
    assert len(list(corpus.iterdir())) >= 20  # the seeds, plus what reached new code
