"""``tripletface crop``: detect, align and crop every face of a dataset folder.

Input ``INPUT_DIR/<identity>/<image>`` (nested sub-folders allowed, any common image type)
becomes ``OUTPUT_DIR/<identity>/<same sub-path>/<name>.png`` -- or, with a test fraction,
``OUTPUT_DIR/train/<identity>/...`` and ``OUTPUT_DIR/test/<identity>/...`` split by identity
(the original ``cropped_data/train`` layout) plus ``OUTPUT_DIR/test_triplets.csv``.

``OUTPUT_DIR/manifest.jsonl`` has one JSON row per input (paths relative to INPUT_DIR and
OUTPUT_DIR): ``source, identity, split, status, reason, output, score, box, landmarks,
n_faces, face_size, blur, pose, detect_path`` (``direct``, or ``padded`` when the face was found
only on a padded copy of a tight crop; see :mod:`tripletface.faces.cropper`). Statuses: ``ok``, ``no_face``, ``too_small``, the
:mod:`tripletface.data.decode` read statuses (``missing``, ``unreadable``, ``too_large``,
``truncated``, ``not_an_image``), ``empty`` (an identity folder without images) and
``skipped`` (symlink loops, duplicate folders, images outside an identity folder).
``OUTPUT_DIR/crop_settings.json`` records the settings the crops were made with.

Safe to kill: each crop is written to a temporary file and renamed into place, each
manifest row is appended and flushed after its file exists, so a run killed at any point
and started again skips what is done, redoes the rest and leaves no partial file. A
re-run with different settings is refused unless ``--overwrite``.

One run at a time per output folder (and shard): a second ``crop`` into the same OUTPUT_DIR
refuses at once with a one-line error naming the running one (``OUTPUT_DIR/.lock-<i>of<n>``,
an ``fcntl`` lock the kernel drops when its holder dies, so a killed run never blocks the
next). A full disk stops the run with a one-line error naming the file; what was written is
kept, and the same command run again (with space) resumes. OUTPUT_DIR inside INPUT_DIR (or
INPUT_DIR inside OUTPUT_DIR) is refused before anything is written. Output names stay inside
OUTPUT_DIR (no ``..``, no NUL, no folder symlinked out of it) and within 255 bytes (a longer
name is cut and given a hash, so two long names do not collide).

Parallel: a pipeline (:meth:`tripletface.faces.cropper.FaceCropper.stream`) detects batches of
``crop.detect_batch`` images while a thread pool (``--workers``) decodes and shrinks the next
batches and aligns, measures, encodes (PNG at ``crop.png_compression``, lossless at any level)
and writes the previous one; ``--shard i/n`` (i = 0..n-1) splits the identities between
machines (each writes ``manifest-<i>of<n>.jsonl``).

Example::

    tripletface crop dataset cropped_data --test-fraction 0.1
    python crop_faces.py --input_dir dataset --output_dir cropped_data
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
import time
import uuid
import zlib
from collections import Counter, defaultdict
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from tripletface.errors import DiskFullError, InputError, disk_full
from tripletface.folders import check_apart
from tripletface.data.decode import is_image_file

__all__ = ["add_arguments", "run", "crop_dataset", "scan_inputs", "read_manifest", "CropSummary",
           "MANIFEST", "SETTINGS_FILE", "TRIPLETS_FILE"]

MANIFEST = "manifest.jsonl"
SETTINGS_FILE = "crop_settings.json"
TRIPLETS_FILE = "test_triplets.csv"
_PARTIAL_PREFIX = ".partial"
_LOCK_PREFIX = ".lock"
_NAME_MAX = 255  # bytes in one file name (ext4, xfs, tmpfs, APFS, NTFS in UTF-16 units)
_MAX_TRIPLETS_PER_IDENTITY = 10


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.main import add_config_arguments, add_config_flag, add_progress_argument, number

    parser.add_argument("input_pos", nargs="?", metavar="INPUT_DIR",
                        help="dataset folder: INPUT_DIR/<identity>/<image> (default: dataset)")
    parser.add_argument("output_pos", nargs="?", metavar="OUTPUT_DIR",
                        help="where crops and manifest.jsonl go (default: cropped_data)")
    parser.add_argument("--input_dir", "--input-dir", dest="input_opt", default=None, metavar="DIR",
                        help="same as INPUT_DIR")
    parser.add_argument("--output_dir", "--output-dir", dest="output_opt", default=None, metavar="DIR",
                        help="same as OUTPUT_DIR")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="process only shard I of N (I = 0..N-1), split by identity")
    add_config_flag(parser, "--workers", key="crop.workers", metavar="N", help="reader/writer threads")
    add_config_flag(parser, "--test-fraction", "--test_fraction", key="crop.test_fraction", metavar="F",
                    help="fraction of identities put in OUTPUT_DIR/test")
    add_config_flag(parser, "--size", key="crop.size", metavar="PX", help="side of the aligned crop (default 112)")
    add_config_flag(parser, "--detector", key="crop.detector", help="face detector")
    add_config_flag(parser, "--template", key="crop.template",
                    help="arcface = 5-point alignment (default); box = no alignment")
    parser.add_argument("--limit", type=number(int, 1), default=None, metavar="N",
                        help="only the first N images (sorted)")
    parser.add_argument("--overwrite", action="store_true",
                        help="ignore an existing manifest (e.g. made with other settings) and redo everything")
    add_progress_argument(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tripletface.cli.main import config_from_args

    positional = [p for p in (args.input_pos, args.output_pos) if p is not None]
    input_dir = args.input_opt if args.input_opt is not None else (positional.pop(0) if positional else None)
    output_dir = args.output_opt if args.output_opt is not None else (positional.pop(0) if positional else None)
    if positional:
        raise InputError(f"unexpected argument {positional[0]!r}: give each folder once, "
                         "as INPUT_DIR OUTPUT_DIR or with --input_dir/--output_dir")
    input_dir = input_dir or "dataset"
    output_dir = output_dir or "cropped_data"

    cfg = config_from_args(args)  # --workers, --size, ... are --set crop.KEY=VALUE (cli.add_config_flag)
    shard = parse_shard(args.shard)
    summary = crop_dataset(input_dir, output_dir, cfg.crop, shard=shard, overwrite=args.overwrite,
                           limit=args.limit, progress=args.progress)
    print(summary.line())
    return 0


def parse_shard(text: Optional[str]) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; None -> ``(0, 1)``."""
    if text is None:
        return 0, 1
    try:
        i_s, n_s = str(text).split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise InputError(f"--shard must look like I/N (e.g. 0/4), received: {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard I/N needs N >= 1 and 0 <= I < N, received: {text!r}")
    return i, n


# ----------------------------------------------------------------------------- scanning


@dataclass
class InputItem:
    """One image file to crop. ``source`` is relative to INPUT_DIR, '/'-separated."""

    source: str
    identity: str


def scan_inputs(input_dir: Path, exclude: tuple = ()) -> tuple[list[InputItem], list[dict], int]:
    """Walk ``input_dir`` (sorted, following folder symlinks without looping).

    Returns ``(items, rows, ignored)``: the image files; manifest rows for things that are
    not images to crop (empty identity folders, symlink loops, duplicate folders, images
    outside an identity folder, entries that cannot be stat'ed); the count of non-image
    files ignored. Hidden entries (name starting with '.') are skipped. Folders whose real
    path is in ``exclude`` (the output folder) are skipped.
    """
    items: list[InputItem] = []
    rows: list[dict] = []
    ignored = 0
    excluded = {os.path.realpath(p) for p in exclude}
    seen: dict[tuple, str] = {}

    def key_of(path: str):
        st = os.stat(path)
        return st.st_dev, st.st_ino

    def walk(abs_dir: str, rel_dir: str, ancestors: frozenset, identity: str) -> int:
        """Scan one folder; returns the number of image items found under it."""
        nonlocal ignored
        try:
            with os.scandir(abs_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            rows.append(_event_row(rel_dir, identity, "unreadable", f"cannot list folder ({e.strerror or e})"))
            return 0
        found = 0
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            ident = identity or entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                if not is_dir:
                    is_file = entry.is_file(follow_symlinks=True)
                    if not is_file and entry.is_symlink():
                        os.stat(entry.path)  # raises for loops / broken links
            except OSError as e:
                if is_image_file(entry.name) and identity:
                    items.append(InputItem(rel, ident))  # read_image reports it precisely
                    found += 1
                else:
                    rows.append(_event_row(rel, ident, "unreadable", _os_reason(e)))
                continue
            if is_dir:
                real = os.path.realpath(entry.path)
                if real in excluded:
                    continue
                try:
                    k = key_of(entry.path)
                except OSError as e:
                    rows.append(_event_row(rel, ident, "unreadable", _os_reason(e)))
                    continue
                if k in ancestors:
                    rows.append(_event_row(rel, ident, "skipped",
                                           "symlink loop (links back to a folder above it); not followed"))
                    continue
                if k in seen:
                    rows.append(_event_row(rel, ident, "skipped",
                                           f"same folder as {seen[k]!r} (symlink); not scanned twice"))
                    continue
                seen[k] = rel
                n = walk(entry.path, rel, ancestors | {k}, ident)
                if not identity and n == 0:
                    rows.append(_event_row(rel, ident, "empty", "identity folder has no image files"))
                found += n
            elif is_image_file(entry.name):
                if not identity:
                    rows.append(_event_row(rel, "", "skipped", "image not inside an identity folder "
                                                                   "(expected INPUT_DIR/<identity>/<image>)"))
                    continue
                items.append(InputItem(rel, ident))
                found += 1
            else:
                ignored += 1
        return found

    root = str(input_dir)
    try:
        root_key = key_of(root)
    except OSError as e:
        raise InputError(f"{input_dir}: cannot read input folder ({e.strerror or e})") from None
    seen[root_key] = "."
    walk(root, "", frozenset({root_key}), "")
    return items, rows, ignored


def _event_row(source: str, identity: str, status: str, reason: str) -> dict:
    return {"source": source, "identity": identity, "split": None, "status": status, "reason": reason,
            "output": None, "score": None, "box": None, "landmarks": None, "n_faces": 0,
            "face_size": None, "blur": None, "pose": None, "detect_path": None}


def _os_reason(e: OSError) -> str:
    from tripletface.data.decode import os_reason

    return os_reason(e, missing="broken symlink (target does not exist)")


# ----------------------------------------------------------------------------- split and names


def split_identities(counts: dict[str, int], fraction: float, min_images: int, seed: int) -> set[str]:
    """Test identities: a seeded random ``fraction`` of all identities, among those with
    at least ``min_images`` images (at least 2 when possible, never all of them)."""
    if fraction <= 0:
        return set()
    names = sorted(counts)
    eligible = [n for n in names if counts[n] >= min_images]
    n_test = int(round(fraction * len(names)))
    n_test = max(n_test, min(2, len(eligible)))
    n_test = min(n_test, len(eligible), max(0, len(names) - 1))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(eligible))
    return {eligible[i] for i in order[:n_test]}


def output_names(items: list[InputItem], test_ids: set[str], image_format: str,
                 split: bool = False) -> dict[str, str]:
    """``source -> output`` relative paths (under ``train/`` or ``test/`` when ``split``);
    ``a.jpg`` and ``a.png`` in one folder become ``a_jpg.png`` and ``a_png.png``."""
    stems: dict[tuple, list[InputItem]] = defaultdict(list)
    for it in items:
        folder, name = os.path.split(it.source)
        stems[(folder, os.path.splitext(name)[0])].append(it)
    out: dict[str, str] = {}
    used: set[str] = set()
    for (folder, stem), group in sorted(stems.items()):
        for it in group:
            base = stem
            if len(group) > 1:
                base = f"{stem}_{os.path.splitext(it.source)[1][1:]}"
            rel = f"{folder}/{base}.{image_format}" if folder else f"{base}.{image_format}"
            if split:
                rel = ("test/" if it.identity in test_ids else "train/") + rel
            rel = _fit_name(rel)
            n = 1
            candidate = rel
            while candidate in used:
                n += 1
                candidate = _fit_name(f"{os.path.splitext(rel)[0]}_{n}.{image_format}")
            used.add(candidate)
            out[it.source] = candidate
    return out


def _fit_name(rel: str) -> str:
    """``rel`` with its file name cut to :data:`_NAME_MAX` bytes: the stem is shortened and ends
    in ``~`` plus 8 hex digits of the full name's CRC, so distinct long names stay distinct."""
    folder, name = os.path.split(rel)
    if len(os.fsencode(name)) <= _NAME_MAX:
        return rel
    stem, ext = os.path.splitext(name)
    tag = f"~{zlib.crc32(os.fsencode(name)):08x}"
    room = _NAME_MAX - len(os.fsencode(tag + ext))
    raw = os.fsencode(stem)
    try:
        raw.decode("utf-8")
        short = raw[:room].decode("utf-8", errors="ignore")  # drops a character cut in two
    except UnicodeDecodeError:
        short = os.fsdecode(raw[:room])  # an undecodable name stays byte-exact
    return f"{folder}/{short}{tag}{ext}" if folder else f"{short}{tag}{ext}"


def _inside(root: str, rel: str) -> bool:
    if "\0" in rel or os.path.isabs(rel):
        return False
    full = os.path.normpath(os.path.join(root, rel))
    return full.startswith(os.path.normpath(root) + os.sep)


# ----------------------------------------------------------------------------- manifest


def _json_line(row: dict) -> str:
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


def _atomic_write_bytes(path: Path, data: bytes, tmp_dir: Path) -> None:
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


@contextmanager
def _exclusive_output(out_root: Path, shard: tuple[int, int]):
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
            shutil.rmtree(out_root / f"{_PARTIAL_PREFIX}-{i_shard}of{n_shard}", ignore_errors=True)
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


def _write_rows(path: Path, rows: list[dict], tmp_dir: Path) -> None:
    data = "".join(_json_line(r) for r in rows).encode("utf-8")
    _atomic_write_bytes(path, data, tmp_dir)


# ----------------------------------------------------------------------------- main job


@dataclass
class CropSummary:
    """What a crop run did."""

    counts: Counter
    processed: int  # images handled in this run
    already_done: int  # skipped because the manifest had them
    seconds: float  # processing time (after the detector loaded)
    load_seconds: float
    manifest: str
    ignored: int = 0
    test_identities: int = 0
    triplets: int = 0

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))
        parts = [f"crop: {self.processed} inputs in {self.seconds:.1f} s ({self.images_per_second:.1f} img/s, "
                 f"detector load {self.load_seconds:.1f} s): {counts or 'nothing to do'}"]
        if self.already_done:
            parts.append(f"{self.already_done} already done")
        if self.ignored:
            parts.append(f"{self.ignored} non-image files ignored")
        if self.test_identities:
            parts.append(f"{self.test_identities} test identities, {self.triplets} test triplets")
        parts.append(f"manifest {self.manifest}")
        return "; ".join(parts)


def _settings_record(crop_cfg, cropper_settings: dict) -> dict:
    return {
        "alignment": cropper_settings,
        "image_format": crop_cfg.image_format,
        "test_fraction": float(crop_cfg.test_fraction),
        "min_images_test": int(crop_cfg.min_images_test),
        "seed": int(crop_cfg.seed),
    }


def crop_dataset(input_dir, output_dir, crop_cfg, shard: tuple[int, int] = (0, 1), overwrite: bool = False,
                 limit: Optional[int] = None, progress: bool = True) -> CropSummary:
    """Crop every face of ``input_dir`` into ``output_dir`` (see the module doc).

    Args:
        input_dir, output_dir: folders.
        crop_cfg: a :class:`tripletface.config.config.CropConfig`.
        shard: ``(i, n)``: only identities whose name hashes to ``i`` modulo ``n``.
        overwrite: ignore an existing manifest instead of resuming from it.
        limit: only the first ``limit`` images (sorted by path) of the dataset.
        progress: show a tqdm bar on stderr.

    Raises:
        InputError: missing or empty input folder, output folder the input, inside it or holding it
            (:func:`tripletface.folders.check_apart`; refused before anything is written), settings mismatch.
    """
    from tqdm import tqdm

    from tripletface.faces.cropper import FaceCropper, alignment_settings

    _check_crop_config(crop_cfg)
    in_root = Path(input_dir)
    out_root = Path(output_dir)
    if not in_root.exists():
        raise InputError(f"{in_root}: input folder does not exist")
    if not in_root.is_dir():
        raise InputError(f"{in_root}: input is not a folder")
    check_apart(in_root, out_root, "the input folder", "the output folder")  # nothing written inside INPUT_DIR
    real_out = os.path.realpath(out_root)
    if out_root.exists() and not out_root.is_dir():
        raise InputError(f"{out_root}: output exists and is not a folder")

    items, event_rows, ignored = scan_inputs(in_root, exclude=(real_out,))
    if not items:
        what = "is empty" if not event_rows and not ignored else "has no image files in identity folders"
        raise InputError(f"{in_root}: input folder {what} (expected INPUT_DIR/<identity>/<image>)")
    if limit is not None:
        items = items[:limit]

    counts_per_id = Counter(it.identity for it in items)
    test_ids = split_identities(counts_per_id, crop_cfg.test_fraction, crop_cfg.min_images_test, crop_cfg.seed)
    splitting = crop_cfg.test_fraction > 0
    names = output_names(items, test_ids, crop_cfg.image_format, split=splitting)

    i_shard, n_shard = shard
    if n_shard > 1:
        def mine(identity: str) -> bool:
            return zlib.crc32(identity.encode("utf-8", "surrogateescape")) % n_shard == i_shard

        items = [it for it in items if mine(it.identity)]
        event_rows = [r for r in event_rows if (mine(r["identity"]) if r["identity"] else i_shard == 0)]
        manifest_path = out_root / f"manifest-{i_shard}of{n_shard}.jsonl"
    else:
        manifest_path = out_root / MANIFEST

    settings = alignment_settings(crop_cfg)
    record = _settings_record(crop_cfg, settings)
    with _exclusive_output(out_root, shard):
        tmp_dir = out_root / f"{_PARTIAL_PREFIX}-{i_shard}of{n_shard}"
        shutil.rmtree(tmp_dir, ignore_errors=True)  # leftovers of a killed run
        tmp_dir.mkdir()

        settings_path = out_root / SETTINGS_FILE
        old_rows = [] if overwrite else read_manifest(manifest_path)
        if settings_path.exists() and not overwrite:
            try:
                previous = json.loads(settings_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = None
            if previous is not None and previous != record and old_rows:
                changed = sorted(k for k in set(previous) | set(record) if previous.get(k) != record.get(k))
                raise InputError(f"{out_root}: already holds crops made with other settings ({', '.join(changed)} "
                                 "differ); use another OUTPUT_DIR or --overwrite")
        _atomic_write_bytes(settings_path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), tmp_dir)

        # Resume: keep rows whose work is complete (non-ok rows are final; ok rows need their file).
        done: dict[str, dict] = {}
        for row in old_rows:
            if row.get("status") == "ok":
                out = row.get("output")
                if not out or not (out_root / out).is_file():
                    done.pop(row["source"], None)
                    continue
            done[row["source"]] = row
        _write_rows(manifest_path, list(done.values()), tmp_dir)  # drops a torn last line

        todo = [it for it in items if it.source not in done]
        todo_events = [r for r in event_rows if r["source"] not in done]
        counts: Counter = Counter()
        summary_rows = 0

        t_load = time.perf_counter()
        cropper = FaceCropper.from_settings(settings, workers=crop_cfg.workers) if todo else None
        load_seconds = time.perf_counter() - t_load
        t0 = time.perf_counter()

        with open(manifest_path, "a", encoding="utf-8", errors="surrogateescape") as manifest:
            def emit(row: dict) -> None:
                manifest.write(_json_line(row))
                manifest.flush()
                counts[row["status"]] += 1

            for row in todo_events:
                emit(row)
                summary_rows += 1
            if todo:
                summary_rows += _process(todo, cropper, names, test_ids if splitting else None, in_root, out_root,
                                         tmp_dir, crop_cfg,
                                         emit, tqdm(total=len(todo), unit="img", disable=not progress,
                                                    file=sys.stderr, desc="crop", dynamic_ncols=True))
        seconds = time.perf_counter() - t0

        # Final manifest: one row per source (last wins), sorted.
        final = {r["source"]: r for r in read_manifest(manifest_path)}
        _write_rows(manifest_path, [final[k] for k in sorted(final)], tmp_dir)

        n_triplets = 0
        if splitting:
            n_triplets = write_test_triplets(out_root, crop_cfg.seed, tmp_dir)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        already = sum(it.source in done for it in items) + sum(r["source"] in done for r in event_rows)
        return CropSummary(counts=counts, processed=summary_rows, already_done=already, seconds=seconds,
                           load_seconds=load_seconds, manifest=str(manifest_path), ignored=ignored,
                           test_identities=len(test_ids), triplets=n_triplets)


def _check_crop_config(crop_cfg) -> None:
    """The crop settings against their ranges in ``config.SCHEMA`` (a CropConfig built in code skips
    load_config): one-line errors before any file is written."""
    from tripletface.config.config import check_section

    check_section("crop", crop_cfg)


def _process(todo, cropper, names, test_ids, in_root: Path, out_root: Path, tmp_dir: Path, crop_cfg,
             emit, bar) -> int:
    """Read, detect, align and write as a pipeline (:meth:`FaceCropper.stream`); ``emit`` one row per
    input, in input order, once its crop is written.

    While chunk ``k`` is detected, chunks ``k+1`` and ``k+2`` are read and shrunk for detection, and
    chunk ``k-1`` is aligned, measured, PNG-encoded and written, all in the pool of ``crop.workers``
    threads. ``test_ids`` is None without a train/test split, else the set of test identities.
    """
    import cv2

    batch = int(crop_cfg.detect_batch)
    workers = crop_cfg.workers or (os.cpu_count() or 1)
    image_format = crop_cfg.image_format
    params = ([cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg"
              else [cv2.IMWRITE_PNG_COMPRESSION, int(crop_cfg.png_compression)])
    real_out = os.path.realpath(out_root)

    def read(item: InputItem) -> np.ndarray:
        return cropper.read(in_root / item.source)

    def write(item: InputItem, res) -> Optional[str]:
        """Write an ok crop (in a pool thread); the output path, or None where it would leave OUTPUT_DIR."""
        if not res.ok:
            return None
        rel = names[item.source]
        if not _inside(str(out_root), rel):
            return None
        target = out_root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        real_parent = os.path.realpath(target.parent)
        if real_parent != real_out and not real_parent.startswith(real_out + os.sep):
            raise _OutsideOutput(f"{target.parent} leads outside OUTPUT_DIR (a symlink); not written")
        ok, buf = cv2.imencode("." + image_format, cv2.cvtColor(res.aligned, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise OSError(f"cannot encode {rel}")
        _atomic_write_bytes(target, buf.tobytes(), tmp_dir)
        return rel

    chunks = [todo[i:i + batch] for i in range(0, len(todo), batch)]
    n = 0
    with bar, closing(cropper.stream(chunks, read=read, then=write, workers=workers, safe=True)) as stream:
        for done in stream:
            for item, err, res, outcome in done:
                split = None if test_ids is None else ("test" if item.identity in test_ids else "train")
                row = {"source": item.source, "identity": item.identity, "split": split}
                if err is not None:
                    row.update(_event_row(item.source, item.identity, getattr(err, "status", "unreadable"),
                                          getattr(err, "reason", str(err))))
                    row["split"] = split
                else:
                    row.update({"status": res.status, "reason": res.reason, "output": None})
                    rec = res.to_dict()
                    rec.pop("status")
                    rec.pop("reason")
                    row.update(rec)
                    if res.ok:
                        if isinstance(outcome, _OutsideOutput):
                            row.update({"status": "skipped", "reason": str(outcome), "output": None})
                        elif isinstance(outcome, OSError):
                            if disk_full(outcome):
                                raise outcome  # the disk is full: stop (see _exclusive_output), don't fail every image
                            row.update({"status": "write_failed", "reason": f"cannot write output ({outcome})",
                                        "output": None})
                        elif isinstance(outcome, BaseException):
                            raise outcome
                        elif outcome is None:
                            row.update({"status": "skipped", "reason": "output path would leave OUTPUT_DIR"})
                        else:
                            row["output"] = outcome
                emit(row)
                n += 1
            bar.update(len(done))
    return n


class _OutsideOutput(Exception):
    """An output folder that resolves outside OUTPUT_DIR (a symlink planted in it)."""


# ----------------------------------------------------------------------------- test triplets


def write_test_triplets(out_root: Path, seed: int, tmp_dir: Path) -> int:
    """Write ``test_triplets.csv`` (anchor,positive,negative; paths relative to OUTPUT_DIR)
    from the ok test crops of every manifest in ``out_root``. Returns the number of rows."""
    by_id: dict[str, list[str]] = defaultdict(list)
    for mpath in sorted(out_root.glob("manifest*.jsonl")):
        for row in read_manifest(mpath):
            if row.get("status") == "ok" and row.get("split") == "test" and row.get("output"):
                by_id[row["identity"]].append(row["output"])
    ids = sorted(by_id)
    for k in ids:
        by_id[k] = sorted(set(by_id[k]))
    rng = np.random.default_rng(seed)
    rows = []
    with_pairs = [k for k in ids if len(by_id[k]) >= 2]
    if len(ids) >= 2:
        for ident in with_pairs:
            imgs = by_id[ident]
            others = [k for k in ids if k != ident]
            anchors = rng.permutation(len(imgs))[: min(len(imgs), _MAX_TRIPLETS_PER_IDENTITY)]
            for a in anchors:
                p = int(rng.integers(len(imgs) - 1))
                p = p + 1 if p >= a else p
                neg_id = others[int(rng.integers(len(others)))]
                neg = by_id[neg_id][int(rng.integers(len(by_id[neg_id])))]
                rows.append((imgs[int(a)], imgs[p], neg))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["anchor", "positive", "negative"])
    writer.writerows(rows)
    _atomic_write_bytes(out_root / TRIPLETS_FILE, buf.getvalue().encode("utf-8", "surrogateescape"), tmp_dir)
    return len(rows)
