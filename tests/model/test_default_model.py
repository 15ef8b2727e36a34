"""The bundled default model: present, small, safe to load, calibrated, and used when --model is omitted."""

import json
import subprocess
import sys

import numpy as np

from tripletface.model.io import get_metadata, load_model
from tripletface.inference.embedder import DEFAULT_MODEL
from tripletface.faces.cropper import FaceCropper


def test_bundled_model_is_small_loads_safely_and_carries_its_settings():
    assert DEFAULT_MODEL.is_file() and DEFAULT_MODEL.stat().st_size <= 30 * 2**20
    assert (DEFAULT_MODEL.parent / "MODEL_CARD.md").is_file()
    meta = get_metadata(load_model(DEFAULT_MODEL))
    assert meta["metric"] == "euclidean" and 0.0 < meta["threshold"] < 2.0
    assert meta["threshold_source"] and meta["image_size"] == [64, 64]
    FaceCropper.from_settings(meta["alignment"])  # raw photos are aligned as in training


def test_compare_without_model_uses_the_bundled_one(lfw_dir):
    names = [d for d in sorted(lfw_dir.iterdir()) if len(list(d.iterdir())) >= 2][:2]
    a1, a2 = sorted(names[0].iterdir())[:2]
    b1 = sorted(names[1].iterdir())[0]
    results = []
    for x, y in ((a1, a2), (a1, b1), (a1, a1)):
        r = subprocess.run([sys.executable, "-m", "tripletface", "compare", str(x), str(y), "--json"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-1500:]
        results.append(json.loads(r.stdout))
    assert all(r["model"] == str(DEFAULT_MODEL) for r in results)
    assert results[2]["distance"] < 1e-3 and results[2]["verdict"] == "same"
    assert results[0]["distance"] < results[1]["distance"]  # same person closer than different people
    assert np.isclose(results[0]["threshold"], get_metadata(load_model(DEFAULT_MODEL))["threshold"])
