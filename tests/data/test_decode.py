"""read_image: every awkward file either becomes uint8 HxWx3 RGB or an ImageError with a status."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from tripletface.errors import ImageError
from tripletface.data.decode import IMAGE_EXTENSIONS, is_image_file, read_image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_bomb_png(path, width=30000, height=30000) -> None:
    """A valid-looking PNG header for a huge RGB image with a tiny IDAT (a few hundred bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000, 9)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    path.write_bytes(data)


def gradient(h=40, w=60) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4 % 256, y * 6 % 256, (x + y) * 2 % 256], axis=2).astype(np.uint8)


def status_of(path, **kw) -> ImageError:
    with pytest.raises(ImageError) as info:
        read_image(path, **kw)
    err = info.value
    assert str(err).startswith(f"{path}: "), str(err)
    assert "\n" not in str(err)
    return err


def test_extensions():
    assert IMAGE_EXTENSIONS == {"jpg", "jpeg", "png", "bmp", "webp", "pgm", "ppm", "tif", "tiff"}
    assert is_image_file("a/B.JPG") and is_image_file("x.tiff") and not is_image_file("notes.txt")


def test_rgb_png_round_trip_exact(tmp_path):
    arr = gradient()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out, arr)


def test_greyscale_is_replicated(tmp_path):
    grey = gradient()[:, :, 0]
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (40, 60, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_16bit_grey_png_scaled_not_clipped(tmp_path):
    data = (np.arange(40 * 60).reshape(40, 60) * 27).astype(np.uint16)  # up to 64773
    Image.fromarray(data).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_image(tmp_path / "g16.png")
    expected = np.rint(data / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 1], expected)
    assert out.max() == expected.max() > 250  # would be 255 everywhere if clipped


def test_16bit_rgb_png(tmp_path):
    import cv2

    rgb16 = gradient().astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[:, :, ::-1])
    out = read_image(tmp_path / "c16.png")
    assert np.abs(out.astype(int) - gradient().astype(int)).max() <= 1


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255  # opaque top half, transparent bottom half
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[9, 9], [255, 255, 255])


def test_palette_with_transparency_and_la(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png")[0, 0], [255, 255, 255])
    la = np.zeros((6, 6, 2), np.uint8)
    la[..., 0] = 50
    la[..., 1] = 255
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png")[2, 2], [50, 50, 50])


def test_cmyk_jpeg_to_rgb(tmp_path):
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:, :16] = (200, 30, 30)
    arr[:, 16:] = (30, 30, 200)
    Image.fromarray(arr).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (32, 32, 3)
    assert out[16, 4, 0] > 150 and out[16, 4, 2] < 80  # red stays red
    assert out[16, 28, 2] > 150 and out[16, 28, 0] < 80  # blue stays blue


def test_exif_orientation_applied(tmp_path):
    upright = np.zeros((30, 50, 3), np.uint8)
    upright[:5, :5] = 255  # white marker at the top-left of the upright picture
    stored = np.rot90(upright, k=1)  # stored turned left; orientation 6 = display rotated right (90 CW)
    img = Image.fromarray(np.ascontiguousarray(stored))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (30, 50, 3)
    assert out[:5, :5].mean() > 200 and out[-5:, -5:].mean() < 50


def test_zero_byte_file(tmp_path):
    (tmp_path / "z.jpg").write_bytes(b"")
    err = status_of(tmp_path / "z.jpg")
    assert err.status == "unreadable" and "empty file" in err.reason


def test_text_named_jpg(tmp_path):
    (tmp_path / "t.jpg").write_text("this is not a picture\n" * 10)
    err = status_of(tmp_path / "t.jpg")
    assert err.status == "not_an_image"


def test_truncated_jpeg_is_an_error(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(gradient(200, 200)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    err = status_of(tmp_path / "t.jpg")
    assert err.status == "truncated" and "truncated" in err.reason


@pytest.mark.parametrize("side", [30000, 7000])
def test_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch, side):
    """30000^2 trips Pillow's own guard, 7000^2 (49 MP) only ours; neither decodes a pixel."""
    from PIL import ImageFile

    path = tmp_path / "bomb.png"
    write_bomb_png(path, side, side)
    assert path.stat().st_size < 2000

    def no_decoding(self, *a, **k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    t = time.perf_counter()
    err = status_of(path, max_pixels=40_000_000)
    assert time.perf_counter() - t < 1.0
    assert err.status == "too_large"


def test_missing_directory_and_symlink_loop(tmp_path):
    err = status_of(tmp_path / "nope.jpg")
    assert err.status == "missing"
    err = status_of(tmp_path)
    assert err.status == "unreadable" and "directory" in err.reason
    loop = tmp_path / "loop.jpg"
    os.symlink(loop, loop)
    err = status_of(loop)
    assert "symlink loop" in err.reason


def test_max_pixels_checked():
    with pytest.raises(ValueError, match="max_pixels"):
        read_image("x.png", max_pixels=0)
