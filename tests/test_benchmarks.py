"""The benchmark helpers (benchmarks/): parsing, data sizing, memory probes and the summary rows.

No timing is asserted here (timings belong to the benchmarks, never to tests); these check
that the pieces the benchmarks are built from compute what they claim.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_scale  # noqa: E402
import bench_train  # noqa: E402
import common  # noqa: E402
import run_all  # noqa: E402

from tripletface.data.index import FaceIndex  # noqa: E402


def test_parse_config():
    assert bench_train.parse_config("resnet50@224") == ("resnet50", 224)
    with pytest.raises(argparse.ArgumentTypeError, match="BACKBONE@SIZE"):
        bench_train.parse_config("resnet50")


def test_train_config_sets_the_benchmarked_shape():
    cfg = bench_train.train_config("mobilenet", 96, 24, 4, augment="none")
    assert cfg.model.image_size == (96, 96) and cfg.data.p * cfg.data.k == 24
    assert not (cfg.augment.flip or cfg.augment.rotation or cfg.augment.brightness)
    strong = bench_train.train_config("mobilenet", 96, 24, 4, augment="strong")
    assert strong.augment.cutout > 0 and strong.augment.motion_blur > 0


def _index(counts):
    paths, labels = [], []
    for label, c in enumerate(counts):
        paths += [f"/d/id{label}/{j}.png" for j in range(c)]
        labels += [label] * c
    return FaceIndex(tuple(paths), np.array(labels), tuple(f"id{i}" for i in range(len(counts))))


def test_sized_index_subsets_and_repeats():
    index = _index([3, 2, 1, 4])  # 10 images
    small = bench_scale.sized_index(index, 5)
    assert len(small) == 5 and small.num_identities == 2  # whole identities: 3 + 2
    big = bench_scale.sized_index(index, 25)
    assert len(big) == 25
    assert big.num_identities == 12  # three copies of the 4 identities, under new names
    assert len(set(big.names)) == big.num_identities
    # a repeated image keeps its file but belongs to the copy's identity
    assert big.paths[10] == index.paths[0] and big.names[big.labels[10]] == "id0~1"


def test_load_index_limit_keeps_whole_identities(tmp_path):
    for name, n in (("a", 2), ("b", 3), ("c", 2)):
        (tmp_path / name).mkdir()
        for j in range(n):
            (tmp_path / name / f"{j}.png").write_bytes(b"x")
    assert len(bench_train.load_index(tmp_path)) == 7
    assert len(bench_train.load_index(tmp_path, limit=4)) == 5  # a (2) + b (3)


def test_synthetic_gallery_rows_are_unit_and_grouped():
    g = bench_scale.synthetic_gallery(95, dim=16, per_identity=10)
    assert g.embeddings.shape == (95, 16) and g.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(g.embeddings, axis=1), 1.0, atol=1e-5)
    assert len(set(g.names.tolist())) == 10 and len(set(g.keys.tolist())) == 95


def test_memory_probes(tmp_path):
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc on this platform")
    rss = common.rss_mib()
    assert rss > 1 and common.peak_rss_mib() >= rss
    block = np.ones(64 << 20, np.uint8)  # 64 MiB touched
    assert common.peak_rss_mib() >= rss + 60
    del block
    if common.reset_peak():
        assert common.peak_rss_mib() < rss + 60


def test_print_table_aligns_columns(capsys):
    common.print_table(["a", "long header"], [[1, "x"], ["wide cell", 2.5]])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1
    assert lines[0].startswith("| a ") and lines[1].startswith("|---")


def test_build_rows_judges_each_target():
    sections = {
        "train": {"data": {"train_step": [
            {"config": "mobilenet@112", "batch": 16, "real_img_s": 90.0, "bare_img_s": 100.0, "ratio": 0.9,
             "cpu_ratio": 0.85, "peak_rss_mib": {"real": 1200.0, "bare": 900.0}, "cache_mib": 250.0},
            {"config": "resnet50@224", "batch": 16, "real_img_s": 3.3, "bare_img_s": 3.0, "ratio": 1.1,
             "cpu_ratio": 0.9, "peak_rss_mib": {"real": 5000.0, "bare": 3000.0}, "cache_mib": 990.0},
            {"config": "resnet50@112", "batch": 16, "real_img_s": 10.0, "bare_img_s": 10.0, "ratio": 1.0,
             "cpu_ratio": 0.97, "peak_rss_mib": {"real": 2000.0, "bare": 1500.0}, "cache_mib": 250.0}]}},
        "cold": {"data": {"cold_start": [
            {"model": "/t/m.keras", "median_s": {"real": 5.0, "floor": 4.0, "import_tf": 3.0}, "ratio": 1.25,
             "cpu_ratio": 1.2, "peak_rss_mib": {"real": 700.0}}]}},
        "crop": {"error": "exited 2"},
    }
    rows = {r["stage"].split(" (")[0]: r for r in run_all.build_rows(sections)}
    assert rows["train step mobilenet@112 b16"]["status"] == "MISSED"  # 0.90 < 0.95
    assert rows["train step resnet50@224 b16"]["status"] == "MISSED"  # wall 1.1 but CPU time 0.90
    assert rows["train step resnet50@112 b16"]["status"] == "met"
    assert rows["train step resnet50@112 b16"]["target"] == ">= 0.95"
    assert rows["cold start compare m"]["status"] == "met"  # 1.25 <= 1.3
    assert rows["crop"]["status"] == "-" and rows["crop"]["note"] == "exited 2"


def test_ablation_rows_change_one_thing_from_the_original_design(tmp_path):
    import ablation

    def keys(row):
        return dict(c.split("=", 1) for c in row)

    original = keys(ablation.ORIGINAL)
    assert original["model.backbone"] == "resnet50" and original["loss.name"] == "triplet"
    assert original["data.sampling"] == "triplets" and original["augment.rotation"] == "10"
    changed = {name: {k: v for k, v in keys(row).items() if original.get(k) != v}
               for name, row in ablation.ROWS.items()}
    assert changed["original"] == changed["no_alignment"] == {}  # no_alignment changes the crops, not the config
    assert changed["efficientnet"] == {"model.backbone": "efficientnet"}
    assert changed["quality_filter"].keys() == {"data.min_blur", "data.max_pose"}
    assert changed["hard"] == {"data.sampling": "pk", "data.batch_size": "128", "loss.name": "batch_hard"}
    assert all(len(row) == len(keys(row)) for row in ablation.ROWS.values())  # no key given twice

    args = argparse.Namespace(crops="aligned", box_crops="", out=str(tmp_path), fold=1, epochs=3, steps=100)
    train, evaluate, out = ablation.commands("no_alignment", argparse.Namespace(**{**vars(args), "box_crops": "box"}))
    assert "TRAIN_DIR=box" in train and evaluate[evaluate.index("--data-dir") + 1] == "box"
    train, _, _ = ablation.commands("semi_hard", args)
    assert "TRAIN_DIR=aligned" in train and "train.epochs=3" in train and "loss.name=semi_hard" in train
    with pytest.raises(SystemExit, match="--box-crops"):
        ablation.commands("no_alignment", args)


def test_synthetic_tree_links_the_crops_into_two_sources(tmp_path):
    from tripletface.data.index import index_folders

    crops = []
    for i in range(3):
        f = tmp_path / "crops" / f"{i}.png"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(bytes([i]) * 10)
        crops.append(str(f))
    root = bench_scale.synthetic_tree(tmp_path / "tree", crops, n_files=100, per_identity=7)
    files = sorted(root.rglob("*.png"))
    assert len(files) == 100
    assert sorted({p.parent.parent.name for p in files}) == ["src0", "src1"]
    assert files[0].read_bytes() == Path(crops[0]).read_bytes()  # a link to a real crop, no new pixels
    index = index_folders([root / "src0", root / "src1"])
    assert len(index) == 100 and index.num_identities == 15 and index.sources == ("src0", "src1")


def test_faces_recipe_folds_holdout_and_table(tmp_path):
    import faces_recipe

    assert faces_recipe.parse_folds("1-3,5") == [1, 2, 3, 5]
    crops = tmp_path / "celeba112"
    for i in range(250):
        for j in range(2 if i % 5 else 1):
            (crops / f"celeba_{i}").mkdir(parents=True, exist_ok=True)
            (crops / f"celeba_{i}" / f"{j}.png").write_bytes(b"x")
    path = faces_recipe.celeba_holdout(crops, tmp_path)
    names = path.read_text().split()
    assert len(names) == faces_recipe.CELEBA_HOLDOUT == len(set(names))
    assert all(n.startswith("celeba112/celeba_") and int(n.rsplit("_", 1)[1]) % 5 for n in names)  # 2+ crops only
    assert faces_recipe.celeba_holdout(crops, tmp_path).read_text().split() == names  # fixed once drawn
    nested = {"metrics": {"verification": {"accuracy_mean": 0.9, "accuracy_std": 0.01, "auc": 0.95}}}
    assert faces_recipe._verification(nested)["auc"] == 0.95
    rows = [{"fold": f, "accuracy": a, "accuracy_sd": 0.02, "auc": 0.9, "eer": 0.1, "celeba_accuracy": 0.8,
             "celeba_auc": 0.85, "train_s": 600} for f, a in ((1, 0.8), (2, 0.9))]
    rows[1]["epochs"] = 45  # rows written before the epochs were recorded have none
    text = faces_recipe.table(rows)
    assert "| 1 | 0.800 ± 0.020 | 0.900 | 0.100 | 0.800 | 0.850 | — | 10.0 |" in text
    assert "| 2 | 0.900 ± 0.020 | 0.900 | 0.100 | 0.800 | 0.850 | 45 | 10.0 |" in text and "**0.850 ± 0.071**" in text
    # a row's epochs (and a budget's plan) come from its model's metadata
    from inference_support import make_model
    from tripletface.model.io import load_model, save_model, update_metadata

    model = load_model(make_model(tmp_path / "m.keras"))
    assert faces_recipe.trained_epochs(tmp_path / "m.keras") == {"epochs": None}
    update_metadata(model, epochs_trained=45, time_budget={"time_budget": 45, "epochs": 45, "step_s": 0.55})
    save_model(model, tmp_path / "m.keras")
    assert faces_recipe.trained_epochs(tmp_path / "m.keras") == {
        "epochs": 45, "time_budget": {"time_budget": 45, "epochs": 45, "step_s": 0.55}}


def test_faces_recipe_rows_are_valid_one_change_configs_and_tabulate(tmp_path):
    """Every ablation row loads as a valid config that differs from the table's base in the one key it
    names, and --ablation lists each result under its row name, the runs made before BASE included."""
    import faces_recipe

    from tripletface.config import load_config

    base = load_config(preset="faces-cpu", overrides=faces_recipe.BASE).to_dict()
    assert load_config(preset="faces-cpu").data.source_balance == "sources"  # the preset: the `balanced` row
    assert base["data"]["source_balance"] == "identities"
    flat = lambda d: {f"{s}.{k}": v for s, sec in d.items() if isinstance(sec, dict) for k, v in sec.items()}  # noqa: E731
    preset = flat(load_config(preset="faces-cpu").to_dict())  # ... the `narrow` row's model and epochs, its hour
    assert {k: v for k, v in preset.items() if flat(base)[k] != v} == {
        "data.source_balance": "sources", "model.width": 0.75, "train.epochs": 21, "train.time_budget": 45}
    for name, changes in faces_recipe.ROWS.items():
        assert changes[:len(faces_recipe.BASE)] == faces_recipe.BASE, name
        cfg = flat(load_config(preset="faces-cpu", overrides=changes).to_dict())
        differ = {k for k, v in cfg.items() if flat(base)[k] != v}
        assert differ == {c.split("=", 1)[0] for c in changes[len(faces_recipe.BASE):]}, name
    row = {"fold": 1, "preset": "faces-cpu", "set": faces_recipe.ROWS["aux_head"], "accuracy": 0.9, "accuracy_sd": 0.01,
           "auc": 0.95, "celeba_accuracy": 0.8, "celeba_auc": 0.85, "train_s": 60}
    narrow_then = {**row, "set": faces_recipe.BASE_BEFORE_NARROW + ["model.width=0.75", "train.epochs=21"]}
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(narrow_then) + "\n")
    text = faces_recipe.ablation_table([tmp_path / "results.jsonl"])
    assert "| `aux_head` (fold 1) | loss.aux_weight=1.0 | 0.900 ± 0.010 | 0.950 |" in text
    assert "| `narrow` (fold 1) | model.width=0.75 train.epochs=21 | 0.900 ± 0.010 |" in text  # run before BASE pinned the width
    for name, legacy in (("base", ["train.epochs=14"]), ("balanced", ["train.epochs=14", "data.source_weights=[1,1]"]),
                         ("colour", ["train.epochs=14", "model.greyscale=false"]),  # as they ran before BASE
                         ("narrow", faces_recipe.BASE_BEFORE_NARROW + ["model.width=0.75", "train.epochs=21"]),
                         ("aux_head", faces_recipe.BASE_BEFORE_BUDGET + ["loss.aux_weight=1.0"])):
        assert faces_recipe.row_name({**row, "set": legacy}) == name
    assert faces_recipe.row_name({**row, "set": ["train.epochs=3"]}) == "faces-cpu train.epochs=3"


def test_faces_recipe_final_trains_on_everything_and_tabulates_the_sources(tmp_path, monkeypatch):
    """--final: the default model's training excludes no identity (no fold, no CelebA hold-out), and
    the card's data table carries each source's counts and terms from the model's metadata."""
    import argparse

    import faces_recipe

    seen = []
    monkeypatch.setattr(faces_recipe, "run", lambda cmd, log: seen.append(cmd) or 1.0)
    args = argparse.Namespace(preset="faces-cpu", set=["data.source_weights=[1,1]"])
    path = faces_recipe.final_model(args, tmp_path / "lfw112", tmp_path / "celeba112", tmp_path, tmp_path / "log")
    (cmd,) = seen
    assert path == tmp_path / "final" / "model.keras"
    assert f"TRAIN_DIR={tmp_path / 'lfw112'}" in cmd and f"TRAIN_DIR={tmp_path / 'celeba112'}" in cmd
    assert not any("exclude" in c for c in cmd) and cmd[-1] == "data.source_weights=[1,1]"
    meta = {"sources": [
        {"name": "lfw112", "images": 6909, "identities": 3554, "identities_2plus": 1680, "sampling_share": 0.5,
         "terms": "LFW: public research data set"},
        {"name": "celeba112", "images": 21429, "identities": 5626, "identities_2plus": 3172, "sampling_share": 0.5,
         "terms": "CelebA: non-commercial research purposes only"}]}
    text = faces_recipe.sources_table(meta)
    assert "| `lfw112` | 6,909 | 3,554 | 1,680 | 50.0% | LFW: public research data set |" in text
    assert "| `celeba112` | 21,429 | 5,626 | 3,172 | 50.0% | CelebA: non-commercial research purposes only |" in text


def test_faces_recipe_step_costs_give_capacity_rows_the_preset_wall_time(tmp_path, monkeypatch):
    """--step-costs: each capacity row's epochs are the preset's wall time over its measured step
    time (rounded down, at least one), from one timing per row of that row's own config."""
    import bench_train
    import faces_recipe

    assert faces_recipe.equal_time_epochs(14, 1.0, 2.4) == 5
    assert faces_recipe.equal_time_epochs(14, 1.0, 1.0) == 14 and faces_recipe.equal_time_epochs(14, 1.0, 100.0) == 1
    with pytest.raises(ValueError):
        faces_recipe.equal_time_epochs(14, 0.0, 1.0)
    for src, n in (("lfw112", 4), ("celeba112", 6)):
        for i in range(n):
            for j in range(2):
                (tmp_path / src / f"{src}_{i}").mkdir(parents=True, exist_ok=True)
                (tmp_path / src / f"{src}_{i}" / f"{j}.png").write_bytes(b"x")
    monkeypatch.setattr(faces_recipe, "STEP_COST_IDENTITIES", 3)
    step = {"base": 0.5, "wide": 1.0, "res96": 0.75}
    seen = []

    def fake_measure(cfg, index, steps, rounds, log):
        name = {1.5: "wide"}.get(cfg.model.width) or ("res96" if tuple(cfg.model.image_size) == (96, 96) else "base")
        seen.append((name, index.num_identities, sorted(set(index.source_ids()))))
        return {"step_s": {"real": [step[name]] * 3}, "real_img_s": 128 / step[name], "batch": 128, "config": name}

    monkeypatch.setattr(bench_train, "measure", fake_measure)
    costs = faces_recipe.step_costs("faces-cpu", ["base", "wide", "res96"], tmp_path / "lfw112",
                                    tmp_path / "celeba112")
    assert [c["row"] for c in costs] == ["base", "wide", "res96"]
    assert [c["epochs_at_equal_time"] for c in costs] == [14, 7, 9]
    assert [c["ratio"] for c in costs] == [1.0, 2.0, 1.5]
    assert seen == [(n, 6, [0, 1]) for n in ("base", "wide", "res96")]  # 3 identities of each source
    assert set(faces_recipe.CAPACITY_ROWS) <= set(faces_recipe.ROWS)
    assert faces_recipe.equal_time_epochs(14, 1.0, 0.7) == 20  # a cheaper row gets more epochs


def test_faces_recipe_step_costs_times_the_base_and_the_rows_named(tmp_path, monkeypatch, capsys):
    """``--step-costs ROW ...`` times the base and just those rows (all capacity rows without names);
    a name that is not a capacity row is refused by argparse."""
    import faces_recipe

    asked = []
    monkeypatch.setattr(faces_recipe, "crop_all", lambda data, out, log: {})
    monkeypatch.setattr(faces_recipe, "step_costs", lambda preset, rows, lfw, celeba, steps, log: asked.append(rows) or [
        {"row": r, "config": r, "batch": 128, "step_s": 1.0, "img_s": 128.0, "ratio": 1.0, "epochs": 14,
         "epochs_at_equal_time": 14} for r in rows])
    out = ["--out", str(tmp_path / "o"), "--crops", str(tmp_path)]
    assert faces_recipe.main(["--step-costs", "narrow", "res48", *out]) == 0
    assert faces_recipe.main(["--step-costs", *out]) == 0
    assert asked == [("base", "narrow", "res48"), ("base", *faces_recipe.CAPACITY_ROWS[1:])]
    assert re.search(r"\| narrow +\| narrow +\| 128 +\|", capsys.readouterr().out)
    with pytest.raises(SystemExit):
        faces_recipe.main(["--step-costs", "aux_head", *out])


def test_bench_train_measures_explicit_triplet_steps(tmp_path):
    """bench_train.measure (which --step-costs uses for the `original` row) times an explicit-triplet
    config with its real batch: B triplets stacked, 3B images, for the real and the bare step alike."""
    import bench_train
    from PIL import Image

    from tripletface.data.index import index_folder
    from tripletface.config import load_config

    rng = np.random.default_rng(0)
    for i in range(6):
        (tmp_path / f"id{i}").mkdir()
        for j in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"id{i}" / f"{j}.png")
    cfg = load_config(preset="smoke", overrides=[f"TRAIN_DIR={tmp_path}", "data.sampling=triplets", "loss.name=triplet",
                                                 "data.batch_size=4", "model.image_size=32x32"])
    r = bench_train.measure(cfg, index_folder(tmp_path), steps=1, rounds=1, warmup=1, log=lambda m: None)
    assert r["batch"] == 12 and r["loss"] == "triplet"
    assert r["real_img_s"] > 0 and r["bare_img_s"] > 0 and len(r["step_s"]["real"]) == 1
