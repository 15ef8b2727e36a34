"""Fixtures of the tf.data pipeline tests: a folder of real LFW face crops and its index."""

import os
import shutil
from pathlib import Path

import pytest

from tripletface.data.index import index_folder

from crops_support import N_MULTI, SIZE


def _lfw_source(request) -> Path:
    try:  # the shared fixture, when tests/conftest.py provides it
        found = Path(request.getfixturevalue("lfw_dir"))
    except (pytest.FixtureLookupError, pytest.fail.Exception):
        env = os.environ.get("TRIPLETFACE_DATA")
        found = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    for cand in (found / "lfw-dev", found):
        if (cand / "Andre_Agassi").is_dir():
            return cand
    pytest.skip(f"LFW images not found under {found} (set TRIPLETFACE_DATA to the folder holding lfw-dev)")


def _crop(src: Path, dst: Path, size: int) -> None:
    from PIL import Image

    img = Image.open(src).convert("L").crop((61, 61, 189, 189)).resize((size, size), Image.BILINEAR)
    img.save(dst)


@pytest.fixture(scope="module")
def crops(request, tmp_path_factory) -> Path:
    """train/<identity>/<image>: 10 identities with 2-5 face crops (PNG 64x64, one identity as
    the original 250x250 JPEGs), 2 single-image identities, plus a hidden file and a text file."""
    src = _lfw_source(request)
    root = tmp_path_factory.mktemp("crops") / "train"
    names = sorted(os.listdir(src))
    multi = [n for n in names if len(os.listdir(src / n)) >= 3][:N_MULTI - 1]
    two = next(n for n in names if len(os.listdir(src / n)) == 2)
    singles = [n for n in names if len(os.listdir(src / n)) == 1][:2]
    for n in multi + [two] + singles:
        (root / n).mkdir(parents=True)
        files = sorted(os.listdir(src / n))[:5]
        for f in files:
            if n == multi[0]:
                shutil.copy(src / n / f, root / n / f)  # original JPEG: exercises the resize path
            else:
                _crop(src / n / f, root / n / (Path(f).stem + ".png"), SIZE[0])
    (root / multi[1] / ".hidden.png").write_bytes(b"not an image")
    (root / multi[1] / "notes.txt").write_text("ignored")
    return root


@pytest.fixture(scope="module")
def index(crops):
    return index_folder(crops)
