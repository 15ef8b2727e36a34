"""The embedding model: backbone -> global average pooling -> Dense -> L2 normalisation.

Input: float pixels in [0, 255], shape (H, W, 3), aligned faces (see ``tripletface.faces.align``).
The model starts with a :class:`FacePreprocess` layer that maps pixels to what the
backbone expects *and* carries the model's metadata (alignment settings, image size,
decision threshold), so a saved ``.keras`` file holds everything inference needs to
preprocess exactly as training did. Every custom layer is registered and serializable:
the model loads with ``safe_mode=True`` (no Lambda layers).

Example::

    model = build_embedding_model("mobilenet", embedding_dim=128, input_size=(112, 112))
    emb = model(np.zeros((2, 112, 112, 3), "float32"))  # (2, 128), unit rows
"""

from __future__ import annotations

import copy
import json
import os
import zipfile
from pathlib import Path

from tripletface.atomic import replaced_atomically
from tripletface.errors import ModelError, first_line

BACKBONES = ("resnet50", "efficientnet", "mobilenet", "small_cnn")

# What each backbone expects of its input, applied by FacePreprocess.
#   caffe:   RGB->BGR, minus ImageNet channel means (keras.applications.resnet50)
#   raw:     0..255 as is (EfficientNet rescales and normalises inside the model)
#   tf:      scale to [-1, 1] (MobileNetV2, small_cnn)
PREPROCESS_MODES = {"resnet50": "caffe", "efficientnet": "raw", "mobilenet": "tf", "small_cnn": "tf"}

_registered = False


def _register():
    """Define and register the custom layers (once, lazily: importing this module loads no Keras)."""
    global _registered, FacePreprocess, L2Normalize
    if _registered:
        return
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="tripletface")
    class FacePreprocess(keras.layers.Layer):
        """Pixels [0, 255] -> backbone input; holds the model's metadata dict.

        Args:
            mode: "caffe" | "raw" | "tf" (see ``PREPROCESS_MODES``).
            metadata: JSON-serialisable dict (alignment settings, threshold, ...).
            greyscale: replace every input by its luma (ITU-R 601) in all three channels
                first, so a model trained on grey faces sees grey faces in inference too.
        """

        def __init__(self, mode="tf", metadata=None, greyscale=False, **kwargs):
            super().__init__(**kwargs)
            if mode not in ("caffe", "raw", "tf"):
                raise ValueError(f"mode must be caffe|raw|tf, received: {mode!r}")
            self.mode = mode
            self.metadata = dict(metadata or {})
            self.greyscale = bool(greyscale)

        def call(self, inputs):
            x = ops.cast(inputs, self.compute_dtype)
            if self.greyscale:
                luma = ops.convert_to_tensor([[0.2989], [0.5870], [0.1140]], dtype=self.compute_dtype)
                x = ops.repeat(ops.matmul(x, luma), 3, axis=-1)
            if self.mode == "tf":
                return x / 127.5 - 1.0
            if self.mode == "caffe":
                x = ops.flip(x, axis=-1)  # RGB -> BGR
                mean = ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=self.compute_dtype)
                return x - mean
            return x

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            config = super().get_config()
            config.update({"mode": self.mode, "metadata": copy.deepcopy(self.metadata), "greyscale": self.greyscale})
            return config

    @keras.saving.register_keras_serializable(package="tripletface")
    class L2Normalize(keras.layers.Layer):
        """Unit-length rows, computed in float32 (safe under mixed precision)."""

        def __init__(self, axis=-1, epsilon=1e-12, **kwargs):
            kwargs.setdefault("dtype", "float32")
            super().__init__(**kwargs)
            self.axis = axis
            self.epsilon = epsilon

        def call(self, inputs):
            x = ops.cast(inputs, "float32")
            sq = ops.sum(ops.square(x), axis=self.axis, keepdims=True)
            return x * ops.rsqrt(ops.maximum(sq, self.epsilon))

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            config = super().get_config()
            config.update({"axis": self.axis, "epsilon": self.epsilon})
            return config

    globals()["FacePreprocess"] = FacePreprocess
    globals()["L2Normalize"] = L2Normalize
    _registered = True


def custom_objects() -> dict:
    _register()
    from tripletface import losses  # noqa: F401  (registers the loss classes)

    return {"FacePreprocess": FacePreprocess, "L2Normalize": L2Normalize}


def _small_cnn(inputs, width: float):
    """A plain VGG-style CNN (4 stages of two 3x3 convs + BN + ReLU): small, fast, for CPU runs."""
    import keras

    x = inputs
    for i, ch in enumerate((32, 64, 128, 256)):
        ch = max(8, int(ch * width))
        for j in range(2):
            strides = 2 if (j == 0 and i > 0) else 1
            x = keras.layers.Conv2D(ch, 3, strides=strides, padding="same", use_bias=False,
                                    name=f"stage{i}_conv{j}")(x)
            x = keras.layers.BatchNormalization(name=f"stage{i}_bn{j}")(x)
            x = keras.layers.ReLU(name=f"stage{i}_relu{j}")(x)
    return x


# Keras' MobileNetV2 builds its BatchNormalization layers with momentum 0.999: the moving
# statistics inference uses forget their initial (mean 0, variance 1) values over ~1000s of
# steps. Trained from scratch for a few hundred steps, inference then normalises with the
# wrong statistics and every face maps to nearly the same point (measured: the ablation's
# mobilenet row scored 0.505, inference-mode embeddings 1e-7 apart, training-mode 0.2 apart).
# From scratch we use Keras' default 0.99 (statistics settle in ~300 steps); pretrained
# weights bring their statistics and keep the architecture's value.
_SCRATCH_BN_MOMENTUM = 0.99


def _fast_batch_norm_statistics(base) -> None:
    import keras

    for layer in base._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.momentum > _SCRATCH_BN_MOMENTUM:
            layer.momentum = _SCRATCH_BN_MOMENTUM


def _check_weights(backbone: str, weights):
    if weights in (None, "imagenet"):
        if weights == "imagenet" and backbone == "small_cnn":
            raise ValueError("weights='imagenet' is not available for backbone 'small_cnn', received: 'imagenet'")
        return weights
    if isinstance(weights, (str, os.PathLike)):
        if not Path(weights).is_file():
            raise ModelError(f"{weights}: weights file not found")
        return str(weights)
    raise ValueError(f"weights must be 'imagenet', None or a file path, received: {weights!r}")


def build_embedding_model(backbone: str = "resnet50", embedding_dim: int = 128, input_size=(224, 224),
                          weights=None, dropout: float = 0.0, width: float = 1.0, metadata: dict | None = None,
                          greyscale: bool = False):
    """Build the embedding model.

    Args:
        backbone: "resnet50" (the original design), "efficientnet" (B0), "mobilenet" (V2) or
            "small_cnn" (a plain CNN sized for CPU training from scratch).
        embedding_dim: size of the embedding (Dense units).
        input_size: (height, width) of the aligned face input.
        weights: "imagenet" (downloaded by Keras; needs internet), None (random init) or the
            path of a local backbone weights file (Keras applications' "notop" .h5 format).
        dropout: dropout rate before the Dense layer.
        width: width multiplier (MobileNetV2 alpha; small_cnn channels).
        metadata: JSON-serialisable dict stored in the model (alignment settings etc.).
        greyscale: the model turns its input grey first (training and inference alike).

    Returns:
        A functional ``keras.Model`` mapping (B, H, W, 3) pixels in [0, 255] to (B, embedding_dim)
        unit-length float32 embeddings.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, received: {backbone!r}")
    if int(embedding_dim) <= 0:
        raise ValueError(f"embedding_dim must be > 0, received: {embedding_dim}")
    h, w = (int(input_size), int(input_size)) if isinstance(input_size, int) else map(int, input_size)
    if h < 32 or w < 32:
        raise ValueError(f"input_size must be at least 32x32, received: {input_size}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), received: {dropout}")
    weights = _check_weights(backbone, weights)
    _register()
    import keras

    meta = dict(metadata or {})
    meta.update({"backbone": backbone, "embedding_dim": int(embedding_dim), "image_size": [h, w],
                 "preprocess": PREPROCESS_MODES[backbone], "greyscale": bool(greyscale)})
    inputs = keras.Input((h, w, 3), name="image")
    # Under a mixed policy (mixed_bfloat16, mixed_float16) only the backbone computes in the low
    # precision: the preprocessing (exact channel means), the head (pooling, Dense projection) and
    # the L2 normalisation run in float32, so the loss receives float32 embeddings projected in
    # float32. Under the float32 policy the explicit dtype changes nothing.
    x = FacePreprocess(PREPROCESS_MODES[backbone], metadata=meta, greyscale=greyscale, name="preprocess",
                       dtype="float32")(inputs)
    if backbone == "small_cnn":
        x = _small_cnn(x, width)
    else:
        apps = keras.applications
        ctor = {"resnet50": apps.ResNet50, "efficientnet": apps.EfficientNetB0, "mobilenet": apps.MobileNetV2}[backbone]
        kw = {"alpha": width} if backbone == "mobilenet" else {}
        try:
            base = ctor(include_top=False, weights=weights, input_shape=(h, w, 3), **kw)
        except (OSError, ValueError) as e:
            raise ModelError(f"{backbone} weights {weights!r}: {first_line(e)}") from None
        if weights is None:
            _fast_batch_norm_statistics(base)
        x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap", dtype="float32")(x)  # casts the backbone's output
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout", dtype="float32")(x)
    x = keras.layers.Dense(int(embedding_dim), name="embedding", dtype="float32")(x)
    outputs = L2Normalize(name="l2_normalize", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"tripletface_{backbone}")


def preprocess_layer(model):
    _register()
    for layer in model.layers:
        if isinstance(layer, FacePreprocess):
            return layer
    raise ModelError(f"model {model.name!r} has no FacePreprocess layer: not a tripletface model")


def get_metadata(model) -> dict:
    return copy.deepcopy(preprocess_layer(model).metadata)


def update_metadata(model, **values) -> dict:
    """Merge ``values`` into the model's metadata (JSON-serialisable) and return the result."""
    json.dumps(values)  # fail early on values that can't be saved
    layer = preprocess_layer(model)
    layer.metadata.update(copy.deepcopy(values))
    return copy.deepcopy(layer.metadata)


def save_model(model, path) -> Path:
    """Save atomically to ``path`` (.keras): a crash never leaves a half-written model."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"model path must end in .keras, received: {str(path)!r}")
    with replaced_atomically(path, ".keras") as tmp:
        model.save(tmp)
    return path


# A .keras archive bigger than this when unpacked is refused before Keras unpacks it (zip bombs).
MAX_ARCHIVE_BYTES = 4 << 30
_MAX_CONFIG_BYTES = 64 << 20
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Keras' pseudo-classes for plain values in a config (no code, no module to import)
_KERAS_DATA_CLASSES = ("__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__slice__", "__ellipsis__")


def _check_archive(path: Path) -> None:
    """Refuse, before Keras reads it, a ``.keras`` file that is not a plain Keras archive of
    Keras and tripletface classes: members outside the archive (``../``, absolute), a size
    that unpacks past :data:`MAX_ARCHIVE_BYTES`, no ``config.json``, or a config naming a
    class from any other module (``os.system``, an unregistered custom layer) or a Lambda
    layer. Keras' ``safe_mode`` refuses most of these too; this check names the reason and
    does not depend on the Keras version getting every case right."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            for info in infos:
                name = info.filename
                if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
                    raise ModelError(f"{path}: refused: archive member {name[:100]!r} points outside the archive")
            total = sum(info.file_size for info in infos)
            if total > MAX_ARCHIVE_BYTES:
                raise ModelError(f"{path}: refused: the archive unpacks to {total} bytes "
                                 f"(limit {MAX_ARCHIVE_BYTES}; a zip bomb?)")
            names = {info.filename: info for info in infos}
            if "config.json" not in names:
                raise ModelError(f"{path}: not a Keras model archive (a zip without config.json)")
            if names["config.json"].file_size > _MAX_CONFIG_BYTES:
                raise ModelError(f"{path}: refused: config.json is {names['config.json'].file_size} bytes")
            raw = z.read("config.json")
    except ModelError:
        raise
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError, EOFError) as e:  # RuntimeError: encrypted
        raise ModelError(f"{path}: not a readable .keras archive ({first_line(e)})") from None
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ModelError(f"{path}: config.json is not valid JSON ({first_line(e, 200)})") from None
    try:
        _check_classes(config, path)
    except RecursionError:
        raise ModelError(f"{path}: refused: config.json is nested too deeply") from None


def _check_classes(obj, path: Path, layer: str = "?") -> None:
    """Every ``{"class_name": ...}`` in the config comes from Keras or tripletface, and none is a Lambda."""
    if isinstance(obj, list):
        for item in obj:
            _check_classes(item, path, layer)
        return
    if not isinstance(obj, dict):
        return
    if "class_name" in obj:
        cls, module, registered = obj.get("class_name"), obj.get("module"), obj.get("registered_name")
        inner = obj.get("config")
        if isinstance(obj.get("name"), str):
            layer = obj["name"]
        elif isinstance(inner, dict) and isinstance(inner.get("name"), str):
            layer = inner["name"]
        if cls in ("Lambda", "__lambda__") or (isinstance(registered, str) and registered.endswith("Lambda")):
            raise ModelError(f"{path}: refused: layer {layer!r} is a Lambda layer (arbitrary code); "
                             "only safe models load")
        keras_own = isinstance(module, str) and (module == "keras" or module.startswith("keras."))
        ours = (isinstance(module, str) and module.startswith("tripletface.")
                and isinstance(registered, str) and registered.startswith("tripletface>"))
        data = module is None and cls in _KERAS_DATA_CLASSES and registered is None
        if not (keras_own or ours or data):
            what = ".".join(str(x) for x in (module, cls) if x is not None) or repr(cls)
            if registered is not None:
                what += f" (registered as {registered!r})"
            raise ModelError(f"{path}: refused: layer {layer!r} uses {what[:150]}, which is not a Keras or "
                             "tripletface class (an unregistered custom object or code); only safe models load")
    for value in obj.values():
        _check_classes(value, path, layer)


def _not_a_keras_file(path: Path) -> ModelError:
    """The one-line error for a path that is not a .keras file, naming what it seems to be."""
    if path.is_dir():
        kind = "a TensorFlow SavedModel folder" if (path / "saved_model.pb").is_file() else "a folder"
        return ModelError(f"{path}: is {kind}, not a .keras model file (only .keras files load)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        return ModelError(f"{path}: cannot read model file ({e.strerror or e})")
    if head == _HDF5_SIGNATURE:
        return ModelError(f"{path}: is an HDF5 (.h5) file, not a .keras model file; only .keras files load "
                          "(re-save it with model.save('model.keras'))")
    return ModelError(f"{path}: not a .keras model file")


def load_model(path):
    """Load a tripletface ``.keras`` model with ``safe_mode=True``; a one-line ModelError otherwise.

    The archive is checked first (:func:`_check_archive`): only Keras and tripletface classes,
    no Lambda layer, no member outside the archive, no zip bomb.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if not path.is_file() or path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise _not_a_keras_file(path)
    _check_archive(path)
    custom = custom_objects()
    import keras

    try:
        model = keras.saving.load_model(path, custom_objects=custom, compile=False, safe_mode=True)
    except Exception as e:  # keras raises many kinds here; all mean 'this file is not usable'
        msg = first_line(e)
        if "lambda" in msg.lower() or "safe_mode" in msg:
            msg = "refused: it contains a Lambda layer (arbitrary code); only safe models load"
        raise ModelError(f"{path}: cannot load model ({msg[:300]})") from None
    if not isinstance(model, keras.Model):
        raise ModelError(f"{path}: not a Keras model")
    preprocess_layer(model)
    return model
