"""The original design's inference script: ``python inference.py IMG_A IMG_B [--model MODEL] [--json]``.

The same as ``tripletface compare IMG_A IMG_B ...`` (see ``tripletface compare --help``): prints the
distance, the threshold and the verdict; exit 0 when the two faces were compared, 3 for a missing or
unreadable file, 4 when no face was found, 5 for an unusable model.
"""

import sys

from tripletface.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["compare", *sys.argv[1:]]))
