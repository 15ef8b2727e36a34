"""Export a model for serving: an aligned face (uint8) in, the L2-normalised embedding out.

The command is ``tripletface export`` (:mod:`tripletface.cli.export`).

The exported graph holds every step after alignment, so no caller reimplements them:

1. ``uint8 (N, H, W, 3)`` RGB aligned faces of **any** size ``H x W`` (crops made with
   the model's alignment template, see below);
2. bilinear resize to the model's input size, rounded to whole grey levels and clipped
   to [0, 255] (exactly :func:`tripletface.inference.embedder.resize_images`; a no-op at the
   model's own size);
3. the model itself (its ``FacePreprocess`` layer maps pixels to what the backbone
   expects; its last layer L2-normalises), each BatchNorm that follows a convolution folded
   into it (:mod:`tripletface.model.fold`; ``--no-fold-batch-norm`` keeps them);
4. with flip test-time augmentation (the model's ``flip_tta`` setting, as
   :class:`~tripletface.inference.embedder.Embedder` does): the embedding of the face plus that
   of its mirror image, re-normalised.

Output: ``float32 (N, D)`` unit rows -- the embeddings ``tripletface embed --aligned``
gives, so galleries, thresholds and ``tripletface calibrate`` results carry over.
Compare two faces with the Euclidean distance against the model's threshold (stored in
the metadata written beside the artifact).

What the caller does before: detect the face and its 5 landmarks (left eye, right eye,
nose tip, mouth left, mouth right) and warp it with a similarity transform onto the
ArcFace template (:func:`tripletface.faces.align.align_face`, template
:func:`tripletface.faces.align.template`, side ``alignment.size`` from the metadata). Detection
is not in the artifact (MTCNN's cascade with its per-image candidate lists and
non-maximum suppression does not convert to a fixed TFLite/ONNX graph); see
docs/DEPLOYMENT.md for the recipe.

Formats:

* ``savedmodel`` -- a folder, signature ``serving_default``: ``image`` -> ``embedding``;
  ``tripletface.json`` (the metadata) inside it.
* ``tflite`` -- one file; ``--quantize float16`` stores float16 weights, ``int8``
  dynamic-range quantisation (int8 weights, float activations; no calibration data
  needed). Metadata in ``OUT.json`` beside it.
* ``onnx`` -- one file (tf2onnx, opset 17, input ``image``, output ``embedding``), run
  with onnxruntime; metadata in the model's ``metadata_props`` (key ``tripletface``)
  and in ``OUT.json``.

:func:`load_exported` opens any of them behind one ``embed(images)`` method.

Example::

    export_model("model.keras", "face.onnx", "onnx")
    runner = load_exported("face.onnx")
    emb = runner.embed(aligned_uint8_faces)      # (N, D) float32, unit rows
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import typing
from pathlib import Path

from tripletface.errors import InputError, ModelError
from tripletface.folders import check_apart

if typing.TYPE_CHECKING:  # NumPy loads where it is used: `tripletface export --help` stays light
    import numpy as np

__all__ = ["FORMATS", "QUANTIZATIONS", "METADATA_NAME", "ONNX_OPSET", "build_serving_function", "export_model",
           "metadata_path", "read_export_metadata", "load_exported", "ExportedModel"]

FORMATS = ("savedmodel", "tflite", "onnx")
QUANTIZATIONS = ("int8", "float16")
METADATA_NAME = "tripletface.json"
EXPORT_FORMAT = "tripletface-export/1"
ONNX_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "embedding"


# --------------------------------------------------------------------------- the serving graph

def build_serving_function(model, flip_tta: bool = False):
    """A ``tf.function`` taking ``uint8 (N, H, W, 3)`` aligned faces (any H, W) and returning
    ``{"embedding": float32 (N, D)}`` unit rows: resize, the model, optional flip TTA.

    ``model`` is a tripletface ``keras.Model`` (pixels [0, 255] in, unit embeddings out).
    """
    import tensorflow as tf

    from tripletface.model.io import get_metadata, preprocess_layer

    preprocess_layer(model)  # a ModelError for anything but a tripletface model
    size = tuple(int(s) for s in model.input_shape[1:3])
    if None in size:
        size = tuple(int(s) for s in get_metadata(model)["image_size"])
    spec = tf.TensorSpec((None, None, None, 3), tf.uint8, name=INPUT_NAME)

    def embed(x):
        e = model(x, training=False)
        if flip_tta:
            e = tf.cast(e, tf.float32) + tf.cast(model(tf.reverse(x, axis=[2]), training=False), tf.float32)
            e = e * tf.math.rsqrt(tf.maximum(tf.reduce_sum(tf.square(e), axis=1, keepdims=True), 1e-24))
        return tf.cast(e, tf.float32)

    @tf.function(input_signature=[spec])
    def serve(image):
        x = tf.cast(image, tf.float32)
        # bilinear with half-pixel centres (identity at the model's own size), whole grey levels:
        # tripletface.inference.embedder.resize_images, the resize the training pipeline uses
        x = tf.image.resize(x, size, method="bilinear")
        x = tf.round(tf.clip_by_value(x, 0.0, 255.0))
        return {OUTPUT_NAME: tf.identity(embed(x), name=OUTPUT_NAME)}

    return serve


def _export_metadata(embedder, fmt: str, quantize: str | None, flip_tta: bool, folded: int = 0) -> dict:
    from tripletface import __version__

    meta = embedder.metadata
    align = meta.get("alignment") or {}
    return {
        "format": EXPORT_FORMAT,
        "artifact": fmt,
        "quantize": quantize,
        "tripletface_version": __version__,
        "source_model": embedder.name,
        "model_fingerprint": embedder.fingerprint,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", "H", "W", 3], "color": "RGB",
                  "content": "aligned face (5-point similarity warp onto the template below), any size; "
                             "resized inside to image_size"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", embedder.dim], "l2_normalised": True},
        "image_size": list(embedder.image_size),
        "flip_tta": bool(flip_tta),
        "batch_norm_folded": int(folded),  # BatchNorm layers folded into their convolution (tripletface.model.fold)
        "metric": "euclidean",
        "threshold": meta.get("threshold"),
        "threshold_source": meta.get("threshold_source"),
        "alignment": {"template": align.get("template", "arcface"), "size": align.get("size"),
                      "detector": align.get("detector"), "min_face_size": align.get("min_face_size")},
    }


def metadata_path(out, fmt: str) -> Path:
    """Where the metadata of an artifact lives: inside a SavedModel folder, else ``OUT.json``."""
    out = Path(out)
    return out / METADATA_NAME if fmt == "savedmodel" else out.with_name(out.name + ".json")


def _format_of(path: Path) -> str:
    if path.is_dir():
        return "savedmodel"
    if path.suffix == ".tflite":
        return "tflite"
    if path.suffix == ".onnx":
        return "onnx"
    raise InputError(f"{path}: not an exported model (a SavedModel folder, .tflite or .onnx file)")


def read_export_metadata(path) -> dict:
    """The metadata written beside (or inside) an exported artifact."""
    path = Path(path)
    meta = metadata_path(path, _format_of(path))
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except OSError:
        raise ModelError(f"{meta}: export metadata not found (export with `tripletface export`)") from None
    except ValueError:
        raise ModelError(f"{meta}: export metadata is not valid JSON") from None


# --------------------------------------------------------------------------- writers

def _write_savedmodel(serve, model, out: Path) -> None:
    import tensorflow as tf

    module = tf.Module()
    module.model = model  # tracks the variables the function captures
    module.serve = serve
    tf.saved_model.save(module, str(out), signatures={"serving_default": serve.get_concrete_function()})


def _write_tflite(serve, out: Path, quantize: str | None) -> None:
    import logging

    import tensorflow as tf

    # Without trackable_obj the converter freezes the function's variables itself. TF 2.21 calls that
    # path deprecated (an absl warning, muted here), but passing the model as trackable_obj gives NaN
    # embeddings for this dynamic-shape uint8 graph; the parity tests guard the result.
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()])
    finally:
        absl.setLevel(level)
    if quantize in QUANTIZATIONS:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8 weights (dynamic-range quantisation)
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    out.write_bytes(converter.convert())


def _write_onnx(serve, out: Path, metadata: dict) -> None:
    try:
        import tf2onnx
    except ImportError:
        raise InputError("ONNX export needs tf2onnx and onnx: pip install 'tripletface[export]'") from None
    import tensorflow as tf

    # from_function, not from_keras: tf2onnx's Keras path targets tf.keras 2, while a tf.function of
    # the Keras 3 model converts as a plain TensorFlow graph
    spec = (tf.TensorSpec((None, None, None, 3), tf.uint8, name=INPUT_NAME),)
    model_proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=ONNX_OPSET,
                                                   output_path=None)
    prop = model_proto.metadata_props.add()
    prop.key, prop.value = "tripletface", json.dumps(metadata)
    out.write_bytes(model_proto.SerializeToString())


def export_model(model, out, fmt: str, quantize: str | None = None, flip_tta: bool | None = None,
                 overwrite: bool = False, fold_batch_norm: bool = True) -> Path:
    """Export ``model`` (a ``.keras`` path, a ``keras.Model`` or an :class:`Embedder`) to ``out``.

    Args:
        model: the tripletface model to export.
        out: the SavedModel folder, or the ``.tflite``/``.onnx`` file to write.
        fmt: ``savedmodel`` | ``tflite`` | ``onnx``.
        quantize: ``None``, or for ``tflite`` only ``int8`` (dynamic range) or ``float16``.
        flip_tta: average with the mirror image; ``None`` = the model's setting (as :class:`Embedder`).
        overwrite: replace an existing ``out``.
        fold_batch_norm: fold each BatchNorm that follows a convolution into it
            (:func:`tripletface.model.fold.fold_batch_norm`; the same embeddings within float rounding,
            a smaller and faster graph).

    Returns:
        ``out``. The write is atomic: a failed export leaves nothing behind.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {'|'.join(FORMATS)}, received: {fmt!r}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be None or one of {'|'.join(QUANTIZATIONS)}, received: {quantize!r}")
    if quantize is not None and fmt != "tflite":
        raise InputError(f"--quantize {quantize} is for --format tflite only, received --format {fmt}")
    from tripletface.inference.embedder import Embedder

    out = Path(out)
    suffix = {"tflite": ".tflite", "onnx": ".onnx"}.get(fmt)
    if suffix and out.suffix != suffix:
        raise InputError(f"{out}: a {fmt} export must end in {suffix}")
    source = model if isinstance(model, (str, os.PathLike)) else getattr(model, "path", None)
    if source:
        check_apart(source, out, "the model", "OUT")  # --overwrite must never delete the model it exports
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists (pass --overwrite to replace it)")
    if isinstance(model, Embedder):
        embedder = model
    elif isinstance(model, (str, os.PathLike)):
        embedder = Embedder.load(str(model))
    else:
        embedder = Embedder(model)
    tta = embedder.flip_tta if flip_tta is None else bool(flip_tta)
    net, folded = embedder.model, 0
    if fold_batch_norm:
        from tripletface.model.fold import fold_batch_norm as fold

        net, folded, _ = fold(net)
    serve = build_serving_function(net, flip_tta=tta)
    metadata = _export_metadata(embedder, fmt, quantize, tta, folded)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staged = tmp / out.name
        if fmt == "savedmodel":
            _write_savedmodel(serve, net, staged)
        elif fmt == "tflite":
            _write_tflite(serve, staged, quantize)
        else:
            _write_onnx(serve, staged, metadata)
        metadata_path(staged, fmt).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(staged, out)
        if fmt != "savedmodel":
            os.replace(metadata_path(staged, fmt), metadata_path(out, fmt))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- running an export

class ExportedModel:
    """An exported artifact behind one method: :meth:`embed` ``uint8 (N, H, W, 3)`` -> ``(N, D)``.

    Use :func:`load_exported` to open one. ``runtime`` is ``tensorflow``, ``tflite`` or
    ``onnxruntime``; ``metadata`` is the export metadata (threshold, image size, ...).
    """

    def __init__(self, path, fmt: str, run_fn, metadata: dict, runtime: str):
        self.path = Path(path)
        self.format = fmt
        self.metadata = metadata
        self.runtime = runtime
        self._run = run_fn

    def embed(self, images) -> np.ndarray:
        import numpy as np

        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must have shape (N, H, W, 3), received: {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, received dtype: {images.dtype}")
        if len(images) == 0:
            return np.zeros((0, int(self.metadata["output"]["shape"][1])), np.float32)
        return np.asarray(self._run(np.ascontiguousarray(images)), np.float32)


def _tflite_interpreter(path: Path):
    """TensorFlow's own interpreter (deprecated in favour of LiteRT, still in TF 2.21), else LiteRT's."""
    import warnings

    import tensorflow as tf

    if hasattr(tf.lite, "Interpreter"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # its deprecation notice
            return tf.lite.Interpreter(model_path=str(path))
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise InputError("running a .tflite export needs a TFLite interpreter: pip install ai-edge-litert") from None
    return Interpreter(model_path=str(path))


class _TFLiteRunner:
    """One interpreter, resized to each new batch shape; one call at a time (not thread-safe)."""

    def __init__(self, path: Path):
        self.interpreter = _tflite_interpreter(path)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.shape = None

    def __call__(self, images: "np.ndarray") -> np.ndarray:
        if images.shape != self.shape:
            self.interpreter.resize_tensor_input(self.input, images.shape, strict=False)
            self.interpreter.allocate_tensors()
            self.shape = images.shape
        self.interpreter.set_tensor(self.input, images)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output).copy()


def load_exported(path) -> ExportedModel:
    """Open an artifact written by :func:`export_model` with its runtime."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: exported model not found")
    fmt = _format_of(path)
    meta = read_export_metadata(path)
    if fmt == "savedmodel":
        import tensorflow as tf

        fn = tf.saved_model.load(str(path)).signatures["serving_default"]
        return ExportedModel(path, fmt, lambda x: fn(image=tf.constant(x))[OUTPUT_NAME].numpy(), meta, "tensorflow")
    if fmt == "tflite":
        return ExportedModel(path, fmt, _TFLiteRunner(path), meta, "tflite")
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("running an ONNX export needs onnxruntime: pip install 'tripletface[export]'") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ExportedModel(path, fmt, lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], meta, "onnxruntime")
