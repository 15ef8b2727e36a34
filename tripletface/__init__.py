"""tripletface: train and use face-embedding models with triplet loss (TensorFlow / Keras 3).

The Python API (docs/API.md has a runnable example of each)::

    import tripletface
    tripletface.verify("a.jpg", "b.jpg")                 # 1:1 with the bundled model
    emb = tripletface.Embedder.load("model.keras")       # embed_files / embed_aligned
    tripletface.crop_folder("dataset", "cropped_data")   # detect, align, crop + manifest
    cfg = tripletface.load_config(preset="lfw-cpu", overrides=["TRAIN_DIR=cropped_data"])
    tripletface.train(cfg)                               # checkpoints, TensorBoard, model.keras
    tripletface.evaluate_pairs(emb, "lfw", "pairs.txt")  # LFW-protocol verification
    model.compile(loss=tripletface.OnlineTripletLoss("semi_hard"))   # the losses, in any Keras model

Importing the package does no work: each name is imported from its module on first use
(PEP 562), so ``import tripletface`` loads neither NumPy's users nor TensorFlow, and the
detector loads only when a function that needs it is called.
"""

import os as _os

__version__ = "0.1.0"

# oneDNN (Intel's CPU kernel library) in TensorFlow: TF turns it on by itself only on CPUs with
# AVX-512 VNNI/BF16 or AMX. On an AVX2-only CPU it stays off, yet there it trains the lfw-cpu
# step 1.41x faster (60.7 vs 42.9 img/s) and puts training at 1.36x the PyTorch peer
# (docs/PERFORMANCE.md, "Training step levers"). Only read when TensorFlow is first imported, so
# it is set here, before any of our modules imports it; a value the user set wins
# (TF_ENABLE_ONEDNN_OPTS=0 turns it off, e.g. for bit-exact comparisons with an older run).
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# public name -> the module that defines it
_API = {
    "load_model": "tripletface.model.io",
    "Embedder": "tripletface.inference.embedder",
    "verify": "tripletface.inference.matching",
    "crop_folder": "tripletface.faces.crop",
    "load_config": "tripletface.config",
    "train": "tripletface.training.loop",
    "evaluate_pairs": "tripletface.evaluation.evaluate",
    "TripletLoss": "tripletface.losses.triplet",
    "OnlineTripletLoss": "tripletface.losses.triplet",
    "ContrastiveLoss": "tripletface.losses.contrastive",
    "MemoryBank": "tripletface.losses.memory_bank",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'tripletface' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
