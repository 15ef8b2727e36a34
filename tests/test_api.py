"""The Python API (docs/API.md): every example runs as written, in a fresh interpreter, and prints
what it should; ``import tripletface`` names exactly the documented API and stays cheap."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """$TRIPLETFACE_DATA, else <repo>/../shared/data (as tests/conftest.py)."""
    env = os.environ.get("TRIPLETFACE_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"

API_DOC = REPO_ROOT / "docs" / "API.md"
DOCUMENTED = ["verify", "Embedder", "load_model", "crop_folder", "load_config", "train", "evaluate_pairs",
              "TripletLoss", "OnlineTripletLoss", "ContrastiveLoss", "MemoryBank"]


def examples() -> dict[str, str]:
    """``## title`` -> the python block under it."""
    out, title = {}, None
    for block in re.split(r"^## ", API_DOC.read_text(), flags=re.M)[1:]:
        title = block.splitlines()[0].strip()
        code = re.search(r"```python\n(.*?)```", block, flags=re.S)
        if code:
            out[title] = code.group(1)
    return out


def run_example(code: str, cwd: Path) -> list[str]:
    env = {**os.environ, "TRIPLETFACE_DATA": str(data_root()), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


NEEDS_DATA = {"Compare two photos", "Embed photos", "Crop a folder of photos", "Score a model on LFW pairs"}


def _compare(lines):
    assert lines[0].startswith("same "), lines
    assert lines[1] == "different False", lines


def _embed(lines):
    assert lines == ["(3, 128) float32 0", "unit length: True", "same person closer: True"]


def _crop(lines, cwd):
    assert lines[0] == "4 faces cropped"
    assert len(list((cwd / "crops").rglob("*.png"))) == 4
    assert "Zico/Zico_0001.png" in lines[1] and lines[2] == "True"
    assert sorted(p.name for p in (cwd / "photos" / "Zico").iterdir()) == ["Zico_0001.jpg", "Zico_0002.jpg"]


def _train(lines, cwd):
    assert lines == ["run/model.keras (None, 32) 2 epochs"]
    assert (cwd / "run" / "model.keras").is_file() and (cwd / "run" / "logs").is_dir()


def _score(lines):
    assert lines[0] == "20 10 matched"
    acc, auc = map(float, re.fullmatch(r"accuracy ([\d.]+) AUC ([\d.]+)", lines[1]).groups())
    assert 0.5 < acc <= 1 and 0.5 < auc <= 1  # the bundled model tells these 20 pairs apart


def _losses(lines):
    online = [float(v) for v in re.findall(r"[\d.]+", lines[0])]
    assert len(online) == 3 and online[-1] < online[0], lines  # the online loss trains the model
    assert lines[1] == "explicit loss >= 0: True"
    assert lines[2].startswith("contrastive ") and float(lines[2].split()[1]) >= 0


def _memory(lines):
    assert lines == ["filled 48 of 64"]


CHECKS = {"Compare two photos": _compare, "Embed photos": _embed, "Crop a folder of photos": _crop,
          "Train a model": _train, "Score a model on LFW pairs": _score, "The losses in any Keras model": _losses,
          "The cross-batch memory": _memory}


def test_every_example_has_a_check():
    assert sorted(examples()) == sorted(CHECKS)


@pytest.mark.parametrize("title", sorted(CHECKS))
def test_example_runs(title, tmp_path):
    if title in NEEDS_DATA and not (data_root() / "lfw-dev").is_dir():
        pytest.skip(f"real LFW data not found at {data_root()} (set TRIPLETFACE_DATA)")
    lines = run_example(examples()[title], tmp_path)
    check = CHECKS[title]
    check(lines, tmp_path) if check.__code__.co_argcount == 2 else check(lines)


def test_documented_names_are_the_api():
    import tripletface

    assert sorted(tripletface.__all__) == sorted(["__version__", *DOCUMENTED])
    table = API_DOC.read_text().split("## ")[0]
    for name in DOCUMENTED:
        assert f"`{name}" in table, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tripletface.nope  # noqa: B018


def test_import_is_cheap_and_names_resolve():
    from import_support import heavy_modules_after

    assert heavy_modules_after("import tripletface", heavy=("numpy", "tensorflow", "keras", "cv2")) == []
    code = ("import tripletface\n"
            "print(tripletface.load_config.__module__, tripletface.train.__module__)\n"
            "print(tripletface.OnlineTripletLoss.__module__, tripletface.MemoryBank.__module__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["tripletface.config.load tripletface.training.loop",
                                        "tripletface.losses.triplet tripletface.losses.memory_bank"]
