"""How the command line imports TensorFlow: quietly, and without the modules Keras would load at
import time for features no command uses (scikit-learn, matplotlib), which import normally later.
"""

from __future__ import annotations

import contextlib
import os
import sys

__all__ = ["import_tensorflow_quietly", "OPTIONAL_KERAS_IMPORTS"]


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and Keras with file descriptor 2 muted: TF 2.21 prints absl/oneDNN notices
    from C++ at load time that no environment variable silences, and they would bury our one-line
    errors. Python exceptions raised by the import still propagate."""
    if "tensorflow" in sys.modules or os.environ.get("TRIPLETFACE_VERBOSE_TF"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with _without_optional_keras_imports():
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        import tensorflow as tf

        if not os.environ.get("TF_CONFIG"):  # a multi-worker strategy must be created before the first op
            tf.constant(0)  # the second notice comes with the first op
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# Imported by Keras at load time only for features no command uses: its scikit-learn estimator
# wrappers (``keras.wrappers``: sklearn, and scipy through it) and its plotting helpers
# (``keras.visualization``: matplotlib.pyplot). Both are optional in Keras (``try: import ...
# except ImportError``). Measured (docs/PERFORMANCE.md, "Start-up"): 2.2 s of the 7.2 s that
# ``import tensorflow`` takes on this project's 2-core machine. The commands that do use them
# (evaluate, calibrate, report) import them afterwards, normally, when they need them.
OPTIONAL_KERAS_IMPORTS = ("sklearn", "matplotlib")


@contextlib.contextmanager
def _without_optional_keras_imports():
    """Within the block, ``import sklearn`` / ``import matplotlib`` raise ImportError (unless already
    imported, or ``TRIPLETFACE_FULL_IMPORT=1``); afterwards both import normally. A TensorFlow that
    failed half-way cannot be imported again in the same process (it aborts), so an ImportError
    here is a one-line error that names the switch, not a retry."""
    blocked = [] if os.environ.get("TRIPLETFACE_FULL_IMPORT") else \
        [m for m in OPTIONAL_KERAS_IMPORTS if m not in sys.modules]
    for m in blocked:
        sys.modules[m] = None  # the import system's "not importable" marker
    try:
        yield
    except ImportError as e:
        if not blocked:
            raise
        from tripletface.errors import TripletfaceError

        raise TripletfaceError(f"importing TensorFlow/Keras failed with {', '.join(blocked)} held back to start "
                               f"faster ({e}); run again with TRIPLETFACE_FULL_IMPORT=1") from None
    finally:
        for m in blocked:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]
