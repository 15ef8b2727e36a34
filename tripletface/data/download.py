"""Fetch LFW when no local copy exists: resumable downloads, SHA-256 checks, safe extraction.

The official LFW site (vis-www.cs.umass.edu/lfw) no longer serves its archives reliably;
these are the same files as mirrored on figshare by the LFW authors' release and used by
scikit-learn's ``fetch_lfw_pairs``, pinned by checksum. Downloads resume from a ``.part``
file (HTTP Range); a checksum mismatch deletes the file and fails; offline is a one-line
error that says where to put the files by hand.

Example::

    images, pairs = fetch_lfw(Path("~/.cache/tripletface").expanduser())
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tripletface.errors import InputError


@dataclass(frozen=True)
class RemoteFile:
    filename: str
    url: str
    sha256: str


LFW_ARCHIVE = RemoteFile("lfw.tgz", "https://ndownloader.figshare.com/files/5976018",
                         "055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0")
LFW_PAIRS = RemoteFile("pairs.txt", "https://ndownloader.figshare.com/files/5976006",
                       "ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592")
CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download(remote: RemoteFile, dest_dir: Path, timeout: float = 30.0, progress: bool = True) -> Path:
    """Download ``remote`` into ``dest_dir`` (resuming a ``.part`` file) and verify its checksum."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / remote.filename
    if final.is_file() and sha256_of(final) == remote.sha256:
        return final
    part = dest_dir / (remote.filename + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(remote.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part is already complete
            response = None
        else:
            raise InputError(f"cannot download {remote.url}: HTTP {e.code} {e.reason}; put {remote.filename} "
                             f"in {dest_dir} by hand") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise InputError(f"cannot download {remote.url} ({reason}); offline? put {remote.filename} "
                         f"in {dest_dir} by hand, or point TRIPLETFACE_DATA at a local copy") from None
    if response is not None:
        with response:
            resumed = response.status == 206
            mode = "ab" if resumed else "wb"
            total = response.headers.get("Content-Length")
            total = (int(total) + (have if resumed else 0)) if total else None
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, initial=have if resumed else 0, unit="B", unit_scale=True,
                           desc=remote.filename, file=sys.stderr)
            try:
                with open(part, mode) as f:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        f.write(block)
                        if bar:
                            bar.update(len(block))
            except (OSError, urllib.error.URLError) as e:
                raise InputError(f"download of {remote.url} broke off ({e}); run again to resume") from None
            finally:
                if bar:
                    bar.close()
    digest = sha256_of(part)
    if digest != remote.sha256:
        part.unlink()
        raise InputError(f"{remote.filename}: checksum mismatch (expected {remote.sha256[:12]}…, got "
                         f"{digest[:12]}…); the partial file was removed, run again")
    os.replace(part, final)
    return final


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a .tgz refusing absolute paths, '..', links and special files; atomic per archive."""
    tmp = dest.with_name(dest.name + ".extracting")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            for m in tar.getmembers():
                name = Path(m.name)
                if name.is_absolute() or ".." in name.parts or not (m.isfile() or m.isdir()):
                    raise InputError(f"{archive}: refusing unsafe archive member {m.name!r}")
                members.append(m)
            for m in members:
                target = tmp / m.name
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    except tarfile.TarError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"{archive}: not a readable archive ({e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def fetch_lfw(root: Path, archive: RemoteFile = LFW_ARCHIVE, pairs: RemoteFile = LFW_PAIRS,
              progress: bool = True) -> tuple[Path, Path]:
    """Make sure ``root/lfw/<Name>/*.jpg`` and ``root/pairs.txt`` exist; returns (images dir, pairs file)."""
    images = root / "lfw"
    pairs_file = root / pairs.filename
    if not (images.is_dir() and any(images.iterdir())):
        tgz = download(archive, root, progress=progress)
        extracted = root / "lfw.extract"
        safe_extract(tgz, extracted)
        inner = extracted / "lfw" if (extracted / "lfw").is_dir() else extracted
        if images.exists():
            shutil.rmtree(images)
        os.replace(inner, images)
        shutil.rmtree(extracted, ignore_errors=True)
    if not pairs_file.is_file():
        download(pairs, root, progress=progress)
    return images, pairs_file
