"""What a client may send, checked cheapest first, before any pixel is decoded.

The whole request body is capped (:class:`BodyLimit`, ``max_request_bytes``, 413); each upload
must start with the magic bytes of JPEG, PNG, WebP or BMP (:func:`sniff_format`, 415); its
header must declare at most ``max_pixels`` pixels (413) before any pixel is decoded; a
truncated or corrupt file is a 400 (:func:`decode_upload`). Each refusal is a
:class:`~tripletface.serve.errors.ServiceError`.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

from tripletface.errors import first_line
from tripletface.serve.errors import ServiceError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MAGIC", "DEFAULT_MAX_REQUEST_BYTES", "DEFAULT_MAX_PIXELS", "sniff_format", "decode_upload", "BodyLimit"]

DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 25_000_000

# Accepted image formats, told by their first bytes (before any decoder sees the data).
MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
)


def sniff_format(data: bytes) -> str | None:
    """``"JPEG"``, ``"PNG"``, ``"WEBP"`` or ``"BMP"`` from the magic bytes, else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in MAGIC:
        if data.startswith(magic):
            return name
    return None


def decode_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, field: str = "image") -> np.ndarray:
    """Validate, then decode an uploaded image into ``uint8 (H, W, 3)`` RGB, upright.

    Order: non-empty, magic bytes, header size against ``max_pixels`` (nothing decoded yet),
    then the pixels (:func:`tripletface.data.decode.to_rgb_uint8`: the same conversions as every
    file the CLI reads). Raises :class:`ServiceError` (415, 413 or 400) naming ``field``.
    """
    if not data:
        raise ServiceError(400, "unreadable", f"{field}: empty file (0 bytes)", field)
    kind = sniff_format(data)
    if kind is None:
        raise ServiceError(415, "not_an_image", f"{field}: not a JPEG, PNG, WebP or BMP image (unrecognised "
                                                f"leading bytes {data[:8].hex()})", field)
    import warnings

    from PIL import Image, ImageOps

    from tripletface.data.decode import to_rgb_uint8

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=[kind])
        except Image.DecompressionBombError:
            raise ServiceError(413, "too_large", f"{field}: over the limit of {max_pixels} pixels; not decoded",
                               field) from None
        except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for a bad header
            raise ServiceError(400, "unreadable", f"{field}: unreadable {kind} header ({first_line(e, 200)})",
                               field) from None
        with img:
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ServiceError(400, "unreadable", f"{field}: image has no pixels ({w}x{h})", field)
            if w * h > max_pixels:
                raise ServiceError(413, "too_large", f"{field}: {w}x{h} = {w * h} pixels is over the limit of "
                                                     f"{max_pixels}; not decoded", field)
            try:
                img.load()
            except Exception as e:  # noqa: BLE001 - truncated, corrupt or unsupported data
                msg = first_line(e, 200)
                status = "truncated" if "truncated" in msg or "broken data stream" in msg else "unreadable"
                raise ServiceError(400, status, f"{field}: truncated or corrupt {kind} data ({msg})", field) from None
            try:
                upright = ImageOps.exif_transpose(img)
            except Exception:  # noqa: BLE001 - a corrupt EXIF block must not lose the photo
                upright = img
            try:
                return to_rgb_uint8(upright)
            except Exception as e:  # noqa: BLE001 - an exotic mode Pillow cannot convert
                raise ServiceError(400, "unreadable", f"{field}: cannot convert {img.mode} pixels ({first_line(e, 200)})",
                                   field) from None


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413 JSON answer, whether it
    declares its length or streams it (the count is kept as the body is read; the app sees
    the body end there, and whatever it answers is replaced by the 413)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    def _too_large(self, size: int | None = None) -> ServiceError:
        what = f"request body of {size} bytes" if size is not None else "request body"
        return ServiceError(413, "too_large", f"{what} is over the limit of {self.max_bytes} bytes")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                return await _send_error(send, ServiceError(400, "bad_request", "invalid Content-Length header"))
            if size > self.max_bytes:
                return await _send_error(send, self._too_large(size))
        state = {"received": 0, "over": False, "answered": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["over"] = True
                    return {"type": "http.disconnect"}  # stop reading here
            return message

        async def guarded_send(message):
            if not state["over"]:
                await send(message)
            elif not state["answered"]:
                state["answered"] = True
                await _send_error(send, self._too_large())

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["answered"]:
            state["answered"] = True
            await _send_error(send, self._too_large())


async def _send_error(send, err: ServiceError):
    body = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
