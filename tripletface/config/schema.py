"""What each config key allows: :class:`Rule`, :data:`SCHEMA`, and the checks built on them.

Every key (``section.name``) has a :class:`Rule` in :data:`SCHEMA` (bool keys need none):
its range, its choices, or its length. A choice list is defined once: taken from the module
that implements the choice when that module is cheap to import
(``training.distribute.STRATEGIES``), else from :mod:`tripletface.config.choice_lists`.
:func:`validate` adds what one key allows given another.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

from tripletface.config.choice_lists import (
    BACKBONES,
    DATA_SOURCES,
    DETECTOR_NAMES,
    DISTANCE_NAMES,
    IMAGE_FORMATS,
    LOSS_NAMES,
    LR_SCHEDULES,
    OPTIMIZERS,
    PRECISIONS,
    SAMPLINGS,
    SOURCE_BALANCES,
    TEMPLATE_NAMES,
)
from tripletface.config.sections import field_type, is_str_tuple, section_classes
from tripletface.errors import TripletfaceError
from tripletface.training.distribute import STRATEGIES

__all__ = ["ConfigError", "Rule", "SCHEMA", "config_keys", "allowed", "choices", "check_section", "check_value",
           "validate"]


class ConfigError(TripletfaceError, ValueError):
    """A bad key or value in a config; the message names it."""


@dataclass(frozen=True)
class Rule:
    """What one config key allows; checked when a config is built (see :data:`SCHEMA`).

    Numbers: ``lo`` / ``hi`` bounds, inclusive unless ``lo_open`` / ``hi_open`` (``None`` =
    unbounded); NaN and infinity never pass. Strings: ``choices``, or ``empty=False`` for a value
    that must be given. Tuples: ``length`` = (fewest, most) elements, each an ``item`` checked
    against the bounds. ``note`` is appended to the description (units, what 0 means).
    """

    lo: typing.Optional[float] = None
    hi: typing.Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()
    empty: bool = True
    length: typing.Optional[tuple] = None
    item: type = float
    note: str = ""

    def _bounds(self) -> str:
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            return f" in {'(' if self.lo_open else '['}{lo:g}, {hi:g}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f" {'>' if self.lo_open else '>='} {lo:g}"
        if hi is not None:
            return f" {'<' if self.hi_open else '<='} {hi:g}"
        return ""

    def describe(self, typ) -> str:
        """What is allowed, in words: ``"a number in [0, 180]"``, ``"one of png|jpg"``."""
        note = f" {self.note}" if self.note else ""
        if typ is bool:
            return "true or false" + note
        if self.choices:
            return "one of " + "|".join(map(str, self.choices)) + note
        if typ is str or typing.get_origin(typ) is typing.Union:
            return ("a string" if self.empty else "a non-empty string") + note
        if typ is tuple or is_str_tuple(typ):
            lo_n, hi_n = self.length or (1, None)
            count = str(lo_n) if lo_n == hi_n else f"{lo_n} or more" if hi_n is None else f"{lo_n} to {hi_n}"
            kind = "non-empty strings" if is_str_tuple(typ) else "integers" if self.item is int else "numbers"
            return f"{count} {kind}{self._bounds()}{note}"
        return ("an integer" if typ is int else "a number") + self._bounds() + note

    def _number_ok(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        if self.lo is not None and not (v > self.lo if self.lo_open else v >= self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def allows(self, value, typ) -> bool:
        if typing.get_origin(typ) is typing.Union and value is None:  # Optional[...]: None is allowed
            return True
        if typ is bool:
            return isinstance(value, bool)
        if self.choices:
            return value in self.choices
        if is_str_tuple(typ):
            lo_n, hi_n = self.length or (1, None)
            return (isinstance(value, tuple) and lo_n <= len(value) <= (hi_n if hi_n is not None else len(value))
                    and all(isinstance(v, str) and v.strip() for v in value))
        if isinstance(value, str):
            return self.empty or value.strip() != ""
        if typ is tuple:
            lo_n, hi_n = self.length or (1, None)
            return (isinstance(value, tuple) and lo_n <= len(value) <= (hi_n if hi_n is not None else len(value))
                    and all((isinstance(v, int) or self.item is float) and self._number_ok(v) for v in value))
        return self._number_ok(value)


def _choice(*choices: str, note: str = "") -> Rule:
    return Rule(choices=choices, note=note)


_SEED = Rule(0, 2**32 - 1)  # NumPy and TensorFlow seeds
_PROBABILITY = Rule(0, 1, note="(a probability; 0 = off)")
_PATH = Rule(empty=False)
_OPTIONAL_PATH = Rule(note="('' = none)")

# Every config key and what it allows: the one place ranges live, and where each key's choice list is
# named. Bool keys need no entry (true/false is all they allow); every other key must have one
# (tests/config/test_config_schema.py).
SCHEMA: dict[str, Rule] = {
    "crop.detector": _choice(*DETECTOR_NAMES),
    "crop.size": Rule(8, 4096, note="(pixels)"),
    "crop.template": _choice(*TEMPLATE_NAMES),
    "crop.min_face_size": Rule(0, note="(pixels)"),
    "crop.detect_scale": Rule(0, 1, lo_open=True),
    "crop.min_score": Rule(0, 1),
    "crop.detect_batch": Rule(1),
    "crop.workers": Rule(0, note="(0 = the number of CPU cores)"),
    "crop.test_fraction": Rule(0, 1, hi_open=True, note="(0 = no split)"),
    "crop.min_images_test": Rule(1),
    "crop.max_pixels": Rule(1),
    "crop.image_format": _choice(*IMAGE_FORMATS),
    "crop.png_compression": Rule(0, 9, note="(zlib level; lossless at every level)"),
    "crop.seed": _SEED,
    "data.train_dir": _PATH,
    "data.test_triplets": _OPTIONAL_PATH,
    "data.source": _choice(*DATA_SOURCES),
    "data.sampling": _choice(*SAMPLINGS),
    "data.triplets_file": _OPTIONAL_PATH,
    "data.batch_size": Rule(1),
    "data.k": Rule(1),
    "data.val_fraction": Rule(0, 1, hi_open=True),
    "data.val_pairs": Rule(2, note="(half matched, half not)"),
    "data.seed": _SEED,
    "data.synthetic_identities": Rule(2),
    "data.singletons": Rule(0, 1, hi_open=True),
    "data.exclude_identities": _OPTIONAL_PATH,
    "data.min_blur": Rule(0, note="(0 = off)"),
    "data.max_pose": Rule(0, note="(0 = off)"),
    "data.min_face_size": Rule(0, note="(pixels in the original photo; 0 = off)"),
    "data.train_dirs": Rule(length=(0, None), note="(crop folders; empty = data.train_dir)"),
    "data.source_weights": Rule(0, length=(0, None),
                                note="(one per data.train_dirs entry; empty = data.source_balance)"),
    "data.source_balance": _choice(*SOURCE_BALANCES),
    "data.source_terms": Rule(length=(0, None), note="(one per data.train_dirs entry)"),
    "augment.rotation": Rule(0, 180, note="(degrees)"),
    "augment.brightness": Rule(0, 1),
    "augment.contrast": Rule(0, 1),
    "augment.color_jitter": Rule(0, 1),
    "augment.gaussian_blur": _PROBABILITY,
    "augment.motion_blur": _PROBABILITY,
    "augment.cutout": _PROBABILITY,
    "augment.cutout_size": Rule(0, 1, lo_open=True, note="(fraction of the side)"),
    "augment.greyscale": _PROBABILITY,
    "model.backbone": _choice(*BACKBONES),
    "model.embedding_dim": Rule(1, 8192),
    "model.image_size": Rule(32, 4096, length=(2, 2), item=int, note="(height, width)"),
    "model.weights": Rule(note="(imagenet, a weights file, or none)"),
    "model.dropout": Rule(0, 1, hi_open=True),
    "model.width": Rule(0, 16, lo_open=True),
    "loss.name": _choice(*LOSS_NAMES),
    "loss.margin": Rule(0),
    "loss.hard_from": Rule(0, 1, hi_open=True, note="(fraction of the training steps; 0 = off)"),
    "loss.contrastive_margin": Rule(-1, 1, hi_open=True, note="(a cosine similarity)"),
    "loss.distance": _choice(*DISTANCE_NAMES),
    "loss.memory_bank_size": Rule(0, note="(0 = no cross-batch memory)"),
    "loss.memory_bank_start_step": Rule(0),
    "loss.collapse_threshold": Rule(0),
    "loss.aux_weight": Rule(0, note="(0 = no margin-softmax head)"),
    "loss.aux_margin": Rule(0, 1),
    "loss.aux_scale": Rule(1, 128),
    "train.epochs": Rule(1),
    "train.steps_per_epoch": Rule(1),
    "train.time_budget": Rule(0, note="(minutes of training that train.epochs is fitted to at the start; 0 = off)"),
    "train.validation_steps": Rule(1),
    "train.learning_rate": Rule(0, lo_open=True),
    "train.optimizer": _choice(*OPTIMIZERS),
    "train.lr_schedule": _choice(*LR_SCHEDULES),
    "train.warmup_epochs": Rule(0),
    "train.weight_decay": Rule(0),
    "train.mixed_precision": _choice(*PRECISIONS),
    "train.checkpoint_dir": _PATH,
    "train.tensorboard_logdir": _PATH,
    "train.seed": _SEED,
    "train.distribute": _choice(*STRATEGIES),
    "eval.folds": Rule(2),
    "eval.batch_size": Rule(1),
    "eval.far_targets": Rule(0, 1, lo_open=True, hi_open=True, length=(1, None), note="(false accept rates)"),
}


def config_keys() -> dict[str, typing.Any]:
    """Every config key (``section.name``) and its type, from the dataclasses."""
    return {f"{s}.{f.name}": field_type(cls, f.name)
            for s, cls in section_classes().items() for f in dataclasses.fields(cls)}


def allowed(key: str) -> str:
    """What ``key`` (``section.name``) allows, in words."""
    section, name = key.split(".", 1)
    return SCHEMA.get(key, Rule()).describe(field_type(section_classes()[section], name))


def choices(key: str) -> tuple:
    """The choices of a key that has them (for command-line flags that set it)."""
    return SCHEMA[key].choices


def check_section(section: str, obj) -> None:
    """Check a section built in code (``AugmentConfig(rotation=...)``, not by :func:`load_config`)
    against :data:`SCHEMA`; raises :class:`ConfigError` naming the first bad key."""
    for f in dataclasses.fields(obj):
        check_value(f"{section}.{f.name}", f"{section}.{f.name}", getattr(obj, f.name))


def check_value(key: str, full: str, value: typing.Any) -> None:
    """Check ``value`` of key ``full`` (``section.name``) against :data:`SCHEMA`; the message names
    ``key`` as the user spelled it (``EPOCHS``) and ``full`` beside it when they differ."""
    section, name = full.split(".", 1)
    typ = field_type(section_classes()[section], name)
    if not SCHEMA.get(full, Rule()).allows(value, typ):
        named = repr(key) if key == full else f"{key!r} ({full})"
        raise ConfigError(f"config key {named} must be {allowed(full)}, received: {value!r}")


def validate(cfg) -> None:
    """Check every value of a :class:`~tripletface.config.sections.Config` against :data:`SCHEMA`,
    then what one key allows given another; raises :class:`ConfigError` naming the first bad key."""

    def need(cond: bool, key: str, value, what: str):
        if not cond:
            raise ConfigError(f"config key {key!r} {what}, received: {value!r}")

    for key in config_keys():  # each value against SCHEMA: its range or choices
        section, name = key.split(".", 1)
        check_value(key, key, getattr(getattr(cfg, section), name))
    # what one key allows given another
    need(cfg.data.k >= 2 or cfg.data.sampling != "pk", "data.k", cfg.data.k, "must be >= 2 for P×K sampling")
    need(cfg.data.batch_size >= cfg.data.k, "data.batch_size", cfg.data.batch_size, f"must be >= data.k ({cfg.data.k})")
    online = "|".join(n for n in LOSS_NAMES if n != "triplet")
    need(not (cfg.loss.name == "triplet" and cfg.loss.memory_bank_size > 0), "loss.memory_bank_size",
         cfg.loss.memory_bank_size, f"needs online mining (loss.name {online}), not 'triplet'")
    need(cfg.loss.hard_from == 0 or cfg.loss.name in ("semi_hard", "batch_all"), "loss.hard_from",
         cfg.loss.hard_from, f"switches a semi_hard or batch_all miner to batch_hard; loss.name is {cfg.loss.name!r}")
    need(cfg.loss.name == "triplet" or cfg.data.sampling == "pk" or cfg.data.source == "synthetic",
         "data.sampling", cfg.data.sampling, f"must be 'pk' for online mining loss {cfg.loss.name!r}")
    need(cfg.loss.name != "triplet" or cfg.data.sampling != "pk", "loss.name", cfg.loss.name,
         "(explicit triplets) needs data.sampling triplets or triplets_file, not 'pk'")

    # each worker of a multi-machine run would time its own steps and could plan other epochs than
    # the rest, and the workers must take every step together
    need(cfg.train.time_budget == 0 or cfg.train.distribute != "multiworker", "train.time_budget",
         cfg.train.time_budget, "needs one process (train.distribute none or mirrored); give multiworker "
         "runs train.epochs")
