"""Open-set 1:N thresholds (tripletface.inference.open_set) on synthetic embeddings: the threshold at
a target FPIR, and calibrating a gallery so that identify names that share of strangers. The same
on real photos through the commands is in test_gallery.py (test_calibrate_gallery_cli)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.mark.parametrize("fpir", [0.01, 0.05, 0.2])
def test_threshold_at_fpir_is_the_largest_within_target(fpir):
    from tripletface.inference.open_set import threshold_at_fpir

    nearest = np.random.default_rng(3).uniform(0.4, 1.6, 1000)
    t, reached, reachable = threshold_at_fpir(nearest, fpir)
    assert reachable and reached == np.mean(nearest < t) == pytest.approx(fpir)  # exactly fpir * 1000 probes
    assert np.mean(nearest < np.sort(nearest)[int(fpir * 1000)] + 1e-9) > fpir  # one more probe would exceed it


def test_threshold_at_fpir_below_one_probe_is_flagged():
    from tripletface.inference.open_set import threshold_at_fpir

    t, reached, reachable = threshold_at_fpir(np.array([0.9, 0.7, 1.2]), 0.1)
    assert (t, reached, reachable) == (0.7, 0.0, False)


class _FakeEmbedder:
    """Embeds a file to the vector named by its stem: synthetic embeddings through the real gallery code."""

    fingerprint, dim, name, flip_tta, threshold = "f" * 16, 16, "fake.keras", True, 1.2

    def __init__(self, vectors):
        self.vectors = vectors
        self.metadata = {"threshold": self.threshold, "threshold_source": "training"}

    def embed_files(self, files, aligned=False, progress=False):
        return np.stack([self.vectors[Path(f).stem] for f in files]), []

    def decision_threshold(self, override=None):
        return self.threshold, "training"


def _unit(rng, n, dim=16):
    v = rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_calibrate_gallery_fpir_on_synthetic_strangers(tmp_path):
    """On synthetic embeddings: after calibration, the share of strangers that identify answers
    with a name is the target, on the calibration probes exactly and on new strangers nearly;
    the model's 1:1 threshold would have named most of them."""
    from tripletface.inference import gallery as G
    from tripletface.inference import open_set as O

    rng = np.random.default_rng(0)
    centres = _unit(rng, 50)
    rows = _unit(rng, 100) * 0.35 + np.repeat(centres, 2, axis=0)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    strangers, fresh = _unit(rng, 400), _unit(rng, 400)
    vectors = {f"s{i}": v for i, v in enumerate(strangers)} | {f"n{i}": v for i, v in enumerate(fresh)}
    emb = _FakeEmbedder(vectors)
    g = G.Gallery.new(emb)
    g.add([f"id{i // 2}/{i}" for i in range(100)], [f"id{i // 2}" for i in range(100)], rows)
    path = tmp_path / "g.npz"
    G.save_gallery(g, path)
    probes = tmp_path / "probes"
    for i in range(400):
        (probes / f"stranger{i // 4}").mkdir(parents=True, exist_ok=True)
        (probes / f"stranger{i // 4}" / f"s{i}.png").write_bytes(b"x")

    t0, source0 = O.search_threshold(G.load_gallery(path), emb, path=path)
    assert t0 == 1.2 and "1:1 verification threshold" in source0 and "not calibrated" in source0
    r = O.calibrate_gallery(emb, path, probes, fpir=0.05)
    t = r["threshold"]
    stored = G.load_gallery(path)
    assert stored.meta["threshold"] == t and stored.meta["calibration"]["fpir"] == pytest.approx(0.05)
    assert stored.checksum() == g.checksum()  # the rows are unchanged

    def named(vs, threshold=None):
        out = []
        for i in range(len(vs)):
            q = tmp_path / "q" / f"{'s' if vs is strangers else 'n'}{i}.png"
            q.parent.mkdir(exist_ok=True)
            q.write_bytes(b"x")
            ans = O.identify(emb, path, q, top_k=1, threshold=threshold)
            out.append(ans["identity"] != "unknown")
        return np.mean(out), ans

    fpir, ans = named(strangers)
    assert fpir == pytest.approx(0.05)  # 20 of the 400 probes, as targeted
    assert ans["threshold"] == t and ans["threshold_source"].startswith("gallery calibration: tripletface calibrate")
    fresh_fpir, _ = named(fresh)
    assert 0.01 <= fresh_fpir <= 0.11  # new strangers: the target, up to sampling error (sd ~0.011)
    assert named(fresh, threshold=1.2)[0] > 0.5  # the 1:1 threshold names most strangers as someone

    stored.add(["id0/extra"], ["id0"], rows[:1])  # a later enroll changes the rows: the calibration is stale
    G.save_gallery(stored, path)
    t2, source2 = O.search_threshold(G.load_gallery(path), emb)
    assert t2 == t and "changed since" in source2 and "recalibrate" in source2
