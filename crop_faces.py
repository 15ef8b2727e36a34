"""Crop aligned faces from a dataset folder (the original design's entry point).

    python crop_faces.py --input_dir dataset --output_dir cropped_data

is ``tripletface crop --input_dir dataset --output_dir cropped_data``; every ``crop``
option works here too (see ``python crop_faces.py --help``).
"""

import sys

from tripletface.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["crop", *sys.argv[1:]]))
