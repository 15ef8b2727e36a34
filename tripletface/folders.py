"""The user's input folders are never written into: one rule for every command that writes.

``crop IN IN/sub`` would put crops and a manifest inside the dataset (and a later crop of
``IN`` would take ``sub`` for an identity); ``export DIR --overwrite`` with the model inside
``DIR`` would delete the model. :func:`check_apart` refuses both shapes, before anything is
read or written: the output is the input, lies inside it, or contains it. Paths are compared
after resolving symlinks (``os.path.realpath``); they need not exist yet.

Used by ``crop`` (INPUT_DIR / OUTPUT_DIR), ``embed`` (INPUT_DIR / ``--output``), ``enroll``
(DIR / ``--gallery``) and ``export`` (``--model`` / OUT).
"""

from __future__ import annotations

import os

from tripletface.errors import InputError

__all__ = ["check_apart", "is_within"]


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when ``path`` is ``folder`` or lies under it (both resolved)."""
    p, f = os.path.realpath(path), os.path.realpath(folder)
    try:
        return os.path.commonpath([p, f]) == f
    except ValueError:  # different drives (Windows)
        return False


def check_apart(input_path, output_path, input_name: str = "the input folder",
                output_name: str = "the output") -> None:
    """Raise :class:`InputError` (exit 2, one line) unless ``output_path`` and ``input_path`` are apart.

    Apart means: not the same path, the output not inside the input, the input not inside
    the output.
    """
    if os.path.realpath(output_path) == os.path.realpath(input_path):
        raise InputError(f"{output_path}: {output_name} must differ from {input_name} {input_path}; tripletface "
                         "never writes into its input: choose a place outside it")
    if is_within(output_path, input_path):
        raise InputError(f"{output_path}: {output_name} is inside {input_name} {input_path}; tripletface never "
                         "writes into its input: choose a place outside it")
    if is_within(input_path, output_path):
        raise InputError(f"{output_path}: {output_name} contains {input_name} {input_path}; tripletface never "
                         "writes over its input: choose a place outside it")
