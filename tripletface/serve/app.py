"""The verification service's HTTP app: :func:`create_app` (run by ``tripletface serve``,
:mod:`tripletface.cli.serve`).

A FastAPI app over one :class:`~tripletface.inference.embedder.Embedder`:

* ``POST /verify``   -- two images (multipart ``image_a``, ``image_b``) -> distance, threshold, ``same``;
* ``POST /embed``    -- one image (``image``) -> its L2-normalised embedding;
* ``POST /identify`` -- one image -> the nearest gallery identities (needs ``--gallery``);
* ``GET /healthz``   -- model, gallery, limits and batching counters;
* ``GET /openapi.json``, ``/docs`` -- the OpenAPI spec and its browser view.

Images are photos (detected and aligned with the model's own settings, as ``tripletface
compare`` does) or, with the form field ``aligned=true``, aligned face crops of any size.

Input checks, cheapest first (:mod:`tripletface.serve.uploads`): the whole request body is capped
(``max_request_bytes``, 413); each upload must start with the magic bytes of JPEG, PNG, WebP or
BMP (415); its header must declare at most ``max_pixels`` pixels (413) before any pixel is
decoded; a truncated or corrupt file is a 400. Every error is a JSON body
``{"error": {"status": ..., "message": ..., "field": ...}}`` (:class:`~tripletface.serve.errors.ServiceError`)
with a 4xx code: 400 bad image, 404 no gallery loaded, 413 too large, 415 not an image, 422 bad
form field or no face found (status ``no_face``/``too_small``).

Concurrency: requests are handled on the event loop; image decoding runs in worker
threads; the model (detector and embedder) is called from **one** dedicated thread, by
a :class:`~tripletface.serve.batcher.MicroBatcher` that collects the images of concurrent
requests for a few milliseconds and runs them as one batch (one detector call, one embedding
call). The gallery is read-only after start-up and nothing else is shared between requests.

The service has no authentication: it listens on 127.0.0.1 by default; put it behind a
proxy that authenticates before exposing it.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time

import numpy as np

from tripletface.errors import ModelError
from tripletface.serve.batcher import Job, MicroBatcher, embed_jobs
from tripletface.serve.errors import ServiceError
from tripletface.serve.uploads import DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_BYTES, BodyLimit, decode_upload

__all__ = ["create_app", "MAX_TOP_K"]

MAX_TOP_K = 100


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
    from tripletface.inference.matching import distance
    from tripletface.inference.open_set import search_threshold
    from tripletface.inference.search import nearest_identities

    S = _schemas()
    if gallery is not None and not isinstance(gallery, G.Gallery):
        gallery_path = G.gallery_path(gallery)
        gallery = G.load_gallery(gallery_path)
    if gallery is not None:
        G.check_model(gallery, embedder, gallery_path or "gallery")
    stored_threshold = embedder.threshold  # a ModelError now, not per request, for a broken one
    alignment = embedder.metadata.get("alignment")
    aligns_photos = isinstance(alignment, dict) and bool(alignment)
    batcher = MicroBatcher(lambda jobs: embed_jobs(embedder, jobs), max_batch=max_batch, window_ms=batch_window_ms)

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
        results = await batcher.submit([Job(img, aligned, name) for name, img in pairs])
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
            t, source = search_threshold(gallery, embedder)
        else:
            t, source = _threshold(threshold)
        (r,) = await _embed([("image", await _read(image, "image"))], aligned)
        matches = nearest_identities(gallery, r.embedding, top_k)
        best = matches[0] if matches else None
        return {"identity": best[0] if best is not None and best[1] < t else "unknown",
                "distance": None if best is None else best[1], "threshold": t, "threshold_source": source,
                "metric": "euclidean",
                "matches": [{"identity": n, "distance": d, "match": bool(d < t)} for n, d in matches],
                "gallery_size": len(gallery), "gallery_identities": len(gallery.identities), "face": r.face}

    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    return app
