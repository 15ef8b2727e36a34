"""benchmarks/peers.py (issue 14): the table's ratios, targets and skip rows, and one real small run.

No speed is asserted (timings belong to the benchmark): the real run checks that each contender
is measured, whole process and steady, and that a peer without its venv is a SKIPPED row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import peers  # noqa: E402


def _fabricated() -> dict:
    return {
        "crop": {"whole": [40.0, 44.0, 42.0], "steady": [100.0, 106.0, 105.0], "found": 299, "images": 300},
        "mtcnn_half": {"whole": [60.0], "steady": [110.0, 116.0, 100.0]},  # median 110: crop 105/110 = 0.95
        "mtcnn_full": {"whole": [40.0], "steady": [80.0]},
        "facenet": {"skip": "facenet-pytorch does not load here: operator torchvision::nms does not exist"},
        "mtcnn_single": {"whole": [15.0], "steady": [19.0]},
        "embed": {"whole": [50.0], "steady": [98.0]},  # 98/110 = 0.89 of mtcnn half: missed
        "face_recognition": {"whole": [12.0], "steady": [19.0]},  # whole 4.2x (< 5), steady 5.2x
        "train": {"steady": [200.0, 204.0]},
        "torch_cl": {"steady": [160.0, 170.0]},  # median 165: 202/165 = 1.22
        "torch": {"error": "exited 1: RuntimeError"},
    }


def _row(rows, stage, key):
    return next(r for r in rows if r["stage"] == stage and r["key"] == key)


def test_rows_judge_each_target_against_its_peer():
    rows = peers.build_rows(_fabricated())
    crop = _row(rows, "crop", "mtcnn_half")
    assert crop["ratio_steady"] == pytest.approx(105 / 110) and crop["status"] == "met"
    assert crop["ratio_whole"] == pytest.approx(42 / 60)
    assert _row(rows, "crop", "mtcnn_full")["status"] == "-"  # no target: ratio only
    # embed against the detect + align row's mtcnn half-scale figure
    ref = _row(rows, "embed", "mtcnn_half")
    assert ref["ratio_steady"] == pytest.approx(98 / 110) and ref["status"] == "MISSED"
    # >= 5x face_recognition needs both figures: steady 5.2x alone is not enough
    fr = _row(rows, "embed", "face_recognition")
    assert fr["ratio_steady"] > 5 > fr["ratio_whole"] and fr["status"] == "MISSED"
    assert _row(rows, "train", "torch_cl")["status"] == "met"
    assert _row(rows, "crop", "crop")["ours"] and _row(rows, "crop", "crop")["faces"] == "299/300"

    better = _fabricated()
    better["face_recognition"]["whole"] = [9.0]  # 50/9 = 5.6x
    assert _row(peers.build_rows(better), "embed", "face_recognition")["status"] == "met"
    better["torch_cl"]["steady"] = [180.0]  # 202/180 = 1.12
    assert _row(peers.build_rows(better), "train", "torch_cl")["status"] == "MISSED"


def test_skipped_failed_and_unmeasured_rows(capsys):
    results = _fabricated()
    del results["mtcnn_half"]
    rows = peers.build_rows(results, ["crop", "embed"])
    assert not any(r["stage"] == "crop" and r["key"] == "mtcnn_half" for r in rows)  # not selected
    ref = _row(rows, "embed", "mtcnn_half")  # embed's target without its peer's figure
    assert ref["status"] == "n/a" and "--only crop" in ref["skip"]
    facenet = _row(rows, "crop", "facenet")
    assert facenet["skip"].startswith("facenet-pytorch") and facenet["whole_img_s"] is None
    assert not any(r["stage"] == "train" for r in rows)

    peers.print_rows(peers.build_rows(_fabricated()))
    table = capsys.readouterr().out
    line = next(ln for ln in table.splitlines() if "facenet-pytorch MTCNN" in ln)
    assert "SKIPPED" in line and "torchvision::nms" in line
    line = next(ln for ln in table.splitlines() if "default memory layout" in ln)
    assert "FAILED" in line and "RuntimeError" in line
    line = next(ln for ln in table.splitlines() if "channels_last" in ln)
    assert "1.22" in line and "met" in line and "221–229" in line  # issue 14's range, for reference


def test_bad_selection_is_a_one_line_error():
    with pytest.raises(SystemExit, match="error: --only: unknown detect"):
        peers.main(["--only", "detect"])
    with pytest.raises(SystemExit, match="error: --contenders: unknown dlib"):
        peers.main(["--contenders", "dlib"])


@pytest.mark.slow
def test_smallest_real_run(lfw_dir, tmp_path):
    out = tmp_path / "peers.json"
    cmd = [sys.executable, str(BENCH / "peers.py"), "--only", "crop", "--images", "8", "--rounds", "1",
           "--contenders", "crop,mtcnn_half,facenet", "--data", str(lfw_dir), "--venv", str(tmp_path / "no-venv"),
           "--logs", str(tmp_path / "logs"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {r["key"]: r for r in data["rows"]}
    assert set(rows) == {"crop", "mtcnn_half", "facenet"}
    for key in ("crop", "mtcnn_half"):
        assert rows[key]["whole_img_s"] > 0 and rows[key]["steady_img_s"] > 0, rows[key]
        assert rows[key]["faces"].endswith("/8")
    assert rows["mtcnn_half"]["status"] in ("met", "MISSED")
    assert "--install" in rows["facenet"]["skip"]
    assert "SKIPPED" in proc.stdout


def test_run_all_has_an_opt_in_peers_section():
    import run_all

    assert "peers" not in run_all.SECTIONS and "peers" in run_all.OPTIONAL_SECTIONS  # not run by default
    assert run_all.section_commands(True, None)["peers"][0] == "peers.py"
    rows = run_all.build_rows({"peers": {"data": {"rows": peers.build_rows(_fabricated())}}})
    # one row per target: crop/mtcnn half, embed/face_recognition, embed/mtcnn half, train
    assert [r["status"] for r in rows] == ["met", "MISSED", "MISSED", "met"]
    assert rows[1]["stage"].startswith("peers embed: ours / face_recognition") and rows[1]["ratio"] > 5
