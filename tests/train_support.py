"""Helpers for the training tests (test_train, test_budget): a small training folder of real faces."""

from __future__ import annotations

from pathlib import Path


def tiny_train_dir(lfw_dir: Path, dest: Path, n_ids: int = 12, per_id: int = 6) -> Path:
    """Identities with the most images, linked into dest/<identity>/ (raw LFW photos: fine for plumbing)."""
    ids = sorted((d for d in lfw_dir.iterdir() if d.is_dir()), key=lambda d: -len(list(d.iterdir())))[:n_ids]
    for d in ids:
        (dest / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:per_id]:
            (dest / d.name / f.name).symlink_to(f)
    return dest
