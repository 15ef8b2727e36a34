"""Shared fixtures: the repository root and the real LFW data (skipped when absent)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # tests run from a checkout without `pip install -e .` too
    sys.path.insert(0, str(REPO_ROOT))
TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # the shared helpers (inference_support, ...) for tests in every subfolder
    sys.path.insert(0, str(TESTS_DIR))


def data_root() -> Path:
    """$TRIPLETFACE_DATA, else <repo>/../shared/data (a folder holding lfw-dev/)."""
    env = os.environ.get("TRIPLETFACE_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    """Path to lfw-dev/<Name>/<Name>_NNNN.jpg; skips the test when the data is absent."""
    path = data_root() / "lfw-dev"
    if not path.is_dir():
        pytest.skip(f"real LFW data not found at {path} (set TRIPLETFACE_DATA to a folder holding lfw-dev/)")
    return path
