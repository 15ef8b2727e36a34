"""The verification service under load on 127.0.0.1: requests/second, p50/p99 latency, batch sizes.

Starts ``tripletface.serve.app.create_app`` under uvicorn on a free loopback port (in this process)
and sends ``/verify`` requests with two images each, ``--concurrency`` at a time: aligned crops
(``aligned=true``: the embedding model only) and raw photos (MTCNN detection + alignment too).
Every answer must be a 200; the script exits 1 otherwise.

    python benchmarks/bench_serve.py --model ../runs/exp/demo_f1/model.keras
    python benchmarks/bench_serve.py --model M --requests 400 --concurrency 16 --json serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, bodies: list[bytes], n: int, concurrency: int, aligned: bool) -> dict:
    import httpx

    latencies, codes = [], []
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        async def one(i):
            async with sem:
                t = time.perf_counter()
                r = await client.post("/verify", data={"aligned": "true" if aligned else "false"},
                                      files={"image_a": ("a", bodies[i % len(bodies)]),
                                             "image_b": ("b", bodies[(i + 7) % len(bodies)])})
                latencies.append(time.perf_counter() - t)
                codes.append(r.status_code)

        t0 = time.perf_counter()
        await asyncio.gather(*[one(i) for i in range(n)])
        wall = time.perf_counter() - t0
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    return {"requests": n, "concurrency": concurrency, "req_per_s": n / wall, "p50_ms": float(p50),
            "p99_ms": float(p99), "errors": sum(c != 200 for c in codes)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a tripletface .keras model (with alignment settings "
                                                        "for the photo runs)")
    parser.add_argument("--crops", default=str(common.default_crops()), help="aligned crops DIR/<name>/*.png")
    parser.add_argument("--photos", default=str(common.data_root() / "lfw-dev"), help="raw photos DIR/<name>/*.jpg")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    common.quiet_tensorflow()
    import httpx
    import uvicorn

    from tripletface.inference.embedder import Embedder
    from tripletface.serve.app import create_app

    embedder = Embedder.load(args.model)
    app = create_app(embedder)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    runs = [("aligned crops", True, sorted(Path(args.crops).glob("*/*.png"))[:64]),
            ("raw photos", False, sorted(Path(args.photos).glob("*/*.jpg"))[:64])]
    rows, results = [], []
    try:
        for name, aligned, files in runs:
            if not files:
                print(f"skipped {name}: no files", file=sys.stderr)
                continue
            bodies = [f.read_bytes() for f in files]
            asyncio.run(load(url, bodies, 8, 2, aligned))  # warm-up: tracing, detector load
            before = httpx.get(f"{url}/healthz").json()["batching"]
            r = asyncio.run(load(url, bodies, args.requests, args.concurrency, aligned))
            after = httpx.get(f"{url}/healthz").json()["batching"]
            r["mean_batch"] = (after["images"] - before["images"]) / max(1, after["batches"] - before["batches"])
            r["input"] = name
            results.append(r)
            rows.append([name, r["requests"], r["concurrency"], common.fmt(r["req_per_s"]), common.fmt(r["p50_ms"]),
                         common.fmt(r["p99_ms"]), common.fmt(r["mean_batch"], ".2f"), r["errors"]])
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    common.print_table(["/verify input", "requests", "concurrency", "req/s", "p50 ms", "p99 ms", "mean batch",
                        "errors"], rows)
    print(f"load average: {common.load_average()}")
    if args.json:
        common.write_json(args.json, {"model": args.model, "machine": common.machine_info(), "results": results})
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
