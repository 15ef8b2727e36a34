"""The ``tripletface`` command line.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so
``tripletface --help`` starts without loading TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tripletface import __version__
from tripletface.errors import TripletfaceError

# name -> (module, one-line help)
COMMANDS = {
    "crop": ("tripletface.crop", "detect, align and crop faces: INPUT_DIR -> OUTPUT_DIR (+ manifest)"),
    "train": ("tripletface.train", "train an embedding model with triplet loss"),
    "evaluate": ("tripletface.evaluate", "LFW-protocol verification and the original triplet metrics"),
    "calibrate": ("tripletface.calibrate", "pick a decision threshold on pairs and store it in the model"),
    "embed": ("tripletface.embed", "embed every image of a folder into an .npz"),
    "compare": ("tripletface.compare", "compare two face photos: distance, threshold, verdict"),
    "enroll": ("tripletface.gallery", "add identities (one folder each) to a gallery"),
    "identify": ("tripletface.gallery", "find the nearest identities of a face in a gallery"),
    "demo": ("tripletface.demo", "the whole pipeline on LFW: crop, train, evaluate, compare"),
    "export": ("tripletface.export", "export a model (uint8 aligned face in, embedding out): savedmodel|tflite|onnx"),
    "serve": ("tripletface.serve", "HTTP service: /verify, /embed, /identify, /healthz (FastAPI)"),
}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset / --config / --set, shared by every command that reads a Config."""
    parser.add_argument("--preset", default=None, help="named preset (seed, cpu, smoke, ...)")
    parser.add_argument("--config", default=None, metavar="FILE", help="YAML config file")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys (train.epochs=2 or EPOCHS=2)")


def config_from_args(args: argparse.Namespace, default_preset: str | None = None):
    from tripletface.config import load_config

    return load_config(preset=args.preset or default_preset, config_file=args.config, overrides=args.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tripletface", description=__doc__.splitlines()[0])
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
        import keras  # noqa: F401
        import tensorflow as tf

        if not os.environ.get("TF_CONFIG"):  # a multi-worker strategy must be created before the first op
            tf.constant(0)  # the second notice comes with the first op
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    mod = importlib.import_module(args._module)
    try:
        import_tensorflow_quietly()
        if hasattr(mod, "run_for"):
            return int(mod.run_for(args._command, args) or 0)
        return int(mod.run(args) or 0)
    except TripletfaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
