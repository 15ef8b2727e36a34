"""Typed configuration: dataclass sections, named presets, YAML files, per-key overrides.

A config is built as ``preset -> YAML file -> --set KEY=VALUE`` (later wins). Keys are
either sectioned (``train.epochs``) or the original design's flat names (``EPOCHS``).
Derived values (``data.p`` from batch size and ``k``) are computed by properties and
never written back.

Example::

    cfg = load_config(preset="cpu", overrides=["EPOCHS=2", "model.backbone=mobilenet"])
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from tripletface.errors import TripletfaceError

__all__ = [
    "ConfigError",
    "CropConfig",
    "DataConfig",
    "AugmentConfig",
    "ModelConfig",
    "LossConfig",
    "TrainConfig",
    "EvalConfig",
    "Config",
    "PRESETS",
    "ORIGINAL_KEYS",
    "load_config",
]


class ConfigError(TripletfaceError, ValueError):
    """A bad key or value in a config; the message names it."""


@dataclass
class CropConfig:
    """Face detection and alignment (``tripletface crop``)."""

    detector: str = "mtcnn"  # mtcnn | opencv
    size: int = 112  # side of the aligned square crop
    template: str = "arcface"  # arcface (5-point alignment) | box (no alignment: the detector box, squared)
    min_face_size: int = 20  # pixels, in the original image
    detect_scale: float = 0.5  # images are shrunk by this before detection (faster)
    min_score: float = 0.9
    detect_batch: int = 32  # images per detector call
    workers: int = 0  # 0 = number of CPU cores
    test_fraction: float = 0.0  # identity-disjoint test split; 0 = no split
    min_images_test: int = 2  # identities eligible for the test split need this many
    max_pixels: int = 40_000_000  # larger images are refused (decompression bombs)
    image_format: str = "png"  # png | jpg
    seed: int = 0


@dataclass
class DataConfig:
    """Where training data comes from and how batches are sampled."""

    train_dir: str = "cropped_data/train"
    test_triplets: str = "cropped_data/test_triplets.csv"
    source: str = "folder"  # folder | synthetic
    sampling: str = "pk"  # pk | triplets | triplets_file
    triplets_file: str = ""
    batch_size: int = 256  # for pk: P*K images; for triplets: triplets per batch
    k: int = 4  # images per identity in a P×K batch
    val_fraction: float = 0.1  # identities held out for validation
    val_pairs: int = 600  # validation pairs (half matched)
    cache: bool = True
    seed: int = 1234
    synthetic_identities: int = 64
    singletons: float = 0.0  # share of P×K identities drawn from one-image identities (augmented views)
    exclude_identities: str = ""  # file of identity names (one a line) never used in training
    # quality filter on crop's manifest.jsonl (0 = off): drop crops blurrier / more turned than this
    min_blur: float = 0.0  # variance of the crop's Laplacian (lfw-dev 112 crops: median 175, 1 % < 43)
    max_pose: float = 0.0  # |nose offset| in eye distances (lfw-dev: median 0.09, 5 % > 0.29)

    @property
    def p(self) -> int:
        return max(1, self.batch_size // self.k)


@dataclass
class AugmentConfig:
    """Train-branch augmentations, applied in this order. 0 or False disables one."""

    flip: bool = True
    rotation: float = 10.0  # max degrees, ±
    brightness: float = 0.2  # max delta on [0, 1] pixels
    contrast: float = 0.0  # max relative change, e.g. 0.3 -> [0.7, 1.3]
    color_jitter: float = 0.0  # saturation/hue strength; no-op on greyscale
    gaussian_blur: float = 0.0  # probability
    motion_blur: float = 0.0  # probability
    cutout: float = 0.0  # probability
    cutout_size: float = 0.3  # fraction of the side


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # resnet50 | efficientnet | mobilenet | small_cnn
    embedding_dim: int = 128
    image_size: tuple = (224, 224)
    weights: typing.Optional[str] = None  # "imagenet" | None | path to a weights file
    dropout: float = 0.0
    width: float = 1.0  # width multiplier (mobilenet alpha, small_cnn channels)


@dataclass
class LossConfig:
    name: str = "semi_hard"  # triplet | batch_all | batch_hard | semi_hard
    margin: float = 0.2
    distance: str = "squared_l2"  # squared_l2 | l2 | cosine
    soft_margin: bool = False
    memory_bank_size: int = 0  # 0 = no cross-batch memory
    memory_bank_start_step: int = 0  # fill the bank only after this many steps
    collapse_threshold: float = 1e-3  # mean distance under this is reported as collapse


@dataclass
class TrainConfig:
    epochs: int = 10
    steps_per_epoch: int = 50
    validation_steps: int = 10
    learning_rate: float = 1e-4
    optimizer: str = "adam"  # adam | adamw | sgd
    lr_schedule: str = "constant"  # constant | cosine
    warmup_epochs: int = 0
    weight_decay: float = 0.0
    mixed_precision: str = "float32"  # float32 | bfloat16 | float16 | auto
    checkpoint_dir: str = "checkpoints"
    tensorboard_logdir: str = "logs"
    seed: int = 42
    distribute: str = "none"  # none | mirrored | multiworker (tripletface.distribute; TF_CONFIG for multiworker)


@dataclass
class EvalConfig:
    folds: int = 10
    flip_tta: bool = True
    batch_size: int = 64
    far_targets: tuple = (1e-3, 1e-2)


@dataclass
class Config:
    crop: CropConfig = field(default_factory=CropConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# The original design's flat names and where they live.
ORIGINAL_KEYS = {
    "BATCH_SIZE": "data.batch_size",
    "STEPS_PER_EPOCH": "train.steps_per_epoch",
    "VALIDATION_STEPS": "train.validation_steps",
    "EPOCHS": "train.epochs",
    "IMAGE_SIZE": "model.image_size",
    "MARGIN": "loss.margin",
    "LEARNING_RATE": "train.learning_rate",
    "TRAIN_DIR": "data.train_dir",
    "TEST_TRIPLETS": "data.test_triplets",
    "CHECKPOINT_DIR": "train.checkpoint_dir",
    "TENSORBOARD_LOGDIR": "train.tensorboard_logdir",
}

# Presets override the dataclass defaults (which are the original design's values).
PRESETS: dict[str, dict[str, typing.Any]] = {
    # The original design exactly: explicit random triplets, standard triplet loss.
    "seed": {
        "data.sampling": "triplets",
        "loss.name": "triplet",
        "crop.size": 224,
    },
    # Sized for a 2-core CPU: small input, light backbone, short epochs.
    "cpu": {
        "model.backbone": "mobilenet",
        "model.image_size": (112, 112),
        "data.batch_size": 64,
        "data.k": 4,
        "train.steps_per_epoch": 20,
        "train.validation_steps": 4,
        "train.epochs": 5,
        "train.learning_rate": 1e-3,
        "loss.name": "semi_hard",
    },
    # The LFW-only CPU recipe (docs/RECIPE.md): trains from scratch on aligned LFW crops on 2 cores.
    "lfw-cpu": {
        "model.backbone": "small_cnn",
        "model.image_size": (64, 64),
        "model.width": 1.0,
        "data.batch_size": 128,
        "data.k": 4,
        "data.val_pairs": 400,
        "train.steps_per_epoch": 100,
        "train.validation_steps": 2,
        "train.epochs": 10,
        "train.learning_rate": 1e-3,
        "train.lr_schedule": "cosine",
        "loss.name": "semi_hard",
        "augment.rotation": 8.0,
    },
    # Smoke runs: tiny model, a few steps, no real data needed with data.source=synthetic.
    "smoke": {
        "model.backbone": "small_cnn",
        "model.image_size": (64, 64),
        "model.width": 0.25,
        "model.embedding_dim": 32,
        "data.batch_size": 16,
        "data.k": 4,
        "data.val_pairs": 64,
        "train.steps_per_epoch": 3,
        "train.validation_steps": 1,
        "train.epochs": 2,
        "train.learning_rate": 1e-3,
        "loss.name": "batch_all",
    },
}


# The demo's short training run (minutes on 2 cores; `tripletface demo`): the recipe, 3 epochs.
PRESETS["demo"] = {**PRESETS["lfw-cpu"], "train.epochs": 3}


def _sections() -> dict[str, type]:
    return {f.name: f.type if isinstance(f.type, type) else globals()[f.type] for f in dataclasses.fields(Config)}


def _field_type(section_cls: type, name: str):
    hints = typing.get_type_hints(section_cls)
    return hints[name]


def _coerce(key: str, value: typing.Any, typ) -> typing.Any:
    """Convert ``value`` (from YAML or a ``--set`` string) to the field's type."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(key, value, inner)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool):
                raise ValueError
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if typ is tuple:
            if isinstance(value, str):
                s = value.strip().strip("()[]")
                parts = [p for p in s.replace("x", ",").replace("X", ",").split(",") if p.strip()]
            elif isinstance(value, (list, tuple)):
                parts = list(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                parts = [value, value]
            else:
                raise ValueError
            if not parts:
                raise ValueError
            out = []
            for p in parts:
                fp = float(p)
                out.append(int(fp) if fp == int(fp) else fp)
            return tuple(out)
    except (TypeError, ValueError):
        pass
    else:
        return value
    tname = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"config key {key!r}: expected {tname}, received {value!r}")


def _resolve_key(key: str) -> tuple[str, str]:
    key = key.strip()
    full = ORIGINAL_KEYS.get(key, ORIGINAL_KEYS.get(key.upper()) if key.isupper() else None) or key
    if "." not in full:
        raise ConfigError(
            f"unknown config key {key!r}: use section.name (e.g. train.epochs) or one of "
            + ", ".join(sorted(ORIGINAL_KEYS))
        )
    section, name = full.split(".", 1)
    sections = _sections()
    if section not in sections:
        raise ConfigError(f"unknown config section {section!r} in key {key!r}; sections: {', '.join(sections)}")
    names = {f.name for f in dataclasses.fields(sections[section])}
    if name not in names:
        raise ConfigError(f"unknown config key {key!r}; {section} has: {', '.join(sorted(names))}")
    return section, name


def _set(cfg: Config, key: str, value: typing.Any) -> None:
    section, name = _resolve_key(key)
    obj = getattr(cfg, section)
    typ = _field_type(type(obj), name)
    setattr(obj, name, _coerce(key, value, typ))


def _validate(cfg: Config) -> None:
    def need(cond: bool, key: str, value, what: str):
        if not cond:
            raise ConfigError(f"config key {key!r} {what}, received: {value!r}")

    choices = {
        "crop.detector": ("mtcnn", "opencv"),
        "crop.template": ("arcface", "box"),
        "crop.image_format": ("png", "jpg"),
        "data.source": ("folder", "synthetic"),
        "data.sampling": ("pk", "triplets", "triplets_file"),
        "model.backbone": ("resnet50", "efficientnet", "mobilenet", "small_cnn"),
        "loss.name": ("triplet", "batch_all", "batch_hard", "semi_hard"),
        "loss.distance": ("squared_l2", "l2", "cosine"),
        "train.optimizer": ("adam", "adamw", "sgd"),
        "train.lr_schedule": ("constant", "cosine"),
        "train.mixed_precision": ("float32", "bfloat16", "float16", "auto"),
        "train.distribute": ("none", "mirrored", "multiworker"),
    }
    for key, allowed in choices.items():
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        need(v in allowed, key, v, "must be one of " + "|".join(allowed))
    positive = [
        "crop.size", "crop.detect_batch", "data.batch_size", "data.k", "model.embedding_dim",
        "train.epochs", "train.steps_per_epoch", "eval.folds", "eval.batch_size", "crop.max_pixels",
    ]
    for key in positive:
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        need(v > 0, key, v, "must be > 0")
    need(cfg.train.learning_rate > 0, "train.learning_rate", cfg.train.learning_rate, "must be > 0")
    need(cfg.loss.margin >= 0, "loss.margin", cfg.loss.margin, "must be >= 0")
    need(0 < cfg.crop.detect_scale <= 1, "crop.detect_scale", cfg.crop.detect_scale, "must be in (0, 1]")
    need(0 <= cfg.crop.test_fraction < 1, "crop.test_fraction", cfg.crop.test_fraction, "must be in [0, 1)")
    need(0 <= cfg.data.singletons < 1, "data.singletons", cfg.data.singletons, "must be in [0, 1)")
    need(cfg.data.min_blur >= 0, "data.min_blur", cfg.data.min_blur, "must be >= 0 (0 = off)")
    need(cfg.data.max_pose >= 0, "data.max_pose", cfg.data.max_pose, "must be >= 0 (0 = off)")
    need(0 <= cfg.data.val_fraction < 1, "data.val_fraction", cfg.data.val_fraction, "must be in [0, 1)")
    size = cfg.model.image_size
    need(len(size) == 2 and all(isinstance(s, int) and s >= 32 for s in size), "model.image_size", size,
         "must be two integers >= 32 (height, width)")
    need(cfg.data.k >= 2 or cfg.data.sampling != "pk", "data.k", cfg.data.k, "must be >= 2 for P×K sampling")
    need(cfg.data.batch_size >= cfg.data.k, "data.batch_size", cfg.data.batch_size, f"must be >= data.k ({cfg.data.k})")
    need(not (cfg.loss.name == "triplet" and cfg.loss.memory_bank_size > 0), "loss.memory_bank_size",
         cfg.loss.memory_bank_size, "needs online mining (loss.name batch_all|batch_hard|semi_hard), not 'triplet'")
    need(cfg.loss.name == "triplet" or cfg.data.sampling == "pk" or cfg.data.source == "synthetic",
         "data.sampling", cfg.data.sampling, f"must be 'pk' for online mining loss {cfg.loss.name!r}")
    need(cfg.loss.name != "triplet" or cfg.data.sampling != "pk", "loss.name", cfg.loss.name,
         "(explicit triplets) needs data.sampling triplets or triplets_file, not 'pk'")
    for name in ("rotation", "brightness", "contrast", "color_jitter", "gaussian_blur", "motion_blur", "cutout"):
        v = getattr(cfg.augment, name)
        need(v >= 0, f"augment.{name}", v, "must be >= 0")


def load_config(preset: str | None = None, config_file: str | Path | None = None,
                overrides: typing.Iterable[str] | dict | None = None) -> Config:
    """Build a validated :class:`Config` from a preset, a YAML file and ``KEY=VALUE`` overrides."""
    cfg = Config()
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(sorted(PRESETS))}")
        for k, v in PRESETS[preset].items():
            _set(cfg, k, v)
    if config_file:
        _apply_yaml(cfg, Path(config_file))
    if overrides:
        items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
        for k, v in items:
            _set(cfg, k, v)
    _validate(cfg)
    return cfg


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like KEY=VALUE")
    k, v = item.split("=", 1)
    return k, v


def _apply_yaml(cfg: Config, path: Path) -> None:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    preset = data.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"config file {path}: unknown preset {preset!r}")
        for k, v in PRESETS[preset].items():
            _set(cfg, k, v)
    sections = _sections()
    for key, value in data.items():
        if key in sections and isinstance(value, dict):
            for name, v in value.items():
                _set(cfg, f"{key}.{name}", v)
        else:
            _set(cfg, str(key), value)
