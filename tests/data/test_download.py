"""The LFW downloader against a local HTTP server (loopback only) serving a small archive made here."""

import hashlib
import http.server
import io
import socket
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image

from tripletface.data.download import RemoteFile, download, fetch_lfw, safe_extract
from tripletface.errors import InputError


def _make_archive(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (32, 32), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "JPEG")
    return out.getvalue()


class _Server:
    """Serves ``files`` with HTTP Range support; records the Range headers it saw."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.ranges = files, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                data = outer.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = data[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def archive():
    members = {f"lfw/Person_{i}/Person_{i}_{j:04d}.jpg": _jpeg(i * 10 + j) for i in range(3) for j in (1, 2)}
    return _make_archive(members)


def _remote(server, name, data):
    return RemoteFile(name, f"{server.url}/{name}", hashlib.sha256(data).hexdigest())


def test_fetch_lfw_downloads_verifies_and_extracts(tmp_path, archive):
    pairs = b"1\t1\nPerson_0\t1\t2\nPerson_0\t1\tPerson_1\t1\n"
    with _Server({"lfw.tgz": archive, "pairs.txt": pairs}) as srv:
        images, pairs_file = fetch_lfw(tmp_path, _remote(srv, "lfw.tgz", archive), _remote(srv, "pairs.txt", pairs),
                                       progress=False)
    assert sorted(p.name for p in images.iterdir()) == ["Person_0", "Person_1", "Person_2"]
    assert (images / "Person_2" / "Person_2_0002.jpg").read_bytes() == _jpeg(22)
    assert pairs_file.read_bytes() == pairs
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob("*.extracting"))


def test_download_resumes_from_a_partial_file(tmp_path, archive):
    with _Server({"lfw.tgz": archive}) as srv:
        remote = _remote(srv, "lfw.tgz", archive)
        (tmp_path / "lfw.tgz.part").write_bytes(archive[:100])
        path = download(remote, tmp_path, progress=False)
        assert srv.ranges == ["bytes=100-"]
    assert path.read_bytes() == archive


def test_checksum_mismatch_removes_the_file_and_fails(tmp_path, archive):
    with _Server({"lfw.tgz": archive}) as srv:
        bad = RemoteFile("lfw.tgz", f"{srv.url}/lfw.tgz", "0" * 64)
        with pytest.raises(InputError, match="checksum mismatch"):
            download(bad, tmp_path, progress=False)
    assert not (tmp_path / "lfw.tgz").exists() and not (tmp_path / "lfw.tgz.part").exists()


def test_offline_is_a_clear_one_line_error(tmp_path):
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    remote = RemoteFile("lfw.tgz", f"http://127.0.0.1:{port}/lfw.tgz", "0" * 64)
    with pytest.raises(InputError) as e:
        download(remote, tmp_path, timeout=5, progress=False)
    msg = str(e.value)
    assert "cannot download" in msg and "by hand" in msg and "\n" not in msg


def test_unsafe_archive_members_are_refused(tmp_path):
    evil = _make_archive({"lfw/ok.jpg": b"x", "../../escape.txt": b"owned"})
    (tmp_path / "evil.tgz").write_bytes(evil)
    with pytest.raises(InputError, match="unsafe archive member"):
        safe_extract(tmp_path / "evil.tgz", tmp_path / "out")
    assert not (tmp_path.parent / "escape.txt").exists() and not (tmp_path / "out").exists()
