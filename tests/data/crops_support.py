"""What the tests of the tf.data pipeline share: the crops' size, augmentation settings, and helpers.

The LFW crop folder itself is the ``crops`` fixture (with ``index``, its FaceIndex) of
tests/data/conftest.py.
"""

import shutil
from pathlib import Path

from tripletface.config import AugmentConfig

SIZE = (64, 64)
NO_AUG = AugmentConfig(flip=False, rotation=0.0, brightness=0.0)
FULL_AUG = AugmentConfig(flip=True, rotation=10.0, brightness=0.2, contrast=0.3, color_jitter=0.3,
                         gaussian_blur=0.5, motion_blur=0.5, cutout=0.5)
N_MULTI = 10  # identities with 2+ images in the test folder


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def take(ds, n):
    out = []
    for images, labels in ds.take(n):
        out.append((images.numpy(), labels.numpy()))
    return out
