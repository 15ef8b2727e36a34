"""The training loop's callbacks: the NaN guard, validation each epoch, the epoch checkpoint, the
SIGINT/SIGTERM stopper (finish the running step, save, stop; see :mod:`tripletface.training.loop`),
and the step timer of a time budget (:mod:`tripletface.training.budget`).

This module imports Keras at the top: only the loop imports it, inside
:func:`~tripletface.training.loop.train`, so the command line starts without Keras.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time

import keras

from tripletface.errors import ModelError, TrainingError
from tripletface.losses import is_collapsed
from tripletface.training.validation import validate


# Kept over keras.callbacks.TerminateOnNaN, which stops the same way (stop_training at the batch's
# end) but keeps no record of where: measured on Keras 3.15.1, its only state is `raise_error`, and it
# prints "Batch 0: Invalid loss, terminating training" to stdout (the command's results stream). The
# one-line TrainingError needs the epoch, batch, global step and value, and Validation and
# EpochCheckpoint need `bad` to skip the stopped epoch.
class NanGuard(keras.callbacks.Callback):
    """Stop at the first non-finite loss, naming the epoch and step; no checkpoint is written after it."""

    def __init__(self):
        super().__init__()
        self.bad = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad = (self.epoch + 1, batch + 1, int(self.model.optimizer.iterations.numpy()), float(loss))
            self.model.stop_training = True

class Validation(keras.callbacks.Callback):
    """Each epoch: embed held-out identities through ``embedder`` (the inference path, see
    :func:`validate`); verification accuracy on pairs and the original triplet metrics (loss,
    precision, recall) on triplets. Adds val_* entries to the epoch logs (so TensorBoard and
    the checkpoint callback see them) and warns on embedding collapse."""

    def __init__(self, val, embedder, margin, collapse_threshold, nan_guard, interrupt=None,
                 loss_distance="squared_l2"):
        super().__init__()
        self.val = val
        self.embedder = embedder
        self.margin = margin
        self.loss_distance = loss_distance
        self.collapse_threshold = collapse_threshold
        self.nan_guard = nan_guard
        self.interrupt = interrupt
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.nan_guard.bad or (self.interrupt is not None and self.interrupt.mid_epoch):
            return
        lr = self.model.optimizer.learning_rate
        logs["learning_rate"] = float(lr.numpy() if hasattr(lr, "numpy") else lr)
        if "pos_dist" in logs and "neg_dist" in logs and is_collapsed(logs, self.collapse_threshold, self.margin):
            print(f"\nwarning: embedding collapse at epoch {epoch + 1}: mean positive distance "
                  f"{logs['pos_dist']:.2e}, negative {logs['neg_dist']:.2e}, "
                  f"{logs.get('active_fraction', float('nan')):.0%} of the mined triplets active "
                  f"(the embeddings drew together); try a lower learning rate, semi-hard mining or a warm-up",
                  file=sys.stderr)
            logs["collapsed"] = 1.0
        if self.val is None:
            return
        try:
            metrics = validate(self.val, self.embedder, self.margin, self.loss_distance)
        except ModelError:  # non-finite validation embeddings
            raise TrainingError(f"validation after epoch {epoch + 1}: the model produced non-finite "
                                "embeddings; try a lower learning rate") from None
        logs.update(metrics)
        self.history.append({"epoch": epoch + 1, **metrics})
        print(f"\nepoch {epoch + 1}: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()), file=sys.stderr)

class EpochCheckpoint(keras.callbacks.Callback):
    """Save complete resume state (weights, optimizer, epoch, memory bank) after each good epoch."""

    def __init__(self, manager, epoch_var, nan_guard, on_save=None, interrupt=None):
        super().__init__()
        self.manager = manager
        self.epoch_var = epoch_var
        self.nan_guard = nan_guard
        self.on_save = on_save
        self.interrupt = interrupt

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_guard.bad or (self.interrupt is not None and self.interrupt.mid_epoch):
            return  # a partial epoch is saved by the interrupt callback, not as an epoch
        self.epoch_var.assign(epoch + 1)
        path = self.manager.save(checkpoint_number=epoch + 1)
        if self.interrupt is not None:
            self.interrupt.epoch_saved()
        if self.on_save:
            step = int(self.model.optimizer.iterations.numpy())
            self.on_save(epoch + 1, {**(logs or {}), "step": step})
        return path


class StopOnSignal(keras.callbacks.Callback):
    """The SIGINT/SIGTERM callback: finish the running step, save, stop (see :mod:`tripletface.training.loop`).

    ``save_partial(epoch, steps)`` saves the state ``steps`` steps into ``epoch`` (0-based) and
    returns the checkpoint path; ``remove_partial()`` drops that checkpoint once a whole
    epoch has been saved after it.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, steps_per_epoch: int, save_partial, remove_partial):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.save_partial = save_partial
        self.remove_partial = remove_partial
        self.signum = None  # the signal received, once one is
        self.step_offset = 0  # steps of the current epoch done before this fit() (a resumed epoch)
        self.epoch = 0
        self.done = 0  # steps done in the current epoch
        self.saved = None  # the checkpoint saved on the signal
        self._previous = {}

    @property
    def mid_epoch(self) -> bool:
        """A signal stopped training inside an epoch (not after its last step)."""
        return self.signum is not None and 0 < self.done < self.steps_per_epoch

    def _handle(self, signum, frame):
        if self.signum is not None:  # the second signal: its default action, now
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing the running step, then saving a checkpoint "
              "(send it again to stop at once)", file=sys.stderr)

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_begin(self, logs=None):
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals keep their handlers
                pass

    def on_train_end(self, logs=None):
        self._restore()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.done = self.step_offset

    def on_train_batch_end(self, batch, logs=None):
        self.done = self.step_offset + batch + 1
        if self.signum is not None:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.signum is None:
            return
        self.model.stop_training = True
        if self.mid_epoch:
            self.saved = self.save_partial(epoch, self.done)

    def epoch_saved(self):
        self.remove_partial()


class StepTimer(keras.callbacks.Callback):
    """Record each training batch's end, in wall (``perf_counter``: ``ends``) and process CPU
    (``process_time``: ``cpu``) seconds. The loss is read first, so the step has finished when its
    time is taken. With ``min_steps`` (``train.time_budget``'s measurement) it stops the fit once
    ``min_steps`` steps after the first (which traces the step function) took ``min_seconds``, or
    ``max_steps`` did; without, it only records (benchmarks/bench_train.py's step clock)."""

    def __init__(self, min_steps: int | None = None, max_steps: int | None = None, min_seconds: float = 0.0):
        super().__init__()
        self.min_steps, self.max_steps, self.min_seconds = min_steps, max_steps, min_seconds
        self.ends: list[float] = []
        self.cpu: list[float] = []
        self.began = time.perf_counter()

    def on_train_begin(self, logs=None):
        self.began = time.perf_counter()  # the first step's end less this: its tracing and first batch

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs:
            float(logs["loss"])
        self.ends.append(time.perf_counter())
        self.cpu.append(time.process_time())
        if self.min_steps is None:
            return
        timed = len(self.ends) - 1
        if timed >= self.max_steps or (timed >= self.min_steps and self.ends[-1] - self.ends[0] >= self.min_seconds):
            self.model.stop_training = True


class Deadline(keras.callbacks.Callback):
    """``train.time_budget``'s end: stop the fit at the end of an epoch before the last of ``epochs``
    when one more epoch, at the pace of the last (the plan's ``epoch_s`` for a fit's first, which also
    traces), and then ``reserve_s`` (the final save) would end after ``deadline`` (a ``time.time()``).
    ``stopped_after``: the epochs done when it stopped the fit (None: it did not)."""

    def __init__(self, deadline: float, epochs: int, epoch_s: float, reserve_s: float):
        super().__init__()
        self.deadline, self.epochs, self.planned_epoch_s, self.reserve_s = deadline, epochs, epoch_s, reserve_s
        self.stopped_after: int | None = None
        self.last_epoch_s: float | None = None
        self._began = self._first = None

    def on_train_begin(self, logs=None):
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        self._began = time.time()

    def on_epoch_end(self, epoch, logs=None):
        now = time.time()
        self.last_epoch_s = now - self._began
        pace = self.planned_epoch_s if self._first else self.last_epoch_s
        self._first = False
        last = epoch + 1 >= self.epochs
        if not last and not self.model.stop_training and now + pace + self.reserve_s > self.deadline:
            self.model.stop_training = True
            self.stopped_after = epoch + 1
