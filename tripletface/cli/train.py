"""``tripletface train [TRAIN_DIR ...] [--preset NAME] [--config FILE] [--set KEY=VALUE ...]``:
train an embedding model (:func:`tripletface.training.loop.train`, which describes resume and
signals), then score TEST_TRIPLETS with it when the config names one. ``python train.py`` runs
the ``seed`` preset (the original design)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.flags import add_config_arguments, add_config_flag, add_progress_argument

    add_config_flag(parser, "train_dir", key="data.train_dir", nargs="*", metavar="TRAIN_DIR",
                    help="crop folder(s): TRAIN_DIR/<identity>/<image>; the same as --set TRAIN_DIR=... "
                         "(default: the config's)")
    add_config_flag(parser, "--input-dir", key="data.train_dir", metavar="DIR", help="same as TRAIN_DIR")
    add_config_arguments(parser)
    parser.add_argument("--fresh", action="store_true",
                        help="ignore existing checkpoints in CHECKPOINT_DIR and start from epoch 0")
    parser.add_argument("--allow-missing", action="store_true",
                        help="names in data.exclude_identities that match no training identity are "
                             "ignored instead of an error (data.allow_missing_exclusions=true)")
    add_progress_argument(parser)


def run(args: argparse.Namespace) -> int:
    from tripletface.cli.flags import config_from_args
    from tripletface.training.loop import train
    from tripletface.training.validation import test_on_triplets

    cfg = config_from_args(args, default_preset=None)
    if getattr(args, "allow_missing", False):
        cfg.data.allow_missing_exclusions = True
    result = train(cfg, fresh=args.fresh, verbose=1 if args.progress else 0)
    if result.get("interrupted"):
        print(result["message"], file=sys.stderr)
        return 128 + result["interrupted"]  # 130 for SIGINT, 143 for SIGTERM: the shell's convention
    print(f"saved model: {result['model_path']}")
    test = Path(cfg.data.test_triplets) if cfg.data.test_triplets else None
    if test is not None and test.is_file():
        m = test_on_triplets(result["model_path"], test, progress=args.progress)
        vals = "  ".join(f"{k} {m['triplet_' + k]:.4f}" for k in ("loss", "precision", "recall")
                         if isinstance(m.get("triplet_" + k), (int, float)))
        print(f"test triplets ({test}): {vals}  ({m['triplets'] - m['unscored_triplets']} scored, "
              f"{m['unscored_triplets']} unscored) -> {m['path']}")
    elif test is not None:
        print(f"no TEST_TRIPLETS file at {test} (crop --test-fraction writes one); the original triplet "
              "metrics were not computed", file=sys.stderr)
    return 0
