"""Helpers for the inference tests (test_inference, test_gallery, test_evaluate_cli): tiny models,
broken files, running the CLI in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np

THRESHOLD = 1.0


def make_model(path: Path, threshold: float | None = THRESHOLD, alignment: bool = True) -> Path:
    """A tiny untrained small_cnn (16-d, 64x64 input) saved to ``path``: enough for plumbing tests.

    Each call draws new random weights, so two calls make two different models.
    """
    from tripletface.config import Config
    from tripletface.faces.cropper import alignment_settings
    from tripletface.model.build import build_embedding_model
    from tripletface.model.io import save_model

    meta = {"metric": "euclidean"}
    if alignment:
        meta["alignment"] = alignment_settings(Config().crop)
    if threshold is not None:
        meta["threshold"] = threshold
    model = build_embedding_model("small_cnn", 16, (64, 64), width=0.25, metadata=meta)
    return save_model(model, path)


def grey_image(path: Path, size: int = 160) -> Path:
    """A flat grey JPEG: a valid image holding no face."""
    from PIL import Image

    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(path)
    return path


def text_as_jpg(path: Path) -> Path:
    path.write_text("this is not an image\n")
    return path


def zero_byte(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``tripletface ARGV`` in this process -> (exit code, stdout, stderr)."""
    from tripletface.cli.main import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def error_lines(err: str) -> list[str]:
    """The ``error: ...`` lines of a stderr (TensorFlow's C++ start-up lines are not ours)."""
    return [line for line in err.splitlines() if line.startswith("error:")]


def lfw_people(lfw_dir: Path, count: int, min_images: int = 3) -> list[str]:
    """The first ``count`` identities (sorted) with at least ``min_images`` images."""
    names = []
    for d in sorted(p for p in lfw_dir.iterdir() if p.is_dir()):
        if len(list(d.glob("*.jpg"))) >= min_images:
            names.append(d.name)
            if len(names) == count:
                break
    return names


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
