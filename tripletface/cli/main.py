"""The ``tripletface`` command line.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so
``tripletface --help`` starts without loading TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from tripletface import __version__
from tripletface.errors import TripletfaceError

# name -> (module, one-line help)
COMMANDS = {
    "crop": ("tripletface.faces.crop", "detect, align and crop faces: INPUT_DIR -> OUTPUT_DIR (+ manifest)"),
    "train": ("tripletface.training.train", "train an embedding model with triplet loss"),
    "evaluate": ("tripletface.evaluation.evaluate", "LFW-protocol verification and the original triplet metrics"),
    "calibrate": ("tripletface.evaluation.calibrate", "pick a decision threshold: on pairs for the model (1:1), or for a gallery at a target FPIR (1:N)"),
    "embed": ("tripletface.cli.embed", "embed every image of a folder into an .npz"),
    "compare": ("tripletface.cli.compare", "compare two face photos: distance, threshold, verdict"),
    "enroll": ("tripletface.inference.gallery", "add identities (one folder each) to a gallery"),
    "identify": ("tripletface.inference.gallery", "find the nearest identities of a face in a gallery"),
    "demo": ("tripletface.cli.demo", "the whole pipeline on LFW: crop, train, evaluate, compare"),
    "export": ("tripletface.inference.export", "export a model (uint8 aligned face in, embedding out): savedmodel|tflite|onnx"),
    "serve": ("tripletface.serve.app", "HTTP service: /verify, /embed, /identify, /healthz (FastAPI)"),
}


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, like every other error of the command line."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


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
    from tripletface.config.config import load_config

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
    from tripletface.config.config import Rule

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
    from tripletface.config.config import ConfigError, load_config

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
    from tripletface.config.config import allowed, choices

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


def _resolve_input(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tripletface", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tripletface {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module, _command=name)
        mod = importlib.import_module(module)
        if hasattr(mod, "add_arguments_for"):
            mod.add_arguments_for(name, p)
        else:
            mod.add_arguments(p)
    return parser


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and Keras with file descriptor 2 muted: TF 2.21 prints absl/oneDNN notices
    from C++ at load time that no environment variable silences, and they would bury our one-line
    errors. Python exceptions raised by the import still propagate."""
    if "tensorflow" in sys.modules or os.environ.get("TRIPLETFACE_VERBOSE_TF"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with _without_optional_keras_imports():
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        import tensorflow as tf

        if not os.environ.get("TF_CONFIG"):  # a multi-worker strategy must be created before the first op
            tf.constant(0)  # the second notice comes with the first op
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# Imported by Keras at load time only for features no command uses: its scikit-learn estimator
# wrappers (``keras.wrappers``: sklearn, and scipy through it) and its plotting helpers
# (``keras.visualization``: matplotlib.pyplot). Both are optional in Keras (``try: import ...
# except ImportError``). Measured (docs/PERFORMANCE.md, "Start-up"): 2.2 s of the 7.2 s that
# ``import tensorflow`` takes on this project's 2-core machine. The commands that do use them
# (evaluate, calibrate, report) import them afterwards, normally, when they need them.
OPTIONAL_KERAS_IMPORTS = ("sklearn", "matplotlib")


@contextlib.contextmanager
def _without_optional_keras_imports():
    """Within the block, ``import sklearn`` / ``import matplotlib`` raise ImportError (unless already
    imported, or ``TRIPLETFACE_FULL_IMPORT=1``); afterwards both import normally. A TensorFlow that
    failed half-way cannot be imported again in the same process (it aborts), so an ImportError
    here is a one-line error that names the switch, not a retry."""
    blocked = [] if os.environ.get("TRIPLETFACE_FULL_IMPORT") else \
        [m for m in OPTIONAL_KERAS_IMPORTS if m not in sys.modules]
    for m in blocked:
        sys.modules[m] = None  # the import system's "not importable" marker
    try:
        yield
    except ImportError as e:
        if not blocked:
            raise
        from tripletface.errors import TripletfaceError

        raise TripletfaceError(f"importing TensorFlow/Keras failed with {', '.join(blocked)} held back to start "
                               f"faster ({e}); run again with TRIPLETFACE_FULL_IMPORT=1") from None
    finally:
        for m in blocked:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "_input_arg", None):
            _resolve_input(parser, args)
    except SystemExit as e:  # --help, --version, or a one-line usage error (exit 2)
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    mod = importlib.import_module(args._module)
    try:
        if hasattr(args, "overrides"):  # every config value is checked before TensorFlow or any data
            config_from_args(args)
        import_tensorflow_quietly()
        if hasattr(mod, "run_for"):
            return int(mod.run_for(args._command, args) or 0)
        return int(mod.run(args) or 0)
    except TripletfaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a write the command did not expect to fail (read-only folder, full disk)
        from tripletface.errors import os_error

        err = os_error(e)
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
