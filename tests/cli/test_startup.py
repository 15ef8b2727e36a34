"""Start-up: the command layer imports TensorFlow without the optional modules Keras would load
at import time (scikit-learn, matplotlib), and those still import normally afterwards."""

import subprocess
import sys

_PROBE = """
import sys
import tripletface.cli.startup as startup
{patch}
startup.import_tensorflow_quietly()
import tensorflow as tf
print("held back:", [m for m in ("sklearn", "matplotlib") if m in sys.modules])
print("tf works:", float(tf.reduce_sum(tf.ones(3))))
from sklearn.metrics import roc_curve
import matplotlib
print("later:", roc_curve([0, 1], [0.1, 0.9])[0].shape, matplotlib.__name__)
"""


def _run(patch: str = "", env_extra: dict | None = None):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("TRIPLETFACE_FULL_IMPORT", "TRIPLETFACE_VERBOSE_TF")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", _PROBE.format(patch=patch)], capture_output=True, text=True,
                          timeout=300, env=env)


def test_tensorflow_loads_without_sklearn_and_matplotlib_which_import_later():
    r = _run()
    assert r.returncode == 0, r.stderr[-2000:]
    assert "held back: []" in r.stdout          # Keras did not pull them in at import
    assert "tf works: 3.0" in r.stdout
    assert "later: (3,) matplotlib" in r.stdout  # and they import normally afterwards


def test_full_import_switch_loads_them_as_keras_does():
    r = _run(env_extra={"TRIPLETFACE_FULL_IMPORT": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "held back: ['sklearn', 'matplotlib']" in r.stdout


def test_a_keras_that_needs_a_held_back_module_gets_a_one_line_error_naming_the_switch():
    # ml_dtypes is one TensorFlow cannot load without: holding it back stands for a future Keras
    # that imports scikit-learn unconditionally. A half-imported TensorFlow aborts on a second
    # import, so this must be an error, not a crash.
    r = _run(patch="startup.OPTIONAL_KERAS_IMPORTS = ('sklearn', 'matplotlib', 'ml_dtypes')")
    assert r.returncode == 1  # the probe's uncaught TripletfaceError, not an abort (-6)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("tripletface.errors.TripletfaceError: importing TensorFlow/Keras failed with")
    assert "TRIPLETFACE_FULL_IMPORT=1" in last


def test_help_of_every_command_loads_no_numpy_or_tensorflow():
    # `tripletface --help` builds every command's parser: the flags and their choice lists must come
    # from light modules (config.choice_lists), the library loads only when a command runs.
    from import_support import heavy_modules_after

    assert heavy_modules_after("from tripletface.cli.main import build_parser; build_parser()",
                               heavy=("numpy", "tensorflow", "keras", "cv2")) == []
