"""The ``tripletface`` command line: the parser, the dispatch to a command, errors as one line.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so
``tripletface --help`` starts without loading TensorFlow. The flags commands share are in
:mod:`tripletface.cli.flags`; how TensorFlow is imported, in :mod:`tripletface.cli.startup`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tripletface import __version__
from tripletface.cli.flags import config_from_args, resolve_input
from tripletface.cli.startup import import_tensorflow_quietly
from tripletface.errors import TripletfaceError

# name -> (module, one-line help)
COMMANDS = {
    "crop": ("tripletface.cli.crop", "detect, align and crop faces: INPUT_DIR -> OUTPUT_DIR (+ manifest)"),
    "train": ("tripletface.cli.train", "train an embedding model with triplet loss"),
    "evaluate": ("tripletface.cli.evaluate", "LFW-protocol verification and the original triplet metrics"),
    "calibrate": ("tripletface.cli.calibrate", "pick a decision threshold: on pairs for the model (1:1), or for a gallery at a target FPIR (1:N)"),
    "embed": ("tripletface.cli.embed", "embed every image of a folder into an .npz"),
    "compare": ("tripletface.cli.compare", "compare two face photos: distance, threshold, verdict"),
    "enroll": ("tripletface.cli.enroll", "add identities (one folder each) to a gallery"),
    "identify": ("tripletface.cli.identify", "find the nearest identities of a face in a gallery"),
    "demo": ("tripletface.cli.demo", "the whole pipeline on LFW: crop, train, evaluate, compare"),
    "export": ("tripletface.cli.export", "export a model (uint8 aligned face in, embedding out): savedmodel|tflite|onnx"),
    "serve": ("tripletface.cli.serve", "HTTP service: /verify, /embed, /identify, /healthz (FastAPI)"),
}


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, like every other error of the command line."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tripletface", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tripletface {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module, _command=name)
        importlib.import_module(module).add_arguments(p)
    return parser


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "_input_arg", None):
            resolve_input(parser, args)
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
