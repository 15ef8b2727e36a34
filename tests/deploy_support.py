"""Helpers for the deployment tests (test_export, test_serve): real aligned faces and a small
model whose embeddings tell those faces apart (so a parity check can fail)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

THRESHOLD = 0.5


def lfw_photos(lfw_dir: Path, count: int) -> list[Path]:
    """The first image of the first ``count`` identities (sorted) that have 2 or more images, and
    their second image: ``[id0_1, id0_2, id1_1, id1_2, ...]`` (2 * count photos)."""
    out = []
    for d in sorted(p for p in lfw_dir.iterdir() if p.is_dir()):
        files = sorted(d.glob("*.jpg"))
        if len(files) >= 2:
            out += files[:2]
            if len(out) == 2 * count:
                break
    return out


def align_photos(paths, size: int = 112) -> tuple[list[Path], np.ndarray]:
    """Detect and align with the pipeline's own cropper (MTCNN, ArcFace template):
    ``(paths that gave a face, uint8 (N, size, size, 3))``."""
    from tripletface.faces.cropper import FaceCropper

    results = FaceCropper("mtcnn", size=size).process_files(paths)
    ok = [(p, r.aligned) for p, r in zip(paths, results) if r.ok]
    return [p for p, _ in ok], np.stack([a for _, a in ok]) if ok else np.zeros((0, size, size, 3), np.uint8)


def aligned_lfw_faces(lfw_dir: Path, count: int, at_least: int) -> np.ndarray:
    """Real LFW photos of ``count`` people, detected and aligned to 112x112 by tripletface's own
    cropper; the test skips when fewer than ``at_least`` gave a face."""
    import pytest

    _, aligned = align_photos(lfw_photos(lfw_dir, count))
    if len(aligned) < at_least:
        pytest.skip(f"only {len(aligned)} LFW photos gave a face")
    return aligned


def make_face_model(path: Path, faces: np.ndarray, flip_tta: bool = True, threshold: float | None = THRESHOLD,
                    alignment: bool = True) -> Path:
    """A small untrained small_cnn (16-d, 64x64) whose BatchNorm statistics are fitted to ``faces``
    (one forward pass in training mode), so different faces get clearly different embeddings."""
    import keras

    from tripletface.config import Config
    from tripletface.inference.embedder import resize_images
    from tripletface.faces.cropper import alignment_settings
    from tripletface.model.build import build_embedding_model
    from tripletface.model.io import save_model

    keras.utils.set_random_seed(7)
    meta = {"metric": "euclidean", "flip_tta": bool(flip_tta)}
    if alignment:
        meta["alignment"] = {**alignment_settings(Config().crop), "size": 112}
    if threshold is not None:
        meta["threshold"] = threshold
    model = build_embedding_model("small_cnn", 16, (64, 64), width=0.25, metadata=meta)
    x = resize_images(faces, (64, 64))
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:  # moving statistics := these faces' statistics (one training-mode pass)
        layer.momentum = 0.0
    model(x, training=True)
    for layer in bns:
        layer.momentum = 0.99
    return save_model(model, path)


def min_pairwise_distance(emb: np.ndarray) -> float:
    d = np.sqrt(np.maximum(((emb[:, None] - emb[None]) ** 2).sum(-1), 0.0))
    return float(d[np.triu_indices(len(emb), 1)].min())


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
