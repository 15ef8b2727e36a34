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


class DiskFullError(TripletfaceError):
    """The disk (or quota) filled up while writing; what was complete before is kept."""

    exit_code = 7


class OutputError(TripletfaceError):
    """An output file or folder that cannot be written (read-only, permission denied, a file in
    the way of a folder) or another operating-system error; nothing half-written is left."""

    exit_code = 8


def first_line(e: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its class name when the message is empty), cut to
    ``limit`` characters: what a one-line error quotes of a library's multi-line message."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:limit]


def os_error(e: OSError, what: str | None = None) -> TripletfaceError:
    """The one-line error for an :class:`OSError` met while writing ``what`` (e.g. "the report"):
    :class:`DiskFullError` when the disk or quota is full, else :class:`OutputError`."""
    where = e.filename if getattr(e, "filename", None) else None
    reason = e.strerror or first_line(e)
    head = f"{where}: " if where is not None else ""
    if disk_full(e):
        return DiskFullError(f"{head}no space left on device" + (f" while writing {what}" if what else "")
                             + "; free some space and run again")
    return OutputError(f"{head}" + (f"cannot write {what}: " if what else "") + reason)


def disk_full(e: BaseException) -> bool:
    """An error that means the disk (or quota) is full, from Python (errno) or from TensorFlow (text)."""
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or "Disk quota exceeded" in text
