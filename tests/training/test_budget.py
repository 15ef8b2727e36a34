"""train.time_budget: the epochs that fit, measured at the start on the run's own data, kept on resume."""

import json

import numpy as np
import pytest

from train_support import tiny_train_dir
from tripletface.training import budget


def test_fit_epochs_is_the_whole_epochs_left_after_set_up_and_the_final_save():
    # 600 s budget, 60 s gone, final save = one validation pass (4 s) + SAVE_S: 600 - 60 - 5 = 535 s
    # left; an epoch = 100 steps of 0.5 s + 4 s of validation + SAVE_S = 55 s: 9 whole epochs (495 s)
    assert budget.SAVE_S == 1.0
    assert budget.fit_epochs(600, 60, 0.5, 100, 4.0) == 9
    # the boundary: exactly ten epochs' worth left is ten
    assert budget.fit_epochs(60 + 5 + 10 * 55, 60, 0.5, 100, 4.0) == 10
    assert budget.fit_epochs(60 + 5 + 10 * 55 - 0.01, 60, 0.5, 100, 4.0) == 9
    # a budget already spent still trains one epoch (a model, not nothing)
    assert budget.fit_epochs(10, 60, 0.5, 100, 4.0) == 1
    with pytest.raises(ValueError, match="step time"):
        budget.fit_epochs(600, 0, 0.0, 100, 1.0)


class _FakeTrainer:
    """``fit`` as Keras runs it for the step timer: a batch of ``step_s``, then each callback's batch end."""

    def __init__(self, step_s):
        self.step_s, self.stop_training, self.steps = step_s, False, 0

    def fit(self, ds, epochs, steps_per_epoch, shuffle, callbacks, verbose):
        import time

        for cb in callbacks:
            cb.set_model(self)
            cb.on_train_begin()
        for batch in range(steps_per_epoch):
            time.sleep(self.step_s)
            self.steps += 1
            for cb in callbacks:
                cb.on_train_batch_end(batch)
            if self.stop_training:
                break


def test_measure_times_warm_steps_and_the_second_validation_pass(monkeypatch):
    import time

    monkeypatch.setattr(budget, "MIN_SECONDS", 0.05)
    trainer = _FakeTrainer(0.01)
    calls = []

    def validate():  # the first call traces: slow; later ones are the epoch's cost
        time.sleep(0.5 if not calls else 0.02)
        calls.append(1)

    m = budget.measure(trainer, None, validate)
    # stopped once MIN_STEPS steps after the first took MIN_SECONDS: 0.05 s of 0.01 s steps
    assert budget.MIN_STEPS <= m["steps_timed"] < budget.MAX_STEPS and trainer.steps == m["steps_timed"] + 1
    assert 0.01 <= m["step_s"] < 0.1
    assert len(calls) == 2 and 0.02 <= m["validation_s"] < 0.3  # the second call, not the traced first
    assert 0.3 < m["first_calls_s"] < 1.0  # the first validation's extra 0.48 s, which the real run pays again
    monkeypatch.setattr(budget, "MIN_SECONDS", 1e9)  # never long enough: MAX_STEPS steps after the first
    assert budget.measure(_FakeTrainer(0.0), None)["steps_timed"] == budget.MAX_STEPS


def test_step_timer_without_a_stop_records_every_step_in_wall_and_cpu_seconds():
    """benchmarks/bench_train.py's step clock: the same callback, recording only."""
    import time

    from tripletface.training.callbacks import StepTimer

    trainer, clock = _FakeTrainer(0.01), StepTimer()
    trainer.fit(None, epochs=1, steps_per_epoch=40, shuffle=False, callbacks=[clock], verbose=0)
    assert trainer.steps == 40 and len(clock.ends) == len(clock.cpu) == 40  # never stopped
    assert clock.ends == sorted(clock.ends) and clock.ends[-1] - clock.ends[0] >= 39 * 0.01
    assert clock.cpu == sorted(clock.cpu) and clock.cpu[-1] <= time.process_time()
    # sleeping costs wall time, not CPU time
    assert clock.cpu[-1] - clock.cpu[0] < clock.ends[-1] - clock.ends[0]


def test_plan_reuses_the_saved_plan_only_for_the_same_budget_and_steps(tmp_path, capsys):
    from tripletface.config import load_config

    calls = []

    def measured():
        calls.append(1)
        return {"step_s": 0.5, "steps_timed": 7, "validation_s": 4.0}

    cfg = load_config("smoke", overrides=["train.time_budget=10", "train.steps_per_epoch=100"])
    first = budget.plan(cfg, tmp_path, lambda: 60.0, measured)
    assert first["epochs"] == 9 and len(calls) == 1  # budget.fit_epochs(600, 60, 0.5, 100, 4.0)
    saved = json.loads((tmp_path / budget.PLAN_NAME).read_text())
    assert saved == first and saved["step_s"] == 0.5 and saved["spent_before_training_s"] == 60.0
    err = capsys.readouterr().err
    assert "10 min: a step takes 0.500 s here (7 timed)" in err
    assert f"9 epochs of 100 steps, not train.epochs={cfg.train.epochs} (train.time_budget=0 trains that)" in err
    assert budget.plan(cfg, tmp_path, lambda: 0.0, measured) == first and len(calls) == 1  # a resume
    assert "9 epochs as planned at the start" in capsys.readouterr().err
    other = load_config("smoke", overrides=["train.time_budget=20", "train.steps_per_epoch=100"])
    assert budget.plan(other, tmp_path, lambda: 60.0, measured)["epochs"] == 20 and len(calls) == 2
    (tmp_path / budget.PLAN_NAME).write_text("{not json")  # unreadable: measured again, rewritten
    assert budget.plan(other, tmp_path, lambda: 60.0, measured)["epochs"] == 20 and len(calls) == 3
    assert json.loads((tmp_path / budget.PLAN_NAME).read_text())["epochs"] == 20
    # a checkpoint made without a plan: the budget buys epochs on top of those it holds
    (tmp_path / budget.PLAN_NAME).unlink()
    resumed = budget.plan(cfg, tmp_path, lambda: 60.0, measured, done_epochs=3)
    assert resumed["epochs"] == 12 and resumed["epochs_before_the_budget"] == 3 and len(calls) == 4
    assert "12 epochs of 100 steps (3 of them already trained)" in capsys.readouterr().err


def test_a_negative_budget_is_a_config_error():
    from tripletface.config import load_config
    from tripletface.config.schema import ConfigError

    with pytest.raises(ConfigError, match="train.time_budget"):
        load_config("smoke", overrides=["train.time_budget=-1"])
    with pytest.raises(ConfigError, match="train.time_budget.*needs one process"):
        load_config("smoke", overrides=["train.time_budget=5", "train.distribute=multiworker"])
    assert load_config("smoke", overrides=["train.time_budget=5", "train.distribute=mirrored"]).train.time_budget == 5


@pytest.fixture(scope="module")
def budget_run(lfw_dir, tmp_path_factory):
    """A smoke training on real faces to a 0.25-minute budget: (config, train()'s result, plan)."""
    from tripletface.config import load_config
    from tripletface.training.loop import train

    tmp = tmp_path_factory.mktemp("budget")
    train_dir = tiny_train_dir(lfw_dir, tmp / "train")
    overrides = [f"TRAIN_DIR={train_dir}", f"TENSORBOARD_LOGDIR={tmp / 'logs'}", "data.val_fraction=0.25",
                 "data.val_pairs=40"]
    cfg = load_config("smoke", overrides=overrides + [f"CHECKPOINT_DIR={tmp / 'ckpt'}", "train.time_budget=0.25"])
    with pytest.MonkeyPatch.context() as mp:  # the plan's own arithmetic: a loaded machine must not cut it
        mp.setattr(budget, "STOP_AT_DEADLINE", False)
        result = train(cfg, verbose=0)
    return overrides, tmp, result, json.loads((tmp / "ckpt" / budget.PLAN_NAME).read_text())


def test_a_budgeted_run_says_its_time_against_the_budget(lfw_dir, tmp_path, capsys):
    from tripletface.cli.main import main

    train_dir = tiny_train_dir(lfw_dir, tmp_path / "train")
    rc = main(["train", "--preset", "smoke", "--quiet", "--set", f"TRAIN_DIR={train_dir}",
               f"CHECKPOINT_DIR={tmp_path / 'ckpt'}", f"TENSORBOARD_LOGDIR={tmp_path / 'logs'}",
               "data.val_fraction=0.25", "data.val_pairs=40", "train.time_budget=0.2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "train.time_budget: 0.2 min: a step takes" in err and "s of its 12s budget" in err
    assert (tmp_path / "ckpt" / "model.keras").is_file() and (tmp_path / "ckpt" / budget.PLAN_NAME).is_file()


def test_a_budgeted_run_trains_the_planned_epochs_and_records_them(budget_run):
    from tripletface.model.io import get_metadata, load_model

    _, tmp, result, plan = budget_run
    rows = [json.loads(line) for line in (tmp / "ckpt" / "history.jsonl").read_text().splitlines()]
    # the plan is its own arithmetic on what it measured, and the run kept to it
    assert plan["epochs"] == budget.fit_epochs(15.0, plan["spent_before_training_s"] + plan["first_calls_s"],
                                               plan["step_s"], 3, plan["validation_s"])
    assert plan["steps_timed"] >= budget.MIN_STEPS and plan["step_s"] > 0
    assert [r["epoch"] for r in rows] == list(range(1, plan["epochs"] + 1))
    meta = get_metadata(load_model(result["model_path"]))
    assert meta["epochs_trained"] == plan["epochs"] == meta["config"]["train"]["epochs"]
    assert meta["time_budget"] == plan and meta["config"]["train"]["time_budget"] == 0.25


def test_a_budgeted_run_is_the_explicit_run_of_its_epochs(budget_run):
    """The throwaway trainer that times the step changes nothing: the same weights as
    ``train.epochs=N`` with the N the budget planned (same data, seed and batches)."""
    from tripletface.config import load_config
    from tripletface.model.io import load_model
    from tripletface.training.loop import train

    overrides, tmp, result, plan = budget_run
    cfg = load_config("smoke", overrides=overrides + [f"CHECKPOINT_DIR={tmp / 'explicit'}",
                                                      f"train.epochs={plan['epochs']}"])
    explicit = train(cfg, verbose=0)
    a, b = load_model(result["model_path"]), load_model(explicit["model_path"])
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_a_resumed_budgeted_run_keeps_its_plan(budget_run, capsys):
    from tripletface.config import load_config
    from tripletface.training.loop import train

    overrides, tmp, _, plan = budget_run
    cfg = load_config("smoke", overrides=overrides + [f"CHECKPOINT_DIR={tmp / 'ckpt'}", "train.time_budget=0.25"])
    capsys.readouterr()
    train(cfg, verbose=0)
    err = capsys.readouterr().err
    assert f"{plan['epochs']} epochs as planned at the start" in err
    assert f"already trained {plan['epochs']}/{plan['epochs']} epochs" in err
    assert json.loads((tmp / "ckpt" / budget.PLAN_NAME).read_text()) == plan


def test_a_run_begun_without_a_budget_and_resumed_with_one_trains_the_budget_on_top(budget_run, capsys, monkeypatch):
    from tripletface.config import load_config
    from tripletface.training.loop import train

    monkeypatch.setattr(budget, "STOP_AT_DEADLINE", False)  # every planned epoch, however loaded the machine

    overrides, tmp, _, _ = budget_run
    ckpt = [f"CHECKPOINT_DIR={tmp / 'later'}"]
    train(load_config("smoke", overrides=overrides + ckpt + ["train.epochs=2"]), verbose=0)
    train(load_config("smoke", overrides=overrides + ckpt + ["train.time_budget=0.25"]), verbose=0)
    plan = json.loads((tmp / "later" / budget.PLAN_NAME).read_text())
    assert plan["epochs_before_the_budget"] == 2 and plan["epochs"] >= 3
    assert "(2 of them already trained)" in capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp / "later" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, plan["epochs"] + 1))


class _Clock:
    """``time.time`` for the deadline: moved on by hand."""

    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now


@pytest.mark.parametrize("epochs, stopped_after", [
    ([10] * 20, 9),  # as planned: 9 epochs end at 90 s, a 10th would end at 100 + the 5 s save
    ([30] + [10] * 20, 7),  # the first epoch traces (30 s): the plan's 10 s is its pace, not 30
    ([10] * 3 + [20] * 20, 6),  # slower from epoch 4: 10, 20, 30, 50, 70, 90; at 90 one more ends past 100
    ([10] * 12 + [50], None),  # the plan's 12 epochs fit: ending the last is not a stop
    ([10] * 11 + [60], None),  # ... nor is an epoch that ends the plan late (the deadline can only stop early)
])
def test_the_deadline_stops_at_the_last_epoch_end_that_keeps_the_budget(monkeypatch, epochs, stopped_after):
    from tripletface.training import callbacks

    clock = _Clock()
    monkeypatch.setattr(callbacks, "time", clock)
    start = clock.now
    deadline = callbacks.Deadline(start + 100 if stopped_after else start + 130, epochs=12, epoch_s=10, reserve_s=5)

    class Model:
        stop_training = False

    deadline.set_model(Model())
    deadline.on_train_begin()
    for epoch, took in enumerate(epochs[:12]):  # as fit runs its 12 epochs
        deadline.on_epoch_begin(epoch)
        clock.now += took
        deadline.on_epoch_end(epoch)
        if deadline.model.stop_training:
            break
    assert deadline.stopped_after == stopped_after and deadline.model.stop_training == bool(stopped_after)
    if stopped_after:
        assert epoch + 1 == stopped_after and clock.now - start + 5 <= 100  # in time for the final save
    assert deadline.last_epoch_s == epochs[epoch]


def test_a_run_that_falls_behind_its_plan_stops_at_the_budget_and_resumes_to_its_end(lfw_dir, tmp_path,
                                                                                   monkeypatch, capsys):
    """A plan of 30 times the epochs that fit (as if the machine slowed down after its plan): the run
    stops at an epoch's end inside the budget, saves its model with the epochs it trained, and the
    same command again trains the rest of the plan."""
    from tripletface.config import load_config
    from tripletface.model.io import get_metadata, load_model
    from tripletface.training.loop import train

    real_fit_epochs = budget.fit_epochs
    monkeypatch.setattr(budget, "fit_epochs", lambda *a: 30 * real_fit_epochs(*a))
    train_dir = tiny_train_dir(lfw_dir, tmp_path / "train")
    cfg = load_config("smoke", overrides=[f"TRAIN_DIR={train_dir}", f"TENSORBOARD_LOGDIR={tmp_path / 'logs'}",
                                          "data.val_fraction=0.25", "data.val_pairs=40",
                                          f"CHECKPOINT_DIR={tmp_path / 'ckpt'}", "train.time_budget=0.25"])
    result = train(cfg, verbose=0)
    plan = json.loads((tmp_path / "ckpt" / budget.PLAN_NAME).read_text())
    rows = [json.loads(line) for line in (tmp_path / "ckpt" / "history.jsonl").read_text().splitlines()]
    done = len(rows)
    assert 1 <= done < plan["epochs"] and [r["epoch"] for r in rows] == list(range(1, done + 1))
    meta = get_metadata(load_model(result["model_path"]))
    assert meta["epochs_trained"] == done and meta["time_budget"]["stopped_after_epoch"] == done
    assert meta["config"]["train"]["epochs"] == plan["epochs"]  # the schedule it was laid out for
    assert f"stopped after epoch {done} of the {plan['epochs']} planned" in capsys.readouterr().err
    # the same command again: the rest of the plan, on its schedule (the deadline off: all of it)
    monkeypatch.setattr(budget, "STOP_AT_DEADLINE", False)
    again = train(cfg, verbose=0)
    rows = [json.loads(line) for line in (tmp_path / "ckpt" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, plan["epochs"] + 1))
    assert get_metadata(load_model(again["model_path"]))["epochs_trained"] == plan["epochs"]
