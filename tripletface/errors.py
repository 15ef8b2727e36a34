"""User-facing errors. The CLI prints ``error: <message>`` on one line and exits with ``exit_code``."""

from __future__ import annotations


class TripletfaceError(Exception):
    """Base class: a problem with the user's input, reported on one line (no traceback)."""

    exit_code = 2


class InputError(TripletfaceError):
    """A missing/empty folder, bad file list, unusable data set."""

    exit_code = 2


class ImageError(TripletfaceError):
    """A file that is missing, unreadable or not a usable image. Message names the file."""

    exit_code = 3


class NoFaceError(TripletfaceError):
    """An image in which no face was found."""

    exit_code = 4


class ModelError(TripletfaceError):
    """A model or gallery file that cannot be used (unsafe, truncated, wrong kind, mismatched)."""

    exit_code = 5


class TrainingError(TripletfaceError):
    """Training stopped: NaN/inf loss, bad data discovered at start."""

    exit_code = 6
