"""Training: a short loop, with logging, validation, checkpoints and the NaN guard in callbacks.

:func:`train` runs ``tripletface train`` (:mod:`tripletface.cli.train`); ``python train.py``
runs the ``seed`` preset (the original design). Resume is automatic: started again with the
same CHECKPOINT_DIR, training continues from the last complete epoch with its optimizer state.

SIGINT (Ctrl-C) or SIGTERM: the running step finishes, the exact state (weights, optimizer,
epoch and the step within it) is saved to ``CHECKPOINT_DIR/state/interrupted/``, and the
command exits with 130 (SIGINT) or 143 (SIGTERM) and a one-line message; started again, it
runs the rest of that epoch, then the remaining epochs (a second signal stops at once). A
SIGKILL loses the steps since the last checkpoint. A full disk while saving stops with a
one-line error and keeps the last complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
import types
from pathlib import Path

import numpy as np

from tripletface.errors import TrainingError, disk_full
from tripletface.training.checkpoints import (ResumeState, check_state_signature, checkpoint_epoch,
                                              disk_full_error, state_signature)
from tripletface.training.precision import resolve_precision
from tripletface.training.sources import (common_alignment, folder_alignment, quality_filter, read_names,
                                          sampling_shares, source_records)
from tripletface.training.trainer import build_embedder, build_trainer
from tripletface.training.validation import prepare_validation, validate, validation_pairs

FINAL_MODEL_NAME = "model.keras"


def train(cfg, fresh: bool = False, verbose: int = 1) -> dict:
    """Train per ``cfg``; returns {'model_path', 'history', 'resumed_from', 'validation',
    'validation_pairs'} (the last: ``(path_a, path_b, same)`` the stored threshold was chosen on)."""
    import keras
    import tensorflow as tf

    from tripletface.data.images import image_error
    from tripletface.training import distribute
    from tripletface.inference.embedder import Embedder

    t0 = time.time()
    strategy = distribute.get_strategy(cfg.train.distribute)  # before any other TensorFlow op
    chief = distribute.is_chief(strategy)  # only the chief writes files
    keras.utils.set_random_seed(cfg.train.seed)
    policy = resolve_precision(cfg.train.mixed_precision, cfg.model.backbone)
    keras.mixed_precision.set_global_policy(policy)
    try:
        # ---- data (every data problem is reported before any training starts)
        ckpt_dir = Path(cfg.train.checkpoint_dir)
        start_epoch = 0 if fresh else checkpoint_epoch(ckpt_dir)
        # a resumed run draws new batches rather than replaying epoch 1's
        data_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seed=cfg.data.seed + 7919 * start_epoch))
        ds, val, sources, label_source, n_classes = _training_data(cfg, data_cfg)
        ds = distribute.shard_by_data(ds)
        distribute.check_global_batch(cfg.data.p * cfg.data.k if cfg.data.sampling == "pk" else 3 * cfg.data.batch_size,
                                      strategy)

        # ---- model, loss, optimizer, resume state
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        alignment = (folder_alignment(cfg, None) if cfg.data.source == "synthetic"
                     else common_alignment(cfg, [Path(d) for d in cfg.data.dirs]))
        budget_plan = None
        if cfg.train.time_budget > 0:  # the epochs that fit, from a throwaway trainer's steps on this data
            budget_plan = _fit_to_budget(cfg, ckpt_dir, strategy, policy, ds, val, n_classes, label_source,
                                         sources, reuse=not fresh and (ckpt_dir / "state").is_dir(),
                                         spent_s=lambda: time.time() - t0, write=chief, done_epochs=start_epoch)
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=budget_plan["epochs"]))
            keras.utils.set_random_seed(cfg.train.seed)  # the real model starts as it would without the budget
        metadata = {"alignment": alignment, "config": cfg.to_dict(),
                    "metric": "euclidean", "flip_tta": bool(cfg.eval.flip_tta), "sources": sources}
        if budget_plan is not None:
            metadata["time_budget"] = budget_plan
        with strategy.scope():  # variables mirrored over the replicas (tripletface.training.distribute)
            embedder, bank, aux_head, trainer, optimizer = _build(cfg, strategy, policy, n_classes, label_source,
                                                                  sources, metadata)

        state = ResumeState(ckpt_dir, strategy, fresh, model=embedder, optimizer=optimizer, memory_bank=bank,
                            aux_head=aux_head)
        if chief:  # a resume with another backbone, embedding size, loss... is refused, not half-restored
            check_state_signature(state.state_dir, state_signature(cfg, policy), write=fresh or not state.latest)
        resumed_from, resumed_step = state.resume(cfg, optimizer)
        if resumed_from >= cfg.train.epochs:
            print(f"already trained {resumed_from}/{cfg.train.epochs} epochs; saving the model", file=sys.stderr)

        # ---- callbacks (their module imports Keras: imported here, not with this one)
        from tripletface.training.callbacks import EpochCheckpoint, NanGuard, StopOnSignal, Validation

        guard = NanGuard()
        stopper = StopOnSignal(cfg.train.steps_per_epoch, state.save_partial, state.remove_partial)
        # validation embeds as inference does (tripletface.inference.embedder, the model's flip mode)
        validation = Validation(val, Embedder(embedder, batch_size=cfg.eval.batch_size),
                                cfg.loss.margin, cfg.loss.collapse_threshold, guard, interrupt=stopper,
                                loss_distance=cfg.loss.distance)
        history_path = ckpt_dir / "history.jsonl"

        # history.jsonl, kept over keras.callbacks.CSVLogger: a row is written only once its epoch's
        # checkpoint is saved (so rows and checkpoints agree after a NaN stop or a signal), by the
        # chief only, with the global step. Measured on Keras 3.15.1, CSVLogger writes the NaN-stopped
        # epoch as a row ("0,nan,NA") and fixes its columns at the first epoch, silently dropping a
        # key that appears later ("collapsed", set only on a collapsed epoch); it is CSV, not the JSON
        # lines the tests, benchmarks and docs read.
        def on_save(epoch, logs):
            if not chief:
                distribute.remove_worker_dir(ckpt_dir / "state", strategy)
                return
            row = {"epoch": epoch, **{k: float(v) for k, v in logs.items() if np.isscalar(v) or np.ndim(v) == 0}}
            with open(history_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

        callbacks = [guard, validation,
                     EpochCheckpoint(state.save_manager, state.epoch_var, guard, on_save, interrupt=stopper), stopper]
        if chief:
            callbacks.append(keras.callbacks.TensorBoard(cfg.train.tensorboard_logdir, update_freq="epoch",
                                                         write_graph=False))
        deadline = None
        if budget_plan is not None:
            from tripletface.training import budget
            from tripletface.training.callbacks import Deadline

            if budget.STOP_AT_DEADLINE:  # the budget is also a deadline, should the machine slow down
                deadline = Deadline(t0 + 60 * cfg.train.time_budget, cfg.train.epochs, budget.epoch_s(budget_plan),
                                    budget_plan["validation_s"] + budget.SAVE_S)
                callbacks.append(deadline)
        hist = _fit(trainer, ds, cfg.train.epochs, cfg.train.steps_per_epoch, resumed_from, resumed_step,
                    callbacks, stopper, verbose=verbose if sys.stderr.isatty() or verbose == 0 else 2)
        if guard.bad:
            epoch, batch, step, value = guard.bad
            last = state.last_good() or "none (no epoch completed)"
            raise TrainingError(f"loss became {value} at epoch {epoch}, batch {batch} (global step {step}); "
                                f"stopped; last good checkpoint: {last}")
        if stopper.signum is not None:
            import signal

            where = stopper.saved or state.manager.latest_checkpoint or "none"
            at = (f"epoch {stopper.epoch + 1}, step {stopper.done} of {cfg.train.steps_per_epoch}"
                  if stopper.mid_epoch else f"the end of epoch {stopper.epoch + 1}")
            return {"interrupted": int(stopper.signum), "checkpoint": where, "model_path": None,
                    "history": hist.history, "resumed_from": resumed_from, "validation": validation.history,
                    "message": f"{signal.Signals(stopper.signum).name}: training stopped at {at} (global step "
                               f"{int(optimizer.iterations.numpy())}); checkpoint {where}; run the same command "
                               "again to resume"}

        # ---- the final model, with a threshold picked on validation as its starting default
        trained = {**metadata, "epochs_trained": max(resumed_from, cfg.train.epochs)}
        if deadline is not None and deadline.stopped_after is not None:
            done = deadline.stopped_after
            trained.update(epochs_trained=done, time_budget={**budget_plan, "stopped_after_epoch": done})
            print(f"train.time_budget: stopped after epoch {done} of the {cfg.train.epochs} planned: an epoch "
                  f"took {deadline.last_epoch_s:.0f} s, not the {deadline.planned_epoch_s:.0f} s planned, and "
                  f"one more would end past the {cfg.train.time_budget:g} min (the learning rate had not "
                  "decayed to its end; the same command again trains the rest of the plan)", file=sys.stderr)
        model_path = _save_final_model(cfg, embedder, trained, val, chief)
        elapsed = time.time() - t0
        of_budget = f" of its {60 * cfg.train.time_budget:.0f}s budget" if budget_plan is not None else ""
        print(f"training done in {elapsed:.0f}s{of_budget}", file=sys.stderr)
        return {"model_path": str(model_path), "history": hist.history, "resumed_from": resumed_from,
                "validation": validation.history,
                "validation_pairs": validation_pairs(val) if val is not None else []}
    except (OSError, tf.errors.OpError) as e:
        bad_image = image_error(e) if isinstance(e, tf.errors.OpError) else None
        if bad_image is not None:  # a streamed (uncached) file found unreadable at the step that sampled it
            raise bad_image from None
        if not disk_full(e):
            raise
        raise disk_full_error(cfg.train.checkpoint_dir, e) from None
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _build(cfg, strategy, policy, n_classes, label_source, sources, metadata=None):
    """``(embedder, memory bank, margin-softmax head, trainer, optimizer)`` as ``cfg`` asks, the
    optimizer's variables built (so a restore has something to fill); call in ``strategy.scope()``."""
    from tripletface.training import distribute
    from tripletface.losses import MemoryBank

    embedder = build_embedder(cfg, metadata=metadata)
    distribute.sync_batch_norm(embedder, strategy)
    bank = MemoryBank(cfg.loss.memory_bank_size, cfg.model.embedding_dim) if cfg.loss.memory_bank_size > 0 else None
    aux_head = None
    if cfg.loss.aux_weight > 0:
        from tripletface.losses import MarginSoftmaxHead

        aux_head = MarginSoftmaxHead(n_classes, margin=cfg.loss.aux_margin, scale=cfg.loss.aux_scale,
                                     name="margin_softmax_head")
        aux_head.build((None, cfg.model.embedding_dim))
    trainer, optimizer = build_trainer(
        cfg, embedder, policy=policy, memory_bank=bank, memory_start_step=cfg.loss.memory_bank_start_step,
        aux_head=aux_head, aux_weight=cfg.loss.aux_weight, label_source=label_source,
        source_names=[re.sub(r"[^0-9A-Za-z]+", "_", r["name"]) for r in sources]
        if label_source is not None else ())
    optimizer.build(embedder.trainable_variables + (aux_head.trainable_variables if aux_head is not None else []))
    return embedder, bank, aux_head, trainer, optimizer


def _fit_to_budget(cfg, ckpt_dir: Path, strategy, policy, ds, val, n_classes, label_source, sources, reuse: bool,
                   spent_s, write: bool, done_epochs: int) -> dict:
    """The plan of ``train.time_budget`` (:func:`tripletface.training.budget.plan`): kept from
    ``ckpt_dir`` when ``reuse`` (a resumed run), else measured on a throwaway trainer built as the
    real one, on the real ``ds`` (whose batches depend only on their number, so the run still
    starts at batch 0) and validation set."""
    from tripletface.inference.embedder import Embedder
    from tripletface.training import budget

    def measured():
        with strategy.scope():
            embedder, _, _, trainer, _ = _build(cfg, strategy, policy, n_classes, label_source, sources)
        check = None
        if val is not None:
            check = lambda: validate(val, Embedder(embedder, batch_size=cfg.eval.batch_size),  # noqa: E731
                                     cfg.loss.margin, cfg.loss.distance)
        return budget.measure(trainer, ds, check)

    if not reuse:
        (ckpt_dir / budget.PLAN_NAME).unlink(missing_ok=True)
    return budget.plan(cfg, ckpt_dir, spent_s, measured, write=write, done_epochs=done_epochs)


def _training_data(cfg, data_cfg):
    """``(dataset, validation, source records, label_source, n_classes)`` for ``cfg``'s data, the
    dataset drawn with ``data_cfg`` (its seed moved on for a resumed run). ``n_classes``: the
    labels the margin-softmax head classifies; ``label_source``: each label's source, when several."""
    from tripletface.data import samplers  # build_train_dataset by the module: tests spy on it there
    from tripletface.data.filters import exclude_identities
    from tripletface.data.images import check_images
    from tripletface.data.index import index_folders, split_by_identity

    val = None
    sources: list = []
    label_source = None
    n_classes = cfg.data.synthetic_identities  # labels the margin-softmax head classifies
    if cfg.data.source == "synthetic":
        return samplers.build_train_dataset(data_cfg), val, sources, label_source, n_classes
    dirs = [Path(d) for d in cfg.data.dirs]
    index = index_folders(dirs)
    if cfg.data.exclude_identities:
        index, dropped = exclude_identities(index, read_names(cfg.data.exclude_identities),
                                              cfg.data.allow_missing_exclusions,
                                              what=f"exclusion list {cfg.data.exclude_identities}")
        print(f"data: excluded {dropped} identities listed in {cfg.data.exclude_identities}", file=sys.stderr)
    if cfg.data.min_blur > 0 or cfg.data.max_pose > 0 or cfg.data.min_face_size > 0:
        for d in dirs:
            index = quality_filter(cfg, index, d)
    sources = source_records(cfg, index, dirs)
    train_index, val_index = split_by_identity(index, cfg.data.val_fraction, seed=cfg.data.seed)
    if index.num_sources > 1:
        share, where = sampling_shares(cfg.data, train_index)
        for rec, w in zip(sources, share):
            rec["sampling_share"] = round(float(w), 4)
            print(f"data: source {rec['name']}: {rec['images']} images of {rec['identities']} identities "
                  f"({rec['identities_2plus']} with 2+), {100 * w:.1f}% {where}; "
                  f"terms: {rec['terms']}", file=sys.stderr)
        label_source = train_index.source_ids()
    n_classes = train_index.num_identities
    check_images(val_index)  # the training images are checked as the dataset decodes them
    print(f"data: training on {train_index.describe()}; validating on {val_index.describe()} "
          "(held-out identities)", file=sys.stderr)
    ds = samplers.build_train_dataset(data_cfg, train_index)
    val = prepare_validation(val_index, cfg)
    return ds, val, sources, label_source, n_classes


def _fit(trainer, ds, epochs: int, steps_per_epoch: int, epoch: int, step: int, callbacks, stopper, verbose):
    """``trainer.fit`` from ``step`` steps into ``epoch``: the rest of that epoch first (a run
    interrupted mid-epoch), then whole epochs. Returns an object with the merged ``.history``."""
    parts = []  # (initial_epoch, epochs, steps_per_epoch, steps already done in the first epoch)
    if 0 < step < steps_per_epoch and epoch < epochs:
        parts.append((epoch, epoch + 1, steps_per_epoch - step, step))
        epoch += 1
    if epoch < epochs or not parts:
        parts.append((epoch, epochs, steps_per_epoch, 0))
    history: dict = {}
    skip = 0
    for initial, end, steps, offset in parts:
        stopper.step_offset = offset
        data = ds.skip(skip) if skip and hasattr(ds, "skip") else ds  # no batch twice after a partial epoch
        h = trainer.fit(data, epochs=end, initial_epoch=initial, shuffle=False, steps_per_epoch=steps,
                        callbacks=callbacks, verbose=verbose)
        for key, values in h.history.items():
            history.setdefault(key, []).extend(values)
        if trainer.stop_training or stopper.signum is not None:
            break
        skip = steps
    stopper.step_offset = 0
    return types.SimpleNamespace(history=history)


def _save_final_model(cfg, embedder, metadata: dict, val, chief: bool) -> Path:
    """The final model, with a threshold picked on validation as its starting default: rebuilt in
    float32 from the config (``metadata`` stored with it) with the trained weights; saved by the chief."""
    import keras

    from tripletface.inference.embedder import Embedder
    from tripletface.model.io import save_model, update_metadata

    keras.mixed_precision.set_global_policy("float32")
    final = build_embedder(cfg, weights=None, metadata=metadata)
    final.set_weights(embedder.get_weights())
    if val is not None:
        # chosen on the saved model through the inference path itself (Embedder, its flip mode),
        # so `compare` on these pairs decides exactly as measured here; and also when no epoch
        # ran (a rerun after the last one); BatchNorm folded as Embedder.load does
        final_embedder = Embedder(final, batch_size=cfg.eval.batch_size, fold_batch_norm=True)
        v = validate(val, final_embedder, cfg.loss.margin, cfg.loss.distance)
        n_pairs = len(val["pairs"][0])
        update_metadata(final, threshold=v["val_threshold"], val_accuracy=v["val_accuracy"],
                        threshold_source=f"training validation pairs ({n_pairs} pairs of {val['identities']} "
                                         "held-out identities, best accuracy)",
                        calibration={"source": "training validation pairs", "target": "accuracy",
                                     "pairs_used": n_pairs, "accuracy": v["val_threshold_accuracy"],
                                     "kfold_accuracy": v["val_accuracy"], "aligned": True,
                                     "flip_tta": final_embedder.flip_tta})
    ckpt_dir = Path(cfg.train.checkpoint_dir)
    return save_model(final, ckpt_dir / FINAL_MODEL_NAME) if chief else ckpt_dir / FINAL_MODEL_NAME
