"""The several-dataset CPU recipe (``--preset faces-cpu``) on the dev protocol, end to end.

Crops lfw-dev and celeba-dev (resumable), then for each LFW dev fold N: trains with fold N's
identities and a fixed CelebA hold-out excluded, scores fold N's 600 pairs with
``tripletface evaluate`` (10-fold threshold selection, as every figure in docs/RECIPE.md), and
scores the CelebA hold-out (identities never trained on, colour photos: the in-domain check)
on 1,000 pairs of its aligned crops. Every step is a plain command (printed, logged), every
result a JSON row in OUT/results.jsonl; a fold already scored is skipped and a killed training
resumes from its checkpoint, so the five hour-long folds can be spread over sessions.

    python benchmarks/faces_recipe.py --folds 1                  # one fold: ~1 hour on 2 cores
    python benchmarks/faces_recipe.py --folds 1-5                # the dev protocol
    python benchmarks/faces_recipe.py --folds 1 --set train.time_budget=0 train.epochs=1 train.steps_per_epoch=5   # smoke
    python benchmarks/faces_recipe.py --folds 1 --set train.time_budget=0 train.epochs=21   # 21 fixed epochs, not the hour
    python benchmarks/faces_recipe.py --table                    # the Markdown table of OUT/results.jsonl
    python benchmarks/faces_recipe.py --row aux_head             # one ablation row (ROWS), fold 1
    python benchmarks/faces_recipe.py --ablation                 # the ablation table of the rows run
    python benchmarks/faces_recipe.py --final                    # the default model: all of both sets
    python benchmarks/faces_recipe.py --step-costs [ROW ...]     # capacity rows' step times beside the base's

The data: ``--data`` (default ``$TRIPLETFACE_DATA`` or ../shared/data) holding lfw-dev/,
lfw-dev-pairs.txt and celeba-dev/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation  # noqa: E402
import common  # noqa: E402

# The ablation at this data size (docs/RECIPE.md): each row is BASE with ONE change, at one budget
# (BUDGET: the steps the recipe fits in its hour on the 2-core machine, crop included), trained with
# fold 1 held out. BASE is ``--preset faces-cpu`` as the table was begun (2026-12-01): the full-width
# small CNN, sampling by identities, so 17.9 % of each batch LFW, 14 fixed epochs. The preset has since taken
# two rows that won (`balanced`, then `narrow`) and its hour (`train.time_budget`), and BASE pins what they changed, so every row of the table stays one
# change from the same run. ``python benchmarks/faces_recipe.py --row NAME`` runs one into
# runs/faces/NAME; ``--ablation`` prints the table of the rows run so far.
BUDGET = ["train.epochs=14"]
BASE = BUDGET + ["model.width=1.0", "data.source_balance=identities", "train.time_budget=0"]
# BASE before the preset took its hour (train.time_budget, 2026-12-08): rows run until then name it
BASE_BEFORE_BUDGET = BUDGET + ["model.width=1.0", "data.source_balance=identities"]
# BASE before the preset took `narrow` (2026-12-07): the rows' results.jsonl made until then name it
BASE_BEFORE_NARROW = BUDGET + ["data.source_balance=identities"]
ROWS = {
    # the original design on this data (colour ResNet50, random triplets, standard triplet loss,
    # ±10° rotation: benchmarks/ablation.py's ORIGINAL): 1.68x the base's step time (CAPACITY_ROWS)
    "original": BASE + ablation.ORIGINAL + ["model.greyscale=false", "train.epochs=8"],
    "base": BASE,  # lfw-cpu's choices, every face grey in the model, each identity with 2+ images alike
    "colour": BASE + ["model.greyscale=false"],  # greyscale LFW and colour CelebA as they come
    # half of each batch LFW: what the preset now does by default (data.source_balance=sources)
    "balanced": BASE + ["data.source_weights=[1,1]"],
    "aux_head": BASE + ["loss.aux_weight=1.0"],  # + a CosFace head over the training identities
    # the same head a tenth as loud: its loss starts near 20, the triplet loss near 0.15
    "aux_light": BASE + ["loss.aux_weight=0.1"],
    # capacity and resolution, each at the base's wall time (CAPACITY_ROWS, below): fewer epochs
    "wide": BASE + ["model.width=1.5", "train.epochs=6"],  # 1.5x the channels
    "p64": BASE + ["data.batch_size=256", "train.epochs=7"],  # 64 identities per batch instead of 32
    "res96": BASE + ["model.image_size=[96,96]", "train.epochs=6"],  # resolution
    # the other way: cheaper steps, so more of them in the same wall time
    "narrow": BASE + ["model.width=0.75", "train.epochs=21"],  # 0.75x the channels
    "res48": BASE + ["model.image_size=[48,48]", "train.epochs=24"],  # 48 px input instead of 64
    "memory_bank": BASE + ["loss.memory_bank_size=1024", "loss.memory_bank_start_step=300"],
    # low resolution: drop the crops whose face was under 80 px in its photo (57 % of celeba-dev's,
    # none of lfw-dev's)
    "hires": BASE + ["data.min_face_size=80"],
    "hard_later": BASE + ["loss.hard_from=0.5"],  # the mining schedule: semi-hard, then batch-hard
    # the memory bank in the XBM paper's own (contrastive pair) form
    "xbm_contrastive": BASE + ["loss.name=contrastive", "loss.memory_bank_size=1024",
                               "loss.memory_bank_start_step=300"],
}
# The rows whose training step costs more or less than the base's: at the recipe's hour they get fewer
# or more epochs, ``equal_time_epochs`` of their measured step time (``--step-costs``), not BUDGET's 14.
CAPACITY_ROWS = ("base", "original", "wide", "p64", "res96", "narrow", "res48")
# Their epochs above are ``--step-costs``' "epochs at equal wall time", measured 2026-12-07 on an idle
# 2-core AMD EPYC (AVX-512; load 1.9, the run itself): step 0.867 s for the base; original 1.68x,
# wide 2.07x, p64 1.94x, res96 2.23x; the same day, idle, ``--step-costs narrow res48``: base 0.850 s,
# narrow 0.65x, res48 0.57x (docs/RECIPE.md).
STEP_COST_IDENTITIES = 600  # identities (2+ crops) of each source the step timing samples from
CELEBA_HOLDOUT = 200  # CelebA identities (with 2+ crops) never trained on: the in-domain check
CELEBA_PAIRS = 1000


def run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` with its output appended to ``log``; returns its wall seconds."""
    return common.run_logged(cmd, log, echo=True)


def tripletface(*args: str) -> list[str]:
    return [sys.executable, "-m", "tripletface", *args]


def crop_all(data: Path, out: Path, log: Path) -> dict:
    """Aligned 112 crops of both sets (a finished crop is only re-checked)."""
    times = {}
    for name in ("lfw-dev", "celeba-dev"):
        dest = out / (name.split("-")[0] + "112")
        times[name] = run(tripletface("crop", str(data / name), str(dest), "--no-progress"), log)
    return times


def celeba_holdout(crops: Path, out: Path) -> Path:
    """A fixed draw of CelebA identities with 2+ crops, written as ``celeba112/<name>`` lines."""
    import numpy as np

    path = out / "celeba_holdout.txt"
    if not path.is_file():
        names = sorted(d.name for d in crops.iterdir() if d.is_dir() and len(list(d.iterdir())) >= 2)
        pick = np.random.default_rng(0).choice(len(names), CELEBA_HOLDOUT, replace=False)
        path.write_text("".join(f"{crops.name}/{names[i]}\n" for i in sorted(pick)))
    return path


def score_celeba(model: Path, crops: Path, holdout: Path) -> dict:
    """Verification on pairs of the held-out CelebA identities' aligned crops (never trained on)."""
    from tripletface.data.index import index_folder
    from tripletface.data.validation import make_val_pairs
    from tripletface.evaluation import verification as V
    from tripletface.inference.embedder import Embedder
    from tripletface.inference.matching import distance

    names = [line.split("/", 1)[1] for line in holdout.read_text().split()]
    index = index_folder(crops)
    index = index.subset([i for i, n in enumerate(index.names) if n in set(names)])
    a, b, same = make_val_pairs(index, CELEBA_PAIRS, seed=0)
    emb, failures = Embedder.load(str(model)).embed_files(list(index.paths), aligned=True)
    d = distance(emb[a], emb[b])
    acc = V.kfold_accuracy(d, same, folds=10)
    roc = V.roc_metrics(d, same)
    return {"celeba_accuracy": float(acc["mean"]), "celeba_accuracy_sd": float(acc["std"]),
            "celeba_auc": float(roc["auc"]), "celeba_pairs": int(len(d)), "celeba_identities": index.num_identities,
            "celeba_failures": len(failures)}


def _verification(metrics: dict) -> dict:
    """The dict of verification numbers (``accuracy_mean``, ``auc``, ...) in evaluate's metrics.json."""
    if "accuracy_mean" in metrics:
        return metrics
    for value in metrics.values():
        if isinstance(value, dict) and (found := _verification(value)):
            return found
    return {}


def fold_row(fold: int, args, lfw: Path, celeba: Path, out: Path, log: Path) -> dict:
    from tripletface.evaluation.folds import write_fold

    pairs, names = out / f"pairs_fold{fold}.txt", out / f"holdout{fold}.txt"
    write_fold(args.data / "lfw-dev-pairs.txt", fold, pairs, names, cropped=lfw)
    exclude = out / f"exclude{fold}.txt"
    exclude.write_text(names.read_text() + celeba_holdout(celeba, out).read_text())
    ckpt = out / f"fold{fold}"
    train = tripletface("train", "--quiet", "--preset", args.preset, "--set", f"TRAIN_DIR={lfw}",
                        f"TRAIN_DIR={celeba}", f"CHECKPOINT_DIR={ckpt}", f"TENSORBOARD_LOGDIR={ckpt / 'logs'}",
                        f"data.exclude_identities={exclude}", *args.set)
    train_s = run(train, log)
    report = ckpt / "report"
    evaluate = tripletface("evaluate", "--model", str(ckpt / "model.keras"), "--data-dir", str(lfw), "--aligned",
                           "--pairs", str(pairs), "--report-dir", str(report))
    eval_s = run(evaluate, log)
    ver = _verification(json.loads((report / "metrics.json").read_text()))
    row = {"fold": fold, "preset": args.preset, "set": args.set, "train_s": train_s, "eval_s": eval_s,
           "accuracy": ver["accuracy_mean"], "accuracy_sd": ver["accuracy_std"], "auc": ver["auc"],
           "accuracy_at_stored_threshold": ver.get("accuracy"), "n_unscored": ver.get("n_unscored"),
           "eer": ver.get("eer"), "tar_at_far": ver.get("tar_at_far"), "train_command": " ".join(train[1:]),
           "evaluate_command": " ".join(evaluate[1:]), "loadavg": common.load_average()}
    row.update(score_celeba(ckpt / "model.keras", celeba, out / "celeba_holdout.txt"))
    row.update(trained_epochs(ckpt / "model.keras"))
    return row


def trained_epochs(model: Path) -> dict:
    """``{'epochs': N}`` the model trained (with ``train.time_budget``, also its plan: the step time
    measured and the budget's minutes), from its metadata."""
    from tripletface.model.io import get_metadata, load_model

    meta = get_metadata(load_model(model))
    out = {"epochs": meta.get("epochs_trained")}
    if meta.get("time_budget"):
        out["time_budget"] = meta["time_budget"]
    return out


def final_model(args, lfw: Path, celeba: Path, out: Path, log: Path) -> Path:
    """The bundled default model's training: the recipe on every crop of both sets, nothing held out
    but what training itself holds out to choose the threshold (through the inference path)."""
    ckpt = out / "final"
    run(tripletface("train", "--quiet", "--preset", args.preset, "--set", f"TRAIN_DIR={lfw}", f"TRAIN_DIR={celeba}",
                    f"CHECKPOINT_DIR={ckpt}", f"TENSORBOARD_LOGDIR={ckpt / 'logs'}", *args.set), log)
    return ckpt / "model.keras"


def sources_table(meta: dict) -> str:
    """The model card's data table, from a model's metadata: each source with its counts and terms."""
    lines = ["| source | photos trained on | identities | with 2+ photos | share of each batch | terms |",
             "|---|---|---|---|---|---|"]
    for s in meta.get("sources", []):
        lines.append(f"| `{s['name']}` | {s['images']:,} | {s['identities']:,} | {s['identities_2plus']:,} | "
                     f"{s['sampling_share']:.1%} | {s['terms']} |")
    return "\n".join(lines)


def equal_time_epochs(base_epochs: int, base_step_s: float, row_step_s: float) -> int:
    """The epochs of a row whose step takes ``row_step_s`` that fit the wall time of ``base_epochs``
    epochs of ``base_step_s`` steps (the same steps per epoch): rounded down, at least 1."""
    if not (base_step_s > 0 and row_step_s > 0):
        raise ValueError(f"step times must be > 0, received: {base_step_s}, {row_step_s}")
    return max(1, int(base_epochs * base_step_s / row_step_s))


def step_costs(preset: str, rows, lfw: Path, celeba: Path, steps: int = 4, rounds: int = 3, log=print) -> list[dict]:
    """Each row's real training step (its config's P×K pipeline on both sources' crops, cached, and
    its trainer as ``tripletface train`` builds it; ``bench_train.measure``), one row after another
    in one process, and its epochs at the preset's wall time. Step time does not depend on how many
    crops the cache holds, so each source is sampled down to STEP_COST_IDENTITIES identities."""
    import bench_train

    from tripletface.data.index import index_folders
    from tripletface.config import load_config

    index = index_folders([lfw, celeba])
    src, anchors = index.source_ids(), index.anchor_identities()
    keep = [a for s in range(index.num_sources) for a in anchors[src[anchors] == s][:STEP_COST_IDENTITIES]]
    index = index.subset(keep)
    out = []
    for name in rows:
        cfg = load_config(preset=preset, overrides=ROWS[name] + [f"TRAIN_DIR={lfw}", f"TRAIN_DIR={celeba}"])
        r = bench_train.measure(cfg, index, steps=steps, rounds=rounds, log=log)
        out.append({"row": name, "epochs": cfg.train.epochs, "step_s": common.median(r["step_s"]["real"]),
                    "img_s": r["real_img_s"], "batch": r["batch"], "config": r["config"]})
    base = out[0]
    for r in out:
        r["ratio"] = r["step_s"] / base["step_s"]
        r["epochs_at_equal_time"] = equal_time_epochs(base["epochs"], base["step_s"], r["step_s"])
    return out


def parse_folds(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def table(rows: list[dict]) -> str:
    lines = ["| held-out fold | LFW accuracy | AUC | EER | CelebA hold-out accuracy | AUC | epochs | train min |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fold']} | {r['accuracy']:.3f} ± {r['accuracy_sd'] or 0:.3f} | {r['auc']:.3f} | "
                     f"{r['eer']:.3f} | {r['celeba_accuracy']:.3f} | {r['celeba_auc']:.3f} | {r.get('epochs') or '—'} | "
                     f"{r['train_s'] / 60:.1f} |")
    if len(rows) > 1:
        acc = [r["accuracy"] for r in rows]
        lines.append(f"| **mean ± sd over folds** | **{statistics.mean(acc):.3f} ± {statistics.stdev(acc):.3f}** | "
                     f"{statistics.mean(r['auc'] for r in rows):.3f} | {statistics.mean(r['eer'] for r in rows):.3f} | "
                     f"{statistics.mean(r['celeba_accuracy'] for r in rows):.3f} | "
                     f"{statistics.mean(r['celeba_auc'] for r in rows):.3f} | | |")
    return "\n".join(lines)


def row_name(row: dict) -> str:
    """The ablation row a result belongs to (its training overrides), or its overrides in words."""
    if row.get("preset") == "faces-cpu":  # the table's runs: a row's changes, or those of an earlier BASE
        for name, changes in ROWS.items():
            if row["set"] in [earlier + changes[len(BASE):] for earlier in (BASE, BASE_BEFORE_BUDGET, BASE_BEFORE_NARROW, BUDGET)]:
                return name
    return f"{row.get('preset')} {' '.join(row['set'])}".strip()


def ablation_table(files: list[Path]) -> str:
    """One line per (row, fold) result found in ``files``, in ROWS order."""
    found = [json.loads(line) for f in files if f.is_file() for line in f.read_text().splitlines() if line.strip()]
    order = {name: i for i, name in enumerate(ROWS)}
    found.sort(key=lambda r: (order.get(row_name(r), len(order)), r["fold"]))
    lines = ["| row | the one change | LFW fold accuracy | AUC | CelebA hold-out accuracy | AUC | train min |",
             "|---|---|---|---|---|---|---|"]
    for r in found:
        name = row_name(r)
        change = " ".join(c for c in r["set"] if c not in BASE) or "—"  # BASE holds every earlier BASE's overrides
        lines.append(f"| `{name}` (fold {r['fold']}) | {change} | {r['accuracy']:.3f} ± {r['accuracy_sd'] or 0:.3f} | "
                     f"{r['auc']:.3f} | {r['celeba_accuracy']:.3f} | {r['celeba_auc']:.3f} | {r['train_s'] / 60:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=common.data_root())
    parser.add_argument("--out", type=Path, default=Path("runs/faces"))
    parser.add_argument("--crops", type=Path, default=Path("runs"), help="where the 112 crops go (lfw112/, celeba112/)")
    parser.add_argument("--folds", default="1")
    parser.add_argument("--preset", default="faces-cpu")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra training overrides")
    parser.add_argument("--table", action="store_true", help="print the table of OUT/results.jsonl and stop")
    parser.add_argument("--row", choices=sorted(ROWS), help="one ablation row (into runs/faces/ROW unless --out)")
    parser.add_argument("--ablation", nargs="*", type=Path, metavar="DIR",
                        help="print the ablation table of the rows in runs/faces/* (and these folders) and stop")
    parser.add_argument("--final", action="store_true",
                        help="train the default model on all of both sets into OUT/final and print its card's facts")
    parser.add_argument("--step-costs", nargs="*", choices=CAPACITY_ROWS[1:], metavar="ROW",
                        help="time each capacity row's training step (or these rows') against the base's, side by "
                             "side, and print the epochs each fits in the base's wall time")
    parser.add_argument("--steps", type=int, default=4, help="--step-costs: timed steps per block (default 4)")
    args = parser.parse_args(argv)
    if args.ablation is not None:
        print(ablation_table(sorted(Path("runs/faces").glob("*/results.jsonl")) + [d / "results.jsonl" for d in args.ablation]))
        return 0
    if args.row:
        args.set = ROWS[args.row] + args.set
        if args.out == parser.get_default("out"):
            args.out = args.out / args.row
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    if args.table:
        print(table(rows))
        return 0
    log = args.out / "recipe.log"
    crop_s = crop_all(args.data, args.crops, log)
    print(f"crop: {crop_s}", file=sys.stderr)
    lfw, celeba = args.crops / "lfw112", args.crops / "celeba112"
    if args.step_costs is not None:
        timed = ("base", *(args.step_costs or CAPACITY_ROWS[1:]))
        costs = step_costs(args.preset, timed, lfw, celeba, steps=args.steps, log=lambda m: print(m, file=sys.stderr))
        common.print_table(["row", "model", "batch", "step s", "img/s", "step cost vs base", "epochs",
                            "epochs at equal wall time"],
                           [[c["row"], c["config"], c["batch"], f"{c['step_s']:.3f}", f"{c['img_s']:.1f}",
                             f"{c['ratio']:.2f}", c["epochs"], c["epochs_at_equal_time"]] for c in costs])
        print(f"load average {common.load_average()} ({os.cpu_count()} CPUs)")
        return 0
    if args.final:
        from tripletface.model.io import get_metadata, load_model

        path = final_model(args, lfw, celeba, args.out, log)
        meta = get_metadata(load_model(path))
        print(sources_table(meta))
        print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB, threshold {meta['threshold']:.4f} "
              f"({meta['threshold_source']}), {meta.get('epochs_trained')} epochs")
        return 0
    for fold in parse_folds(args.folds):
        if any(r["fold"] == fold and r["preset"] == args.preset and r["set"] == args.set for r in rows):
            print(f"fold {fold}: already scored (in {results})", file=sys.stderr)
            continue
        row = fold_row(fold, args, lfw, celeba, args.out, log)
        row["crop_s"] = crop_s
        rows.append(row)
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"fold {fold}: LFW {row['accuracy']:.3f} (AUC {row['auc']:.3f}), CelebA hold-out "
              f"{row['celeba_accuracy']:.3f}; trained {row['train_s'] / 60:.1f} min", file=sys.stderr)
    print(table([r for r in rows if r["preset"] == args.preset and r["set"] == args.set]))
    print(f"load average {common.load_average()} ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
