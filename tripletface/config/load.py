"""Building a config: ``preset -> YAML file -> --set KEY=VALUE`` (later wins), then validated.

Keys are either sectioned (``train.epochs``) or the original design's flat names (``EPOCHS``,
:data:`ORIGINAL_KEYS`). Values from YAML or a ``--set`` string are converted to the field's type
(:func:`_coerce`) and checked against :data:`tripletface.config.schema.SCHEMA` as they are set.

Example::

    cfg = load_config(preset="cpu", overrides=["EPOCHS=2", "model.backbone=mobilenet"])
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from tripletface.config.presets import PRESETS
from tripletface.config.schema import ConfigError, allowed, check_value, validate
from tripletface.config.sections import Config, field_type, is_str_tuple, section_classes
from tripletface.errors import first_line

__all__ = ["ORIGINAL_KEYS", "load_config"]

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
        repeated: dict[str, list] = {}
        for k, v in items:
            section, name = _resolve_key(k)
            full = f"{section}.{name}"
            if full in ("data.train_dir", "data.train_dirs") and not isinstance(v, (list, tuple)):
                # TRAIN_DIR=a TRAIN_DIR=b (or data.train_dirs twice): several training folders
                given = repeated.setdefault(full, [])
                given.append(v)
                if len(given) > 1:
                    _set(cfg, "data.train_dirs", given if full == "data.train_dir" else [*cfg.data.train_dirs, v])
                    continue
            _set(cfg, k, v)
    validate(cfg)
    return cfg


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like KEY=VALUE")
    k, v = item.split("=", 1)
    return k, v


def _coerce(key: str, value: typing.Any, typ) -> typing.Any:
    """Convert ``value`` (from YAML or a ``--set`` string) to the field's type."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(key, value, inner)
    if is_str_tuple(typ):  # a list of strings: a YAML list, "[a, b]", or one string
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import yaml

                try:
                    value = yaml.safe_load(text)
                except yaml.YAMLError:
                    raise ValueError(f"{key}: not a list") from None
            else:
                return (text,) if text else ()
        if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                                    for v in value):
            return tuple(str(v) for v in value)
        raise ValueError(f"{key}: not a list of strings")
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
    except (TypeError, ValueError, OverflowError):  # OverflowError: int("inf")
        pass
    else:
        return value
    raise ValueError(f"{key}: not a {getattr(typ, '__name__', typ)}")  # _set words it with what is allowed


def _resolve_key(key: str) -> tuple[str, str]:
    key = key.strip()
    full = ORIGINAL_KEYS.get(key, ORIGINAL_KEYS.get(key.upper()) if key.isupper() else None) or key
    if "." not in full:
        raise ConfigError(
            f"unknown config key {key!r}: use section.name (e.g. train.epochs) or one of "
            + ", ".join(sorted(ORIGINAL_KEYS))
        )
    section, name = full.split(".", 1)
    sections = section_classes()
    if section not in sections:
        raise ConfigError(f"unknown config section {section!r} in key {key!r}; sections: {', '.join(sections)}")
    names = {f.name for f in dataclasses.fields(sections[section])}
    if name not in names:
        raise ConfigError(f"unknown config key {key!r}; {section} has: {', '.join(sorted(names))}")
    return section, name


def _set(cfg: Config, key: str, value: typing.Any) -> None:
    section, name = _resolve_key(key)
    if (section, name) == ("data", "train_dir") and isinstance(value, (list, tuple)):
        section, name = "data", "train_dirs"  # TRAIN_DIR: [a, b] in YAML: several folders
    full = f"{section}.{name}"
    obj = getattr(cfg, section)
    try:
        coerced = _coerce(key, value, field_type(type(obj), name))
    except ValueError:
        named = repr(key) if key == full else f"{key!r} ({full})"
        raise ConfigError(f"config key {named} must be {allowed(full)}, received: {value!r}") from None
    check_value(key, full, coerced)
    setattr(obj, name, coerced)


def _apply_yaml(cfg: Config, path: Path) -> None:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    preset = data.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"config file {path}: unknown preset {preset!r}")
        for k, v in PRESETS[preset].items():
            _set(cfg, k, v)
    sections = section_classes()
    for key, value in data.items():
        if key in sections and isinstance(value, dict):
            for name, v in value.items():
                _set(cfg, f"{key}.{name}", v)
        else:
            _set(cfg, str(key), value)
