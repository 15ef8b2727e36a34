"""The files a crop run keeps in OUTPUT_DIR: the manifest, the settings record, the lock.

``OUTPUT_DIR/manifest.jsonl`` (``manifest-<i>of<n>.jsonl`` for shard ``i`` of ``n``) has one
JSON row per input; :func:`event_row` gives its fields. ``OUTPUT_DIR/crop_settings.json``
records the settings the crops were made with. Rows are appended and flushed one at a time,
so a killed run leaves at most a torn last line, which :func:`read_manifest` skips.

Whole files (crops, the rewritten manifest, the settings) are written by
:func:`atomic_write_bytes` through the run's ``OUTPUT_DIR/.partial-<i>of<n>`` folder.
:func:`exclusive_output` holds ``OUTPUT_DIR/.lock-<i>of<n>`` while a run writes: a second run
into the same folder and shard refuses at once.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from tripletface.errors import DiskFullError, InputError, disk_full

__all__ = ["MANIFEST", "SETTINGS_FILE", "event_row", "json_line", "read_manifest", "write_rows",
           "atomic_write_bytes", "partial_dir", "exclusive_output"]

MANIFEST = "manifest.jsonl"
SETTINGS_FILE = "crop_settings.json"
_PARTIAL_PREFIX = ".partial"
_LOCK_PREFIX = ".lock"


def event_row(source: str, identity: str, status: str, reason: str) -> dict:
    """A manifest row for an input that gave no crop (every field of a row, in order)."""
    return {"source": source, "identity": identity, "split": None, "status": status, "reason": reason,
            "output": None, "score": None, "box": None, "landmarks": None, "n_faces": 0,
            "face_size": None, "blur": None, "pose": None, "detect_path": None}


def json_line(row: dict) -> str:
    """``row`` as one manifest line (newline included)."""
    line = json.dumps(row, ensure_ascii=False, sort_keys=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # undecodable file names (surrogates): escape them
        line = json.dumps(row, ensure_ascii=True)
    return line + "\n"


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Rows of a manifest, skipping torn or corrupt lines (a killed run's last line)."""
    rows = []
    try:
        with open(path, "rb") as fh:
            for raw in fh:
                try:
                    row = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue
                if isinstance(row, dict) and isinstance(row.get("source"), str) and "status" in row:
                    rows.append(row)
    except FileNotFoundError:
        return []
    return rows


def write_rows(path: Path, rows: list[dict], tmp_dir: Path) -> None:
    """Replace the manifest at ``path`` by ``rows`` (atomically)."""
    data = "".join(json_line(r) for r in rows).encode("utf-8")
    atomic_write_bytes(path, data, tmp_dir)


# Not tripletface.atomic.replaced_atomically: that one puts its temporary file beside the target
# (``.<name>.tmp<pid>``), where a run killed mid-write (kill -9) leaves it among the crops for good.
# Here every temporary file lies in the run's own ``.partial-<i>of<n>`` folder, which the next run
# (and this one, on its way out) deletes whole: a killed crop leaves no stray file (tested:
# tests/test_hardening.py ``_check_crop_output``, "no leftovers"). And a failed write is re-raised
# naming the target, not the temporary file, for the one-line disk-full error.
def atomic_write_bytes(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to a new file in ``tmp_dir`` and rename it to ``path`` (same file system)."""
    tmp = tmp_dir / f"{uuid.uuid4().hex}{path.suffix}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


def partial_dir(out_root: Path, shard: tuple[int, int]) -> Path:
    """The folder of a run's temporary files (``OUTPUT_DIR/.partial-<i>of<n>``)."""
    i_shard, n_shard = shard
    return out_root / f"{_PARTIAL_PREFIX}-{i_shard}of{n_shard}"


@contextmanager
def exclusive_output(out_root: Path, shard: tuple[int, int]):
    """Create OUTPUT_DIR and hold its lock for ``shard`` while the block runs.

    A second run into the same folder and shard raises :class:`InputError` at once (it does
    not wait: by the time it got the lock, the work would be done). A full disk inside the block
    becomes a one-line error naming the file; the lock file is removed on the way out.
    """
    i_shard, n_shard = shard
    lock_path = out_root / f"{_LOCK_PREFIX}-{i_shard}of{n_shard}"
    held = None
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        held = _lock(lock_path, out_root)
        yield
    except OSError as e:
        if not disk_full(e):
            raise
        raise DiskFullError(f"{e.filename or out_root}: no space left on device; the crops and manifest rows "
                               "written so far are kept: free some space and run the same command again to "
                               "resume") from None
    finally:
        if held is not None:
            # this run's temporary files (gone already after a normal end): frees a full disk too
            shutil.rmtree(partial_dir(out_root, shard), ignore_errors=True)
            try:
                os.unlink(lock_path)  # before unlocking: a waiting opener sees the inode change and retries
            except OSError:
                pass
            held.close()


def _lock(lock_path: Path, out_root: Path):
    """Open and lock ``lock_path`` without waiting; InputError naming the holder when taken."""
    while True:
        fh = open(lock_path, "a+")
        try:
            try:
                import fcntl

                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # Windows
                import msvcrt

                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip()[:40] or "?"
            fh.close()
            raise InputError(f"{out_root}: another crop (pid {holder}) is writing into this folder; wait for it "
                             "to finish (run again then to resume) or use another OUTPUT_DIR") from None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file the previous holder removed between our open and our lock
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            return fh
        fh.close()
