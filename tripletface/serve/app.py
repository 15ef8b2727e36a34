"""The verification service: ``tripletface serve --model MODEL [--gallery G] [--host H --port P]``.

A FastAPI app (:func:`create_app`) over one :class:`~tripletface.inference.embedder.Embedder`:

* ``POST /verify``   -- two images (multipart ``image_a``, ``image_b``) -> distance, threshold, ``same``;
* ``POST /embed``    -- one image (``image``) -> its L2-normalised embedding;
* ``POST /identify`` -- one image -> the nearest gallery identities (needs ``--gallery``);
* ``GET /healthz``   -- model, gallery, limits and batching counters;
* ``GET /openapi.json``, ``/docs`` -- the OpenAPI spec and its browser view.

Images are photos (detected and aligned with the model's own settings, as ``tripletface
compare`` does) or, with the form field ``aligned=true``, aligned face crops of any size.

Input checks, cheapest first: the whole request body is capped (``max_request_bytes``,
413); each upload must start with the magic bytes of JPEG, PNG, WebP or BMP (415); its
header must declare at most ``max_pixels`` pixels (413) before any pixel is decoded; a
truncated or corrupt file is a 400. Every error is a JSON body
``{"error": {"status": ..., "message": ..., "field": ...}}`` with a 4xx code: 400 bad
image, 404 no gallery loaded, 413 too large, 415 not an image, 422 bad form field or no
face found (status ``no_face``/``too_small``).

Concurrency: requests are handled on the event loop; image decoding runs in worker
threads; the model (detector and embedder) is called from **one** dedicated thread, by
a :class:`MicroBatcher` that collects the images of concurrent requests for a few
milliseconds and runs them as one batch (one detector call, one embedding call). The
gallery is read-only after start-up and nothing else is shared between requests.

The service has no authentication: it listens on 127.0.0.1 by default; put it behind a
proxy that authenticates before exposing it.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time

import argparse
import asyncio
import io
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tripletface.errors import InputError, ModelError, first_line

__all__ = ["MAGIC", "DEFAULT_MAX_REQUEST_BYTES", "DEFAULT_MAX_PIXELS", "ServiceError", "sniff_format",
           "decode_upload", "MicroBatcher", "BodyLimit", "create_app", "add_arguments", "run"]

DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 25_000_000
MAX_TOP_K = 100

# Accepted image formats, told by their first bytes (before any decoder sees the data).
MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
)


class ServiceError(Exception):
    """A request the service refuses: HTTP ``code``, machine-readable ``status``, one-line ``message``."""

    def __init__(self, code: int, status: str, message: str, field: str | None = None):
        super().__init__(message)
        self.code = int(code)
        self.status = status
        self.message = message
        self.field = field

    def body(self) -> dict:
        return {"error": {"status": self.status, "message": self.message, "field": self.field}}


# --------------------------------------------------------------------------- image validation


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


# --------------------------------------------------------------------------- micro-batching


@dataclass
class _Job:
    image: np.ndarray
    aligned: bool
    field: str


@dataclass
class _Embedded:
    embedding: np.ndarray
    face: dict | None = None


@dataclass
class BatchStats:
    """Counters, updated on the event loop only."""

    requests: int = 0
    batches: int = 0
    largest_batch: int = 0
    images: int = 0

    def to_dict(self) -> dict:
        return {"requests": self.requests, "images": self.images, "batches": self.batches,
                "largest_batch": self.largest_batch,
                "mean_batch": round(self.images / self.batches, 3) if self.batches else 0.0}


class MicroBatcher:
    """Collects the jobs of concurrent requests and runs them as one batch on one thread.

    ``process(jobs) -> results`` (one result per job, in order; an exception instance as a
    result fails only that job) is only ever called from a single dedicated thread, so the
    objects it uses (the model, the detector) are never used by two threads at once. The
    first job of a batch waits ``window_ms`` for company; at most ``max_batch`` jobs go
    together (the jobs of one :meth:`submit` are never split). While a batch runs, new jobs
    queue and form the next one.

    The queue and the collecting task belong to the running event loop; they are (re)made
    on first use in a loop, so the batcher works under any ASGI server or test client.
    """

    def __init__(self, process, max_batch: int = 32, window_ms: float = 5.0):
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch <= 0:
            raise ValueError(f"max_batch must be a positive integer, received: {max_batch!r}")
        if not isinstance(window_ms, (int, float)) or not math.isfinite(window_ms) or window_ms < 0:
            raise ValueError(f"window_ms must be a finite number >= 0, received: {window_ms!r}")
        self._process = process
        self.max_batch = int(max_batch)
        self.window = float(window_ms) / 1000.0
        self._executor = None
        self._loop = None
        self._queue = None
        self._task = None
        self.stats = BatchStats()

    def _ensure_started(self):
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tripletface-model")
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._collect())
        return loop

    async def submit(self, jobs: list) -> list:
        """Queue ``jobs`` (kept together in one batch when they fit) and wait for their results."""
        loop = self._ensure_started()
        futures = [loop.create_future() for _ in jobs]
        self.stats.requests += 1
        self._queue.put_nowait(list(zip(jobs, futures)))
        return list(await asyncio.gather(*futures))

    async def _collect(self):
        queue = self._queue
        loop = asyncio.get_running_loop()
        carry = None  # a request that did not fit into the previous batch
        while True:
            batch = list(carry if carry is not None else await queue.get())
            carry = None
            if self.window and len(batch) < self.max_batch:
                await asyncio.sleep(self.window)  # let concurrent requests join
            while len(batch) < self.max_batch and not queue.empty():
                group = queue.get_nowait()
                if len(batch) + len(group) > self.max_batch:
                    carry = group
                    break
                batch.extend(group)
            batch = [(job, fut) for job, fut in batch if not fut.done()]  # a cancelled request drops out
            if not batch:
                continue
            self.stats.batches += 1
            self.stats.images += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            try:
                results = await loop.run_in_executor(self._executor, self._process, [job for job, _ in batch])
            except Exception as e:  # noqa: BLE001 - handed to every waiting request
                results = [e] * len(batch)
            for (_, fut), result in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def aclose(self):
        """Stop collecting and let the model thread go (a later request starts them again)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _embed_jobs(embedder, jobs: list) -> list:
    """The batch function (model thread only): detect+align the photos in one call, then embed
    every face in one call. One result per job: :class:`_Embedded` or a :class:`ServiceError`."""
    from tripletface.inference.embedder import resize_images

    results: list = [None] * len(jobs)
    faces: dict[int, tuple[np.ndarray, dict | None]] = {}
    photos = [i for i, job in enumerate(jobs) if not job.aligned]
    if photos:
        found = embedder.cropper.process([jobs[i].image for i in photos])
        for i, r in zip(photos, found):
            if r.ok:
                faces[i] = (r.aligned, {"box": r.box, "score": r.score, "landmarks": r.landmarks})
            else:
                results[i] = ServiceError(422, r.status, f"{jobs[i].field}: {r.reason or r.status}", jobs[i].field)
    for i, job in enumerate(jobs):
        if job.aligned:
            faces[i] = (job.image, None)
    if faces:
        order = sorted(faces)
        batch = np.stack([resize_images(faces[i][0][None], embedder.image_size)[0] for i in order])
        vectors = embedder.embed_aligned(batch)
        for k, i in enumerate(order):
            results[i] = _Embedded(vectors[k], faces[i][1])
    return results


# --------------------------------------------------------------------------- the app


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


def _schemas():
    """The pydantic models of the API (defined on first use: importing this module loads no FastAPI)."""
    from typing import Optional

    from pydantic import BaseModel, Field

    class ErrorBody(BaseModel):
        status: str = Field(description="machine-readable reason, e.g. not_an_image, too_large, no_face")
        message: str = Field(description="one line naming the form field and the reason")
        field: Optional[str] = Field(None, description="the form field at fault, if one")

    class ErrorResponse(BaseModel):
        error: ErrorBody

    class Face(BaseModel):
        box: list[float] = Field(description="x1, y1, x2, y2 in the uploaded image's pixels")
        score: float
        landmarks: list[list[float]] = Field(description="5 (x, y): eyes, nose tip, mouth corners")

    class EmbedResponse(BaseModel):
        embedding: list[float] = Field(description="L2-normalised embedding")
        dim: int
        model_fingerprint: str
        face: Optional[Face] = Field(None, description="the detected face (null for aligned input)")

    class VerifyResponse(BaseModel):
        same: bool = Field(description="distance < threshold")
        distance: float = Field(description="Euclidean distance between the L2-normalised embeddings, in [0, 2]")
        threshold: float
        threshold_source: str
        metric: str
        face_a: Optional[Face] = None
        face_b: Optional[Face] = None

    class Match(BaseModel):
        identity: str
        distance: float
        match: bool

    class IdentifyResponse(BaseModel):
        identity: str = Field(description="the nearest identity when under the threshold, else 'unknown'")
        distance: Optional[float] = None
        threshold: float
        threshold_source: str
        metric: str
        matches: list[Match]
        gallery_size: int
        gallery_identities: int
        face: Optional[Face] = None

    class GalleryInfo(BaseModel):
        path: str
        size: int
        identities: int

    class Health(BaseModel):
        status: str
        model: str
        model_fingerprint: str
        dim: int
        image_size: list[int]
        threshold: Optional[float] = None
        aligns_photos: bool
        gallery: Optional[GalleryInfo] = None
        limits: dict[str, float]
        batching: dict[str, float]

    return {k: v for k, v in locals().items() if isinstance(v, type)}


def create_app(embedder, gallery=None, *, gallery_path=None, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_batch: int = 32, batch_window_ms: float = 5.0):
    """The FastAPI app serving ``embedder`` (and ``gallery`` for ``/identify``).

    Args:
        embedder: a loaded :class:`~tripletface.inference.embedder.Embedder`.
        gallery: a :class:`~tripletface.inference.gallery.Gallery` (or a gallery file path) built by this
            model, or None (``/identify`` then answers 404).
        gallery_path: shown in ``/healthz`` when ``gallery`` is an object.
        max_request_bytes: cap on a whole request body (413 over it).
        max_pixels: cap on an image's width x height, read from its header (413 over it).
        max_batch: most images per model call.
        batch_window_ms: how long the first image of a batch waits for others.
    """
    for name, value in (("max_request_bytes", max_request_bytes), ("max_pixels", max_pixels)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, received: {value!r}")
    from typing import Annotated

    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from tripletface import __version__
    from tripletface.inference import gallery as G
    from tripletface.inference.embedder import distance

    S = _schemas()
    if gallery is not None and not isinstance(gallery, G.Gallery):
        gallery_path = G.gallery_path(gallery)
        gallery = G.load_gallery(gallery_path)
    if gallery is not None:
        G.check_model(gallery, embedder, gallery_path or "gallery")
    stored_threshold = embedder.threshold  # a ModelError now, not per request, for a broken one
    alignment = embedder.metadata.get("alignment")
    aligns_photos = isinstance(alignment, dict) and bool(alignment)
    batcher = MicroBatcher(lambda jobs: _embed_jobs(embedder, jobs), max_batch=max_batch, window_ms=batch_window_ms)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.aclose()

    errors = {code: {"model": S["ErrorResponse"], "description": text} for code, text in (
        (400, "unreadable, empty or truncated image; malformed request"),
        (404, "no gallery loaded (identify)"),
        (413, "request body or image over the limits"),
        (415, "upload is not a JPEG, PNG, WebP or BMP image"),
        (422, "bad or missing form field; no usable face in an image"))}
    app = FastAPI(title="tripletface", version=__version__, lifespan=lifespan,
                  description="Face verification, embedding and identification with a tripletface model. "
                              "Upload photos (detected and aligned here) or aligned crops (aligned=true).")
    app.state.batcher = batcher

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return JSONResponse(exc.body(), status_code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query")]
        where = ".".join(loc) or None
        msg = f"{where or 'request'}: {first.get('msg', 'invalid value')}"
        return JSONResponse(ServiceError(422, "invalid_field", msg, where).body(), status_code=422)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        # still logged by the server; the client gets a JSON body like every other error
        msg = str(exc) if isinstance(exc, ModelError) else f"internal error ({type(exc).__name__})"
        return JSONResponse(ServiceError(500, "internal", msg).body(), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        status = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return JSONResponse(ServiceError(exc.status_code, status, str(exc.detail)).body(), status_code=exc.status_code)

    async def _read(upload, name: str) -> np.ndarray:
        data = await upload.read(max_request_bytes + 1)
        return await run_in_threadpool(decode_upload, data, max_pixels, name)

    def _check_aligned_allowed(aligned: bool, field: str):
        if not aligned and not aligns_photos:
            raise ServiceError(422, "no_alignment", f"{field}: this model stores no alignment settings, so photos "
                                                    "cannot be aligned as in training; send aligned crops with "
                                                    "aligned=true", field)

    def _threshold(value: float | None) -> tuple[float, str]:
        if value is not None:
            return float(value), "request"
        if stored_threshold is None:
            raise ServiceError(422, "no_threshold", "threshold: the model has no stored decision threshold; "
                                                    "pass threshold or calibrate the model", "threshold")
        return stored_threshold, str(embedder.metadata.get("threshold_source") or "stored in the model")

    async def _embed(pairs: list[tuple[str, np.ndarray]], aligned: bool) -> list:
        results = await batcher.submit([_Job(img, aligned, name) for name, img in pairs])
        for r in results:
            if not np.all(np.isfinite(r.embedding)):
                raise ModelError(f"{embedder.name}: the model produced non-finite embeddings")
        return results

    Threshold = Annotated[float | None, Form(ge=0.0, le=4.0, description="decision threshold on the distance "
                                                                          "(default: the model's)")]
    Aligned = Annotated[bool, Form(description="the images are aligned face crops: skip detection")]
    Image = Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP")]

    @app.get("/healthz", response_model=S["Health"], summary="liveness, model and gallery information")
    async def healthz():
        g = None
        if gallery is not None:
            g = {"path": str(gallery_path or ""), "size": len(gallery), "identities": len(gallery.identities)}
        return {"status": "ok", "model": embedder.name, "model_fingerprint": embedder.fingerprint,
                "dim": embedder.dim, "image_size": list(embedder.image_size), "threshold": stored_threshold,
                "aligns_photos": aligns_photos, "gallery": g,
                "limits": {"max_request_bytes": max_request_bytes, "max_pixels": max_pixels,
                           "max_batch": batcher.max_batch, "batch_window_ms": batcher.window * 1000.0},
                "batching": batcher.stats.to_dict()}

    @app.post("/embed", response_model=S["EmbedResponse"], responses=errors, summary="embed one face")
    async def embed(image: Image, aligned: Aligned = False):
        _check_aligned_allowed(aligned, "image")
        (r,) = await _embed([("image", await _read(image, "image"))], aligned)
        return {"embedding": [float(v) for v in r.embedding], "dim": embedder.dim,
                "model_fingerprint": embedder.fingerprint, "face": r.face}

    @app.post("/verify", response_model=S["VerifyResponse"], responses=errors,
              summary="are two faces the same person?")
    async def verify(image_a: Image, image_b: Image, aligned: Aligned = False, threshold: Threshold = None):
        _check_aligned_allowed(aligned, "image_a")
        t, source = _threshold(threshold)
        a = await _read(image_a, "image_a")
        b = await _read(image_b, "image_b")
        ra, rb = await _embed([("image_a", a), ("image_b", b)], aligned)
        d = float(distance(ra.embedding, rb.embedding))
        return {"same": bool(d < t), "distance": d, "threshold": t, "threshold_source": source,
                "metric": "euclidean", "face_a": ra.face, "face_b": rb.face}

    @app.post("/identify", response_model=S["IdentifyResponse"], responses=errors,
              summary="nearest identities in the gallery")
    async def identify(image: Image, aligned: Aligned = False, threshold: Threshold = None,
                       top_k: Annotated[int, Form(ge=1, le=MAX_TOP_K)] = 5):
        if gallery is None:
            raise ServiceError(404, "no_gallery", "no gallery loaded: start the service with --gallery G")
        _check_aligned_allowed(aligned, "image")
        if threshold is None and gallery.meta.get("threshold") is not None:  # calibrated for 1:N search
            t, source = G.search_threshold(gallery, embedder)
        else:
            t, source = _threshold(threshold)
        (r,) = await _embed([("image", await _read(image, "image"))], aligned)
        matches = G.nearest_identities(gallery, r.embedding, top_k)
        best = matches[0] if matches else None
        return {"identity": best[0] if best is not None and best[1] < t else "unknown",
                "distance": None if best is None else best[1], "threshold": t, "threshold_source": source,
                "metric": "euclidean",
                "matches": [{"identity": n, "distance": d, "match": bool(d < t)} for n, d in matches],
                "gallery_size": len(gallery), "gallery_identities": len(gallery.identities), "face": r.face}

    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    return app


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.main import number

    parser.add_argument("--model", default=None, help="a .keras model (default: the bundled model)")
    parser.add_argument("--gallery", default=None, help="gallery file for /identify (built by this model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                                                             "machine only; the service has no authentication)")
    parser.add_argument("--port", type=number(int, 1, 65535), default=8000, help="port (default 8000)")
    parser.add_argument("--max-request-mb", type=number(float, 0, lo_open=True),
                        default=DEFAULT_MAX_REQUEST_BYTES / 2**20, help="largest request body in MiB (default 10)")
    parser.add_argument("--max-pixels", type=number(int, 1), default=DEFAULT_MAX_PIXELS,
                        help=f"largest image, width x height (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--max-batch", type=number(int, 1), default=32, help="most images per model call (default 32)")
    parser.add_argument("--batch-window-ms", type=number(float, 0), default=5.0,
                        help="how long an image waits for others to batch with (default 5 ms)")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1..65535, received: {args.port}")
    if not (args.max_request_mb > 0 and math.isfinite(args.max_request_mb)):
        raise InputError(f"--max-request-mb must be > 0, received: {args.max_request_mb}")
    for name in ("max_pixels", "max_batch"):
        if getattr(args, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be > 0, received: {getattr(args, name)}")
    if not (args.batch_window_ms >= 0 and math.isfinite(args.batch_window_ms)):
        raise InputError(f"--batch-window-ms must be >= 0, received: {args.batch_window_ms}")
    try:
        import uvicorn
    except ImportError:
        raise InputError("the service needs FastAPI and uvicorn: pip install 'tripletface[serve]'") from None
    from tripletface.inference import gallery as G
    from tripletface.inference.embedder import Embedder

    loaded = None
    if args.gallery:
        loaded = G.load_gallery(G.gallery_path(args.gallery))  # a broken gallery fails before the model loads
    embedder = Embedder.load(args.model)
    app = create_app(embedder, loaded, gallery_path=G.gallery_path(args.gallery) if args.gallery else None,
                     max_request_bytes=int(args.max_request_mb * 2**20), max_pixels=args.max_pixels,
                     max_batch=args.max_batch, batch_window_ms=args.batch_window_ms)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: the service has no authentication; put it behind an "
              "authenticating proxy", file=sys.stderr)
    print(f"serving {embedder.name} on http://{args.host}:{args.port} (OpenAPI: /openapi.json, docs: /docs)",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
