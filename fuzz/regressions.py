"""Inputs that once broke a decoder, minimised by hand from what the fuzzer found.

Each entry: name -> (bytes, what went wrong before the fix). ``tests/test_fuzz.py`` replays
every one through every target; ``fuzz/fuzz_images.py`` adds them to its seeds.
"""

from __future__ import annotations

import struct

_PNG = b"\x89PNG\r\n\x1a\n"

REGRESSIONS: dict[str, tuple[bytes, str]] = {
    # found by `fuzz_images.py --mutate --runs 3000 --seed 0`: 107 of 3000 mutations, all of this kind
    "ppm_eof_in_header": (
        b"P5\n",
        "read_image: Pillow's PPM plugin raised ValueError('Reached EOF while reading header') "
        "from Image.open, which read_image did not catch (a traceback instead of an ImageError)"),
    "ppm_bad_number": (
        b"P5 32\x0224 255\n" + bytes(64),
        "read_image: ValueError('invalid literal for int()') from the PPM header parser"),
    "ppm_token_too_long": (
        b"P6 " + b"1" * 40 + b"\n",
        "read_image: ValueError('Token too long in file header') from the PPM header parser"),
    "png_zero_length_ihdr": (
        _PNG + struct.pack(">I", 0) + b"IHDR" + struct.pack(">IIBBBBB", 32, 24, 8, 2, 0, 0, 0) + bytes(4),
        "read_image: Pillow's PNG plugin raised ValueError('Truncated IHDR chunk') from Image.open"),
    # found by the same run once read_image was fixed: 14 of 3000, all of this kind
    "pgm_negative_width_binary": (
        b"P5 -5 3 255\n" + b"\xff" * 16,
        "dataset.decode_image: the PGM parser's Substr error quoted the file's non-UTF-8 bytes, so "
        "TensorFlow raised UnicodeDecodeError instead of InvalidArgumentError and `train` crashed with a "
        "traceback while naming the bad file"),
    "pgm_binary_in_width": (
        b"P5 1\xff 3 255\n" + b"\xff" * 16,
        "dataset.decode_image: StringToNumber's error quoted the non-UTF-8 token (UnicodeDecodeError)"),
    "pgm_int32_overflow": (
        b"P5 65537 65537 255\n" + bytes(131073 + 9),
        "dataset.decode_image: width * height overflowed int32 to a small positive byte count "
        "(clean reshape error then; now refused by the header check)"),
}
