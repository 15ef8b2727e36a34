"""Ablation of the original design's future improvements on the LFW dev protocol.

Every row trains with the same step budget on the aligned crops of lfw-dev minus the
identities of the held-out fold, then is scored on that fold's pairs with the same
evaluation. One command per row (``--row NAME``); ``--list`` prints the exact commands.

    python benchmarks/ablation.py --crops runs/lfw112 --out runs/ablation --row original
    python benchmarks/ablation.py --crops runs/lfw112 --out runs/ablation            # all rows
    python benchmarks/ablation.py ... --epochs 1 --steps 5 --row original              # smoke

Results are appended to OUT/ablation.jsonl and printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# The original design: random triplets, the standard TripletLoss, flip/rotation/brightness, ResNet50.
ORIGINAL = ["model.backbone=resnet50", "data.sampling=triplets", "loss.name=triplet", "data.batch_size=42"]
# Each improvement the original design names, on top of the common base (the lfw-cpu recipe's
# input size and schedule), changing one thing at a time.
ROWS = {
    "original": ORIGINAL,
    "semi_hard": ["model.backbone=resnet50", "loss.name=semi_hard"],
    "hard": ["model.backbone=resnet50", "loss.name=batch_hard"],
    "memory_bank": ["model.backbone=resnet50", "loss.name=semi_hard", "loss.memory_bank_size=1024"],
    "advanced_aug": ["model.backbone=resnet50", "loss.name=semi_hard", "augment.contrast=0.3", "augment.cutout=0.3",
                     "augment.gaussian_blur=0.2", "augment.motion_blur=0.1"],
    "efficientnet": ["model.backbone=efficientnet", "loss.name=semi_hard"],
    "mobilenet": ["model.backbone=mobilenet", "loss.name=semi_hard"],
    "small_cnn (lfw-cpu recipe)": ["model.backbone=small_cnn", "loss.name=semi_hard"],
}


def run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise SystemExit(f"error: command failed ({r.returncode}), see {log}: {' '.join(cmd)}")


def commands(name: str, args) -> tuple[list[str], list[str], Path]:
    out = Path(args.out) / name.split(" ")[0]
    common = [f"TRAIN_DIR={args.crops}", f"CHECKPOINT_DIR={out}", f"TENSORBOARD_LOGDIR={out / 'logs'}",
              f"data.exclude_identities={Path(args.out) / f'holdout{args.fold}.txt'}",
              f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}"]
    train = [sys.executable, "-m", "tripletface", "train", "--quiet", "--preset", "lfw-cpu", "--fresh", "--set",
             *ROWS[name], *common]
    evaluate = [sys.executable, "-m", "tripletface", "evaluate", "--model", str(out / "model.keras"),
                "--data-dir", str(args.crops), "--aligned", "--pairs", str(Path(args.out) / f"pairs_fold{args.fold}.txt"),
                "--report-dir", str(out / "report")]
    return train, evaluate, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crops", required=True, help="aligned crops of lfw-dev (tripletface crop)")
    p.add_argument("--pairs", default="../shared/data/lfw-dev-pairs.txt")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--fold", type=int, default=1)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--row", action="append", choices=sorted(ROWS), help="rows to run (default: all)")
    p.add_argument("--list", action="store_true", help="print each row's commands and exit")
    args = p.parse_args()
    from tripletface.demo import write_fold

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_fold(Path(args.pairs), args.fold, out / f"pairs_fold{args.fold}.txt", out / f"holdout{args.fold}.txt")
    rows = args.row or list(ROWS)
    if args.list:
        for name in rows:
            train, evaluate, _ = commands(name, args)
            print(f"# {name}\n{' '.join(train)}\n{' '.join(evaluate)}\n")
        return 0
    results = out / "ablation.jsonl"
    for name in rows:
        train, evaluate, run_dir = commands(name, args)
        run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        run(train, run_dir / "run.log")
        train_s = time.time() - t0
        run(evaluate, run_dir / "run.log")
        m = json.loads((run_dir / "report" / "metrics.json").read_text())["metrics"]
        row = {"row": name, "fold": args.fold, "epochs": args.epochs, "steps": args.steps,
               "accuracy": m["accuracy_mean"], "std": m["accuracy_std"], "auc": m["auc"], "train_s": round(train_s)}
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    print("\n| row | accuracy | AUC | train s |\n|---|---|---|---|")
    for line in results.read_text().splitlines():
        r = json.loads(line)
        print(f"| {r['row']} | {r['accuracy']:.3f} ± {r['std']:.3f} | {r['auc']:.3f} | {r['train_s']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
