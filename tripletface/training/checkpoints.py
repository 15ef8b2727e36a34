"""Resume state: what a checkpoint holds and where it is saved, the record of the settings it was
made with (a resume with other shapes is refused, not half-restored), and the clean-up after a
save that filled the disk.

``CHECKPOINT_DIR/state`` holds an epoch checkpoint (``ckpt-<epoch>``) after each whole epoch, and
``state/interrupted`` the one a SIGINT/SIGTERM saves mid-epoch; each holds the embedding model,
the optimizer, the epoch and the step within it (and the memory bank and margin-softmax head
when the loss has them).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tripletface.errors import DiskFullError, InputError


# What a resume checkpoint's state was made with: a change in any of these changes the shapes or
# the meaning of the weights and optimizer slots, and a restore would fill only part of the state.
STATE_KEYS = ("model.backbone", "model.embedding_dim", "model.image_size", "model.width", "model.greyscale",
              "loss.name", "loss.distance", "loss.margin", "loss.soft_margin", "loss.memory_bank_size",
              "loss.aux_weight", "train.optimizer")
STATE_SIGNATURE_NAME = "made_with.json"  # in CHECKPOINT_DIR/state, beside the checkpoints


def state_signature(cfg, policy: str) -> dict:
    """The :data:`STATE_KEYS` values of ``cfg`` (those it has) and whether the optimizer scales the loss."""
    d = cfg.to_dict()
    sig = {}
    for key in STATE_KEYS:
        section, name = key.split(".")
        if name in d.get(section, {}):  # keys this version of the config has
            sig[key] = d[section][name]
    sig["loss scaling (train.mixed_precision=float16)"] = policy == "mixed_float16"
    return json.loads(json.dumps(sig))  # tuples as lists, as read back


def check_state_signature(state_dir: Path, signature: dict, write: bool) -> None:
    """Refuse to resume a checkpoint in ``state_dir`` made with another :func:`state_signature`
    (one line naming the differing keys); with ``write``, record ``signature`` there.

    Call it only when a checkpoint will be restored, or with ``write`` when starting over. A
    checkpoint from before signatures were written is taken as it is.
    """
    from tripletface.atomic import replaced_atomically

    f = state_dir / STATE_SIGNATURE_NAME
    if f.is_file() and not write:
        try:
            saved = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(saved, dict):
                raise ValueError
        except (OSError, ValueError):
            raise InputError(f"{f}: unreadable record of what the checkpoint was made with; "
                             "start over with --fresh") from None
        differ = [k for k in sorted(set(saved) | set(signature)) if saved.get(k) != signature.get(k)]
        if differ:
            what = ", ".join(f"{k} {json.dumps(saved.get(k))} (now {json.dumps(signature.get(k))})" for k in differ)
            raise InputError(f"{state_dir}: the checkpoint there was made with other settings: {what}; resuming "
                             "would restore only part of it: start over with --fresh, or use another CHECKPOINT_DIR")
        return
    with replaced_atomically(f) as tmp:
        tmp.write_text(json.dumps(signature, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def checkpoint_epoch(ckpt_dir: Path) -> int:
    """The epoch of the latest resume checkpoint (saved as ckpt-<epoch>), 0 when none."""
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(ckpt_dir / "state"))
    try:
        return int(latest.rsplit("-", 1)[1]) if latest else 0
    except (IndexError, ValueError):
        return 0


class ResumeState:
    """The complete resume state of a run (``objects``: ``model``, ``optimizer`` and, when the loss
    has them, ``memory_bank`` and ``aux_head``; plus the epoch and the step within it) and the
    checkpoint managers of ``ckpt_dir/state``. With ``fresh``, a partial checkpoint is dropped and
    nothing is restored."""

    def __init__(self, ckpt_dir: Path, strategy, fresh: bool = False, **objects):
        import tensorflow as tf

        from tripletface.training import distribute

        self.state_dir = Path(ckpt_dir) / "state"
        self.fresh = fresh
        self.epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        # steps done in epoch `epoch_var` when a signal stopped it (0 in every epoch checkpoint)
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        state = {"model": objects.pop("model"), "optimizer": objects.pop("optimizer"), "epoch": self.epoch_var,
                 "step_in_epoch": self.step_var}
        state.update((k, v) for k, v in objects.items() if v is not None)
        self.checkpoint = tf.train.Checkpoint(**state)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.state_dir), max_to_keep=2)
        # every worker saves (it may take collective ops); a non-chief into a scratch folder it removes
        self.save_manager = self.manager if distribute.is_chief(strategy) else tf.train.CheckpointManager(
            self.checkpoint, str(distribute.worker_dir(self.state_dir, strategy)), max_to_keep=1)
        # saved on SIGINT/SIGTERM mid-epoch; removed once a later whole epoch is saved, so when
        # present it is newer than the last epoch checkpoint
        self.partial_dir = distribute.worker_dir(self.state_dir / "interrupted", strategy)
        if fresh:
            shutil.rmtree(self.partial_dir, ignore_errors=True)
        self.partial_manager = tf.train.CheckpointManager(self.checkpoint, str(self.partial_dir), max_to_keep=1)
        self.latest = self.partial_manager.latest_checkpoint or self.manager.latest_checkpoint

    def resume(self, cfg, optimizer) -> tuple[int, int]:
        """Restore the latest checkpoint (unless ``fresh``): ``(epoch, steps done in it)``, (0, 0) when none."""
        resumed_from = resumed_step = 0
        if self.latest and not self.fresh:
            self.checkpoint.restore(self.latest).expect_partial()
            resumed_from, resumed_step = int(self.epoch_var.numpy()), int(self.step_var.numpy())
            self.step_var.assign(0)
            if cfg.train.lr_schedule == "constant":  # the config's rate wins over the one saved in the checkpoint
                optimizer.learning_rate = cfg.train.learning_rate
            into = (f", {resumed_step} of {cfg.train.steps_per_epoch} steps into epoch {resumed_from + 1}"
                    if resumed_step else "")
            print(f"resumed from {self.latest} at epoch {resumed_from} "
                  f"(step {int(optimizer.iterations.numpy())}){into}", file=sys.stderr)
        elif self.manager.latest_checkpoint and self.fresh:
            print(f"--fresh: ignoring checkpoints in {self.state_dir}", file=sys.stderr)
        return resumed_from, resumed_step

    def save_partial(self, epoch: int, steps: int) -> str:
        """Save the state ``steps`` steps into ``epoch`` (0-based); returns the checkpoint path."""
        self.epoch_var.assign(epoch)
        self.step_var.assign(steps)
        try:
            return self.partial_manager.save(checkpoint_number=epoch)
        finally:
            self.step_var.assign(0)

    def remove_partial(self) -> None:
        """Drop the partial checkpoint (a whole epoch was saved after it)."""
        shutil.rmtree(self.partial_dir, ignore_errors=True)

    def last_good(self) -> str | None:
        """The newest checkpoint on disk: the partial one when present, else the last epoch's."""
        return ((self.partial_manager.latest_checkpoint if self.partial_dir.is_dir() else None)
                or self.manager.latest_checkpoint)


def disk_full_error(checkpoint_dir, e: BaseException) -> DiskFullError:
    """After a save failed on a full disk (``e``): remove what it wrote, and the one-line error
    that names the last complete checkpoint, which is kept."""
    import tensorflow as tf

    state_dir = Path(checkpoint_dir) / "state"
    for temp in state_dir.glob("**/*_temp"):  # what the failed save wrote: free the space
        shutil.rmtree(temp, ignore_errors=True)
    where = getattr(e, "filename", None) or state_dir.parent
    last = tf.train.latest_checkpoint(str(state_dir)) or "none"
    return DiskFullError(f"{where}: no space left on device while saving; the last complete checkpoint "
                         f"({last}) is kept: free some space and run the same command again to resume")
