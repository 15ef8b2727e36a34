"""``verify(a, b, model=None)``, the Python API of ``tripletface compare``, on real LFW photos with the
bundled model: the same photo twice is "same", two different people get the verdict (and distance)
the command gives, arrays and paths agree, and a photo without a face or a wrong input is an error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inference_support import grey_image, run_cli


@pytest.fixture(scope="module")
def photos(lfw_dir):
    """Two different people (Zico, Tony Blair) and a second photo of the first."""
    return lfw_dir / "Zico" / "Zico_0001.jpg", lfw_dir / "Tony_Blair" / "Tony_Blair_0001.jpg", \
        lfw_dir / "Zico" / "Zico_0002.jpg"


@pytest.fixture(scope="module")
def bundled():
    from tripletface.inference.embedder import Embedder

    return Embedder.load()


def _read(path) -> np.ndarray:
    from tripletface.data.decode import read_image

    return read_image(path)


def test_same_photo_twice_is_same_with_the_stored_threshold(photos, bundled):
    from tripletface.inference.matching import verify

    r = verify(photos[0], photos[0])  # model=None: the bundled model
    stored, source = bundled.decision_threshold()
    assert r["verdict"] == "same" and r["same"] is True
    assert r["distance"] < 1e-3
    assert r["threshold"] == stored and r["threshold_source"] == source
    assert r["metric"] == "euclidean" and r["model"] == bundled.name


@pytest.mark.parametrize("pair", [(0, 1), (0, 2)], ids=["different_people", "same_person"])
def test_verdict_is_the_compare_commands(capsys, photos, bundled, pair):
    from tripletface.inference.matching import verify

    a, b = photos[pair[0]], photos[pair[1]]
    rc, out, err = run_cli(capsys, "compare", a, b, "--json")
    assert rc == 0, err
    cmd = json.loads(out)
    r = verify(a, b, model=bundled)
    assert r["verdict"] == cmd["verdict"] and r["same"] == cmd["same"]
    assert r["distance"] == pytest.approx(cmd["distance"], abs=1e-6)
    assert r["threshold"] == cmd["threshold"] and r["threshold_source"] == cmd["threshold_source"]
    assert r["same"] == (r["distance"] < r["threshold"])


def test_arrays_and_paths_give_one_answer(photos, bundled):
    from tripletface.inference.matching import verify

    by_path = verify(photos[0], photos[1], model=bundled)
    by_array = verify(_read(photos[0]), _read(photos[1]), model=bundled)
    mixed = verify(photos[0], _read(photos[1]), model=bundled)
    for r in (by_array, mixed):
        assert r["verdict"] == by_path["verdict"]
        assert r["distance"] == pytest.approx(by_path["distance"], abs=1e-4)


def test_model_path_and_threshold_override(photos, bundled):
    from tripletface.inference.matching import verify

    r = verify(photos[0], photos[1], model=bundled.path, threshold=2.5)
    assert r["verdict"] == "same" and r["threshold"] == 2.5 and r["threshold_source"] == "--threshold"
    r = verify(photos[0], photos[0], model=bundled, threshold=0)
    assert r["verdict"] == "different"  # distance < 0 never holds


def test_no_face_and_bad_inputs_are_errors(tmp_path, photos, bundled):
    from tripletface.errors import ImageError, NoFaceError
    from tripletface.inference.matching import verify

    grey = grey_image(tmp_path / "grey.jpg")
    with pytest.raises(NoFaceError, match=f"^{grey}: no face"):
        verify(photos[0], grey, model=bundled)
    with pytest.raises(NoFaceError, match=r"^b \(array\): no face"):
        verify(photos[0], _read(grey), model=bundled)
    with pytest.raises(ImageError, match="file not found"):
        verify(tmp_path / "missing.jpg", photos[0], model=bundled)
    with pytest.raises(ValueError, match=r"a must be an image path or an \(H, W, 3\) uint8 RGB array, received: "
                                         r"array of shape \(4, 4\) dtype float64"):
        verify(np.zeros((4, 4)), photos[0], model=bundled)
    with pytest.raises(ValueError, match="b must be an image path .* received: int"):
        verify(photos[0], 3, model=bundled)
