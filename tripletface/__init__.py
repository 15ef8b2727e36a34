"""tripletface: train and use face-embedding models with triplet loss (TensorFlow / Keras 3).

Importing the package does no work: TensorFlow and the detector load only when a
function that needs them is called.
"""

import os as _os

__version__ = "0.1.0"

# oneDNN (Intel's CPU kernel library) in TensorFlow: TF turns it on by itself only on CPUs with
# AVX-512 VNNI/BF16 or AMX. On an AVX2-only CPU it stays off, yet there it trains the lfw-cpu
# step 1.41x faster (60.7 vs 42.9 img/s) and puts training at 1.36x the PyTorch peer
# (docs/PERFORMANCE.md, "Training step levers"). Only read when TensorFlow is first imported, so
# it is set here, before any of our modules imports it; a value the user set wins
# (TF_ENABLE_ONEDNN_OPTS=0 turns it off, e.g. for bit-exact comparisons with an older run).
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
