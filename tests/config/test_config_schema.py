"""Every config key and every command flag: a bad value is a one-line error (exit 2), checked
before TensorFlow is imported or any data is read; the flags are spelled alike across commands;
the keys the README lists do something.

The cases are generated from the config dataclasses and ``config.SCHEMA``, and from the
commands' own parsers, so a new key or flag is covered without anyone adding it here.
"""

from __future__ import annotations

import argparse
import json
import typing

import numpy as np
import pytest

from tripletface import config as C
from tripletface.cli import flags
from tripletface.cli import main as cli

KEYS = C.config_keys()


def _is_tuple(typ) -> bool:
    return typ is tuple or typing.get_origin(typ) is tuple


def _outside(rule: C.Rule, integer: bool) -> list:
    """Numbers just outside the rule's bounds."""
    step = 1 if integer else 1e-3
    out = []
    if rule.lo is not None:
        out.append(rule.lo if rule.lo_open else rule.lo - step)
    if rule.hi is not None:
        out.append(rule.hi if rule.hi_open else rule.hi + step)
    return [int(v) if integer else v for v in out]


def bad_values(key: str) -> list[str]:
    """Out-of-range, wrong-type and empty ``--set`` values for ``key``, from its type and rule."""
    typ, rule = KEYS[key], C.SCHEMA.get(key, C.Rule())
    if typ is bool:
        return ["maybe", "2", ""]
    if rule.choices:
        return ["not-a-choice", ""]
    if typ is str:
        return [] if rule.empty else ["", "   "]
    if typing.get_origin(typ) is typing.Union:  # Optional[str]: '' means None
        return []
    if _is_tuple(typ):
        lo_n, hi_n = rule.length or (1, None)
        out = [] if lo_n == 0 else [""]
        if typing.get_args(typ)[:1] == (str,):
            return out
        integer = rule.item is int
        n = max(lo_n, 1)
        out += ["abc", ",".join(["inf"] * n)]
        out += [",".join([str(v)] * n) for v in _outside(rule, integer)]
        if hi_n is not None:
            ok = rule.lo if rule.lo is not None and not rule.lo_open else 64
            out.append(",".join([str(ok)] * (hi_n + 1)))
        return out
    integer = typ is int
    return ["abc", "", "inf", "nan", *(["1.5"] if integer else []), *map(str, _outside(rule, integer))]


CASES = [(k, v) for k in KEYS for v in bad_values(k)]


@pytest.fixture
def nothing_runs(monkeypatch):
    """Fail loudly if a command got as far as TensorFlow or its own work."""
    from tripletface.training import loop as T

    def tensorflow():
        raise AssertionError("TensorFlow was imported before the config was checked")

    def work(*a, **k):
        raise AssertionError("the command ran: the bad value was not refused")

    monkeypatch.setattr(cli, "import_tensorflow_quietly", tensorflow)
    monkeypatch.setattr(T, "train", work)


def _one_line_error(capsys, argv) -> str:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (argv, rc, err)
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_every_key_declares_what_it_allows():
    """A new key must say what it allows (bool keys allow true/false and need no entry)."""
    missing = sorted(k for k, t in KEYS.items() if k not in C.SCHEMA and t is not bool)
    assert missing == [], f"add these keys to config.SCHEMA: {missing}"
    assert sorted(set(C.SCHEMA) - set(KEYS)) == [], "config.SCHEMA names keys the dataclasses do not have"
    for k in KEYS:
        assert bad_values(k) or KEYS[k] is str or typing.get_origin(KEYS[k]) in (typing.Union, tuple), k


@pytest.mark.parametrize("preset", [None, *C.PRESETS])
def test_defaults_and_presets_are_valid(preset):
    C.load_config(preset)


def test_no_preset_defaults_are_the_original_design_values():
    cfg = C.load_config()
    assert (cfg.data.batch_size, cfg.train.steps_per_epoch, cfg.train.validation_steps, cfg.train.epochs) == \
        (256, 50, 10, 10)
    assert cfg.model.image_size == (224, 224)
    assert cfg.loss.margin == pytest.approx(0.2) and cfg.train.learning_rate == pytest.approx(1e-4)


@pytest.mark.parametrize("key, value", CASES, ids=[f"{k}={v!r}" for k, v in CASES])
def test_every_bad_config_value_is_a_one_line_error(capsys, nothing_runs, key, value):
    line = _one_line_error(capsys, ["train", "--set", f"{key}={value}"])
    assert f"config key '{key}'" in line and "must be" in line and "received" in line, line


@pytest.mark.parametrize("key", list(KEYS))
def test_every_config_key_of_the_wrong_type_in_yaml_is_a_one_line_error(capsys, nothing_runs, tmp_path, key):
    section, name = key.split(".", 1)
    f = tmp_path / "c.yaml"
    f.write_text(f"{section}:\n  {name}:\n    nested: 1\n")  # a mapping: the wrong type for every key
    line = _one_line_error(capsys, ["train", "--config", str(f)])
    assert f"config key '{key}'" in line and "must be" in line, line


def test_the_issue_examples(capsys, nothing_runs):
    for setting, allowed in (("augment.rotation=200", "[0, 180]"), ("augment.cutout=1.5", "[0, 1]"),
                             ("model.dropout=1", "[0, 1)"), ("data.val_pairs=0", ">= 2")):
        line = _one_line_error(capsys, ["train", "--set", setting])
        assert setting.split("=")[0] in line and allowed in line, line


# --------------------------------------------------------------------------- command flags


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


PARSERS = _subparsers()


def _flag_cases():
    for name, p in PARSERS.items():
        for a in p._actions:
            if a.option_strings and a.nargs == 0:
                continue  # switches take no value
            flag = a.option_strings[0] if a.option_strings else None
            key = getattr(a.type, "config_key", None)
            values = []
            if key is not None:
                values = bad_values(key)
            elif getattr(a.type, "rule", None) is not None:
                integer = a.type.typ is int
                values = ["abc", "", "inf", "nan", *(["1.5"] if integer else []),
                          *map(str, _outside(a.type.rule, integer))]
            elif a.choices:
                values = ["not-a-choice"]
            for v in values:
                yield name, flag, v


FLAG_CASES = list(_flag_cases())


def test_every_numeric_flag_declares_its_range():
    """A numeric flag uses flags.number (or flags.config_value), so its range is checked while parsing."""
    plain = [(name, a.option_strings or a.dest) for name, p in PARSERS.items() for a in p._actions
             if a.type in (int, float)]
    assert plain == []
    assert len(FLAG_CASES) > 60


@pytest.mark.parametrize("command, flag, value", FLAG_CASES, ids=[f"{c} {f} {v!r}" for c, f, v in FLAG_CASES])
def test_every_bad_flag_value_is_a_one_line_error(capsys, nothing_runs, command, flag, value):
    argv = [command, flag, value] if flag else [command, value]
    line = _one_line_error(capsys, argv)
    assert "must be" in line or "invalid choice" in line, line
    if flag:
        assert flag in line, line


def test_every_positional_argument_has_help():
    missing = [(name, a.metavar or a.dest) for name, p in PARSERS.items() for a in p._actions
               if not a.option_strings and not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert missing == []


def _options(name: str) -> dict[str, argparse.Action]:
    return {s: a for a in PARSERS[name]._actions for s in a.option_strings}


def test_one_spelling_per_concept_across_commands():
    # no progress bar: --no-progress (alias --quiet), wherever there is a bar
    for name in ("crop", "train", "embed", "evaluate", "enroll", "calibrate"):
        opts = _options(name)
        assert opts["--no-progress"] is opts["--quiet"] and opts["--no-progress"].dest == "progress", name
    # flip averaging: --flip-tta / --no-flip-tta, default the model's own setting. compare, identify,
    # enroll, serve and calibrate use the model's setting only: its threshold was chosen in that mode.
    for name, p in PARSERS.items():
        flips = {s for s in _options(name) if "flip" in s}
        if name in ("evaluate", "embed", "export"):
            assert {"--flip-tta", "--no-flip-tta"} <= flips, name
            assert _options(name)["--flip-tta"].dest == _options(name)["--no-flip-tta"].dest == "flip_tta"
            assert _options(name)["--flip-tta"].default is None  # None: the model's own setting
        else:
            assert flips == set(), name
    # the input folder: a positional *_DIR, or --input-dir
    for name in ("crop", "train", "evaluate", "calibrate", "embed", "enroll"):
        positional = [a for a in PARSERS[name]._actions if not a.option_strings and "DIR" in str(a.metavar)]
        assert positional and "--input-dir" in _options(name), name
    # machine-readable output: --json, a switch
    for name in ("compare", "identify", "evaluate", "demo"):
        assert _options(name)["--json"].nargs == 0, name
    assert all(s == "--json" for name in PARSERS for s in _options(name) if "json" in s)
    # one output file or folder: --output
    for name in ("embed", "calibrate", "demo"):
        assert "--output" in _options(name), name


def _parse(argv):
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_input_arg", None):
        flags.resolve_input(parser, args)
    return args


def test_old_spellings_still_work():
    assert _parse(["evaluate", "d"]).data_dir == _parse(["evaluate", "--data-dir", "d"]).data_dir == "d"
    assert _parse(["evaluate", "--input-dir", "d"]).data_dir == "d"
    assert _parse(["evaluate", "d", "--no-flip"]).flip_tta is False
    assert _parse(["evaluate", "d", "--no-flip-tta"]).flip_tta is False
    assert _parse(["train", "--quiet"]).progress is False and _parse(["train"]).progress is True
    assert _parse(["demo", "--out", "x"]).out == _parse(["demo", "--output", "x"]).out == "x"
    assert _parse(["embed", "--input-dir", "p", "--output", "o"]).input_dir == "p"
    assert _parse(["crop", "a", "b", "--size", "96"]).overrides == ["crop.size=96"]
    assert _parse(["train", "t1", "--set", "EPOCHS=2"]).overrides == ["data.train_dir=t1", "EPOCHS=2"]


def test_input_folder_missing_or_given_twice_is_one_line(capsys):
    assert "input folder is required" in _one_line_error(capsys, ["embed", "--output", "o.npz"])
    assert "given twice" in _one_line_error(capsys, ["embed", "a", "--input-dir", "b", "--output", "o.npz"])


# --------------------------------------------------------------------------- keys that do something


def _images(root, names, per=2, size=40):
    rng = np.random.default_rng(0)
    from PIL import Image

    for n in names:
        (root / n).mkdir(parents=True)
        for i in range(1, per + 1):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / n / f"{n}_{i:04d}.png")


def test_eval_far_targets_and_folds_reach_evaluate(tmp_path, capsys):
    from inference_support import make_model, run_cli

    names = [f"p{i}" for i in range(8)]
    _images(tmp_path / "data", names)
    lines = ["1\t8"] + [f"{n}\t1\t2" for n in names]
    lines += [f"{a}\t1\t{b}\t2" for a, b in zip(names, names[1:] + names[:1])]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")  # one fold: eval.folds decides
    model = make_model(tmp_path / "m.keras")
    rc, out, err = run_cli(capsys, "evaluate", tmp_path / "data", "--aligned", "--model", model, "--pairs",
                           tmp_path / "pairs.txt", "--json", "--no-progress",
                           "--set", "eval.far_targets=0.05,0.25", "eval.folds=4")
    assert rc == 0, err
    m = json.loads(out)
    assert sorted(float(k) for k in m["tar_at_far"]) == [0.05, 0.25]
    assert m["n_folds"] == 4 and "eval.folds" in m["folds_from"]


def test_train_scores_test_triplets_at_the_end(tmp_path, capsys, monkeypatch):
    """TEST_TRIPLETS (crop's test_triplets.csv) is scored with the trained model after training."""
    from inference_support import make_model, run_cli
    from tripletface.training import loop as T

    names = ["a", "b", "c"]
    _images(tmp_path / "crops" / "test", names)
    csv = tmp_path / "crops" / "test_triplets.csv"
    csv.write_text("anchor,positive,negative\n" + "".join(
        f"test/{n}/{n}_0001.png,test/{n}/{n}_0002.png,test/{o}/{o}_0001.png\n"
        for n, o in zip(names, names[1:] + names[:1])))
    model = make_model(tmp_path / "ckpt" / "model.keras")
    monkeypatch.setattr(T, "train", lambda cfg, fresh=False, verbose=1: {"model_path": str(model)})
    rc, out, err = run_cli(capsys, "train", "--no-progress", "--set", f"TEST_TRIPLETS={csv}")
    assert rc == 0, err
    assert f"test triplets ({csv}): loss" in out
    saved = json.loads((tmp_path / "ckpt" / "test_triplets.json").read_text())
    assert saved["triplets"] == 3 and saved["unscored_triplets"] == 0 and saved["triplet_loss"] >= 0


def test_each_choice_list_is_the_one_its_implementing_module_uses():
    """A choice list is defined once (config/choice_lists.py, or a cheap implementing module); where a
    module keys its implementations by name, those names are exactly the config's choices."""
    from tripletface import losses
    from tripletface.config import choice_lists as CH
    from tripletface.faces import align, detect
    from tripletface.model import build
    from tripletface.training import distribute

    assert build.BACKBONES is CH.BACKBONES == C.choices("model.backbone")
    assert losses.LOSS_NAMES is CH.LOSS_NAMES == C.choices("loss.name")
    assert tuple(losses.MINERS) == losses.MININGS == CH.MININGS
    assert tuple(losses.DISTANCES) == CH.DISTANCE_NAMES == C.choices("loss.distance")
    assert tuple(detect.DETECTORS) == CH.DETECTOR_NAMES == C.choices("crop.detector")
    assert (*align.TEMPLATES, align.BOX) == CH.TEMPLATE_NAMES == C.choices("crop.template")
    assert distribute.STRATEGIES == C.choices("train.distribute")
    for key, names in (("crop.image_format", CH.IMAGE_FORMATS), ("data.source", CH.DATA_SOURCES),
                       ("data.sampling", CH.SAMPLINGS), ("train.optimizer", CH.OPTIMIZERS),
                       ("train.lr_schedule", CH.LR_SCHEDULES), ("train.mixed_precision", CH.PRECISIONS)):
        assert C.choices(key) == names, key


def test_importing_the_config_loads_neither_numpy_nor_tensorflow():
    from import_support import heavy_modules_after

    assert heavy_modules_after("import tripletface.config as c; c.load_config('cpu')",
                               heavy=("numpy", "tensorflow", "keras", "yaml")) == []
