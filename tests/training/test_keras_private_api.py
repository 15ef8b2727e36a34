"""The private Keras API training still relies on, pinned: these fail loudly when Keras renames it
or stops calling it, instead of letting a multi-worker run break far from the cause.

``Model._maybe_symbolic_build`` (overridden by :func:`tripletface.training.trainer.make_trainer`):
``fit()`` calls it before the first step, and under a tf.distribute strategy Keras'
``strategy.reduce()``s a whole distributed batch there only to learn its shapes, which fails under
MultiWorkerMirroredStrategy. Keras has no public switch for it. (``_in_multi_worker_mode`` is no
longer used: :func:`tripletface.training.distribute.num_workers` reads the public cluster resolver.)
"""

import inspect

import numpy as np


def _keras_hook_owner(cls):
    """The Keras class that defines the hook our trainer overrides (the first base that has it)."""
    return next((c for c in cls.__mro__[1:] if "_maybe_symbolic_build" in vars(c)), None)


def test_the_trainer_overrides_keras_maybe_symbolic_build_with_its_signature():
    import keras

    from tripletface.training.trainer import make_trainer

    trainer = make_trainer(keras.Sequential([keras.layers.Dense(2)]), loss_obj=None)
    assert "_maybe_symbolic_build" in vars(type(trainer))
    owner = _keras_hook_owner(type(trainer))
    assert owner is not None, "Keras no longer defines Model._maybe_symbolic_build: revisit make_trainer's override"
    assert list(inspect.signature(owner._maybe_symbolic_build).parameters) == ["self", "iterator", "data_batch"]
    assert list(inspect.signature(type(trainer)._maybe_symbolic_build).parameters) == \
        ["self", "iterator", "data_batch"]


def test_fit_calls_the_hook_under_a_strategy_and_without_one():
    import keras
    import tensorflow as tf

    calls = []

    class Probe(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            calls.append(tf.distribute.get_strategy())
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    x, y = np.ones((4, 2), "float32"), np.ones((4, 1), "float32")
    model = Probe()
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    assert len(calls) == 1, "Keras' fit() no longer calls Model._maybe_symbolic_build: revisit make_trainer"

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = Probe()
        model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    assert len(calls) == 2, "under a strategy, fit() no longer calls Model._maybe_symbolic_build"
