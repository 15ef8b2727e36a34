"""The original design's training script: ``python train.py [--set KEY=VALUE ...]`` (preset ``seed``)."""

import sys

from tripletface.cli.main import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--preset" not in args and "--config" not in args:
        args = ["--preset", "seed", *args]
    raise SystemExit(main(["train", *args]))
