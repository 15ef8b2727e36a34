"""The main job end to end on a small real LFW subset: crop -> train -> evaluate -> compare."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tripletface.data.pairs import read_pairs


@pytest.fixture(scope="module")
def mini_lfw(lfw_dir, tmp_path_factory):
    """lfw-dev/ with 10 matched + 10 mismatched fold-1 pairs and 30 identities from other folds to train on."""
    root = tmp_path_factory.mktemp("mini")
    pairs = read_pairs(lfw_dir.parent / "lfw-dev-pairs.txt")
    fold1 = [p for p in pairs if p.fold == pairs[0].fold]
    sel = [p for p in fold1 if p.same][:10] + [p for p in fold1 if not p.same][:10]
    in_fold1 = {p.name_a for p in fold1} | {p.name_b for p in fold1}
    names = {p.name_a for p in sel} | {p.name_b for p in sel}
    train_ids = sorted((d for d in lfw_dir.iterdir() if d.name not in in_fold1 and len(list(d.iterdir())) >= 3),
                       key=lambda d: d.name)[:30]
    assert len(train_ids) == 30
    names |= {d.name for d in train_ids}
    images = root / "lfw-dev"
    for name in names:
        (images / name).mkdir(parents=True)
        for f in sorted((lfw_dir / name).iterdir())[:6]:
            (images / name / f.name).symlink_to(f)
    for p in sel:  # make sure the paired images themselves are there
        for name, i in ((p.name_a, p.idx_a), (p.name_b, p.idx_b)):
            f = f"{name}_{i:04d}.jpg"
            if not (images / name / f).exists():
                (images / name / f).symlink_to(lfw_dir / name / f)
    lines = ["1\t10"] + [f"{p.name_a}\t{p.idx_a}\t{p.idx_b}" for p in sel if p.same] + \
            [f"{p.name_a}\t{p.idx_a}\t{p.name_b}\t{p.idx_b}" for p in sel if not p.same]
    (root / "lfw-dev-pairs.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(mini_lfw, tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "tripletface", "demo", "--data", str(mini_lfw), "--out", str(out),
                        "--set", "train.epochs=2", "train.steps_per_epoch=10", "data.batch_size=32", "data.val_fraction=0.15"],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "report" / "demo.json").read_text())
    # the AUC reported is that of the trained model on the held-out pairs, recomputed here with
    # scikit-learn from the model's own embeddings of the crops (20 training steps learn too
    # little for "above chance" to be a sure thing on 20 pairs: AUC 0.43 was seen)
    from sklearn.metrics import roc_auc_score

    from tripletface.inference.embedder import Embedder
    from tripletface.inference.matching import distance
    from tripletface.data.pairs import pair_paths

    fold = read_pairs(out / "pairs_fold1.txt")
    crops = [pair_paths(out / "cropped", p) for p in fold]
    vectors, failures = Embedder.load(out / "checkpoints" / "model.keras").embed_files(
        [f for ab in crops for f in ab], aligned=True)
    assert not failures
    d = distance(vectors[0::2], vectors[1::2])
    assert summary["auc"] == pytest.approx(roc_auc_score([p.same for p in fold], -d), abs=1e-6)
    assert summary["n_pairs"] == 20
    lines = r.stdout.splitlines()  # the summary lines, no JSON dump and no step output
    assert len(lines) == 5 and lines[0].startswith(f"accuracy {summary['accuracy_mean']:.4f} ± ")
    assert "{" not in r.stdout
    assert (out / "cropped" / "manifest.jsonl").is_file()
    assert (out / "checkpoints" / "model.keras").is_file()
    for f in ("report.html", "roc.png", "hist.png", "metrics.json"):
        assert (out / "report" / f).is_file(), f
    assert (out / "report" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the model carries exactly the alignment the crops were made with (inference re-aligns raw photos with it)
    from tripletface.model.io import get_metadata, load_model
    from tripletface.faces.cropper import FaceCropper

    meta = get_metadata(load_model(out / "checkpoints" / "model.keras"))
    crop_settings = json.loads((out / "cropped" / "crop_settings.json").read_text())["alignment"]
    assert meta["alignment"] == crop_settings
    assert FaceCropper.from_settings(meta["alignment"]).settings == crop_settings
    # the two comparisons, with their verdicts
    assert [c["truly"] for c in summary["compare"]] == ["same", "different"]
    assert all(f"-> {c['verdict']}" in line for c, line in zip(summary["compare"], lines[1:3]))
    # no held-out identity was trained on: the demo wrote the exclusion list it used
    held = set((out / "holdout_identities.txt").read_text().split())
    pairs = read_pairs(mini_lfw / "lfw-dev-pairs.txt")
    assert held == {p.name_a for p in pairs} | {p.name_b for p in pairs}


def test_demo_without_data_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tripletface", "demo", "--data", str(tmp_path / "nothing")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error:") and "nothing" in r.stderr


@pytest.fixture
def fake_pipeline(tmp_path, monkeypatch):
    """The demo with its steps stubbed (each prints to stdout as the real commands do): only
    what the demo itself prints is under test, in seconds."""
    from tripletface.cli import main as cli
    from tripletface.cli import compare
    from tripletface.inference import embedder

    data = tmp_path / "data"
    for name in ("Ann", "Bob", "Cid", "Dee"):
        (data / "lfw-dev" / name).mkdir(parents=True)
        for i in (1, 2):
            (data / "lfw-dev" / name / f"{name}_{i:04d}.jpg").write_bytes(b"x")
    (data / "lfw-dev-pairs.txt").write_text("2\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\nCid\t1\t2\nCid\t2\tDee\t1\n")
    real_main = cli.main

    def step(argv):
        print(f"output of {argv[0]}")
        if argv[0] == "evaluate":
            report = Path(argv[argv.index("--report-dir") + 1])
            report.mkdir(parents=True)
            (report / "metrics.json").write_text(json.dumps({"metrics": {
                "accuracy_mean": 0.875, "accuracy_std": 0.0625, "auc": 0.9375, "eer": 0.125, "n_pairs": 2}}))
        return 0

    def fake_compare(emb, a, b, threshold=None, aligned=False):
        d = 0.5 if Path(a).parent == Path(b).parent else 1.5
        return {"image_a": str(a), "image_b": str(b), "distance": d, "threshold": 1.0, "threshold_source": "t",
                "verdict": "same" if d < 1.0 else "different", "same": d < 1.0, "model": "m"}

    monkeypatch.setattr(cli, "main", step)
    monkeypatch.setattr(compare, "compare", fake_compare)
    monkeypatch.setattr(embedder.Embedder, "load", staticmethod(lambda *a, **k: object()))
    return real_main, data, tmp_path / "out"


def test_demo_stdout_is_the_summary(capsys, fake_pipeline):
    main, data, out = fake_pipeline
    capsys.readouterr()
    assert main(["demo", "--data", str(data), "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout == (
        "accuracy 0.8750 ± 0.0625  AUC 0.9375  EER 0.1250  on fold 1 of lfw-dev-pairs.txt "
        "(2 pairs of 2 identities never trained on)\n"
        "Ann_0001.jpg vs Ann_0002.jpg (truly same): distance 0.5000, threshold 1.0000 -> same (right)\n"
        "Ann_0001.jpg vs Bob_0001.jpg (truly different): distance 1.5000, threshold 1.0000 -> different (right)\n"
        f"model: {out / 'checkpoints' / 'model.keras'}\n"
        f"report: {out / 'report' / 'report.html'} (all numbers: {out / 'report' / 'demo.json'})\n")
    assert "output of crop" in stderr and "output of train" in stderr and "output of evaluate" in stderr
    saved = json.loads((out / "report" / "demo.json").read_text())
    assert saved["accuracy_mean"] == 0.875 and saved["report"] == str(out / "report" / "report.html")
    assert [c["verdict"] for c in saved["compare"]] == ["same", "different"]


def test_demo_json_prints_only_the_json(capsys, fake_pipeline):
    main, data, out = fake_pipeline
    capsys.readouterr()
    assert main(["demo", "--data", str(data), "--out", str(out), "--json"]) == 0
    stdout, stderr = capsys.readouterr()
    assert json.loads(stdout) == json.loads((out / "report" / "demo.json").read_text())
    assert stdout == (out / "report" / "demo.json").read_text()
    assert "accuracy 0.8750" in stderr


def test_find_data_names_each_candidate_once(tmp_path, monkeypatch, capsys):
    """Run from the clone's root, ../shared/data and the package's ../../shared/data are one folder:
    the 'looked in' message names it once."""
    from tripletface.cli import demo
    from tripletface.data import download

    monkeypatch.chdir(Path(demo.__file__).resolve().parents[2])
    monkeypatch.delenv("TRIPLETFACE_DATA", raising=False)
    monkeypatch.setattr(Path, "is_dir", lambda self: False)
    monkeypatch.setattr(download, "fetch_lfw", lambda root: None)
    demo.find_data(download_to=tmp_path)
    looked = capsys.readouterr().err.split("looked in: ", 1)[1].split(")", 1)[0].split(", ")
    assert len(looked) == len(set(looked)) == 1
