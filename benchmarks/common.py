"""Helpers shared by the benchmarks: data locations, peak memory, machine load, timing, tables.

Peak memory is the process's resident-set high-water mark (``VmHWM`` in
``/proc/self/status``), reset before each measured stage by writing ``5`` to
``/proc/self/clear_refs`` (Linux), so each stage reports its own peak rather than the
largest one seen so far. Where the reset is not allowed the peak is cumulative and the
results say so (``memory_reset: false``).
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

_MIB = 1024.0


def data_root() -> Path:
    """$TRIPLETFACE_DATA, else <repo>/../shared/data (a folder holding lfw-dev/ and lfw-dev-pairs.txt)."""
    env = os.environ.get("TRIPLETFACE_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def default_crops() -> Path:
    """Aligned crops for the training and embedding benchmarks.

    $TRIPLETFACE_CROPS, else <repo>/runs/lfw112 (``tripletface crop`` of lfw-dev at 112 px, where
    docs/RECIPE.md's commands put it; <repo>/../runs/lfw112 is also looked at)
    when it exists, else the raw lfw-dev photos (the pipeline then resizes them once, while
    caching: the per-step cost is the same, only the start-up decode differs).
    """
    env = os.environ.get("TRIPLETFACE_CROPS")
    if env:
        return Path(env)
    for crops in (REPO_ROOT / "runs" / "lfw112", REPO_ROOT.parent / "runs" / "lfw112"):
        if crops.is_dir():
            return crops
    return data_root() / "lfw-dev"


def image_sample(root: Path, limit: int) -> list[Path]:
    """The images in ``root/<identity>/``, sorted; with ``limit``, that many spread evenly over them."""
    files = sorted(p for p in Path(root).glob("*/*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if limit and limit < len(files):
        step = len(files) / limit
        files = [files[int(i * step)] for i in range(limit)]
    return files


# --------------------------------------------------------------------------- memory

def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) if m else None


def rss_mib() -> float | None:
    """Current resident set size in MiB (None off Linux)."""
    v = _status_kib("VmRSS")
    return None if v is None else v / _MIB


def peak_rss_mib() -> float | None:
    """Resident-set high-water mark in MiB since the last :func:`reset_peak` (None off Linux)."""
    v = _status_kib("VmHWM")
    return None if v is None else v / _MIB


def reset_peak() -> bool:
    """Reset the high-water mark to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_peak_rss_mib() -> float:
    """Largest peak RSS of any waited-for child process so far, in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / _MIB


# --------------------------------------------------------------------------- machine

def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    return set(m.group(1).split()) if m else set()


def machine_info() -> dict:
    flags = cpu_flags()
    model = ""
    try:
        m = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = m.group(1).strip() if m else ""
    except OSError:
        pass
    info = {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform(), "avx512f": "avx512f" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "loadavg": load_average(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
    except ImportError:
        pass
    return info


def quiet_tensorflow() -> None:
    """Silence TF's C++ notices (set before TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --------------------------------------------------------------------------- timing and output

def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def fmt(value, spec: str = ".1f", missing: str = "-") -> str:
    if value is None:
        return missing
    if isinstance(value, float) and value != value:  # NaN
        return missing
    return format(value, spec)


def print_table(headers: list[str], rows: list[list], file=None) -> None:
    """A plain fixed-width table (also valid Markdown)."""
    file = file or sys.stdout
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(cells[0]), file=file)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=file)
    for r in cells[1:]:
        print(line(r), file=file)


def write_json(path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n", encoding="utf-8")


def save_results(path, script: str, argv, **results) -> None:
    """With ``--json PATH``: ``results`` plus the machine and the command (``script`` = the
    benchmark's ``__file__``; ``argv`` as given to its ``main``, None = the command line)."""
    if not path:
        return
    args = sys.argv[1:] if argv is None else list(argv)
    write_json(path, {**results, "machine": machine_info(),
                      "command": f"python benchmarks/{Path(script).name} " + " ".join(args)})


def _jsonable(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def run_logged(cmd: list[str], log: Path, echo: bool = False) -> float:
    """Run ``cmd`` with its output appended to ``log`` (after a ``$ cmd`` line); exits with a
    one-line error naming the log when it fails. Returns its wall seconds."""
    import subprocess
    import sys
    import time

    line = "$ " + " ".join(str(c) for c in cmd)
    if echo:
        print(line, file=sys.stderr, flush=True)
    t0 = time.time()
    with open(log, "a") as f:
        f.write(line + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise SystemExit(f"error: command failed ({r.returncode}), see {log}: {' '.join(str(c) for c in cmd)}")
    return time.time() - t0
