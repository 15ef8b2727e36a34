"""Training to a wall-time budget (``train.time_budget``, minutes): the epochs that fit, fixed at the start.

The learning-rate schedule (cosine) and the mining schedule are laid out over the whole run, so its
length has to be known before its first step: stopping when the time runs out would end a run
mid-schedule, at a high learning rate. So :func:`~tripletface.training.loop.train` turns the budget
into epochs once, at the start, from the run's own step on its own data: a throwaway copy of the
trainer takes a few steps of the real pipeline and embeds the validation set once
(:func:`measure`), and ``train.epochs`` becomes what fits the minutes left (:func:`fit_epochs`).
The plan is written to ``CHECKPOINT_DIR/time_budget.json``; a resumed run keeps it, so a resume
never changes the schedule of the steps already taken. The plan counts what the real run pays once
again (its own first step and first validation pass trace their functions, as the throwaway's did).

The plan is a measurement at the start, and a machine can slow down after it (measured: epochs
planned at 49 s ran at 51-59 s once another tenant loaded the host, and the run ended 5 minutes
over its 45; docs/RECIPE.md). So the budget is also a deadline
(:class:`tripletface.training.callbacks.Deadline`): the run does not begin an epoch that, at the
pace of the last one, would end after the budget less the final save, and saves its model there,
its schedules not run to their end; the model's metadata says so, and running the same command
again trains the rest of the plan.

On another machine the same budget gives other epochs: a recipe stated in minutes (``faces-cpu``)
uses its hour on a slow CPU and a fast one alike, and the epochs each run took are in its log,
its model's metadata (``epochs_trained``, ``time_budget``) and the plan file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

PLAN_NAME = "time_budget.json"
# the steps timed (after the first, which traces): at least MIN_STEPS and MIN_SECONDS, at most MAX_STEPS
MIN_STEPS, MAX_STEPS, MIN_SECONDS = 5, 30, 10.0
SAVE_S = 1.0  # an epoch's checkpoint and history row, allowed beside its validation pass
# stop at the budget's end (callbacks.Deadline); the tests of the plan's arithmetic turn it off, as a
# loaded machine would otherwise stop their 15-second runs before the planned epochs
STOP_AT_DEADLINE = True


def fit_epochs(budget_s: float, spent_s: float, step_s: float, steps_per_epoch: int, validation_s: float) -> int:
    """The whole epochs of ``steps_per_epoch`` steps of ``step_s`` seconds, each followed by one
    validation pass (``validation_s``) and its checkpoint, that fit in ``budget_s`` less the
    ``spent_s`` already gone and the final model's save (one more validation pass): at least 1."""
    if not (step_s > 0 and steps_per_epoch > 0):
        raise ValueError(f"step time and steps per epoch must be > 0, received: {step_s}, {steps_per_epoch}")
    left = budget_s - spent_s - (validation_s + SAVE_S)
    return max(1, int(left // _epoch_cost(step_s, steps_per_epoch, validation_s)))


def measure(trainer, ds, validate=None) -> dict:
    """``{'step_s', 'steps_timed', 'validation_s', 'first_calls_s'}``: ``trainer``'s mean step on
    ``ds`` after its first (traced) step, ``validate()``'s second call (None: 0 s): its first also
    builds and traces the embedding function, which the run does once, not each epoch; and what the
    two first calls took beyond a step and a pass, which the real run pays once again. ``trainer``
    is trained by it: pass a throwaway one."""
    from tripletface.training.callbacks import StepTimer

    clock = StepTimer(MIN_STEPS, MAX_STEPS, MIN_SECONDS)
    trainer.fit(ds, epochs=1, steps_per_epoch=MAX_STEPS + 1, shuffle=False, callbacks=[clock], verbose=0)
    timed = len(clock.ends) - 1
    if timed < 1:
        raise RuntimeError("train.time_budget: the training data gave fewer than two steps to time")
    step_s = (clock.ends[-1] - clock.ends[0]) / timed
    first_calls_s = max(0.0, clock.ends[0] - clock.began - step_s)
    validation_s = 0.0
    if validate is not None:
        t0 = time.perf_counter()
        validate()
        t1 = time.perf_counter()
        validate()
        validation_s = time.perf_counter() - t1
        first_calls_s += max(0.0, t1 - t0 - validation_s)
    return {"step_s": step_s, "steps_timed": timed, "validation_s": validation_s, "first_calls_s": first_calls_s}


def plan(cfg, ckpt_dir: Path, spent_s, measured, write: bool = True, done_epochs: int = 0) -> dict:
    """The epochs ``cfg.train.time_budget`` minutes give: the plan in ``ckpt_dir`` when one was made
    for this budget and steps per epoch (a resumed run), else ``measured()`` (:func:`measure`'s
    dict) fitted with :func:`fit_epochs` after ``spent_s()`` seconds, written there with ``write``.
    ``done_epochs``: epochs a checkpoint already holds (a run begun without this plan); the budget
    is for the epochs still to train, on top of them."""
    t = cfg.train
    path = Path(ckpt_dir) / PLAN_NAME
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("time_budget") == t.time_budget and saved.get("steps_per_epoch") == t.steps_per_epoch:
                print(f"train.time_budget: {t.time_budget:g} min, {saved['epochs']} epochs as planned at the "
                      f"start ({path})", file=sys.stderr)
                return saved
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # unreadable: measured again and rewritten
    m = measured()
    spent = spent_s()
    first_calls = m.get("first_calls_s", 0.0)
    epochs = done_epochs + fit_epochs(60 * t.time_budget, spent + first_calls, m["step_s"], t.steps_per_epoch,
                                      m["validation_s"])
    out = {"time_budget": t.time_budget, "steps_per_epoch": t.steps_per_epoch, "epochs": epochs,
           "step_s": round(m["step_s"], 4), "steps_timed": m["steps_timed"],
           "validation_s": round(m["validation_s"], 3), "spent_before_training_s": round(spent, 1),
           "first_calls_s": round(first_calls, 1)}
    if done_epochs:
        out["epochs_before_the_budget"] = done_epochs
    print(f"train.time_budget: {t.time_budget:g} min: a step takes {m['step_s']:.3f} s here ({m['steps_timed']} "
          f"timed), a validation pass {m['validation_s']:.1f} s, {spent:.0f} s gone on set-up "
          f"(+{first_calls:.0f} s for the run's first calls): {epochs} epochs "
          f"of {t.steps_per_epoch} steps" + (f" ({done_epochs} of them already trained)" if done_epochs else "")
          + f", not train.epochs={t.epochs} (train.time_budget=0 trains that)",
          file=sys.stderr)
    if write:
        from tripletface.atomic import replaced_atomically

        with replaced_atomically(path) as tmp:
            tmp.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return out


def _epoch_cost(step_s: float, steps_per_epoch: int, validation_s: float) -> float:
    """An epoch's seconds: its steps, its validation pass and its checkpoint."""
    return steps_per_epoch * step_s + validation_s + SAVE_S


def epoch_s(saved: dict) -> float:
    """An epoch's cost in a plan (:func:`plan`'s dict), as :func:`fit_epochs` counted it."""
    return _epoch_cost(saved["step_s"], saved["steps_per_epoch"], saved["validation_s"])
