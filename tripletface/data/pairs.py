"""Verification pairs in the standard LFW ``pairs.txt`` format, and where their images live.

The format (``pairs.txt``, ``pairsDevTest.txt``, our ``lfw-dev-pairs.txt``)::

    10      300                  <- header: number of folds, pairs of each kind per fold
    Abel_Pacheco    1    4       <- n matched lines:    name  i  j
    ...
    Abdel_Madi_Shabaneh  1  Dean_Barker  1   <- then n mismatched lines:  name1 i name2 j
    ...                          <- repeated for every fold

A header holding a single count ``n`` (the View 1 files ``pairsDevTrain.txt`` /
``pairsDevTest.txt``) means one fold. Fields are separated by any whitespace; image
numbers start at 1 and name the file ``name/name_{i:04d}.jpg``.

Example::

    pairs = read_pairs("../shared/data/lfw-dev-pairs.txt")
    path_a, path_b = pair_paths("../shared/data/lfw-dev", pairs[0])
    pairs[0].key_a                       # 'Abel_Pacheco/Abel_Pacheco_0001', the embedding key
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tripletface.data import decode as _imageio
from tripletface.errors import ImageError, InputError

__all__ = ["Pair", "read_pairs", "pair_key", "image_path", "pair_paths", "IMAGE_EXTENSIONS"]

# Tried in this order when no extension is given: LFW ships .jpg, ``tripletface crop`` writes .png
# (or .jpg); then the rest of the one list (tripletface.data.decode.IMAGE_EXTENSIONS), so a TIFF crop is found too.
IMAGE_EXTENSIONS = ("jpg", "png", "jpeg", *sorted(_imageio.IMAGE_EXTENSIONS - {"jpg", "png", "jpeg"}))


@dataclass(frozen=True)
class Pair:
    """One verification pair: image ``idx_a`` of ``name_a`` against image ``idx_b`` of ``name_b``.

    ``same`` is True for a matched pair (one person); ``fold`` is the 0-based fold it belongs to.
    """

    name_a: str
    idx_a: int
    name_b: str
    idx_b: int
    same: bool
    fold: int

    @property
    def key_a(self) -> str:
        return pair_key(self.name_a, self.idx_a)

    @property
    def key_b(self) -> str:
        return pair_key(self.name_b, self.idx_b)


def pair_key(name: str, i: int) -> str:
    """The embedding key of image ``i`` of ``name``: ``"name/name_0001"``.

    Same convention as ``tripletface embed``: path relative to the data root, without
    extension, with ``/`` separators.
    """
    return f"{name}/{name}_{int(i):04d}"


def _parse_int(token: str, path: Path, lineno: int, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise InputError(f"{path}:{lineno}: {what} must be an integer, got {token!r}") from None
    return value


def read_pairs(path) -> list[Pair]:
    """Read an LFW pairs file into a list of :class:`Pair`, in file order.

    Raises :class:`~tripletface.errors.InputError` naming the file and line number for a
    missing file, a bad header, a line with the wrong number of fields, a non-integer or
    non-positive image number, or too few / too many pair lines for the header.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: pairs file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read pairs file ({e})") from None

    # (line number, fields) of every non-blank line; blank lines (e.g. a trailing one) are ignored.
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise InputError(f"{path}: pairs file is empty")

    header_line, header = lines[0]
    if len(header) == 2:
        n_folds = _parse_int(header[0], path, header_line, "number of folds")
        per_fold = _parse_int(header[1], path, header_line, "pairs per fold")
    elif len(header) == 1:
        n_folds, per_fold = 1, _parse_int(header[0], path, header_line, "number of pairs")
    else:
        raise InputError(
            f"{path}:{header_line}: header must be 'folds<TAB>n' or 'n', got {len(header)} fields"
        )
    if n_folds < 1 or per_fold < 1:
        raise InputError(f"{path}:{header_line}: header counts must be >= 1, got {' '.join(header)}")

    body = lines[1:]
    expected = n_folds * 2 * per_fold
    if len(body) < expected:
        last = body[-1][0] if body else header_line
        raise InputError(
            f"{path}:{last}: header promises {expected} pair lines ({n_folds} folds x {per_fold} matched "
            f"+ {per_fold} mismatched), file ends after {len(body)}"
        )
    if len(body) > expected:
        raise InputError(
            f"{path}:{body[expected][0]}: unexpected extra line; header promises {expected} pair lines"
        )

    pairs: list[Pair] = []
    for k, (lineno, fields) in enumerate(body):
        fold, within = divmod(k, 2 * per_fold)
        matched = within < per_fold
        if matched:
            if len(fields) != 3:
                raise InputError(
                    f"{path}:{lineno}: expected a matched pair 'name i j' (fold {fold + 1}), "
                    f"got {len(fields)} fields"
                )
            name_a, ia, ib = fields
            name_b = name_a
        else:
            if len(fields) != 4:
                raise InputError(
                    f"{path}:{lineno}: expected a mismatched pair 'name1 i name2 j' (fold {fold + 1}), "
                    f"got {len(fields)} fields"
                )
            name_a, ia, name_b, ib = fields
        idx_a = _parse_int(ia, path, lineno, "image number")
        idx_b = _parse_int(ib, path, lineno, "image number")
        if idx_a < 1 or idx_b < 1:
            raise InputError(f"{path}:{lineno}: image numbers start at 1, got {ia} and {ib}")
        pairs.append(Pair(name_a, idx_a, name_b, idx_b, matched, fold))
    return pairs


def image_path(data_dir, name: str, i: int, ext: str | None = None) -> Path:
    """The file of image ``i`` of ``name`` under ``data_dir``: ``data_dir/name/name_{i:04d}.<ext>``.

    With ``ext=None`` the extensions in :data:`IMAGE_EXTENSIONS` are tried in order and the
    first existing file wins; :class:`~tripletface.errors.ImageError` names the missing file
    when none exists. With an explicit ``ext`` (``"png"`` or ``".png"``) the path is returned
    without checking that it exists.
    """
    stem = Path(data_dir) / pair_key(name, i)
    if ext is not None:
        ext = str(ext).lstrip(".")
        if not ext:
            raise ValueError(f"ext must be a file extension such as 'png', received: {ext!r}")
        return stem.with_name(f"{stem.name}.{ext}")
    for candidate in IMAGE_EXTENSIONS:
        path = stem.with_name(f"{stem.name}.{candidate}")
        if path.is_file():
            return path
    raise ImageError(f"{stem}.{{{','.join(IMAGE_EXTENSIONS)}}}: image not found")


def pair_paths(data_dir, pair: Pair, ext: str | None = None) -> tuple[Path, Path]:
    """The two image files of ``pair`` under ``data_dir`` (see :func:`image_path`)."""
    return (
        image_path(data_dir, pair.name_a, pair.idx_a, ext),
        image_path(data_dir, pair.name_b, pair.idx_b, ext),
    )
