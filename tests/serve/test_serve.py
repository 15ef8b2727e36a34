"""The verification service: answers on real faces, clean 4xx errors, micro-batching, a schema-driven
fuzz run (schemathesis) and a bounded load test on 127.0.0.1."""

import asyncio
import json
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pytest

from deploy_support import THRESHOLD, align_photos, jpeg_bytes, lfw_photos, make_face_model, png_bytes

pytest.importorskip("fastapi", reason="the service needs fastapi (pip install 'tripletface[serve]')")
# Starlette 1.x asks for httpx2 in its TestClient (a UserWarning); httpx still works
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


@pytest.fixture(scope="module")
def real(lfw_dir):
    """LFW photos of 4 people (two each) and their crops aligned by tripletface's cropper."""
    paths, aligned = align_photos(lfw_photos(lfw_dir, 4))
    if len(aligned) < 8:
        pytest.skip(f"only {len(aligned)} of 8 LFW photos gave a face")
    return {"paths": paths, "faces": aligned, "names": [p.parent.name for p in paths]}


@pytest.fixture(scope="module")
def embedder(real, tmp_path_factory):
    from tripletface.inference.embedder import Embedder

    return Embedder.load(str(make_face_model(tmp_path_factory.mktemp("serve") / "model.keras", real["faces"])))


@pytest.fixture(scope="module")
def gallery(real, embedder):
    """The first photo of each person enrolled (aligned crops); the second photos are the queries."""
    from tripletface.inference.gallery import Gallery

    g = Gallery.new(embedder)
    first = list(range(0, 8, 2))
    g.add([f"{real['names'][i]}/0" for i in first], [real["names"][i] for i in first],
          embedder.embed_aligned(real["faces"][first]))
    return g


@pytest.fixture(scope="module")
def client(embedder, gallery):
    from fastapi.testclient import TestClient

    from tripletface.serve.app import create_app

    with TestClient(create_app(embedder, gallery, max_request_bytes=2_000_000, max_pixels=4_000_000)) as c:
        yield c


def _png(face):
    return ("face.png", png_bytes(face), "image/png")


def _error(r, code, status, field=None):
    assert r.status_code == code, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["status"] == status, body
    if field is not None:
        assert body["error"]["field"] == field and body["error"]["message"].startswith(field), body
    return body["error"]["message"]


# --------------------------------------------------------------------------- answers


def test_healthz_and_openapi(client, embedder):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["dim"] == 16 and h["image_size"] == [64, 64]
    assert h["model_fingerprint"] == embedder.fingerprint and h["threshold"] == THRESHOLD
    assert h["gallery"]["size"] == 4 and h["gallery"]["identities"] == 4 and h["aligns_photos"] is True
    spec = client.get("/openapi.json").json()
    assert {"/verify", "/embed", "/identify", "/healthz"} <= set(spec["paths"])
    verify = spec["paths"]["/verify"]["post"]
    assert {"200", "400", "413", "415", "422"} <= set(verify["responses"])
    form = verify["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form  # two files and the optional fields are described


def test_embed_aligned_crop_and_raw_photo_match_the_embedder(client, embedder, real):
    r = client.post("/embed", files={"image": _png(real["faces"][0])}, data={"aligned": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == 16 and body["face"] is None
    np.testing.assert_allclose(body["embedding"], embedder.embed_aligned(real["faces"][:1])[0], atol=1e-5)
    # a raw LFW photo: detected and aligned here exactly as `tripletface embed` does
    photo = real["paths"][1]
    r = client.post("/embed", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    ref, failures = embedder.embed_files([photo])
    assert not failures
    np.testing.assert_allclose(body["embedding"], ref[0], atol=1e-5)
    assert len(body["face"]["landmarks"]) == 5 and body["face"]["score"] > 0.9


def test_verify_same_and_different_people(client, embedder, real):
    from tripletface.inference.matching import distance

    emb = embedder.embed_aligned(real["faces"])
    for a, b in ((0, 1), (0, 2), (4, 7)):
        r = client.post("/verify", files={"image_a": _png(real["faces"][a]), "image_b": _png(real["faces"][b])},
                        data={"aligned": "true"})
        assert r.status_code == 200, r.text
        body = r.json()
        d = float(distance(emb[a], emb[b]))
        assert body["distance"] == pytest.approx(d, abs=1e-5)
        assert body["same"] is (d < THRESHOLD) and body["threshold_source"] == "stored in the model"
    # a threshold in the request wins; the verdict follows it
    r = client.post("/verify", files={"image_a": _png(real["faces"][0]), "image_b": _png(real["faces"][2])},
                    data={"aligned": "true", "threshold": "0"})
    assert r.json()["same"] is False and r.json()["threshold_source"] == "request"
    r = client.post("/verify", files={"image_a": _png(real["faces"][0]), "image_b": _png(real["faces"][2])},
                    data={"aligned": "true", "threshold": "2.5"})
    assert r.json()["same"] is True and r.json()["threshold"] == 2.5


def test_identify_finds_the_nearest_enrolled_person(client, embedder, gallery, real):
    from tripletface.inference.search import nearest_identities

    for q in (1, 3, 5, 7):
        r = client.post("/identify", files={"image": _png(real["faces"][q])}, data={"aligned": "true", "top_k": "3"})
        assert r.status_code == 200, r.text
        body = r.json()
        ref = nearest_identities(gallery, embedder.embed_aligned(real["faces"][q:q + 1])[0], 3)
        assert [m["identity"] for m in body["matches"]] == [n for n, _ in ref]
        assert [m["distance"] for m in body["matches"]] == pytest.approx([d for _, d in ref], abs=1e-5)
        assert body["identity"] == (ref[0][0] if ref[0][1] < THRESHOLD else "unknown")
        assert body["gallery_size"] == 4 and len(body["matches"]) == 3


# --------------------------------------------------------------------------- bad input


def _png_header_only(width, height):
    """A PNG whose header claims width x height, with one tiny (wrong) data chunk: nothing to decode."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_bad_images_get_clear_4xx_json_errors(client, real):
    good = _png(real["faces"][0])
    post = lambda b: client.post("/verify", files={"image_a": good, "image_b": ("b.png", b, "image/png")},  # noqa
                                 data={"aligned": "true"})
    assert "not a JPEG, PNG, WebP or BMP" in _error(post(b"GIF89a not allowed"), 415, "not_an_image", "image_b")
    assert "empty file" in _error(post(b""), 400, "unreadable", "image_b")
    full = png_bytes(real["faces"][1])
    _error(post(full[: len(full) // 2]), 400, "truncated", "image_b")
    big = _png_header_only(3000, 3000)  # 9 Mpx claimed in 80 bytes: refused from the header
    assert "over the limit of 4000000" in _error(post(big), 413, "too_large", "image_b")
    # a photo without a face is never answered same/different
    grey = ("grey.jpg", jpeg_bytes(np.full((160, 160, 3), 128, np.uint8)), "image/jpeg")
    r = client.post("/verify", files={"image_a": good, "image_b": grey})
    _error(r, 422, "no_face", "image_b")


def test_bad_requests_get_clear_4xx_json_errors(client, real):
    good = _png(real["faces"][0])
    assert "Field required" in _error(client.post("/verify", files={"image_a": good}), 422, "invalid_field",
                                      "image_b")
    _error(client.post("/embed", files={"image": good}, data={"aligned": "perhaps"}), 422, "invalid_field",
           "aligned")
    _error(client.post("/identify", files={"image": good}, data={"aligned": "true", "top_k": "0"}), 422,
           "invalid_field", "top_k")
    _error(client.post("/verify", files={"image_a": good, "image_b": good}, data={"threshold": "-1"}), 422,
           "invalid_field", "threshold")
    _error(client.get("/nothing-here"), 404, "not_found")
    _error(client.get("/verify"), 405, "method_not_allowed")
    _error(client.post("/embed", content=b"x" * 2_100_000, headers={"content-type": "application/octet-stream"}),
           413, "too_large")

    def stream():  # no Content-Length: the limit is counted as the body arrives
        for _ in range(40):
            yield b"y" * 100_000

    _error(client.post("/embed", content=stream(), headers={"content-type": "multipart/form-data; boundary=x"}),
           413, "too_large")


def test_missing_gallery_threshold_and_alignment_are_4xx(real, tmp_path):
    from fastapi.testclient import TestClient

    from tripletface.inference.embedder import Embedder
    from tripletface.serve.app import create_app

    bare = Embedder.load(str(make_face_model(tmp_path / "bare.keras", real["faces"][:4], threshold=None,
                                             alignment=False)))
    with TestClient(create_app(bare)) as c:
        good = _png(real["faces"][0])
        assert c.get("/healthz").json()["gallery"] is None
        _error(c.post("/identify", files={"image": good}, data={"aligned": "true"}), 404, "no_gallery")
        _error(c.post("/verify", files={"image_a": good, "image_b": good}, data={"aligned": "true"}), 422,
               "no_threshold", "threshold")
        _error(c.post("/embed", files={"image": good}), 422, "no_alignment", "image")
        r = c.post("/verify", files={"image_a": good, "image_b": good}, data={"aligned": "true", "threshold": "1"})
        assert r.status_code == 200 and r.json()["distance"] == pytest.approx(0.0, abs=1e-6)


def test_a_gallery_of_another_model_is_refused(real, embedder, gallery, tmp_path):
    from tripletface.inference.embedder import Embedder
    from tripletface.errors import ModelError
    from tripletface.serve.app import create_app

    other = Embedder.load(str(make_face_model(tmp_path / "other.keras", real["faces"][::-1])))
    assert other.fingerprint != embedder.fingerprint
    with pytest.raises(ModelError, match="built by another model"):
        create_app(other, gallery)


# --------------------------------------------------------------------------- batching


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(embedder, real):
    import httpx

    from tripletface.serve.app import create_app

    app = create_app(embedder, batch_window_ms=30.0, max_batch=16)
    ref = embedder.embed_aligned(real["faces"])

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await asyncio.gather(*[c.post("/embed", files={"image": _png(f)}, data={"aligned": "true"})
                                          for f in real["faces"]])

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 8
    got = np.array([r.json()["embedding"] for r in responses])
    np.testing.assert_allclose(got, ref, atol=1e-5)  # in a batch of 8, each request gets its own row
    stats = app.state.batcher.stats
    assert stats.images == 8 and stats.batches < 8 and stats.largest_batch >= 2, stats


def test_micro_batcher_checks_arguments_and_fails_one_job_only():
    from tripletface.serve.batcher import MicroBatcher
    from tripletface.serve.errors import ServiceError

    with pytest.raises(ValueError, match="max_batch must be a positive integer, received: 0"):
        MicroBatcher(lambda jobs: jobs, max_batch=0)
    with pytest.raises(ValueError, match="window_ms"):
        MicroBatcher(lambda jobs: jobs, window_ms=-1)

    def process(jobs):
        return [ServiceError(422, "odd", "odd") if j % 2 else j * 10 for j in jobs]

    batcher = MicroBatcher(process, max_batch=4, window_ms=20)

    async def main():
        return await asyncio.gather(*[batcher.submit([j]) for j in range(6)], return_exceptions=True)

    out = asyncio.run(main())
    assert out[0] == [0] and out[2] == [20] and out[4] == [40]
    assert all(isinstance(out[j], ServiceError) for j in (1, 3, 5))
    assert batcher.stats.batches == 2 and batcher.stats.largest_batch == 4
    # closed (server shutdown), then used again in a new event loop: it starts afresh
    asyncio.run(batcher.aclose())
    again = asyncio.run(main())
    assert again[4] == [40] and batcher.stats.batches == 4
    # a batch function that fails fails every request of that batch, with its exception
    broken = MicroBatcher(lambda jobs: 1 / 0, window_ms=0)
    with pytest.raises(ZeroDivisionError):
        asyncio.run(broken.submit([1]))


# --------------------------------------------------------------------------- schema-driven fuzzing


def test_schemathesis_fuzz_run_finds_no_server_errors_or_schema_violations(embedder, gallery, real):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    from tripletface.serve.app import create_app

    app = create_app(embedder, gallery, max_request_bytes=200_000, max_pixels=1_000_000)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # positive_data_acceptance expects every schema-valid request to succeed; a binary field cannot say
    # "a decodable image of a face", so random bytes are (rightly) answered 415/422
    excluded = [schemathesis.checks.positive_data_acceptance]
    face = png_bytes(real["faces"][0])
    codes = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        # two passes: the generated data as it is (random bytes as images), then with a real aligned face
        # in every file field (the other generated fields kept), so the 200 answers are checked as well
        for with_face in (False, True):
            @settings(max_examples=20 if not with_face else 8, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def fuzz(case):
                if with_face and isinstance(case.body, dict):
                    for name in ("image", "image_a", "image_b"):
                        if name in case.body:
                            case.body[name] = face
                response = case.call_and_validate(excluded_checks=excluded)
                assert response.status_code < 500
                codes.setdefault(operation.label, []).append(response.status_code)

            fuzz()
    assert set(codes) == {"GET /healthz", "POST /embed", "POST /verify", "POST /identify"}
    for label in ("POST /embed", "POST /verify", "POST /identify"):  # rejected and answered, each
        assert 200 in codes[label] and any(400 <= c < 500 for c in codes[label]), (label, codes[label])


# --------------------------------------------------------------------------- load test


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_load_on_loopback_no_errors(embedder, gallery, real, capsys):
    import httpx
    import uvicorn

    from tripletface.serve.app import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(embedder, gallery), host="127.0.0.1", port=port,
                                           log_level="warning", log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline and thread.is_alive():
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    bodies = [png_bytes(f) for f in real["faces"]]
    n, concurrency = 120, 6
    try:
        async def main():
            latencies, codes = [], []
            sem = asyncio.Semaphore(concurrency)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
                async def one(i):
                    async with sem:
                        t = time.perf_counter()
                        if i % 3 == 2:
                            r = await c.post("/verify", data={"aligned": "true"},
                                             files={"image_a": ("a.png", bodies[i % 8]),
                                                    "image_b": ("b.png", bodies[(i + 1) % 8])})
                        else:
                            r = await c.post("/identify" if i % 3 else "/embed", data={"aligned": "true"},
                                             files={"image": ("a.png", bodies[i % 8])})
                        latencies.append(time.perf_counter() - t)
                        codes.append(r.status_code)

                t0 = time.perf_counter()
                await asyncio.gather(*[one(i) for i in range(n)])
                return time.perf_counter() - t0, latencies, codes

        wall, latencies, codes = asyncio.run(main())
        health = httpx.get(f"http://127.0.0.1:{port}/healthz").json()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert codes == [200] * n, sorted(set(codes))
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    report = {"requests": n, "concurrency": concurrency, "req_per_s": round(n / wall, 1),
              "p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1), "batching": health["batching"]}
    with capsys.disabled():
        print(f"\nload test (127.0.0.1, /embed+/identify+/verify, aligned 112px PNG): {json.dumps(report)}")
    assert health["batching"]["images"] == n + n // 3  # /verify sends two images
    assert not thread.is_alive()


def test_serve_command_starts_answers_and_refuses_bad_arguments(embedder, gallery, real, tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from inference_support import error_lines, run_cli
    from tripletface.inference.gallery import save_gallery

    gpath = tmp_path / "g.npz"
    save_gallery(gallery, gpath)
    rc, _, err = run_cli(capsys, "serve", "--model", embedder.path, "--port", "0")
    assert rc == 2 and "--port: must be an integer in [1, 65535]" in error_lines(err)[0]
    rc, _, err = run_cli(capsys, "serve", "--model", embedder.path, "--gallery", tmp_path / "none.npz")
    assert rc == 2 and "gallery not found" in error_lines(err)[0]

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    proc = subprocess.Popen([sys.executable, "-m", "tripletface", "serve", "--model", embedder.path, "--gallery",
                             str(gpath), "--port", str(port)], env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, health = time.time() + 90, None
        while time.time() < deadline and proc.poll() is None and health is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
            except httpx.TransportError:
                time.sleep(0.2)
        assert health is not None, proc.communicate(timeout=10)[0][-3000:] if proc.poll() is not None else "no answer"
        assert health["gallery"]["size"] == 4 and health["model_fingerprint"] == embedder.fingerprint
        r = httpx.post(f"http://127.0.0.1:{port}/identify", data={"aligned": "true"},
                       files={"image": ("q.png", png_bytes(real["faces"][1]), "image/png")}, timeout=60)
        assert r.status_code == 200 and r.json()["gallery_size"] == 4
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    assert proc.returncode in (0, -signal.SIGINT), out[-2000:]
    assert f"serving {embedder.path} on http://127.0.0.1:{port}" in out
