"""The main job end to end on a small real LFW subset: crop -> train -> evaluate -> compare."""

import json
import subprocess
import sys

import pytest

from tripletface.pairs import read_pairs


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
    summary = json.loads(r.stdout[r.stdout.rindex("{\n  \"data\""):])
    assert 0.0 <= summary["accuracy_mean"] <= 1.0 and 0.0 <= summary["auc"] <= 1.0
    assert (out / "cropped" / "manifest.jsonl").is_file()
    assert (out / "checkpoints" / "model.keras").is_file()
    for f in ("report.html", "roc.png", "hist.png", "metrics.json"):
        assert (out / "report" / f).is_file(), f
    assert (out / "report" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the model carries exactly the alignment the crops were made with (inference re-aligns raw photos with it)
    from tripletface import model as M
    from tripletface.faces import FaceCropper

    meta = M.get_metadata(M.load_model(out / "checkpoints" / "model.keras"))
    crop_settings = json.loads((out / "cropped" / "crop_settings.json").read_text())["alignment"]
    assert meta["alignment"] == crop_settings
    assert FaceCropper.from_settings(meta["alignment"]).settings == crop_settings
    # the two compare calls printed their verdicts
    assert r.stdout.count("verdict:") == 2
    # no held-out identity was trained on: the demo wrote the exclusion list it used
    held = set((out / "holdout_identities.txt").read_text().split())
    pairs = read_pairs(mini_lfw / "lfw-dev-pairs.txt")
    assert held == {p.name_a for p in pairs} | {p.name_b for p in pairs}


def test_demo_without_data_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tripletface", "demo", "--data", str(tmp_path / "nothing")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error:") and "nothing" in r.stderr
