"""Read any common image file into one array format: uint8, HxWx3, RGB.

Every path through the pipeline reads images here -- ``crop``, training (the tf.data
pipeline of :mod:`tripletface.data.images` calls :func:`read_image`), ``embed``, ``evaluate``,
``compare``, ``enroll``/``identify`` -- and the service converts uploads with
:func:`to_rgb_uint8`, so a crop gives the same pixels to training and to inference
(JPEG and PNG alike). :data:`IMAGE_EXTENSIONS` is the one list of file types indexed,
cropped and embedded.

Real photos break naive loaders; this module decides, once, what each case becomes:

========================  =====================================================
file                      result
========================  =====================================================
EXIF orientation tag      pixels rotated/flipped upright (``ImageOps.exif_transpose``)
greyscale (L, 1, I;16)    replicated to 3 channels
16-bit (I;16, PNG 48 bit) scaled to 8 bit (``round(v / 257)``), not clipped
float (F)                 [0, 1] data scaled by 255, otherwise clipped to [0, 255]
CMYK / YCbCr / LAB / HSV  converted to RGB
alpha (RGBA, LA, P+tRNS)  composited on white
larger than max_pixels    refused from the header, before any pixel is decoded
truncated file            error (never silently grey-filled)
zero-byte / not an image  error
corrupt header            error (whatever exception the format plugin raises)
FIFO / device             error, never opened (a read would block or never end)
========================  =====================================================

Errors are :class:`tripletface.errors.ImageError` with the message ``"<path>: <reason>"``
and a short machine-readable ``.status`` (see :data:`STATUSES`) and ``.reason``.

Example::

    >>> img = read_image("dataset/Ann/001.jpg")   # doctest: +SKIP
    >>> img.shape, img.dtype
    ((250, 250, 3), dtype('uint8'))
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
from pathlib import Path

import numpy as np

from tripletface.errors import ImageError, first_line

__all__ = ["IMAGE_EXTENSIONS", "STATUSES", "read_image", "decode_image_bytes", "is_image_file", "to_rgb_uint8"]

# Lower-case file extensions (no dot) that every command treats as images (crop, train, embed, enroll).
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "bmp", "webp", "pgm", "ppm", "tif", "tiff"})

# The values ImageError.status takes here.
STATUSES = ("missing", "unreadable", "too_large", "truncated", "not_an_image")

# What Pillow's format plugins raise on malformed data besides OSError (found by fuzz/fuzz_images.py).
_DECODER_ERRORS = (ValueError, SyntaxError, IndexError, TypeError, EOFError, KeyError, struct.error,
                   ZeroDivisionError, OverflowError)


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name ends in one of :data:`IMAGE_EXTENSIONS` (any case)."""
    suffix = os.path.splitext(os.fspath(path))[1]
    return suffix[1:].lower() in IMAGE_EXTENSIONS


def _error(path, status: str, reason: str) -> ImageError:
    err = ImageError(f"{path}: {reason}")
    err.status = status
    err.reason = reason
    err.path = str(path)
    return err


def read_image(path: str | os.PathLike, max_pixels: int = 40_000_000) -> np.ndarray:
    """Decode ``path`` into a ``uint8`` array of shape ``(H, W, 3)``, RGB, upright.

    Args:
        path: image file (any format Pillow reads; see :data:`IMAGE_EXTENSIONS`).
        max_pixels: images with more than ``width * height`` pixels are refused from
            their header, before decoding (decompression bombs).

    Raises:
        ImageError: ``.status`` one of :data:`STATUSES`, message ``"<path>: <reason>"``.
        ValueError: ``max_pixels`` is not a positive integer.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer, received: {max_pixels!r}")
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise _error(path, "missing", "broken symlink (target does not exist)") from None
        raise _error(path, "missing", "file not found") from None
    except OSError as e:
        raise _error(path, "unreadable", os_reason(e)) from None
    if os.path.isdir(path):
        raise _error(path, "unreadable", "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever; a device never ends
        raise _error(path, "unreadable", "not a regular file (FIFO, socket or device)")
    if st.st_size == 0:
        raise _error(path, "unreadable", "empty file (0 bytes)")

    try:
        with open(path, "rb") as fh:
            return _decode(fh, path, max_pixels)
    except ImageError:
        raise
    except OSError as e:
        raise _error(path, "unreadable", os_reason(e)) from None


def decode_image_bytes(data: bytes, name: str = "<bytes>", max_pixels: int = 40_000_000) -> np.ndarray:
    """:func:`read_image` for a file's contents already in memory; errors name ``name``.

    The same decoder and conversions as :func:`read_image` (the tf.data pipeline's
    ``tripletface.data.images.decode_image`` calls it), so bytes and file give the same pixels.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer, received: {max_pixels!r}")
    import io

    data = bytes(data)
    if not data:
        raise _error(name, "unreadable", "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(fh, path, max_pixels: int) -> np.ndarray:
    """Decode the open binary stream ``fh`` (named ``path`` in errors); see :func:`read_image`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        try:
            img = Image.open(fh)
        except Image.DecompressionBombError as e:
            found = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{found.group(1)} pixels" if found else "image"
            raise _error(path, "too_large", f"{size} is over the limit of {max_pixels} pixels"
                         " (possible decompression bomb); not decoded") from None
        except UnidentifiedImageError:
            raise _error(path, "not_an_image", "not an image (unrecognised file format)") from None
        except _DECODER_ERRORS as e:  # Pillow's plugins raise these on a corrupt header
            raise _error(path, "unreadable", f"corrupt image header ({first_line(e)})") from None
        with img:
            width, height = img.size
            if width <= 0 or height <= 0:
                raise _error(path, "unreadable", f"image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise _error(path, "too_large",
                             f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels}"
                             " (possible decompression bomb); not decoded")
            try:
                img.load()
            except OSError as e:
                msg = first_line(e)
                if "truncated" in msg or "broken data stream" in msg:
                    raise _error(path, "truncated", f"truncated or corrupt image data ({msg})") from None
                raise _error(path, "unreadable", f"cannot decode {img.format or 'image'} data ({msg})") from None
            except _DECODER_ERRORS as e:
                raise _error(path, "unreadable",
                             f"cannot decode {img.format or 'image'} data ({first_line(e)})") from None
            try:
                upright = ImageOps.exif_transpose(img)
            except Exception:  # noqa: BLE001 - a corrupt EXIF block must not lose the photo
                upright = img
            return to_rgb_uint8(upright)
    except ImageError:
        raise
    except OSError as e:
        raise _error(path, "unreadable", os_reason(e)) from None
    except MemoryError:
        raise _error(path, "too_large", "not enough memory to decode it") from None
    except Exception as e:  # noqa: BLE001 - a decoder bug on one hostile file: that file is unusable, not the run
        raise _error(path, "unreadable", f"cannot decode ({type(e).__name__}: {first_line(e)})") from None


def to_rgb_uint8(img) -> np.ndarray:
    """Convert a loaded PIL image of any mode to ``uint8 (H, W, 3)`` RGB (see module table)."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img)
        if mode == "I" and arr.size and int(arr.max()) <= 255 and int(arr.min()) >= 0:
            grey = arr.astype(np.uint8)  # 32-bit container holding 8-bit data
        else:
            grey = np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        if finite.size and finite.max() <= 1.0 and finite.min() >= 0.0:
            arr = arr * 255.0
        grey = np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("L", "1"):
        grey = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
        if mode == "RGB":
            return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8).copy()
    # CMYK, YCbCr, LAB, HSV, RGBX, ...: Pillow's own conversion.
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def os_reason(e: OSError, missing: str = "file not found") -> str:
    """A short reason for an OSError met while reading an input; ``missing`` words ENOENT
    (a file found by listing a folder and then missing is a broken symlink)."""
    if e.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if e.errno == errno.EACCES:
        return "permission denied"
    if e.errno == errno.EISDIR:
        return "is a directory, not an image file"
    if e.errno == errno.ENOENT:
        return missing
    return e.strerror or first_line(e)


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
