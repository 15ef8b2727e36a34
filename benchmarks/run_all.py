"""Every performance benchmark of issue 6, one command: prints one table and writes one JSON.

Each section runs in its own process (so peak memory and TensorFlow state are its own) and
measures the real stage against its bare ceiling side by side, in the same run:

=============  ===========================================  ===================================  ===========
section        real                                         ceiling                              target
=============  ===========================================  ===================================  ===========
train          files -> tf.data -> model -> loss -> Adam     same trainer on an in-memory batch   >= 0.95
embed          Embedder.embed_files(aligned=True), b64       bare model forward on tensors        >= 0.90
bf16           mixed_bfloat16 train step / forward          float32 (same model, alternating)    >= 1.5x
bf16 accuracy  LFW dev pairs after the same budget, bf16    same in float32                      <= 0.5 pt
crop           tripletface crop (whole job)                 mtcnn.detect_faces one at a time     >= 4x
cold start     tripletface compare A B --aligned            import tensorflow + load the model   <= 1.3x
scale          epoch time / identify latency vs size        bare step / bare mat-vec             (a table)
peers (only    crop, embed, train step (peers.py, issue 14)  mtcnn, face_recognition, PyTorch     0.9x, 5x,
with --only)                                                 (in their own venv; else SKIPPED)    1.2x
=============  ===========================================  ===================================  ===========

    python benchmarks/run_all.py                      # everything (about 15 min on this 2-core machine)
    python benchmarks/run_all.py --quick              # smaller runs (about 10 min)
    python benchmarks/run_all.py --only train,embed --json results.json

Ratios are "real / ceiling" for speeds (higher is better) and "real / floor" for the cold
start (lower is better). The machine's load average is recorded before and after each
section: other processes share the cores, which is why each row is measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HERE = Path(__file__).resolve().parent
SECTIONS = ("train", "embed", "bf16", "crop", "cold", "scale")
# run only when named in --only: peers.py (issue 14: the peers users would pick instead, in their own
# venv made by `python benchmarks/peers.py --install`) takes about as long as everything above
OPTIONAL_SECTIONS = ("peers",)


def section_commands(quick: bool, crops: Path | None) -> dict[str, list[str]]:
    c = ["--crops", str(crops)] if crops else []
    if quick:
        return {
            "train": ["bench_train.py", "--steps", "3", "--rounds", "2", "--batch", "16"] + c,
            "embed": ["bench_embed.py", "--images", "256", "--rounds", "4", "--flip-tta"] + c,
            "bf16": ["bench_bf16.py", "--configs", "resnet50@112,mobilenet@112", "--steps", "2", "--rounds", "2",
                     "--acc-epochs", "2", "--acc-steps", "30"] + c,
            "crop": ["bench_crop.py", "--limit", "300", "--baseline-limit", "40"],
            "cold": ["bench_coldstart.py", "--models", "mobilenet@112", "--repeat", "3"] + c,
            "scale": ["bench_scale.py", "--train-sizes", "1000,6909", "--steps", "3"] + c,
            "peers": ["peers.py", "--images", "100", "--rounds", "2", "--steps", "4"] + c,
        }
    return {
        "train": ["bench_train.py", "--steps", "4", "--rounds", "3", "--batch", "16"] + c,
        "embed": ["bench_embed.py", "--images", "512", "--rounds", "6", "--flip-tta",
                  "--backbones", "mobilenet,resnet50"] + c,
        "bf16": ["bench_bf16.py", "--configs", "resnet50@112,mobilenet@112", "--steps", "3", "--rounds", "3",
                 "--acc-epochs", "5", "--acc-steps", "60", "--acc-seeds", "1,2"] + c,
        "crop": ["bench_crop.py", "--limit", "1000", "--baseline-limit", "100"],
        "cold": ["bench_coldstart.py", "--models", "mobilenet@112,resnet50@112", "--repeat", "5"] + c,
        "scale": ["bench_scale.py", "--train-sizes", "1000,6909,20000", "--steps", "4"] + c,
        "peers": ["peers.py", "--images", "300", "--rounds", "3"] + c,
    }


def run_section(name: str, args: list[str], out_dir: Path) -> dict:
    out = out_dir / f"{name}.json"
    cmd = [sys.executable, str(HERE / args[0])] + args[1:] + ["--json", str(out)]
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    before = common.load_average()
    print(f"== {name}: {' '.join(['python', 'benchmarks/' + args[0]] + args[1:])}  (load {before})",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=common.REPO_ROOT)
    seconds = time.perf_counter() - t0
    sys.stderr.write(proc.stdout)
    result = {"command": "python benchmarks/" + " ".join(args), "seconds": seconds, "exit": proc.returncode,
              "loadavg_before": before, "loadavg_after": common.load_average()}
    if proc.returncode == 0 and out.is_file():
        result["data"] = json.loads(out.read_text())
    else:
        result["error"] = f"exited {proc.returncode}"
    return result


def _status(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def _meets(target: tuple | None, *values) -> bool | None:
    """Whether every available value meets ``target`` (``(">=", x)`` or ``("<=", x)``)."""
    if target is None:
        return None
    values = [v for v in values if v is not None]
    if not values:
        return None
    op, x = target
    return all(v >= x if op == ">=" else v <= x for v in values)


def build_rows(sections: dict) -> list[dict]:
    """One row per measured stage: stage, real, ceiling, ratio, CPU-time ratio, target, status, peak MiB.

    ``ratio`` compares wall-clock times measured side by side; ``cpu_ratio`` the same in process CPU
    seconds, which other processes on a shared machine disturb much less. A target counts as met
    only when both ratios meet it (a conservative reading of a noisy machine).
    """
    rows = []

    def add(stage, real, ceiling, ratio, cpu_ratio, target, peak, unit, note="", ok=None):
        if ok is None:
            ok = _meets(target, ratio, cpu_ratio)
        rows.append({"stage": stage, "real": real, "ceiling": ceiling, "ratio": ratio, "cpu_ratio": cpu_ratio,
                     "target": f"{target[0]} {target[1]:g}" if target else "", "status": _status(ok),
                     "peak_mib": peak, "unit": unit, "note": note})

    for name, sec in sections.items():
        if "data" not in sec:
            add(name, None, None, None, None, None, None, "", sec.get("error", "not run"))
    d = sections.get("train", {}).get("data")
    for r in (d or {}).get("train_step", []):
        add(f"train step {r['config']} b{r['batch']} (real/bare)", r["real_img_s"], r["bare_img_s"], r["ratio"],
            r.get("cpu_ratio"), (">=", 0.95), r["peak_rss_mib"]["real"], "img/s",
            f"bare peak {common.fmt(r['peak_rss_mib']['bare'], '.0f')} MiB; cache {r['cache_mib']:.0f} MiB")
    d = sections.get("embed", {}).get("data")
    for r in (d or {}).get("embed", []):
        add(f"embed {r['backbone']}@{r['image_size'][0]} b{r['batch']}{' +flip' if r['flip_tta'] else ''} "
            "(embed_files/forward)", r["real_img_s"], r["bare_img_s"], r["ratio"], r.get("cpu_ratio"),
            (">=", 0.90), r["peak_rss_mib"]["real"], "img/s", f"{r['images']} crops")
    d = sections.get("bf16", {}).get("data")
    if d:
        sup = d.get("bf16_supported")
        for r in d.get("bf16_speed", []):
            for stage, key in (("train step", "train"), ("inference b64", "infer")):
                add(f"bf16 {stage} {r['config']} (bf16/fp32)", r[f"{key}_img_s"]["bfloat16"],
                    r[f"{key}_img_s"]["float32"], r[f"{key}_speedup"], r.get(f"{key}_cpu_speedup"),
                    (">=", 1.5) if sup else None, r["peak_rss_mib"][key]["bfloat16"], "img/s",
                    "" if sup else "no AVX512_BF16: float32 is used")
        a = d.get("bf16_accuracy")
        if a:
            add(f"bf16 accuracy cost {a['backbone']}@{a['image_size'][0]}, {a['n_pairs']} held-out LFW dev pairs "
                "(fp32 - bf16 points)", a["bfloat16"]["accuracy"], a["float32"]["accuracy"],
                a["accuracy_loss_points"], None, ("<=", 0.5), a["bfloat16"]["peak_rss_mib"], "% acc",
                f"{a['images_seen']} training images (short budget), seeds {a['seeds']}; seed spread fp32 "
                f"{a['float32']['seed_spread']:.1f} pt; fold std {a['float32']['accuracy_std']:.1f} pt; train time "
                f"fp32/bf16 {a['train_time_ratio']:.2f}x")
    d = sections.get("crop", {}).get("data")
    if d:
        c, b = d["crop"], d["baseline_mtcnn_one_at_a_time"]
        add("crop lfw-dev (tripletface crop / mtcnn one at a time)", c["images_per_second"],
            b["images_per_second"], d["speedup"], None, (">=", 4), None, "img/s",
            f"faces {c['face_fraction']:.2%} of {c['images']} (target >= 99%); baseline on {b['images']}",
            ok=d["passed"])
    d = sections.get("cold", {}).get("data")
    for r in (d or {}).get("cold_start", []):
        add(f"cold start compare {Path(r['model']).stem} (compare/floor)", r["median_s"]["real"],
            r["median_s"]["floor"], r["ratio"], r.get("cpu_ratio"), ("<=", 1.3), r["peak_rss_mib"]["real"], "s",
            f"import tensorflow alone {r['median_s']['import_tf']:.2f}s")
    d = sections.get("scale", {}).get("data")
    if d:
        for r in d.get("scale_training", []):
            add(f"scale train step, {r['images']} images (real/bare)", r["real_img_s"],
                r["real_img_s"] * r["step_s"] / r["bare_step_s"] if r.get("bare_step_s") else None, r["ratio"],
                None, None,
                r["peak_rss_mib"], "img/s",
                f"set-up {r['setup_s']:.1f}s, one pass {r['pass_s']:.0f}s, cache {r['cache_mib']:.0f} MiB")
        for r in d.get("scale_identify", []):
            add(f"scale identify search, {r['entries']} entries (mat-vec/search)", r["search_ms"],
                r["bare_matvec_ms"], r["ratio"], None, None, r["peak_rss_mib"], "ms",
                f"gallery load {r['load_s'] * 1e3:.0f} ms")
    d = sections.get("peers", {}).get("data")
    for r in (d or {}).get("rows", []):
        if r["target"]:
            ours = next((o for o in d["rows"] if o["ours"] and o["stage"] == r["stage"]), {})
            add(f"peers {r['stage']}: ours / {r['contender']} (whole / steady {common.fmt(r['ratio_whole'], '.2f')})",
                ours.get("steady_img_s"), r["steady_img_s"], r["ratio_steady"], None, None, None, "img/s",
                f"target {r['target']}; " + (r["skip"] or r["error"] or r["note"] or ""),
                ok={"met": True, "MISSED": False}.get(r["status"]))
    return rows


def print_rows(rows: list[dict], file=None) -> None:
    common.print_table(
        ["stage", "real", "ceiling", "ratio", "CPU ratio", "target", "status", "peak MiB", "unit", "note"],
        [[r["stage"], common.fmt(r["real"], ".2f"), common.fmt(r["ceiling"], ".2f"), common.fmt(r["ratio"], ".3f"),
          common.fmt(r["cpu_ratio"], ".3f"), r["target"], r["status"], common.fmt(r["peak_mib"], ".0f"), r["unit"],
          r["note"]] for r in rows],
        file=file)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help="comma-separated sections: " + ",".join(SECTIONS + OPTIONAL_SECTIONS)
                        + " (default: all but " + ",".join(OPTIONAL_SECTIONS) + ")")
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--crops", type=Path, default=None, help="aligned crops (default: see bench_train.py)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results.json"),
                        help="write everything here (default: %(default)s)")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS + OPTIONAL_SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS + OPTIONAL_SECTIONS)}")
    commands = section_commands(args.quick, args.crops)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    sections = {}
    with tempfile.TemporaryDirectory(prefix="tripletface_bench_") as tmp:
        for name in only:
            sections[name] = run_section(name, commands[name], Path(tmp))
    rows = build_rows(sections)
    print()
    print_rows(rows)
    machine = common.machine_info()
    print(f"\n{machine['cpus']} CPUs ({machine['cpu']}), AVX512_BF16 {'yes' if machine['avx512_bf16'] else 'no'}; "
          f"load average at the end {machine['loadavg']}; started {started}")
    common.write_json(args.json, {"rows": rows, "sections": sections, "machine": machine, "started": started,
                                  "command": "python benchmarks/run_all.py " + " ".join(argv or sys.argv[1:])})
    print(f"results: {args.json}")
    return 0 if all("data" in s for s in sections.values()) else 1


if __name__ == "__main__":
    common.quiet_tensorflow()
    raise SystemExit(main())
