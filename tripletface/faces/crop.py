"""A folder of photos -> a folder of aligned face crops plus a manifest: :func:`crop_folder`.

Input ``INPUT_DIR/<identity>/<image>`` (nested sub-folders allowed, any common image type)
becomes ``OUTPUT_DIR/<identity>/<same sub-path>/<name>.png`` -- or, with a test fraction,
``OUTPUT_DIR/train/<identity>/...`` and ``OUTPUT_DIR/test/<identity>/...`` split by identity
(the original ``cropped_data/train`` layout) plus ``OUTPUT_DIR/test_triplets.csv``. The folder
scan, the split and the output names are :mod:`tripletface.faces.scan`.

``OUTPUT_DIR/manifest.jsonl`` (:mod:`tripletface.faces.manifest`) has one JSON row per input
(paths relative to INPUT_DIR and OUTPUT_DIR): ``source, identity, split, status, reason, output,
score, box, landmarks, n_faces, face_size, blur, pose, detect_path`` (``direct``, or ``padded``
when the face was found only on a padded copy of a tight crop; see
:mod:`tripletface.faces.cropper`). Statuses: ``ok``, ``no_face``, ``too_small``, the
:mod:`tripletface.data.decode` read statuses (``missing``, ``unreadable``, ``too_large``,
``truncated``, ``not_an_image``), ``empty`` (an identity folder without images) and
``skipped`` (symlink loops, duplicate folders, images outside an identity folder).
``OUTPUT_DIR/crop_settings.json`` records the settings the crops were made with.

Safe to kill: each crop is written to a temporary file and renamed into place, each
manifest row is appended and flushed after its file exists, so a run killed at any point
and started again skips what is done, redoes the rest and leaves no partial file. A
re-run with different settings is refused unless ``overwrite``.

One run at a time per output folder (and shard): a second run into the same OUTPUT_DIR
refuses at once with a one-line error naming the running one (``OUTPUT_DIR/.lock-<i>of<n>``,
an ``fcntl`` lock the kernel drops when its holder dies, so a killed run never blocks the
next). A full disk stops the run with a one-line error naming the file; what was written is
kept, and the same command run again (with space) resumes. OUTPUT_DIR inside INPUT_DIR (or
INPUT_DIR inside OUTPUT_DIR) is refused before anything is written. Output names stay inside
OUTPUT_DIR (no ``..``, no NUL, no folder symlinked out of it) and within 255 bytes (a longer
name is cut and given a hash, so two long names do not collide).

Parallel: a pipeline (:meth:`tripletface.faces.cropper.FaceCropper.stream`) detects batches of
``crop.detect_batch`` images while a thread pool (``crop.workers``) decodes and shrinks the next
batches and aligns, measures, encodes (PNG at ``crop.png_compression``, lossless at any level)
and writes the previous one; ``shard=(i, n)`` (i = 0..n-1) splits the identities between
machines (each writes ``manifest-<i>of<n>.jsonl``).

Example::

    from tripletface.faces.crop import crop_folder
    summary = crop_folder("dataset", "cropped_data", test_fraction=0.1)
    print(summary.line())

The command line is ``tripletface crop dataset cropped_data --test-fraction 0.1``
(:mod:`tripletface.cli.crop`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import sys
import time
from collections import Counter, defaultdict
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from tripletface.errors import InputError, disk_full
from tripletface.faces.manifest import (MANIFEST, SETTINGS_FILE, atomic_write_bytes, event_row, exclusive_output,
                                        json_line, partial_dir, read_manifest, write_rows)
from tripletface.faces.scan import InputItem, in_shard, inside, output_names, scan_inputs, split_identities
from tripletface.folders import check_apart

__all__ = ["crop_folder", "CropSummary", "write_test_triplets", "TRIPLETS_FILE"]

TRIPLETS_FILE = "test_triplets.csv"
_MAX_TRIPLETS_PER_IDENTITY = 10


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


def crop_folder(input_dir, output_dir, crop_cfg=None, *, shard: tuple[int, int] = (0, 1), overwrite: bool = False,
                limit: Optional[int] = None, progress: bool = True, **settings) -> CropSummary:
    """Crop every face of ``input_dir`` into ``output_dir`` (see the module doc).

    Args:
        input_dir, output_dir: folders.
        crop_cfg: a :class:`tripletface.config.CropConfig` (default: its defaults).
        shard: ``(i, n)``: only identities whose name hashes to ``i`` modulo ``n``.
        overwrite: ignore an existing manifest instead of resuming from it.
        limit: only the first ``limit`` images (sorted by path) of the dataset.
        progress: show a tqdm bar on stderr.
        **settings: CropConfig fields that replace those of ``crop_cfg`` (``size=160, workers=2``).

    Raises:
        InputError: missing or empty input folder, output folder the input, inside it or holding it
            (:func:`tripletface.folders.check_apart`; refused before anything is written), settings mismatch.
        ConfigError: a setting that is not a CropConfig field, or out of its range.

    Example::

        summary = crop_folder("dataset", "cropped_data", test_fraction=0.1, progress=False)
    """
    from tqdm import tqdm

    from tripletface.faces.cropper import FaceCropper, alignment_settings

    crop_cfg = _crop_config(crop_cfg, settings)
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
        items = [it for it in items if in_shard(it.identity, shard)]
        event_rows = [r for r in event_rows if (in_shard(r["identity"], shard) if r["identity"] else i_shard == 0)]
        manifest_path = out_root / f"manifest-{i_shard}of{n_shard}.jsonl"
    else:
        manifest_path = out_root / MANIFEST

    alignment = alignment_settings(crop_cfg)
    record = _settings_record(crop_cfg, alignment)
    with exclusive_output(out_root, shard):
        tmp_dir = partial_dir(out_root, shard)
        shutil.rmtree(tmp_dir, ignore_errors=True)  # leftovers of a killed run
        tmp_dir.mkdir()

        old_rows = [] if overwrite else read_manifest(manifest_path)
        _record_settings(out_root, record, bool(old_rows), tmp_dir)  # no old rows: nothing to compare
        done = _resume(old_rows, out_root)
        write_rows(manifest_path, list(done.values()), tmp_dir)  # drops a torn last line

        todo = [it for it in items if it.source not in done]
        todo_events = [r for r in event_rows if r["source"] not in done]
        counts: Counter = Counter()
        summary_rows = 0

        t_load = time.perf_counter()
        cropper = FaceCropper.from_settings(alignment, workers=crop_cfg.workers) if todo else None
        load_seconds = time.perf_counter() - t_load
        t0 = time.perf_counter()

        with open(manifest_path, "a", encoding="utf-8", errors="surrogateescape") as manifest:
            def emit(row: dict) -> None:
                manifest.write(json_line(row))
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
        write_rows(manifest_path, [final[k] for k in sorted(final)], tmp_dir)

        n_triplets = 0
        if splitting:
            n_triplets = write_test_triplets(out_root, crop_cfg.seed, tmp_dir)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        already = sum(it.source in done for it in items) + sum(r["source"] in done for r in event_rows)
        return CropSummary(counts=counts, processed=summary_rows, already_done=already, seconds=seconds,
                           load_seconds=load_seconds, manifest=str(manifest_path), ignored=ignored,
                           test_identities=len(test_ids), triplets=n_triplets)


def _crop_config(crop_cfg, settings: dict):
    """``crop_cfg`` (default: CropConfig()) with ``settings`` replacing its fields, checked against
    their ranges in ``config.SCHEMA`` (a CropConfig built in code skips load_config): one-line errors
    before any file is written."""
    from tripletface.config import ConfigError, CropConfig, check_section

    crop_cfg = CropConfig() if crop_cfg is None else crop_cfg
    if settings:
        fields = {f.name for f in dataclasses.fields(CropConfig)}
        unknown = sorted(set(settings) - fields)
        if unknown:
            raise ConfigError(f"crop_folder: settings must be CropConfig fields ({', '.join(sorted(fields))}), "
                              f"received: {unknown[0]!r}")
        crop_cfg = dataclasses.replace(crop_cfg, **settings)
    check_section("crop", crop_cfg)
    return crop_cfg


def _record_settings(out_root: Path, record: dict, resuming: bool, tmp_dir: Path) -> None:
    """Write ``OUTPUT_DIR/crop_settings.json``; refuse when ``resuming`` crops made with other settings."""
    settings_path = out_root / SETTINGS_FILE
    if settings_path.exists() and resuming:
        try:
            previous = json.loads(settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous is not None and previous != record:
            changed = sorted(k for k in set(previous) | set(record) if previous.get(k) != record.get(k))
            raise InputError(f"{out_root}: already holds crops made with other settings ({', '.join(changed)} "
                             "differ); use another OUTPUT_DIR or --overwrite")
    atomic_write_bytes(settings_path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), tmp_dir)


def _resume(old_rows: list[dict], out_root: Path) -> dict[str, dict]:
    """``source -> row`` of the work a previous run completed: non-ok rows are final; an ok row
    counts only while its crop file exists (the last row of a source wins)."""
    done: dict[str, dict] = {}
    for row in old_rows:
        if row.get("status") == "ok":
            out = row.get("output")
            if not out or not (out_root / out).is_file():
                done.pop(row["source"], None)
                continue
        done[row["source"]] = row
    return done


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
        if not inside(str(out_root), rel):
            return None
        target = out_root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        real_parent = os.path.realpath(target.parent)
        if real_parent != real_out and not real_parent.startswith(real_out + os.sep):
            raise _OutsideOutput(f"{target.parent} leads outside OUTPUT_DIR (a symlink); not written")
        ok, buf = cv2.imencode("." + image_format, cv2.cvtColor(res.aligned, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise OSError(f"cannot encode {rel}")
        atomic_write_bytes(target, buf.tobytes(), tmp_dir)
        return rel

    chunks = [todo[i:i + batch] for i in range(0, len(todo), batch)]
    n = 0
    with bar, closing(cropper.stream(chunks, read=read, then=write, workers=workers, safe=True)) as stream:
        for done in stream:
            for item, err, res, outcome in done:
                split = None if test_ids is None else ("test" if item.identity in test_ids else "train")
                row = {"source": item.source, "identity": item.identity, "split": split}
                if err is not None:
                    row.update(event_row(item.source, item.identity, getattr(err, "status", "unreadable"),
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
                                raise outcome  # the disk is full: stop (see exclusive_output), don't fail every image
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
    atomic_write_bytes(out_root / TRIPLETS_FILE, buf.getvalue().encode("utf-8", "surrogateescape"), tmp_dir)
    return len(rows)
