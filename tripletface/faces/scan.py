"""What a crop run reads and writes, decided before any pixel: the input folder scan, the
train/test split by identity, the shard an identity belongs to, and the output names.

Input ``INPUT_DIR/<identity>/<image>`` (nested sub-folders allowed, any common image type;
hidden entries skipped, folder symlinks followed without looping) becomes
``OUTPUT_DIR/<identity>/<same sub-path>/<name>.png``, or, with a test fraction,
``OUTPUT_DIR/train/<identity>/...`` and ``OUTPUT_DIR/test/<identity>/...``. Output names stay
inside OUTPUT_DIR (no ``..``, no NUL) and within 255 bytes (a longer name is cut and given a
hash, so two long names do not collide).
"""

from __future__ import annotations

import os
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tripletface.data.decode import is_image_file
from tripletface.errors import InputError
from tripletface.faces.manifest import event_row

__all__ = ["InputItem", "scan_inputs", "split_identities", "in_shard", "output_names", "inside"]

_NAME_MAX = 255  # bytes in one file name (ext4, xfs, tmpfs, APFS, NTFS in UTF-16 units)


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
            rows.append(event_row(rel_dir, identity, "unreadable", f"cannot list folder ({e.strerror or e})"))
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
                    rows.append(event_row(rel, ident, "unreadable", _os_reason(e)))
                continue
            if is_dir:
                real = os.path.realpath(entry.path)
                if real in excluded:
                    continue
                try:
                    k = key_of(entry.path)
                except OSError as e:
                    rows.append(event_row(rel, ident, "unreadable", _os_reason(e)))
                    continue
                if k in ancestors:
                    rows.append(event_row(rel, ident, "skipped",
                                          "symlink loop (links back to a folder above it); not followed"))
                    continue
                if k in seen:
                    rows.append(event_row(rel, ident, "skipped",
                                          f"same folder as {seen[k]!r} (symlink); not scanned twice"))
                    continue
                seen[k] = rel
                n = walk(entry.path, rel, ancestors | {k}, ident)
                if not identity and n == 0:
                    rows.append(event_row(rel, ident, "empty", "identity folder has no image files"))
                found += n
            elif is_image_file(entry.name):
                if not identity:
                    rows.append(event_row(rel, "", "skipped", "image not inside an identity folder "
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



def _os_reason(e: OSError) -> str:
    from tripletface.data.decode import os_reason

    return os_reason(e, missing="broken symlink (target does not exist)")


# ----------------------------------------------------------------------------- split, shards and names


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


def in_shard(identity: str, shard: tuple[int, int]) -> bool:
    """True when ``identity`` belongs to shard ``(i, n)``: its name's CRC-32 is ``i`` modulo ``n``."""
    i_shard, n_shard = shard
    return zlib.crc32(identity.encode("utf-8", "surrogateescape")) % n_shard == i_shard


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


def inside(root: str, rel: str) -> bool:
    """True when the relative path ``rel`` names something under ``root`` (no ``..`` out of it, not
    absolute, no NUL); symlinks are not resolved here."""
    if "\0" in rel or os.path.isabs(rel):
        return False
    full = os.path.normpath(os.path.join(root, rel))
    return full.startswith(os.path.normpath(root) + os.sep)

