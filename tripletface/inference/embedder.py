"""Producing embeddings from a trained model (separate from any match decision).

An :class:`Embedder` loads a model once and embeds aligned crops or raw photos. Raw photos
are detected and aligned by a :class:`tripletface.faces.cropper.FaceCropper` rebuilt from the
alignment settings stored in the model, then resized exactly as the training pipeline
resizes crops (:func:`tripletface.data.images.preprocess_image`), so inference sees what
training saw.

Files that cannot be embedded are never dropped: their rows are NaN and each is listed
as a :class:`Failure` (path, machine-readable status, reason).

Example::

    emb = Embedder.load("checkpoints/model.keras")
    vectors, failures = emb.embed_files(["a.jpg", "b.jpg"])   # (2, D), NaN rows for failures
    threshold, source = emb.decision_threshold()              # stored with the model
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tripletface.errors import ImageError, ModelError, NoFaceError
from tripletface.inference.matching import check_threshold

__all__ = ["DEFAULT_MODEL", "NO_FACE_STATUSES", "Failure", "Embedder", "resolve_model_path", "resize_images",
           "print_failures"]

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "assets" / "default.keras"

# Failure statuses meaning "the image was read but holds no usable face" (exit 4); all others
# (the tripletface.data.decode statuses: missing, unreadable, too_large, truncated, not_an_image) are
# problems with the file itself (exit 3).
NO_FACE_STATUSES = frozenset({"no_face", "too_small"})


@dataclass(frozen=True)
class Failure:
    """An input that got no embedding: ``path``, ``status`` (short, machine-readable), ``reason``."""

    path: str
    status: str
    reason: str

    @property
    def no_face(self) -> bool:
        return self.status in NO_FACE_STATUSES

    @property
    def message(self) -> str:
        """One line naming the file: ``"<path>: <reason>"``."""
        reason = self.reason or self.status
        if self.status == "too_small":
            reason = f"no usable face: {reason}"
        return f"{self.path}: {reason}"

    def error(self):
        """The user-facing error for this failure: :class:`NoFaceError` or :class:`ImageError`."""
        return (NoFaceError if self.no_face else ImageError)(self.message)

    def to_dict(self) -> dict:
        return {"path": self.path, "status": self.status, "reason": self.reason}


def resolve_model_path(model: str | None) -> Path:
    """The given path, else the bundled default model (a :class:`ModelError` when there is none)."""
    if model:
        return Path(model)
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    raise ModelError(f"no --model given and no bundled default model is installed ({DEFAULT_MODEL}); "
                     "train one with `tripletface train` and pass --model")


def resize_images(images: np.ndarray, size) -> np.ndarray:
    """(N, h, w, 3) pixels -> float32 (N, H, W, 3) in [0, 255], as the training pipeline does.

    Same op as :func:`tripletface.data.images.preprocess_image`: only when the size differs,
    bilinear ``tf.image.resize``, clipped to [0, 255] and rounded to whole grey levels.
    """
    h, w = int(size[0]), int(size[1])
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), received: {images.shape}")
    if images.shape[1:3] == (h, w):
        return images.astype(np.float32, copy=False)
    import tensorflow as tf

    out = tf.image.resize(tf.convert_to_tensor(images, tf.float32), (h, w)).numpy()
    return np.round(np.clip(out, 0.0, 255.0)).astype(np.float32)


def print_failures(failures, prefix: str = "", more: str = "", limit: int = 10) -> None:
    """List the first ``limit`` failures on stderr, then how many more there were."""
    for f in failures[:limit]:
        print(f"  {prefix}{f.message}", file=sys.stderr)
    if len(failures) > limit:
        print(f"  ... and {len(failures) - limit} more{more}", file=sys.stderr)


class Embedder:
    """Embeds aligned faces or raw photos with one model (loaded once).

    Args:
        model: a tripletface ``keras.Model`` (see :func:`tripletface.model.build.build_embedding_model`).
        path: where it was loaded from (shown in messages and stored in galleries).
        flip_tta: average the embeddings of each face and its mirror image (then re-normalise);
            ``None`` = the model's ``flip_tta`` metadata, default True.
        batch_size: images per forward pass (and per detection chunk for raw photos).
        fold_batch_norm: run a copy of the model with its BatchNorm folded into the convolutions
            (:func:`tripletface.model.fold.fold_batch_norm`: the same embeddings within float rounding,
            1.15-1.2x faster in float32), made at the first forward pass; ``self.model`` stays the
            model as given. Off by default here, since a model still training would leave the copy
            stale; :meth:`load` (a model from a file) turns it on.
    """

    def __init__(self, model, path: str | None = None, flip_tta: bool | None = None, batch_size: int = 64,
                 fold_batch_norm: bool = False):
        from tripletface.model.io import get_metadata

        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, received: {batch_size!r}")
        self.model = model
        self.path = str(path) if path is not None else None
        self.metadata = get_metadata(model)
        size = tuple(model.input_shape[1:3])  # what the model takes; the metadata only for a model without it
        self.image_size = tuple(int(s) for s in (size if None not in size else self.metadata["image_size"]))
        self.dim = int(model.output_shape[-1])
        self.flip_tta = bool(self.metadata.get("flip_tta", True) if flip_tta is None else flip_tta)
        self.batch_size = int(batch_size)
        self.fold_batch_norm = bool(fold_batch_norm)
        self._cropper = None
        self._predict = None
        self._fingerprint = None

    @classmethod
    def load(cls, path: str | None = None, **kwargs) -> "Embedder":
        """Load the model at ``path`` (default: the bundled model) once (BatchNorm folded, unless
        ``fold_batch_norm=False``)."""
        from tripletface.model.io import load_model

        kwargs.setdefault("fold_batch_norm", True)
        p = resolve_model_path(path)
        return cls(load_model(p), path=str(p), **kwargs)

    @property
    def name(self) -> str:
        return self.path or self.model.name

    # ------------------------------------------------------------------ identity and threshold

    @property
    def fingerprint(self) -> str:
        """A hash of every weight (shape, dtype, bytes): galleries built by another model are refused.

        Metadata is not hashed, so calibrating a model (a new threshold) keeps its galleries valid.
        """
        if self._fingerprint is None:
            import hashlib

            h = hashlib.sha256()
            for w in self.model.get_weights():
                w = np.ascontiguousarray(w)
                h.update(f"{w.shape}{w.dtype.str}".encode())
                h.update(w.tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    @property
    def threshold(self) -> float | None:
        """The decision threshold stored in the model (``None`` when it has none)."""
        t = self.metadata.get("threshold")
        if t is None:
            return None
        try:
            t = float(t)
        except (TypeError, ValueError):
            t = float("nan")
        if not math.isfinite(t) or t < 0:
            raise ModelError(f"{self.name}: stored threshold {self.metadata.get('threshold')!r} is not a "
                             "finite number >= 0; run `tripletface calibrate`")
        return t

    def decision_threshold(self, override: float | None = None) -> tuple[float, str]:
        """``(threshold, where it came from)``: ``override`` if given, else the model's stored one.

        Raises :class:`ModelError` when neither exists: a verdict needs a threshold chosen for
        this model, never a hard-coded one.
        """
        if override is not None:
            return check_threshold(override), "--threshold"
        t = self.threshold
        if t is None:
            raise ModelError(f"{self.name}: model has no stored decision threshold; pass --threshold, or run "
                             f"`tripletface calibrate --model {self.name} --data-dir DIR --pairs PAIRS --in-place`")
        return t, str(self.metadata.get("threshold_source") or "stored in the model")

    # ------------------------------------------------------------------ preprocessing

    @property
    def cropper(self):
        """The :class:`~tripletface.faces.cropper.FaceCropper` described by the model's alignment settings."""
        if self._cropper is None:
            from tripletface.faces.cropper import SETTINGS_KEYS, FaceCropper

            settings = self.metadata.get("alignment")
            if not isinstance(settings, dict) or not settings:
                raise ModelError(f"{self.name}: model stores no alignment settings, so raw photos cannot be "
                                 "aligned as in training; pass aligned crops with --aligned")
            known = {k: settings[k] for k in SETTINGS_KEYS if k in settings}
            if not known:
                raise ModelError(f"{self.name}: alignment settings name none of {', '.join(SETTINGS_KEYS)}; "
                                 "raw photos cannot be aligned as in training; pass aligned crops with --aligned")
            try:
                self._cropper = FaceCropper.from_settings(known)
            except ValueError as e:
                raise ModelError(f"{self.name}: unusable alignment settings ({e})") from None
        return self._cropper

    def _read_aligned(self, paths: list[str]) -> tuple[list, list[Failure]]:
        """Crops as they are: ``[(index, uint8 image)]`` and failures."""
        from tripletface.data.decode import read_image

        images, failures = [], []
        for i, p in enumerate(paths):
            try:
                images.append((i, read_image(p)))
            except ImageError as e:
                failures.append(Failure(p, getattr(e, "status", "unreadable"),
                                        getattr(e, "reason", str(e))))
        return images, failures

    def _aligned_chunks(self, paths: list[str]):
        """Raw photos through the model's cropper, per ``batch_size`` chunk of ``paths`` and in order:
        ``([(index in chunk, uint8 aligned crop)], failures)``, as a pipeline
        (:meth:`tripletface.faces.cropper.FaceCropper.stream`; detector calls of 32 photos within each chunk,
        as :meth:`~tripletface.faces.cropper.FaceCropper.process_files` makes them)."""
        from tripletface.faces.cropper import _read_failure

        cropper = self.cropper
        spans = [(s, min(s + self.batch_size, len(paths))) for s in range(0, len(paths), self.batch_size)]
        sub = [paths[a:min(a + 32, e)] for s, e in spans for a in range(s, e, 32)]
        stream = cropper.stream(sub)
        try:
            for s, e in spans:
                images, failures, i = [], [], 0
                while s + i < e:
                    for p, err, r, _ in next(stream):
                        r = _read_failure(err) if err is not None else r
                        if r.status == "ok" and r.aligned is not None:
                            images.append((i, r.aligned))
                        else:
                            failures.append(Failure(p, r.status, r.reason or r.status))
                        i += 1
                yield images, failures
        finally:
            stream.close()

    def _embed_into(self, out: np.ndarray, idx: np.ndarray, batch: np.ndarray) -> None:
        out[idx] = self.embed_aligned(batch)

    # ------------------------------------------------------------------ embedding

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        if self._predict is None:
            model = self.model
            if self.fold_batch_norm:
                from tripletface.model.fold import fold_batch_norm

                model = fold_batch_norm(model).model
            spec = tf.TensorSpec((None, *self.image_size, 3), tf.float32)
            self._predict = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        return np.asarray(self._predict(tf.convert_to_tensor(batch, tf.float32)), np.float32)

    def embed_aligned(self, images, progress: bool = False) -> np.ndarray:
        """(N, h, w, 3) aligned faces, uint8 or float pixels in [0, 255] -> (N, D) unit float32 rows.

        Faces of another size are resized as in training. With ``flip_tta`` each row is the
        re-normalised sum of the embeddings of the face and its mirror image.
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must have shape (N, H, W, 3), received: {images.shape}")
        n = len(images)
        out = np.zeros((n, self.dim), np.float32)
        bar = None
        if progress and n > self.batch_size:
            from tqdm import tqdm

            bar = tqdm(total=n, desc="embed", unit="img", file=sys.stderr)
        # Our loop of batch_size chunks through one tf.function, not keras Model.predict, which gives the
        # same rows (max |diff| 0.0) but builds a data pipeline and callbacks on every call. Measured on the
        # shared 2-core CPU, median, embed_aligned vs predict: 64x64 small_cnn test model: 1 face 2.1 vs
        # 170 ms, 256 crops 195 vs 231 ms; assets/default.keras: 1 face 5.2 vs 56 ms, 256 crops 593 vs
        # 1332 ms (a rerun under heavier load: predict 21-25x slower for 1 face, 1.05-2.8x for 256).
        for s in range(0, n, self.batch_size):
            batch = resize_images(images[s:s + self.batch_size], self.image_size)
            e = self._forward(batch)
            if self.flip_tta:
                e = e + self._forward(np.ascontiguousarray(batch[:, :, ::-1, :]))
                e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            if not np.all(np.isfinite(e)):
                raise ModelError(f"{self.name}: the model produced non-finite embeddings (broken weights?)")
            out[s:s + len(batch)] = e
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        return out

    def embed_files(self, paths, aligned: bool = False, progress: bool = False) -> tuple[np.ndarray, list[Failure]]:
        """Embed image files: ``(vectors (N, D) float32, failures)``.

        ``aligned=False``: raw photos, detected and aligned with the model's own settings;
        ``aligned=True``: crops used as they are (resized to the model's input if needed).
        Rows of files that failed (missing, unreadable, no face) are NaN and each is listed in
        ``failures`` in input order: nothing is dropped. Work goes in chunks of ``batch_size``
        files, so memory stays flat for any number of files. With ``aligned=True`` the next
        chunk's files are read in a background thread while the model embeds the current one
        (decoding releases the GIL), so reading costs little besides the forward pass. With
        ``aligned=False`` the model embeds a chunk in a background thread while the next one is
        read, detected and aligned (:meth:`tripletface.faces.cropper.FaceCropper.stream`).
        """
        paths = [str(p) for p in paths]
        out = np.full((len(paths), self.dim), np.nan, np.float32)
        failures: list[Failure] = []
        bar = None
        if progress and len(paths) > 1:
            from tqdm import tqdm

            bar = tqdm(total=len(paths), desc="align+embed" if not aligned else "embed", unit="img",
                       file=sys.stderr)
        starts = range(0, len(paths), self.batch_size)
        pool = None
        if len(starts) > 1:  # aligned: reads run ahead; raw photos: the forward pass runs behind detection
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(max_workers=1,
                                      thread_name_prefix="tripletface-read" if aligned else "tripletface-embed")
        raw = None if aligned else self._aligned_chunks(paths)
        forward = None  # raw photos: the previous chunk's forward pass
        try:
            pending = pool.submit(self._read_aligned, paths[:self.batch_size]) if pool and aligned else None
            for start in starts:
                chunk = paths[start:start + self.batch_size]
                if raw is not None:
                    images, failed = next(raw)
                elif pool is not None:
                    images, failed = pending.result()
                    nxt = paths[start + self.batch_size:start + 2 * self.batch_size]
                    pending = pool.submit(self._read_aligned, nxt) if nxt else None
                else:
                    images, failed = self._read_aligned(chunk)
                failures.extend(failed)
                if images:
                    idx = np.array([start + i for i, _ in images])
                    if len({img.shape for _, img in images}) == 1:  # one resize call for the chunk
                        batch = resize_images(np.stack([img for _, img in images]), self.image_size)
                    else:
                        batch = np.stack([resize_images(img[None], self.image_size)[0] for _, img in images])
                    if raw is not None and pool is not None:
                        if forward is not None:
                            forward.result()  # one chunk in flight: memory stays flat
                        forward = pool.submit(self._embed_into, out, idx, batch)
                    else:
                        out[idx] = self.embed_aligned(batch)
                if bar is not None:
                    bar.update(len(chunk))
            if forward is not None:
                forward.result()
        finally:
            if raw is not None:
                raw.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if bar is not None:
                bar.close()
        return out, failures
