"""Cold start: ``tripletface compare A B --model M --aligned`` wall time from process start vs its floor.

* **real**: the command as a user types it (the ``tripletface`` console script of this
  Python), two aligned crops, a model with a stored threshold; a fresh process each time;
* **floor**: ``python -c "import tensorflow"`` plus loading the same model
  (``tripletface.model.io.load_model``, i.e. ``keras.saving.load_model`` with safe_mode) in one
  fresh process; ``import tensorflow`` alone is timed as well.

Runs alternate real/floor/floor/real...; the ratio is the median over rounds of real/floor
wall time; the children's CPU seconds (user + system, less disturbed by other processes' load
than wall time) give ``cpu_ratio``; peak memory is each child's ``ru_maxrss``. This process
never imports TensorFlow (the models are made in a child), so that peak is the child's own
(``ru_maxrss`` also counts the ~20 MiB of the launching process).
Target (issue 6): real <= 1.3x the floor.

    python benchmarks/bench_coldstart.py                       # mobilenet@112 and resnet50@112
    python benchmarks/bench_coldstart.py --models mobilenet@112 --repeat 5 --json cold.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET = 1.3


def tripletface_command() -> list[str]:
    """The console script beside this interpreter, else ``python -m tripletface``."""
    script = Path(sys.executable).with_name("tripletface")
    if script.is_file():
        return [str(script)]
    found = shutil.which("tripletface")
    return [found] if found else [sys.executable, "-m", "tripletface"]


def run_child_rusage(cmd: list[str], env: dict) -> tuple[float, float, int, str, float]:
    """(wall seconds, peak RSS MiB, exit status, last stderr line, CPU seconds) of one fresh process."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=common.REPO_ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = (err.read().decode(errors="replace").strip().splitlines() or [""])[-1]
    return wall, usage.ru_maxrss / 1024.0, proc.returncode, tail, usage.ru_utime + usage.ru_stime


def make_models(configs: list[str], folder: Path) -> list[Path]:
    """Save untrained models with a threshold, in a child process: this process never loads TensorFlow,
    so the children it starts do not inherit a large resident set (``ru_maxrss`` of a child counts
    the memory of the parent it was forked from)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import bench_embed, bench_train; from pathlib import Path; "
            "[print(bench_embed.save_model(*bench_train.parse_config(c), Path(sys.argv[2]))) for c in sys.argv[3:]]")
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent), str(folder), *configs],
                         env=env, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return [Path(line) for line in out.stdout.splitlines() if line.strip()]


def measure(model: Path, a: Path, b: Path, repeat: int = 3, log=print) -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(common.REPO_ROOT), env.get("PYTHONPATH")]))
    cmds = {
        "real": tripletface_command() + ["compare", str(a), str(b), "--model", str(model), "--aligned"],
        "floor": [sys.executable, "-c", "import tensorflow; from tripletface.model.io import load_model; "
                  f"load_model({str(model)!r})"],
        "import_tf": [sys.executable, "-c", "import tensorflow"],
    }
    runs = {k: [] for k in cmds}
    cpu = {k: [] for k in cmds}
    peaks = {k: [] for k in cmds}
    run_child_rusage(cmds["import_tf"], env)  # warm the file cache
    for r in range(repeat):
        order = ("real", "floor", "import_tf") if r % 2 == 0 else ("import_tf", "floor", "real")
        for kind in order:
            wall, peak, rc, tail, cpu_s = run_child_rusage(cmds[kind], env)
            if rc != 0:
                raise RuntimeError(f"{' '.join(cmds[kind])} exited {rc}: {tail}")
            runs[kind].append(wall)
            cpu[kind].append(cpu_s)
            peaks[kind].append(peak)
    med = {k: common.median(v) for k, v in runs.items()}
    pairs = [r / f for r, f in zip(runs["real"], runs["floor"])]
    cpu_med = {k: common.median(v) for k, v in cpu.items()}
    result = {"model": str(model), "seconds": runs, "median_s": med, "ratio": common.median(pairs),
              "cpu_s": cpu, "median_cpu_s": cpu_med, "cpu_ratio": cpu_med["real"] / cpu_med["floor"],
              "peak_rss_mib": {k: max(v) for k, v in peaks.items()}, "target": TARGET,
              "command": " ".join(cmds["real"]), "floor_command": " ".join(cmds["floor"]),
              "loadavg": common.load_average()}
    log(f"cold start {model.name}: compare {med['real']:.2f}s, floor {med['floor']:.2f}s "
        f"(import tensorflow {med['import_tf']:.2f}s), ratio {result['ratio']:.2f}; CPU seconds compare "
        f"{cpu_med['real']:.2f}, floor {cpu_med['floor']:.2f}, ratio {result['cpu_ratio']:.2f} "
        f"(load {result['loadavg']})")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet@112,resnet50@112", help="BACKBONE@SIZE list")
    parser.add_argument("--model", type=Path, default=None, help="a trained .keras model instead (with a threshold)")
    parser.add_argument("--crops", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    crops = args.crops or common.default_crops()
    files = common.image_sample(crops, 2)
    if len(files) < 2:
        print(f"error: {crops}: need two crops", file=sys.stderr)
        return 2
    a, b = files[0], files[-1]
    common.quiet_tensorflow()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_cold_") as tmp:
        if args.model:
            models = [args.model]
        else:
            models = make_models([c for c in args.models.split(",") if c.strip()], Path(tmp))
        for m in models:
            results.append(measure(m, a, b, args.repeat, log=lambda s: print(s, file=sys.stderr)))
    rows = [[Path(r["model"]).stem, common.fmt(r["median_s"]["import_tf"], ".2f"),
             common.fmt(r["median_s"]["floor"], ".2f"), common.fmt(r["median_s"]["real"], ".2f"),
             common.fmt(r["ratio"], ".2f"), "met" if r["ratio"] <= TARGET else "MISSED",
             common.fmt(r["median_cpu_s"]["floor"], ".2f"), common.fmt(r["median_cpu_s"]["real"], ".2f"),
             common.fmt(r["cpu_ratio"], ".2f"), common.fmt(r["peak_rss_mib"]["floor"], ".0f"),
             common.fmt(r["peak_rss_mib"]["real"], ".0f")]
            for r in results]
    common.print_table(["model", "import tf s", "floor s", "compare s", "ratio", f"<= {TARGET}",
                        "CPU s floor", "CPU s compare", "CPU ratio", "peak MiB floor", "peak MiB compare"], rows)
    print(f"load average {common.load_average()} ({os.cpu_count()} CPUs)")
    common.save_results(args.json, __file__, argv, cold_start=results)
    return 0


if __name__ == "__main__":
    common.quiet_tensorflow()
    raise SystemExit(main())
