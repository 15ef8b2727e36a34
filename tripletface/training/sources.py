"""The training folders as sources: each one's record for the model file (counts, terms of use),
the share of the batches each gets, the crop alignment they share, the quality filter by crop's
manifest, and the identity exclusion list."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tripletface.errors import InputError


def read_names(path: str) -> list[str]:
    """The identity names of an exclusion list (data.exclude_identities): one per line, blanks skipped."""
    try:
        return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise InputError(f"{path}: cannot read the identity exclusion list ({e.strerror})") from None


def _beside_crops(train_dir: Path, name: str) -> Path | None:
    """``name`` as crop writes it beside its crops: in ``train_dir``, or its parent (a split output)."""
    for d in (train_dir, train_dir.parent):
        if (d / name).is_file():
            return d / name
    return None


def quality_filter(cfg, index, train_dir: Path):
    """Drop blurred/turned/small crops per data.min_blur / max_pose / min_face_size, scored by crop's manifest."""
    from tripletface.data import filters
    from tripletface.faces.manifest import read_manifest

    manifest = _beside_crops(train_dir, "manifest.jsonl")
    if manifest is None:
        raise InputError(f"{train_dir}: data.min_blur/data.max_pose/data.min_face_size need the manifest.jsonl "
                         "that `tripletface crop` writes beside its crops")
    kept, dropped = filters.quality_filter(index, read_manifest(manifest), manifest.parent,
                                     cfg.data.min_blur, cfg.data.max_pose, cfg.data.min_face_size)
    rules = [rule for rule, on in ((f"blur < {cfg.data.min_blur:g}", cfg.data.min_blur > 0),
                                   (f"|pose| > {cfg.data.max_pose:g}", cfg.data.max_pose > 0),
                                   (f"face < {cfg.data.min_face_size:g} px", cfg.data.min_face_size > 0)) if on]
    print(f"data: quality filter dropped {dropped} crops of {train_dir} ({' or '.join(rules)}), of the "
          f"{len(index)} crops of every training folder", file=sys.stderr)
    return kept


# Terms of use of public face sets, by a name their folder usually carries; data.source_terms overrides.
KNOWN_TERMS = {
    "celeba": "CelebA: non-commercial research purposes only (CUHK's CelebA agreement); "
              "a model trained on it inherits that restriction",
    "casia": "CASIA-WebFace: non-commercial research purposes only",
    "lfw": "LFW: public research data set (UMass Amherst); photos of public figures, no licence restriction stated",
    "vggface2": "VGGFace2: non-commercial research purposes only",
}


def source_terms(path: Path) -> str:
    """The terms of a known face set, guessed from the folder's name and its parents' names."""
    parts = [p.lower() for p in Path(os.path.abspath(path)).parts[-3:]]
    for key, terms in KNOWN_TERMS.items():
        if any(key in p for p in parts):
            return terms
    return "unknown: check the data set's licence (set data.source_terms)"


def source_records(cfg, index, dirs: list[Path]) -> list[dict]:
    """One record per training folder for the model file: name, path, counts and terms of use."""
    if cfg.data.source_terms and len(cfg.data.source_terms) != len(dirs):
        raise InputError(f"data.source_terms has {len(cfg.data.source_terms)} entries for {len(dirs)} training "
                         "folders; give one per folder, in data.train_dirs order")
    out = []
    for i, (row, d) in enumerate(zip(index.source_summary(), dirs)):
        terms = cfg.data.source_terms[i] if cfg.data.source_terms else source_terms(d)
        out.append({**row, "path": str(d), "terms": terms})
    return out


def sampling_shares(data_cfg, train_index):
    """``(shares, where)``: each source's share of what training draws, and of what, for the log and
    the model file. ``data.source_weights`` / ``data.source_balance`` steer P×K batches only; random
    triplets draw their anchor among all identities with 2+ images alike, so their share is by
    identities, whatever those keys say."""
    from tripletface.data.index import source_weights

    if data_cfg.sampling == "pk":
        return source_weights(train_index, data_cfg.source_weights, data_cfg.source_balance), "of each P×K batch"
    return source_weights(train_index), f"of the anchors ({data_cfg.sampling}: every identity alike)"


def common_alignment(cfg, dirs: list[Path]) -> dict:
    """The alignment settings shared by every training folder; folders cropped differently are an error."""
    settings = [folder_alignment(cfg, d) for d in dirs]
    for d, other in zip(dirs[1:], settings[1:]):
        diff = sorted(k for k in set(settings[0]) | set(other) if settings[0].get(k) != other.get(k))
        if diff:
            raise InputError(f"{d}: cropped with other alignment settings than {dirs[0]} ({', '.join(diff)} differ); "
                             "crop every training folder with the same crop settings")
    return settings[0]


def folder_alignment(cfg, train_dir: Path | None) -> dict:
    """The crop settings the training crops were made with (crop_settings.json beside them), else the config's."""
    f = _beside_crops(train_dir, "crop_settings.json") if train_dir is not None else None
    if f is not None:
        try:
            record = json.loads(f.read_text())
        except (OSError, ValueError):
            raise InputError(f"{f}: unreadable crop settings") from None
        settings = record.get("alignment") if isinstance(record, dict) else None
        if not isinstance(settings, dict) or not settings:
            raise InputError(f"{f}: crop settings without an 'alignment' section")
        return settings
    from tripletface.faces.cropper import alignment_settings

    return alignment_settings(cfg.crop)
