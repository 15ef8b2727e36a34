"""Typed configuration: dataclass sections, named presets, YAML files, per-key overrides.

A config is built as ``preset -> YAML file -> --set KEY=VALUE`` (later wins); see
:func:`load_config`. The parts: :mod:`~tripletface.config.sections` (the dataclasses),
:mod:`~tripletface.config.schema` (what each key allows), :mod:`~tripletface.config.choice_lists`
(choice lists kept here), :mod:`~tripletface.config.presets`, :mod:`~tripletface.config.load`.
Importing this package loads neither NumPy nor TensorFlow.

Example::

    from tripletface.config import load_config
    cfg = load_config(preset="cpu", overrides=["EPOCHS=2", "model.backbone=mobilenet"])
"""

from tripletface.config.load import ORIGINAL_KEYS, load_config
from tripletface.config.presets import PRESETS
from tripletface.config.schema import SCHEMA, ConfigError, Rule, allowed, check_section, choices, config_keys
from tripletface.config.sections import (
    AugmentConfig,
    Config,
    CropConfig,
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
)

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
    "SCHEMA",
    "Rule",
    "config_keys",
    "allowed",
    "choices",
    "check_section",
    "load_config",
]
