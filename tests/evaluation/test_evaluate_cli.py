"""`tripletface evaluate` and `tripletface calibrate` on a small pairs file of real LFW photos.

The numbers are checked against the same pipeline run by hand (Embedder -> distances ->
tripletface.evaluation.verification), so evaluate must score exactly what it embeds, count pairs with a
missing image as unscored (never drop them), and calibrate must store a threshold that
compare then uses.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from inference_support import PNG_SIGNATURE, error_lines, make_model, run_cli

MISSING = "Nobody_Here"  # an identity with no folder: its pair cannot be scored


@pytest.fixture(scope="module")
def setup(tmp_path_factory, lfw_dir):
    """A model and a 2-fold pairs file (5 matched + 5 mismatched per fold) from the real dev pairs,
    with the first matched pair replaced by one whose images do not exist."""
    from tripletface.data.pairs import read_pairs

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
    """Distances of the pairs computed without tripletface.evaluation.evaluate."""
    from tripletface.inference.embedder import Embedder
    from tripletface.inference.matching import distance
    from tripletface.data.pairs import read_pairs

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

    from tripletface.cli.main import main

    report = tmp_path_factory.mktemp("report")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["evaluate", "--model", str(setup["model"]), "--data-dir", str(setup["data"]),
                   "--pairs", str(setup["pairs"]), "--report-dir", str(report), "--json"])
    assert rc == 0
    return json.loads(out.getvalue()), report  # with --json, stdout is exactly one JSON object


def test_evaluate_json(evaluated, by_hand):
    from tripletface.evaluation import verification as V

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
    # each fold's accuracy, recomputed with plain NumPy from the distances and the fold thresholds reported
    per_fold = [np.mean((filled[by_hand["folds"] == f] < t) == by_hand["same"][by_hand["folds"] == f])
                for f, t in zip(np.unique(by_hand["folds"]), m["fold_thresholds"])]
    assert m["fold_accuracies"] == pytest.approx(per_fold) and m["accuracy_mean"] == pytest.approx(np.mean(per_fold))
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
    # the hardest mistakes at the model's threshold, as thumbnail pairs the page shows
    errors = saved["hardest_errors"]
    assert errors["threshold"] == m["model_threshold"] and "stored threshold" in errors["threshold_source"]
    assert len(errors["false_accepts"]) + len(errors["false_rejects"]) > 0
    for row in errors["false_accepts"] + errors["false_rejects"]:
        for x in "ab":
            assert (report / row[f"thumb_{x}"]).is_file() and f'src="{row[f"thumb_{x}"]}"' in html
    fa = [r["distance"] for r in errors["false_accepts"]]
    assert fa == sorted(fa) and all(d < m["model_threshold"] for d in fa)
    failures = [json.loads(x) for x in (report / "failures.jsonl").read_text().splitlines()]
    assert sorted(f["path"].rsplit("/", 1)[1] for f in failures) == [f"{MISSING}_0001.jpg", f"{MISSING}_0002.jpg"]
    assert {f["status"] for f in failures} == {"missing"}
    assert m["report"]["html"] == str(report / "report.html")


def test_evaluate_bundled_model_stdout_is_the_summary(capsys, setup, tmp_path):
    """Without --json, stdout is the few summary lines, nothing else; and the bundled model
    (a known, trained one) scores these real LFW pairs well above chance."""
    report = tmp_path / "report"
    rc, out, err = run_cli(capsys, "evaluate", "--data-dir", setup["data"], "--pairs", setup["pairs"],
                           "--report-dir", report)
    assert rc == 0, err
    m = json.loads((report / "metrics.json").read_text())["metrics"]
    tar = m["tar_at_far"]
    assert out == (
        f"accuracy {m['accuracy_mean']:.4f} ± {m['accuracy_std']:.4f} (2 folds)  AUC {m['auc']:.4f}  "
        f"EER {m['eer']:.4f}  TAR@FAR=0.001 {tar['0.001'][0]:.4f}, TAR@FAR=0.01 {tar['0.01'][0]:.4f}  "
        f"unscored pairs 1 of 20\n"
        f"at the model's threshold {m['model_threshold']:.4f}: accuracy {m['model_threshold_accuracy']:.4f}\n"
        f"report: {report / 'report.html'} (all numbers: {report / 'metrics.json'})\n")
    # 19 scorable pairs, the unscorable one counted wrong: chance is 0.5
    assert m["auc"] >= 0.8 and m["accuracy_mean"] >= 0.7 and m["model_threshold_accuracy"] >= 0.7


def _aligned_set(root):
    """Random 'aligned crops' (no detection) for 4 people and a pairs file: fast plumbing data."""
    from PIL import Image

    rng = np.random.default_rng(0)
    names = ["Ann", "Bob", "Cid", "Dee"]
    for n in names:
        (root / n).mkdir(parents=True)
        for i in (1, 2):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / n / f"{n}_{i:04d}.png")
    pairs = root / "pairs.txt"
    pairs.write_text("1\t2\nAnn\t1\t2\nBob\t1\t2\nCid\t1\tDee\t1\nAnn\t1\tBob\t2\n")
    return pairs


def test_report_dir_that_cannot_be_written_is_one_line_exit_8(capsys, setup, tmp_path):
    blocker = tmp_path / "somefile"
    blocker.write_text("a file where a folder should be")
    rc, out, err = run_cli(capsys, "evaluate", "--model", setup["model"], "--data-dir", setup["data"],
                           "--pairs", setup["pairs"], "--report-dir", blocker / "report")
    assert rc == 8 and out == "" and "Traceback" not in err
    assert error_lines(err) == [f"error: {blocker / 'report'}: cannot write the report folder: Not a directory"]


@pytest.mark.parametrize("code, errno_name, reason", [(7, "ENOSPC", "no space left on device"),
                                                      (8, "EROFS", "Read-only file system")])
def test_report_write_failing_midway_is_one_line(capsys, setup, tmp_path, monkeypatch, code, errno_name, reason):
    """The disk fills (or the file system turns read-only) while the report is written."""
    import errno

    from tripletface.evaluation import report as R

    data = tmp_path / "crops"
    pairs = _aligned_set(data)

    def failing(report_dir, *a, **k):
        raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)),
                      str(report_dir / "roc.png"))

    monkeypatch.setattr(R, "write_report", failing)
    rc, out, err = run_cli(capsys, "evaluate", "--model", setup["model"], "--data-dir", data, "--aligned",
                           "--pairs", pairs, "--report-dir", tmp_path / "rep")
    assert rc == code and out == "" and "Traceback" not in err
    (line,) = error_lines(err)
    assert line.startswith(f"error: {tmp_path / 'rep' / 'roc.png'}: ") and reason in line


def test_stray_oserror_is_one_line_exit_8(capsys, monkeypatch):
    """Any command: an OSError nobody expected is still one line with exit 8, not a traceback."""
    import errno

    from tripletface.cli import evaluate

    def boom(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/somewhere/out.json")

    monkeypatch.setattr(evaluate, "run", boom)
    rc, _, err = run_cli(capsys, "evaluate", "--data-dir", ".", "--pairs", "p.txt")
    assert rc == 8 and error_lines(err) == ["error: /somewhere/out.json: Permission denied"]
    assert "Traceback" not in err


def test_evaluate_triplets(capsys, setup, by_hand, tmp_path):
    from tripletface.evaluation import verification as V
    from tripletface.inference.matching import distance

    rows = [("Zico/Zico_0001.jpg", "Zico/Zico_0002.jpg", "Tony_Blair/Tony_Blair_0001.jpg"),
            ("Tony_Blair/Tony_Blair_0001.jpg", "Tony_Blair/Tony_Blair_0002.jpg", "Zico/Zico_0003.jpg"),
            ("Tony_Blair/Tony_Blair_0002.jpg", "Tony_Blair/Tony_Blair_0003.jpg", "Zico/Zico_0001.jpg"),
            (f"{MISSING}/{MISSING}_0001.jpg", f"{MISSING}/{MISSING}_0002.jpg", "Zico/Zico_0001.jpg")]
    csv = tmp_path / "test_triplets.csv"
    csv.write_text("anchor,positive,negative\n" + "".join(",".join(r) + "\n" for r in rows))
    rc, out, err = run_cli(capsys, "evaluate", "--model", setup["model"], "--data-dir", setup["data"],
                           "--triplets", csv, "--report-dir", tmp_path / "r", "--margin", "0.3", "--json")
    assert rc == 0, err
    m = json.loads(out)
    assert m["triplets"] == 4 and m["unscored_triplets"] == 1
    assert {"triplet_loss", "triplet_precision", "triplet_recall"} <= set(m)
    # by hand: squared L2 (the default loss distance) with the given margin, on the 3 scored triplets
    from tripletface.inference.embedder import Embedder

    emb = Embedder.load(setup["model"])
    names = sorted({x for row in rows[:3] for x in row})
    vectors, _ = emb.embed_files([setup["data"] / n for n in names])
    vec = dict(zip(names, vectors))
    d_ap = np.array([distance(vec[a], vec[p]) ** 2 for a, p, _ in rows[:3]])
    d_an = np.array([distance(vec[a], vec[n]) ** 2 for a, _, n in rows[:3]])
    # precision/recall at the model's stored threshold (in the loss's units), not one picked on these triplets
    want = V.triplet_metrics(d_ap, d_an, 0.3, threshold=emb.threshold ** 2)
    assert m["triplet_loss"] == pytest.approx(want["loss"], abs=1e-5)
    assert m["triplet_threshold"] == pytest.approx(emb.threshold ** 2)
    assert m["triplet_threshold_source"] == emb.decision_threshold()[1]
    assert m["triplet_precision"] == pytest.approx(want["precision"])
    assert m["triplet_recall"] == pytest.approx(want["recall"])
    # the best threshold on the triplets themselves only under an optimistic_ name
    assert m["triplet_optimistic_precision"] == pytest.approx(want["optimistic_precision"])
    assert m["triplet_optimistic_threshold"] == pytest.approx(want["optimistic_threshold"], abs=1e-5)
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
    from tripletface.evaluation import verification as V
    from tripletface.model.io import get_metadata, load_model

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

    from tripletface.evaluation import verification as V
    from tripletface.model.io import get_metadata, load_model

    model = tmp_path / "m.keras"
    shutil.copy(setup["model"], model)
    before = model.read_bytes()
    rc, out, err = run_cli(capsys, "calibrate", "--model", model, "--data-dir", setup["data"],
                           "--pairs", setup["pairs"], "--target", "far=0.2", "--in-place")
    assert rc == 0, err
    t = get_metadata(load_model(model))["threshold"]
    previous = tmp_path / "m.prev.keras"  # the file it replaced is kept, byte for byte
    assert previous.read_bytes() == before and json.loads(out)["previous_model"] == str(previous)
    assert get_metadata(load_model(previous))["threshold"] == 1.0 and t != 1.0
    filled, _ = V.score_with_failures(by_hand["d"], by_hand["same"])
    impostor = filled[~by_hand["same"]]
    assert np.mean(impostor < t) <= 0.2  # the false accept rate stays at or under the target
    assert t == pytest.approx(V.threshold_at_far(filled, by_hand["same"], 0.2))
    assert json.loads(out)["calibration"]["far_target"] == 0.2


def test_calibrate_never_overwrites_unasked(capsys, setup, tmp_path):
    import shutil

    model = tmp_path / "m.keras"
    shutil.copy(setup["model"], model)
    before = model.read_bytes()
    rc, out, err = run_cli(capsys, "calibrate", "--model", model, "--data-dir", setup["data"], "--pairs", setup["pairs"])
    assert rc == 2 and out == ""
    assert error_lines(err) == [f"error: calibrate writes a model: give --output NEW.keras, or --in-place to "
                                f"replace {model} (the previous file is kept as m.prev.keras)"]
    assert model.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]
    import contextlib
    import io

    from tripletface.cli.main import build_parser

    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
        build_parser().parse_args(["calibrate", "--help"])
    assert "--in-place" in text.getvalue() and "prev.keras" in text.getvalue()


def test_calibrate_bad_target(capsys, setup):
    rc, _, err = run_cli(capsys, "calibrate", "--model", setup["model"], "--data-dir", setup["data"],
                         "--pairs", setup["pairs"], "--target", "far=2")
    assert rc == 2 and "--target must be" in err
