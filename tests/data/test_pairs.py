"""LFW pairs parser: the real dev pairs file, View 1 headers, malformed files, image paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tripletface.errors import ImageError, InputError
from tripletface.data.pairs import Pair, image_path, pair_key, pair_paths, read_pairs

REPO = Path(__file__).resolve().parents[2]


def _data_root() -> Path:
    env = os.environ.get("TRIPLETFACE_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture
def dev_pairs_file() -> Path:
    path = _data_root() / "lfw-dev-pairs.txt"
    if not path.is_file():
        pytest.skip(f"real LFW pairs file not found at {path} (set TRIPLETFACE_DATA to the folder holding it)")
    return path


@pytest.fixture
def dev_images() -> Path:
    path = _data_root() / "lfw-dev"
    if not path.is_dir():
        pytest.skip(f"real LFW images not found at {path} (set TRIPLETFACE_DATA to the folder holding lfw-dev)")
    return path


def write(tmp_path, text, name="pairs.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.lfw
def test_real_dev_pairs(dev_pairs_file):
    pairs = read_pairs(dev_pairs_file)
    assert len(pairs) == 3000
    assert sorted({p.fold for p in pairs}) == [0, 1, 2, 3, 4]
    for f in range(5):
        block = pairs[f * 600:(f + 1) * 600]
        assert all(p.fold == f for p in block)
        assert [p.same for p in block] == [True] * 300 + [False] * 300
    assert all(p.name_a == p.name_b for p in pairs if p.same)
    assert all(p.name_a != p.name_b for p in pairs if not p.same)
    assert pairs[0] == Pair("Abel_Pacheco", 1, "Abel_Pacheco", 4, True, 0)
    assert pairs[0].key_b == "Abel_Pacheco/Abel_Pacheco_0004"


@pytest.mark.lfw
def test_real_dev_pairs_images_exist(dev_pairs_file, dev_images):
    missing = []
    for p in read_pairs(dev_pairs_file):
        for name, i in ((p.name_a, p.idx_a), (p.name_b, p.idx_b)):
            path = dev_images / name / f"{name}_{i:04d}.jpg"
            if not path.is_file():
                missing.append(str(path))
    assert missing == []
    a, b = pair_paths(dev_images, read_pairs(dev_pairs_file)[0])
    assert a == dev_images / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg" and b.is_file()


def test_two_folds_whitespace_and_blank_lines(tmp_path):
    text = (
        "2 1\n"
        "Ann  1 2\n"
        "Bob\t3\tCid\t4\n"
        "\n"
        "Dan 2 5\n"
        "Eve 1 Fay 1   \n"
        "\n"
    )
    pairs = read_pairs(write(tmp_path, text))
    assert pairs == [
        Pair("Ann", 1, "Ann", 2, True, 0),
        Pair("Bob", 3, "Cid", 4, False, 0),
        Pair("Dan", 2, "Dan", 5, True, 1),
        Pair("Eve", 1, "Fay", 1, False, 1),
    ]


def test_view1_single_count_header(tmp_path):
    pairs = read_pairs(write(tmp_path, "2\nA 1 2\nB 1 3\nA 1 B 2\nC 4 D 5\n"))
    assert [p.same for p in pairs] == [True, True, False, False]
    assert {p.fold for p in pairs} == {0}


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("1 2\nA 1 2\nB 1 3 4\nA 1 B 2\nC 4 D 5\n", 3, "matched"),  # 4 fields where 3 expected
        ("1 1\nA 1 2\nA 1 B\n", 3, "mismatched"),  # 3 fields where 4 expected
        ("1 1\nA one 2\nA 1 B 2\n", 2, "integer"),
        ("1 1\nA 0 2\nA 1 B 2\n", 2, "start at 1"),
        ("1 2\nA 1 2\nB 1 3\nA 1 B 2\n", 4, "file ends"),  # one line short
        ("1 1\nA 1 2\nA 1 B 2\nC 1 2\n", 4, "extra"),
        ("x 1\nA 1 2\nA 1 B 2\n", 1, "integer"),
        ("1 2 3\nA 1 2\nA 1 B 2\n", 1, "header"),
        ("0 1\n", 1, ">= 1"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, text, line, words):
    path = write(tmp_path, text, "bad_pairs.txt")
    with pytest.raises(InputError, match=words) as info:
        read_pairs(path)
    assert f"bad_pairs.txt:{line}:" in str(info.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="nope.txt.*not found"):
        read_pairs(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="empty"):
        read_pairs(write(tmp_path, "\n\n"))


def test_pair_key_and_paths(tmp_path):
    assert pair_key("Zico", 1) == "Zico/Zico_0001"
    assert pair_key("Ann_Veneman", 11) == "Ann_Veneman/Ann_Veneman_0011"
    (tmp_path / "Ann").mkdir()
    (tmp_path / "Ann" / "Ann_0001.png").write_bytes(b"x")
    (tmp_path / "Ann" / "Ann_0002.jpg").write_bytes(b"x")
    pair = Pair("Ann", 1, "Ann", 2, True, 0)
    assert pair_paths(tmp_path, pair) == (tmp_path / "Ann" / "Ann_0001.png", tmp_path / "Ann" / "Ann_0002.jpg")
    # explicit extension: returned as is, with or without a dot, existing or not
    assert pair_paths(tmp_path, pair, ext=".png")[1] == tmp_path / "Ann" / "Ann_0002.png"
    assert image_path(tmp_path, "Ann", 2, "jpg") == tmp_path / "Ann" / "Ann_0002.jpg"
    with pytest.raises(ImageError, match="Ann_0003"):
        pair_paths(tmp_path, Pair("Ann", 1, "Ann", 3, True, 0))
    with pytest.raises(ValueError, match="ext"):
        image_path(tmp_path, "Ann", 1, ext=".")
