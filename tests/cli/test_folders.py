"""The user's input is never written into: ``crop``, ``embed``, ``enroll`` and ``export`` refuse an
output inside the input (or the input inside the output) with one line, exit 2, writing nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from inference_support import error_lines, make_model, run_cli

from tripletface.errors import InputError
from tripletface.folders import check_apart, is_within


def _photos(root: Path) -> Path:
    from PIL import Image

    for name in ("Ann", "Bob"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((64, 64, 3), 40 * (i + 1), np.uint8)).save(root / name / f"{name}_{i}.png")
    return root


def _tree(root: Path) -> dict:
    """Every path under ``root`` with its size and mtime: what 'nothing written' is checked against."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _refused(capsys, before: dict, root: Path, *argv) -> str:
    rc, out, err = run_cli(capsys, *argv)
    lines = error_lines(err)
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert _tree(root) == before, "nothing may be written"
    return lines[0]


def test_check_apart_rule(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "in")
    check_apart(tmp_path / "in", tmp_path / "out")
    check_apart(tmp_path / "in", tmp_path / "input2")  # a shared prefix is not containment
    for inp, out, what in ((tmp_path / "in", tmp_path / "in", "must differ"),
                           (tmp_path / "in", tmp_path / "in" / "sub" / "new", "is inside"),
                           (tmp_path / "in", tmp_path / "link" / "x.npz", "is inside"),  # through a symlink
                           (tmp_path / "in" / "sub", tmp_path / "in", "contains")):
        with pytest.raises(InputError, match=what):
            check_apart(inp, out)
    assert is_within(tmp_path / "in" / "sub", tmp_path / "in") and not is_within(tmp_path / "in", tmp_path / "in" / "sub")


@pytest.mark.parametrize("layout", ["output_inside_input", "input_inside_output", "same"])
def test_crop_refuses_folders_inside_each_other(tmp_path, capsys, layout):
    root = _photos(tmp_path / "IN")
    before = _tree(root)
    src, dst = {"output_inside_input": (root, root / "sub"), "input_inside_output": (root / "Ann", root),
                "same": (root, root)}[layout]
    line = _refused(capsys, before, root, "crop", src, dst, "--no-progress")
    assert str(dst) in line and str(src) in line
    assert not (root / "sub").exists() and not (root / "manifest.jsonl").exists()


def test_embed_refuses_an_output_inside_the_input(tmp_path, capsys):
    root = _photos(tmp_path / "IN")
    model = make_model(tmp_path / "m.keras")
    before = _tree(root)
    line = _refused(capsys, before, root, "embed", root, "--output", root / "Ann" / "emb.npz", "--model", model,
                    "--aligned")
    assert "emb.npz" in line and "inside" in line
    rc, _, err = run_cli(capsys, "embed", root, "--output", tmp_path / "emb.npz", "--model", model, "--aligned")
    assert rc == 0, err  # beside the input is fine
    assert (tmp_path / "emb.npz").is_file()


def test_enroll_refuses_a_gallery_inside_the_input(tmp_path, capsys):
    root = _photos(tmp_path / "IN")
    model = make_model(tmp_path / "m.keras")
    before = _tree(root)
    line = _refused(capsys, before, root, "enroll", root, "--gallery", root / "g.npz", "--model", model, "--aligned")
    assert "g.npz" in line and "inside" in line
    from tripletface.inference.embedder import Embedder
    from tripletface.inference.open_set import enroll

    with pytest.raises(InputError, match="inside"):  # the library call keeps the rule too
        enroll(Embedder.load(str(model)), root, root / "Bob" / "g.npz", aligned=True)
    assert _tree(root) == before


@pytest.mark.parametrize("where", ["model_inside_out", "out_is_model"])
def test_export_refuses_to_overwrite_the_folder_holding_its_model(tmp_path, capsys, where):
    out = tmp_path / "artifact"
    out.mkdir()
    model = make_model(out / "m.keras") if where == "model_inside_out" else make_model(tmp_path / "m.keras")
    target = out if where == "model_inside_out" else model
    before = _tree(tmp_path)
    rc, _, err = run_cli(capsys, "export", target, "--model", model, "--format", "savedmodel", "--overwrite")
    lines = error_lines(err)
    assert rc == 2 and len(lines) == 1, err
    assert _tree(tmp_path) == before and model.is_file()
