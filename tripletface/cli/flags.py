"""The flags several commands share, and the config flags: ``--preset/--config/--set``, a flag that
sets one config key, a range-checked number, the input folder, ``--flip-tta``, ``--no-progress``.

Every value is checked while parsing, so a bad one is a one-line usage error (exit 2) before
TensorFlow is imported or any file is read.
"""

from __future__ import annotations

import argparse

__all__ = ["add_config_arguments", "config_from_args", "number", "config_value", "add_config_flag",
           "add_input_argument", "resolve_input", "add_flip_argument", "add_progress_argument"]


def add_config_arguments(parser: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    """--preset / --config / --set, shared by every command that reads a Config. ``main`` builds
    (and so validates) the config before TensorFlow is imported or any file is read."""
    parser.add_argument("--preset", default=None,
                        help="named preset (seed, cpu, smoke, ...)" + (f"; default: {default_preset}"
                                                                        if default_preset else ""))
    parser.add_argument("--config", default=None, metavar="FILE", help="YAML config file")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys (train.epochs=2 or EPOCHS=2)")
    parser.set_defaults(_default_preset=default_preset, _config=None)


def config_from_args(args: argparse.Namespace, default_preset: str | None = None):
    """The command's validated Config (built once; ``main`` builds it before the command runs)."""
    from tripletface.config import load_config

    if getattr(args, "_config", None) is None:
        preset = args.preset or default_preset or getattr(args, "_default_preset", None)
        args._config = load_config(preset=preset, config_file=args.config, overrides=args.overrides)
    return args._config


# --------------------------------------------------------------------------- shared flags
# One spelling per concept across the commands (tests/config/test_config_schema.py checks them): the input
# folder is the positional INPUT_DIR (as face_recognition's CLI takes its folders) or --input-dir;
# flip averaging is --flip-tta/--no-flip-tta; no progress bar is --no-progress; JSON output is --json.


def number(typ: type = int, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, note: str = ""):
    """An argparse ``type`` for a numeric flag that checks its range while parsing (a one-line error
    ``argument --top-k: must be an integer >= 1, received: '0'``); NaN and infinity never pass."""
    from tripletface.config import Rule

    rule = Rule(lo, hi, lo_open, hi_open, note=note)

    def parse(text: str):
        try:
            value = typ(text)
        except (TypeError, ValueError, OverflowError):
            value = None
        if value is None or not rule.allows(value, typ):
            raise argparse.ArgumentTypeError(f"must be {rule.describe(typ)}, received: {text!r}")
        return value

    parse.__name__ = "integer" if typ is int else "number"
    parse.rule, parse.typ = rule, typ
    return parse


def config_value(key: str):
    """An argparse ``type`` for a flag that sets config ``key`` (``crop --size``): the value is checked
    against config.SCHEMA while parsing."""
    from tripletface.config import ConfigError, load_config

    def parse(text: str):
        try:
            cfg = load_config(overrides={key: text})
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        section, name = key.split(".", 1)
        return getattr(getattr(cfg, section), name)

    parse.__name__ = key
    parse.config_key = key
    return parse


class _SetConfig(argparse.Action):
    """A flag that stands for ``--set KEY=VALUE`` (``const`` is the key), in command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = values if isinstance(values, list) else [] if values is None else [values]
        namespace.overrides = [*(getattr(namespace, "overrides", None) or []), *(f"{self.const}={v}" for v in given)]


def add_config_flag(parser: argparse.ArgumentParser, *flags: str, key: str, help: str, **kwargs) -> None:
    """A flag (or, given no ``--`` name, a positional) that sets config ``key``, checked against
    config.SCHEMA while parsing; its choices and range come from there (needs
    :func:`add_config_arguments` on the same parser)."""
    from tripletface.config import allowed, choices

    try:
        kwargs.setdefault("choices", choices(key) or None)
    except KeyError:
        pass
    if flags[0].startswith("-"):
        kwargs["dest"] = f"_set_{key}"
    parser.add_argument(*flags, action=_SetConfig, const=key, type=config_value(key),
                        default=None, help=f"{help} ({key}: {allowed(key)})", **kwargs)


def add_input_argument(parser: argparse.ArgumentParser, help: str, *aliases: str, required: bool = True,
                       metavar: str = "INPUT_DIR", dest: str = "input_dir") -> None:
    """The input folder: positional ``INPUT_DIR`` or ``--input-dir DIR`` (plus the command's old
    spellings in ``aliases``); ``main`` puts the one given in ``args.<dest>``."""
    parser.add_argument(dest, nargs="?", metavar=metavar, default=None,
                        help=help + ("" if required else " (optional)"))
    parser.add_argument("--input-dir", *aliases, dest=f"_opt_{dest}", metavar="DIR", default=None,
                        help=f"same as {metavar}")
    parser.set_defaults(_input_arg=(dest, metavar, required))


def resolve_input(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Put the input folder given (positional or ``--input-dir``) in ``args.<dest>``; a usage error
    when both are given and differ, or when a required one is missing."""
    dest, metavar, required = args._input_arg
    positional, option = getattr(args, dest), getattr(args, f"_opt_{dest}")
    if positional is not None and option is not None and positional != option:
        parser.error(f"the input folder is given twice ({metavar} {positional!r} and --input-dir {option!r})")
    setattr(args, dest, positional if positional is not None else option)
    if required and getattr(args, dest) is None:
        parser.error(f"the input folder is required: {args._command} {metavar} (or --input-dir DIR)")


def add_flip_argument(parser: argparse.ArgumentParser, *aliases_off: str) -> None:
    """--flip-tta / --no-flip-tta (``args.flip_tta``: True, False, or None = the model's own setting)."""
    tta = parser.add_mutually_exclusive_group()
    tta.add_argument("--flip-tta", dest="flip_tta", action="store_true", default=None,
                     help="average each face with its mirror image (default: the model's setting)")
    tta.add_argument("--no-flip-tta", *aliases_off, dest="flip_tta", action="store_false",
                     help="no flip averaging")


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """--no-progress (alias --quiet): ``args.progress``."""
    parser.add_argument("--no-progress", "--quiet", dest="progress", action="store_false", default=True,
                        help="no progress bar")
