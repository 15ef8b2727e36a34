"""`tripletface evaluate` and `tripletface calibrate` on a small pairs file of real LFW photos.

The numbers are checked against the same pipeline run by hand (Embedder -> distances ->
tripletface.verification), so evaluate must score exactly what it embeds, count pairs with a
missing image as unscored (never drop them), and calibrate must store a threshold that
compare then uses.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from inference_support import PNG_SIGNATURE, error_lines, make_model, run_cli

MISSING = "Nobody_Here"  # an identity with no folder: its pair cannot be scored


@pytest.fixture(scope="module")
def setup(tmp_path_factory, lfw_dir):
    """A model and a 2-fold pairs file (5 matched + 5 mismatched per fold) from the real dev pairs,
    with the first matched pair replaced by one whose images do not exist."""
    from tripletface.pairs import read_pairs

    pairs_src = lfw_dir.parent / "lfw-dev-pairs.txt"
    if not pairs_src.is_file():
        pytest.skip(f"{pairs_src} not found")
    d = tmp_path_factory.mktemp("evaluate")
    all_pairs = read_pairs(pairs_src)
    lines = ["2\t5"]
    for fold in (0, 1):
        ps = [p for p in all_pairs if p.fold == fold]
        lines += [f"{p.name_a}\t{p.idx_a}\t{p.idx_b}" for p in [p for p in ps if p.same][:5]]
        lines += [f"{p.name_a}\t{p.idx_a}\t{p.name_b}\t{p.idx_b}" for p in [p for p in ps if not p.same][:5]]
    lines[1] = f"{MISSING}\t1\t2"
    (d / "pairs.txt").write_text("\n".join(lines) + "\n")
    return {"model": make_model(d / "tiny.keras"), "pairs": d / "pairs.txt", "data": lfw_dir, "tmp": d}


@pytest.fixture(scope="module")
def by_hand(setup):
    """Distances of the pairs computed without tripletface.evaluate."""
    from tripletface.embedder import Embedder, distance
    from tripletface.pairs import read_pairs

    pairs = read_pairs(setup["pairs"])
    emb = Embedder.load(setup["model"])
    files = [setup["data"] / f"{k}.jpg" for p in pairs for k in (p.key_a, p.key_b)]
    vectors, failures = emb.embed_files(files)
    d = distance(vectors[0::2], vectors[1::2])
    return {"d": d, "same": np.array([p.same for p in pairs]), "folds": np.array([p.fold for p in pairs]),
            "failures": failures, "vectors": dict(zip(map(str, files), vectors))}


@pytest.fixture(scope="module")
def evaluated(setup, tmp_path_factory):
    import contextlib
    import io

    from tripletface.cli import main

    report = tmp_path_factory.mktemp("report")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["evaluate", "--model", str(setup["model"]), "--data-dir", str(setup["data"]),
                   "--pairs", str(setup["pairs"]), "--report-dir", str(report)])
    assert rc == 0
    return json.loads(out.getvalue()), report


def test_evaluate_json(evaluated, by_hand):
    from tripletface import verification as V

    m, _ = evaluated
    assert m["n_pairs"] == 20 and m["unscored_pairs"] == 1  # counted, not dropped
    assert m["failed_images"] == 2 and m["n_folds"] == 2 and len(m["fold_accuracies"]) == 2
    assert np.isnan(by_hand["d"][0]) and np.isfinite(by_hand["d"][1:]).all()
    filled, n_unscored = V.score_with_failures(by_hand["d"], by_hand["same"])
    kf = V.kfold_accuracy(filled, by_hand["same"], fold_ids=by_hand["folds"])
    roc = V.roc_metrics(filled, by_hand["same"])
    assert m["accuracy_mean"] == pytest.approx(kf["mean"]) and m["accuracy_std"] == pytest.approx(kf["std"])
    assert m["auc"] == pytest.approx(roc["auc"]) and m["eer"] == pytest.approx(roc["eer"])
    assert set(m["tar_at_far"]) == {"0.001", "0.01"}
    assert m["tar_at_far"]["0.01"][0] == pytest.approx(roc["tar_at_far"][0.01][0])
    assert m["far_reachable"] == {"0.001": False, "0.01": False}  # 10 impostor pairs cannot measure 1e-2
    assert 0 <= m["accuracy_mean"] <= 1 and 0 <= m["auc"] <= 1
    # the stored threshold is reported with its accuracy on these pairs
    assert m["model_threshold"] == 1.0
    assert m["model_threshold_accuracy"] == pytest.approx(V.accuracy_at(filled, by_hand["same"], 1.0))


def test_evaluate_report_files(evaluated):
    m, report = evaluated
    for name in ("roc.png", "hist.png"):
        data = (report / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5000
    html = (report / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and 'src="roc.png"' in html and 'src="hist.png"' in html
    assert "cosine" in html.lower()  # the report says cosine and euclidean decide the same
    saved = json.loads((report / "metrics.json").read_text())
    assert saved["metrics"]["unscored_pairs"] == 1 and saved["metrics"]["auc"] == pytest.approx(m["auc"])
    failures = [json.loads(x) for x in (report / "failures.jsonl").read_text().splitlines()]
    assert sorted(f["path"].rsplit("/", 1)[1] for f in failures) == [f"{MISSING}_0001.jpg", f"{MISSING}_0002.jpg"]
    assert {f["status"] for f in failures} == {"missing"}
    assert m["report"]["html"] == str(report / "report.html")


def test_evaluate_triplets(capsys, setup, by_hand, tmp_path):
    from tripletface import verification as V
    from tripletface.embedder import distance

    rows = [("Zico/Zico_0001.jpg", "Zico/Zico_0002.jpg", "Tony_Blair/Tony_Blair_0001.jpg"),
            ("Tony_Blair/Tony_Blair_0001.jpg", "Tony_Blair/Tony_Blair_0002.jpg", "Zico/Zico_0003.jpg"),
            ("Tony_Blair/Tony_Blair_0002.jpg", "Tony_Blair/Tony_Blair_0003.jpg", "Zico/Zico_0001.jpg"),
            (f"{MISSING}/{MISSING}_0001.jpg", f"{MISSING}/{MISSING}_0002.jpg", "Zico/Zico_0001.jpg")]
    csv = tmp_path / "test_triplets.csv"
    csv.write_text("anchor,positive,negative\n" + "".join(",".join(r) + "\n" for r in rows))
    rc, out, err = run_cli(capsys, "evaluate", "--model", setup["model"], "--data-dir", setup["data"],
                           "--triplets", csv, "--report-dir", tmp_path / "r", "--margin", "0.3")
    assert rc == 0, err
    m = json.loads(out)
    assert m["triplets"] == 4 and m["unscored_triplets"] == 1
    assert {"triplet_loss", "triplet_precision", "triplet_recall"} <= set(m)
    # by hand: squared L2 (the default loss distance) with the given margin, on the 3 scored triplets
    from tripletface.embedder import Embedder

    names = sorted({x for row in rows[:3] for x in row})
    vectors, _ = Embedder.load(setup["model"]).embed_files([setup["data"] / n for n in names])
    vec = dict(zip(names, vectors))
    d_ap = np.array([distance(vec[a], vec[p]) ** 2 for a, p, _ in rows[:3]])
    d_an = np.array([distance(vec[a], vec[n]) ** 2 for a, _, n in rows[:3]])
    want = V.triplet_metrics(d_ap, d_an, 0.3)
    assert m["triplet_loss"] == pytest.approx(want["loss"], abs=1e-5)
    assert m["triplet_precision"] == pytest.approx(want["precision"])
    assert m["triplet_recall"] == pytest.approx(want["recall"])
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["metrics"]["triplets"] == 4


def test_evaluate_input_errors(capsys, setup, tmp_path):
    base = ["evaluate", "--model", setup["model"], "--data-dir", setup["data"]]
    rc, _, err = run_cli(capsys, *base)
    assert rc == 2 and "give --pairs and/or --triplets" in err
    rc, _, err = run_cli(capsys, *base, "--pairs", tmp_path / "none.txt")
    assert rc == 2 and error_lines(err) == [f"error: {tmp_path / 'none.txt'}: --pairs file not found"]
    bad = tmp_path / "bad_pairs.txt"
    bad.write_text("1\t1\nAbel_Pacheco\t1\n")
    rc, _, err = run_cli(capsys, *base, "--pairs", bad)
    assert rc == 2 and f"{bad}:2:" in err


# --------------------------------------------------------------------------- calibrate


def test_calibrate_then_compare_uses_it(capsys, setup, by_hand, tmp_path):
    from tripletface import verification as V
    from tripletface.model import get_metadata, load_model

    out_model = tmp_path / "calibrated.keras"
    rc, out, err = run_cli(capsys, "calibrate", "--model", setup["model"], "--data-dir", setup["data"],
                           "--pairs", setup["pairs"], "--output", out_model)
    assert rc == 0, err
    info = json.loads(out)
    filled, _ = V.score_with_failures(by_hand["d"], by_hand["same"])
    t, acc = V.best_threshold(filled, by_hand["same"])
    assert info["threshold"] == pytest.approx(t) and info["calibration"]["accuracy"] == pytest.approx(acc)
    meta = get_metadata(load_model(out_model))
    assert meta["threshold"] == pytest.approx(t) and meta["metric"] == "euclidean"
    assert "calibrate --target accuracy on pairs.txt" in meta["threshold_source"]
    assert meta["calibration"]["pairs"] == str(setup["pairs"]) and meta["calibration"]["unscored_pairs"] == 1
    assert get_metadata(load_model(setup["model"]))["threshold"] == 1.0  # --output: the original is untouched

    a, b = (setup["data"] / "Zico" / f"Zico_000{i}.jpg" for i in (1, 2))
    rc, out, _ = run_cli(capsys, "compare", "--model", out_model, a, b, "--json")
    r = json.loads(out)
    assert rc == 0 and r["threshold"] == pytest.approx(t) and "calibrate" in r["threshold_source"]
    assert r["verdict"] == ("same" if r["distance"] < t else "different")
    rc, out, _ = run_cli(capsys, "compare", "--model", out_model, a, b)
    assert f"threshold: {t:.4f} (tripletface calibrate --target accuracy" in out


def test_calibrate_at_far_in_place(capsys, setup, by_hand, tmp_path):
    import shutil

    from tripletface import verification as V
    from tripletface.model import get_metadata, load_model

    model = tmp_path / "m.keras"
    shutil.copy(setup["model"], model)
    rc, out, err = run_cli(capsys, "calibrate", "--model", model, "--data-dir", setup["data"],
                           "--pairs", setup["pairs"], "--target", "far=0.2")
    assert rc == 0, err
    t = get_metadata(load_model(model))["threshold"]
    filled, _ = V.score_with_failures(by_hand["d"], by_hand["same"])
    impostor = filled[~by_hand["same"]]
    assert np.mean(impostor < t) <= 0.2  # the false accept rate stays at or under the target
    assert t == pytest.approx(V.threshold_at_far(filled, by_hand["same"], 0.2))
    assert json.loads(out)["calibration"]["far_target"] == 0.2


def test_calibrate_bad_target(capsys, setup):
    rc, _, err = run_cli(capsys, "calibrate", "--model", setup["model"], "--data-dir", setup["data"],
                         "--pairs", setup["pairs"], "--target", "far=2")
    assert rc == 2 and "--target must be" in err
