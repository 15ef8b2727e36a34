"""Which heavy modules a piece of code loads, run in a fresh interpreter (import-cost tests)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("numpy", "tensorflow", "keras", "cv2", "yaml")


def heavy_modules_after(code: str, heavy=HEAVY) -> list[str]:
    """The modules of ``heavy`` that ``code`` leaves in ``sys.modules`` (a fresh ``python -c``)."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {tuple(heavy)!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return eval(r.stdout.strip().splitlines()[-1])  # a list literal printed by the probe
