"""``tripletface serve``: the HTTP verification service (FastAPI under uvicorn).

Flags only; the app is :func:`tripletface.serve.app.create_app` (its module doc lists the
endpoints, limits and errors).

Example::

    tripletface serve --model model.keras --gallery staff.npz --port 8000
"""

from __future__ import annotations

import argparse
import math
import sys

from tripletface.errors import InputError
from tripletface.serve.uploads import DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_BYTES

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.flags import number

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
    from tripletface.serve.app import create_app

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
