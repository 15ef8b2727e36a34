"""`tripletface enroll` / `tripletface identify`: the 1:N round trip on real LFW photos, and the
gallery file's guards (no pickle, idempotent re-enroll, other model, hand-edited arrays)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from inference_support import THRESHOLD, error_lines, make_model, run_cli


@pytest.fixture(scope="module")
def setup(tmp_path_factory, lfw_dir):
    """A model, a second (different) model, and DIR/<identity>/<photo> for 3 LFW people (2 photos each),
    with one broken file; a third photo of each person is kept out as a query."""
    from inference_support import lfw_people

    d = tmp_path_factory.mktemp("gallery")
    people = lfw_people(lfw_dir, 3, min_images=3)
    enroll_dir = d / "people"
    queries = {}
    for name in people:
        photos = sorted((lfw_dir / name).glob("*.jpg"))
        (enroll_dir / name).mkdir(parents=True)
        for f in photos[:2]:
            (enroll_dir / name / f.name).symlink_to(f)
        queries[name] = photos[2]
    (enroll_dir / people[0] / "broken.jpg").write_text("not an image")
    return {"model": make_model(d / "a.keras"), "other_model": make_model(d / "b.keras"), "dir": enroll_dir,
            "people": people, "queries": queries, "tmp": d}


@pytest.fixture(scope="module")
def gallery(setup, tmp_path_factory):
    from tripletface.cli.main import main

    path = tmp_path_factory.mktemp("g") / "people.npz"
    assert main(["enroll", "--model", str(setup["model"]), "--gallery", str(path), str(setup["dir"])]) == 0
    return path


def _load(path):
    with np.load(path, allow_pickle=False) as z:  # plain arrays: never needs pickle
        return {k: z[k] for k in z.files}


def test_enroll_writes_plain_npz(setup, gallery):
    g = _load(gallery)
    assert sorted(g) == ["embeddings", "keys", "meta", "names"]
    n = 2 * len(setup["people"])  # the broken file is not enrolled
    assert g["embeddings"].shape == (n, 16) and g["embeddings"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(g["embeddings"], axis=1), 1.0, atol=1e-5)
    assert sorted(set(g["names"].tolist())) == sorted(setup["people"])
    assert all(k.startswith(f"{n}/") for k, n in zip(g["keys"].tolist(), g["names"].tolist()))
    meta = json.loads(str(g["meta"]))
    assert meta["format"] == "tripletface-gallery/1" and meta["dim"] == 16 and meta["index"] == "exact"
    assert len(meta["model_fingerprint"]) == 16


def test_identify_round_trip(capsys, setup, gallery):
    person = setup["people"][1]
    rc, out, err = run_cli(capsys, "identify", "--model", setup["model"], "--gallery", gallery,
                           setup["queries"][person], "--json")
    assert rc == 0, err
    r = json.loads(out)
    names = [m["identity"] for m in r["matches"]]
    assert sorted(names) == sorted(setup["people"])  # top-5 of 3 identities: all, once each
    dists = [m["distance"] for m in r["matches"]]
    assert dists == sorted(dists) and all(0 <= x <= 2 for x in dists)
    assert [m["match"] for m in r["matches"]] == [x < THRESHOLD for x in dists]
    assert r["threshold"] == THRESHOLD and r["gallery_size"] == 6
    assert r["identity"] == (names[0] if dists[0] < THRESHOLD else "unknown")

    rc, out, _ = run_cli(capsys, "identify", "--model", setup["model"], "--gallery", gallery,
                         setup["queries"][person], "--json", "--top-k", "1")
    assert rc == 0 and [m["identity"] for m in json.loads(out)["matches"]] == names[:1]


def test_identify_enrolled_photo_finds_its_person(capsys, setup, gallery):
    person = setup["people"][2]
    photo = sorted((setup["dir"] / person).glob("*.jpg"))[0]
    rc, out, _ = run_cli(capsys, "identify", "--model", setup["model"], "--gallery", gallery, photo, "--json")
    r = json.loads(out)
    assert rc == 0 and r["identity"] == person and r["matches"][0]["distance"] < 1e-5


def test_identify_threshold_zero_is_unknown(capsys, setup, gallery):
    rc, out, _ = run_cli(capsys, "identify", "--model", setup["model"], "--gallery", gallery,
                         setup["queries"][setup["people"][0]], "--threshold", "0")
    assert rc == 0
    assert out.splitlines()[0].split() == ["identity:", "unknown"]
    assert "0.0000 (--threshold)" in out.splitlines()[1]


def test_reenroll_is_idempotent(capsys, setup, tmp_path):
    path = tmp_path / "g.npz"
    rc, out, _ = run_cli(capsys, "enroll", "--model", setup["model"], "--gallery", path, setup["dir"])
    assert rc == 0 and "(6 new, 0 replaced, 1 failed)" in out
    first = _load(path)
    rc, out, _ = run_cli(capsys, "enroll", "--model", setup["model"], "--gallery", path, setup["dir"])
    assert rc == 0 and "(0 new, 6 replaced, 1 failed)" in out and "holds 6 images of 3 identities" in out
    second = _load(path)
    assert second["keys"].tolist() == first["keys"].tolist()
    assert second["names"].tolist() == first["names"].tolist()
    np.testing.assert_allclose(second["embeddings"], first["embeddings"], atol=1e-6)


def test_gallery_of_another_model_is_refused(capsys, setup, gallery):
    before = gallery.read_bytes()
    query = setup["queries"][setup["people"][0]]
    rc, out, err = run_cli(capsys, "identify", "--model", setup["other_model"], "--gallery", gallery, query)
    assert rc == 5 and out == ""
    assert len(error_lines(err)) == 1
    assert error_lines(err)[0].startswith(f"error: {gallery}: gallery was built by another model")
    rc, _, err = run_cli(capsys, "enroll", "--model", setup["other_model"], "--gallery", gallery, setup["dir"])
    assert rc == 5 and "another model" in err
    assert gallery.read_bytes() == before  # untouched


@pytest.mark.parametrize("edit, needle", [
    ("drop_name", "gallery arrays disagree in length (embeddings 6, names 5, keys 6)"),
    ("dimension", "embedding dimension 8 does not match the gallery's dim 16"),
    ("pickle", "unreadable gallery"),
    ("no_meta", "missing arrays: meta"),
    ("nan", "non-finite"),
])
def test_hand_edited_gallery_is_refused(capsys, setup, gallery, tmp_path, edit, needle):
    g = _load(gallery)
    if edit == "drop_name":
        g["names"] = g["names"][:-1]
    elif edit == "dimension":
        g["embeddings"] = g["embeddings"][:, :8]
    elif edit == "pickle":
        g["names"] = np.array(g["names"].tolist(), dtype=object)
    elif edit == "no_meta":
        del g["meta"]
    elif edit == "nan":
        g["embeddings"][0, 0] = np.nan
    edited = tmp_path / "edited.npz"
    np.savez(edited, **g)
    query = setup["queries"][setup["people"][0]]
    rc, out, err = run_cli(capsys, "identify", "--model", setup["model"], "--gallery", edited, query)
    assert rc == 5 and out == ""
    assert len(error_lines(err)) == 1 and error_lines(err)[0].startswith(f"error: {edited}: ") and needle in err


def test_identify_input_errors(capsys, setup, gallery, tmp_path):
    query = setup["queries"][setup["people"][0]]
    rc, _, err = run_cli(capsys, "identify", "--model", setup["model"], "--gallery", tmp_path / "none.npz", query)
    assert rc == 2 and "gallery not found" in err
    rc, _, err = run_cli(capsys, "identify", "--model", setup["model"], "--gallery", gallery, tmp_path / "x.jpg")
    assert rc == 3 and error_lines(err) == [f"error: {tmp_path / 'x.jpg'}: file not found"]
    grey = tmp_path / "grey.jpg"
    from inference_support import grey_image

    grey_image(grey)
    rc, out, err = run_cli(capsys, "identify", "--model", setup["model"], "--gallery", gallery, grey,
                           "--threshold", "4")
    assert rc == 4 and out == "" and error_lines(err)[0].startswith(f"error: {grey}: no face found")
    rc, _, err = run_cli(capsys, "identify", "--model", setup["model"], "--gallery", gallery, query, "--top-k", "0")
    assert rc == 2 and "--top-k" in err


def test_enroll_needs_identity_folders(capsys, setup, tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(setup["queries"][setup["people"][0]].read_bytes())
    rc, _, err = run_cli(capsys, "enroll", "--model", setup["model"], "--gallery", tmp_path / "g.npz",
                         tmp_path / "flat")
    assert rc == 2 and "no identity folders" in err
    assert not (tmp_path / "g.npz").exists()


# --------------------------------------------------------------------------- library level


def _random_gallery(n_people=40, per=5, dim=16, seed=0):
    from tripletface.inference.gallery import Gallery

    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n_people * per, dim)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    names = [f"p{i // per:03d}" for i in range(len(e))]
    g = Gallery(np.zeros((0, dim), np.float32), np.zeros(0, "<U1"), np.zeros(0, "<U1"), {"dim": dim})
    g.add([f"{n}/{i}" for i, n in enumerate(names)], names, e)
    return g, rng


def test_add_replaces_by_key():
    g, rng = _random_gallery(n_people=3, per=2)
    assert len(g) == 6
    new = rng.normal(size=(2, 16)).astype(np.float32)
    added, replaced = g.add(["p000/0", "p009/x"], ["p000", "a_much_longer_name_than_before"], new)
    assert (added, replaced) == (1, 1) and len(g) == 7
    np.testing.assert_array_equal(g.embeddings[0], new[0])
    assert g.names[-1] == "a_much_longer_name_than_before"  # not truncated to the old width


def _brute_force(g, q, top_k):
    best = {}
    for name, row in zip(g.names.tolist(), g.embeddings):
        best[name] = min(best.get(name, np.inf), float(np.linalg.norm(row.astype(np.float64) - q)))
    return sorted(best.items(), key=lambda t: t[1])[:top_k]


@pytest.mark.parametrize("crowd", [0, 400])
def test_nearest_identities_exact_matches_brute_force(crowd):
    """Exact search against a plain loop; ``crowd`` rows of one person around the query fill the
    first candidates, so the search must widen beyond them to find the other identities."""
    from tripletface.inference.search import nearest_identities

    g, rng = _random_gallery()
    q = rng.normal(size=16).astype(np.float32)
    q /= np.linalg.norm(q)
    if crowd:
        near = q + rng.normal(scale=0.01, size=(crowd, 16)).astype(np.float32)
        g.add([f"crowd/{i}" for i in range(crowd)], ["crowd"] * crowd, near)
    for top_k in (1, 5, 60):
        got = nearest_identities(g, q, top_k=top_k)
        want = _brute_force(g, q, top_k)
        assert [n for n, _ in got] == [n for n, _ in want]
        np.testing.assert_allclose([x for _, x in got], [x for _, x in want], rtol=1e-9)
    g, rng = _random_gallery()
    with pytest.raises(ValueError, match="top_k"):
        nearest_identities(g, q, top_k=0)


def test_faiss_index_agrees_with_exact():
    pytest.importorskip("faiss", reason="faiss-cpu is optional (pip install 'tripletface[faiss]')")
    from tripletface.inference.search import nearest_identities

    g, rng = _random_gallery()
    for _ in range(5):
        q = rng.normal(size=16).astype(np.float32)
        exact = nearest_identities(g, q, top_k=5)
        approx = nearest_identities(g, q, top_k=5, index="faiss")
        assert [n for n, _ in approx] == [n for n, _ in exact]
        np.testing.assert_allclose([x for _, x in approx], [x for _, x in exact], rtol=1e-4)


def test_faiss_missing_is_a_clean_error(capsys, setup, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError, installed or not
    rc, out, err = run_cli(capsys, "enroll", "--model", setup["model"], "--gallery", tmp_path / "g.npz",
                           setup["dir"], "--index", "faiss")
    assert rc == 2 and error_lines(err) == [
        "error: the faiss index needs the faiss-cpu package: pip install 'tripletface[faiss]' "
        "(or use the default exact search: --index exact)"]
    assert not (tmp_path / "g.npz").exists()


def test_faiss_gallery_round_trip(capsys, setup, tmp_path):
    pytest.importorskip("faiss", reason="faiss-cpu is optional (pip install 'tripletface[faiss]')")
    path = tmp_path / "g.npz"
    rc, _, err = run_cli(capsys, "enroll", "--model", setup["model"], "--gallery", path, setup["dir"],
                         "--index", "faiss")
    assert rc == 0, err
    assert len(list(tmp_path.glob("g.*.faiss"))) == 1 and json.loads(str(_load(path)["meta"]))["index"] == "faiss"
    query = setup["queries"][setup["people"][1]]
    results = {}
    for index in ("faiss", "exact"):
        rc, out, err = run_cli(capsys, "identify", "--model", setup["model"], "--gallery", path, query, "--json",
                               *(["--index", "exact"] if index == "exact" else []))
        assert rc == 0 and "missing" not in err
        results[index] = json.loads(out)
    assert results["faiss"]["index"] == "faiss"  # the gallery's choice by default
    (tmp_path / "people" / "Extra").mkdir(parents=True)
    (tmp_path / "people" / "Extra" / "x.jpg").symlink_to(setup["queries"][setup["people"][0]])
    rc, _, err = run_cli(capsys, "enroll", "--model", setup["model"], "--gallery", path, tmp_path / "people")
    assert rc == 0, err
    assert len(list(tmp_path.glob("g.*.faiss"))) == 1  # the index of the old rows is gone
    assert [m["identity"] for m in results["faiss"]["matches"]] == [m["identity"] for m in results["exact"]["matches"]]


def test_enroll_of_nothing_usable_creates_no_gallery(capsys, setup, tmp_path):
    from inference_support import grey_image

    (tmp_path / "people" / "Nobody").mkdir(parents=True)
    grey_image(tmp_path / "people" / "Nobody" / "grey.jpg")
    rc, _, err = run_cli(capsys, "enroll", "--model", setup["model"], "--gallery", tmp_path / "g.npz",
                         tmp_path / "people")
    assert rc == 2 and "none of the images could be enrolled (1 failed)" in err
    assert f"skipped {tmp_path / 'people' / 'Nobody' / 'grey.jpg'}: no face found" in err
    assert not (tmp_path / "g.npz").exists()


def test_lock_excludes_a_second_writer(tmp_path):
    import fcntl
    import threading

    from tripletface.inference.gallery import locked

    path = tmp_path / "g.npz"
    inside, release, results = threading.Event(), threading.Event(), []

    def hold():
        with locked(path):
            inside.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert inside.wait(10)
    with open(tmp_path / "g.npz.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            results.append("acquired")
        except BlockingIOError:
            results.append("blocked")
    release.set()
    t.join(10)
    with open(tmp_path / "g.npz.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again once the holder is done
    assert results == ["blocked"]


def test_calibrate_gallery_cli(capsys, setup, gallery, lfw_dir, tmp_path):
    """Real photos: probes of people not enrolled; identify then uses the gallery's threshold
    and says so; probes of an enrolled person are refused; the target is checked."""
    import shutil

    from inference_support import lfw_people

    g = tmp_path / "people.npz"
    shutil.copy(gallery, g)
    strangers = [n for n in lfw_people(lfw_dir, 8, min_images=2) if n not in setup["people"]][:4]
    probes = tmp_path / "probes"
    for name in strangers:
        (probes / name).mkdir(parents=True)
        for f in sorted((lfw_dir / name).glob("*.jpg"))[:2]:
            (probes / name / f.name).symlink_to(f)
    query = setup["queries"][setup["people"][0]]
    rc, out, _ = run_cli(capsys, "identify", "--model", setup["model"], "--gallery", g, query)
    assert rc == 0 and "model's 1:1 verification threshold" in out.splitlines()[1]

    rc, out, err = run_cli(capsys, "calibrate", "--model", setup["model"], "--gallery", g, "--probes", probes,
                           "--target", "fpir=0.25")
    assert rc == 0, err
    r = json.loads(out)
    cal = r["calibration"]
    assert cal["probes_used"] == 8 and cal["fpir"] <= 0.25 and cal["fpir_target"] == 0.25
    meta = json.loads(str(np.load(g, allow_pickle=False)["meta"]))
    assert meta["threshold"] == r["threshold"] and meta["calibration"]["probes"] == str(probes)

    rc, out, _ = run_cli(capsys, "identify", "--model", setup["model"], "--gallery", g, query, "--json")
    ans = json.loads(out)
    assert rc == 0 and ans["threshold"] == r["threshold"]
    assert ans["threshold_source"].startswith("gallery calibration: tripletface calibrate --target fpir=0.25 on 8")

    (probes / setup["people"][1]).mkdir()
    (probes / setup["people"][1] / "q.jpg").symlink_to(setup["queries"][setup["people"][1]])
    rc, _, err = run_cli(capsys, "calibrate", "--model", setup["model"], "--gallery", g, "--probes", probes)
    assert rc == 2 and error_lines(err) == [f"error: {probes}: probes must be of people not enrolled, but 1 probe "
                                            f"folders are gallery identities ({setup['people'][1]})"]
    rc, _, err = run_cli(capsys, "calibrate", "--gallery", g, "--probes", probes, "--target", "far=0.1")
    assert rc == 2 and error_lines(err) == ["error: --target must be 'fpir=<rate in (0, 1)>', received: 'far=0.1'"]
    rc, _, err = run_cli(capsys, "calibrate", "--gallery", g)
    assert rc == 2 and "needs both --gallery G and --probes DIR" in err
