"""`evaluate` on a crop output names the real reason a pair image is missing (the crop manifest's
``no_face``, ``too_small``, ...), not "file not found"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from inference_support import make_model, run_cli

from tripletface.config import load_config
from tripletface.faces.crop import crop_folder
from tripletface.inference.embedder import Failure
from tripletface.evaluation.evaluate import explain_missing


def test_evaluate_reports_the_crop_manifest_reason_for_an_uncropped_photo(lfw_dir, tmp_path, capsys):
    from PIL import Image

    photos = tmp_path / "photos"
    (photos / "Abel_Pacheco").mkdir(parents=True)
    for i in (1, 2, 3, 4):
        name = f"Abel_Pacheco_{i:04d}.jpg"
        (photos / "Abel_Pacheco" / name).write_bytes((lfw_dir / "Abel_Pacheco" / name).read_bytes())
    (photos / "Grey_Wall").mkdir()
    Image.fromarray(np.full((250, 250, 3), 128, np.uint8)).save(photos / "Grey_Wall" / "Grey_Wall_0001.jpg")
    crops = tmp_path / "crops"
    crop_folder(photos, crops, load_config(overrides={"crop.workers": 1}).crop, progress=False)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t2\nAbel_Pacheco\t1\t2\nAbel_Pacheco\t3\t4\n"
                     "Abel_Pacheco\t1\tGrey_Wall\t1\nAbel_Pacheco\t2\tGrey_Wall\t1\n")
    report = tmp_path / "report"
    rc, _, err = run_cli(capsys, "evaluate", "--model", make_model(tmp_path / "m.keras"), "--data-dir", crops,
                         "--pairs", pairs, "--aligned", "--report-dir", report)
    assert rc == 0, err
    rows = [json.loads(line) for line in (report / "failures.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["path"].endswith("Grey_Wall_0001.jpg")
    assert rows[0]["status"] == "no_face", rows
    assert rows[0]["reason"].startswith("no face found") and "manifest.jsonl" in rows[0]["reason"]
    assert "file not found" not in err and "no face found" in err


def test_explain_missing_keeps_other_failures_and_reads_a_split_folder(tmp_path):
    (tmp_path / "test").mkdir()
    rows = [{"source": "Ann/Ann_0001.jpg", "status": "too_small", "reason": "1 face(s) found, largest 30 px"},
            {"source": "Ann/Ann_0002.jpg", "status": "ok", "reason": "", "output": "test/Ann/Ann_0002.png"}]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tmp_path / "test"  # a crop --test-fraction split: the manifest is one folder up
    failures = [Failure(str(data / "Ann" / "Ann_0001.jpg"), "missing", "file not found"),
                Failure(str(data / "Ann" / "Ann_0002.jpg"), "missing", "file not found"),
                Failure(str(data / "Bob" / "Bob_0001.png"), "truncated", "truncated")]
    out = explain_missing(failures, data)
    assert [f.status for f in out] == ["too_small", "missing", "truncated"]
    assert out[0].reason.startswith("1 face(s) found") and out[0].no_face
    assert out[1:] == failures[1:]
    assert explain_missing(failures, Path(tmp_path / "elsewhere")) == failures


def test_evaluate_with_too_few_pairs_per_kind_is_one_line_before_embedding(tmp_path, capsys):
    """One matched and one mismatched pair cannot make two folds that each hold both kinds."""
    from tripletface.cli.main import main

    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t1\nSomeone\t1\t2\nSomeone\t1\tOther\t1\n")
    (tmp_path / "nowhere").mkdir()  # no images: the check must come before any is looked for
    rc = main(["evaluate", "--data-dir", str(tmp_path / "nowhere"), "--aligned", "--pairs", str(pairs)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "k-fold accuracy needs at least 2 matched and 2 mismatched pairs, found 1 matched and 1 mismatched" in err
    rc = main(["evaluate", "--data-dir", str(tmp_path / "nowhere"), "--aligned", "--pairs", str(pairs), "--folds", "2"])
    assert rc == 2 and "--folds 2:" in capsys.readouterr().err
