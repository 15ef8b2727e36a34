"""Saving and loading tripletface models, their metadata, and the checks that make an untrusted
``.keras`` file safe to load.

* :func:`get_metadata` / :func:`update_metadata`: the dict the model's
  :class:`~tripletface.model.layers.FacePreprocess` layer carries (alignment settings, image size,
  threshold, ...), saved with the model.
* :func:`save_model`: atomic (a crash never leaves a half-written file).
* :func:`load_model`: ``safe_mode=True`` only, after :func:`_check_archive` has refused a file that
  is not a plain Keras archive of Keras and tripletface classes (members outside the archive, zip
  bombs, Lambda layers, classes from any other module); every failure is a one-line ModelError.

Example::

    path = save_model(model, "run/model.keras")
    model = load_model(path)
    get_metadata(model)["threshold"]
"""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import keras

from tripletface.atomic import replaced_atomically
from tripletface import losses
from tripletface.errors import ModelError, first_line
from tripletface.model.layers import FacePreprocess, L2Normalize

__all__ = ["MAX_ARCHIVE_BYTES", "get_metadata", "update_metadata", "preprocess_layer", "save_model", "load_model"]


def preprocess_layer(model):
    """The model's :class:`FacePreprocess` layer; a ModelError for a model that has none."""
    for layer in model.layers:
        if isinstance(layer, FacePreprocess):
            return layer
    raise ModelError(f"model {model.name!r} has no FacePreprocess layer: not a tripletface model")


def get_metadata(model) -> dict:
    """A copy of the model's metadata dict (changing it changes nothing: see :func:`update_metadata`)."""
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
    custom = {"FacePreprocess": FacePreprocess, "L2Normalize": L2Normalize, **losses.custom_objects()}
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
