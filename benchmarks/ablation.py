"""Ablation of the original design's future improvements on the LFW dev protocol.

Every row trains with the same budget (3 epochs x 100 steps of 128 images, Adam 1e-3 with
cosine decay, 64x64 input: the ``lfw-cpu`` preset's schedule) on the crops of lfw-dev minus
the identities of the held-out fold, then is scored on that fold's 600 pairs with the same
evaluation. Each row changes ONE thing from the original design (random triplets, standard
TripletLoss, flip/±10° rotation/brightness, ResNet50). One command per row (``--row NAME``);
``--list`` prints the exact train/evaluate commands.

    tripletface crop ../shared/data/lfw-dev runs/lfw112                      # aligned crops
    tripletface crop ../shared/data/lfw-dev runs/lfwbox112 --template box    # for no_alignment
    python benchmarks/ablation.py --crops runs/lfw112 --box-crops runs/lfwbox112 --row original
    python benchmarks/ablation.py --crops runs/lfw112 --box-crops runs/lfwbox112            # all rows
    python benchmarks/ablation.py ... --epochs 1 --steps 5 --row original                   # smoke

Results are appended to OUT/ablation.jsonl and printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# The original design: explicit random triplets, the standard TripletLoss (margin 0.2),
# flip / ±10° rotation / brightness, ResNet50. Every other row changes ONE thing from it.
ORIGINAL = ["model.backbone=resnet50", "data.sampling=triplets", "loss.name=triplet", "data.batch_size=42",
            "augment.rotation=10"]
PK = ["data.sampling=pk", "data.batch_size=128"]  # mining needs identity-grouped P×K batches (32×4)


def _with(*changes: str) -> list[str]:
    """ORIGINAL with ``changes`` (key=value) replacing the same keys."""
    keys = {c.split("=", 1)[0] for c in changes}
    return [c for c in ORIGINAL if c.split("=", 1)[0] not in keys] + list(changes)


ROWS = {
    "original": ORIGINAL,
    "semi_hard": _with(*PK, "loss.name=semi_hard"),
    "hard": _with(*PK, "loss.name=batch_hard"),
    "memory_bank": _with(*PK, "loss.name=semi_hard", "loss.memory_bank_size=1024"),  # the bank extends mining
    # the cross-batch memory paper's advice: fill the bank only once the embedding has stopped drifting
    "memory_bank_warmup": _with(*PK, "loss.name=semi_hard", "loss.memory_bank_size=1024",
                                "loss.memory_bank_start_step=100"),
    "advanced_aug": _with("augment.contrast=0.3", "augment.cutout=0.3", "augment.gaussian_blur=0.2",
                          "augment.motion_blur=0.1"),
    "quality_filter": _with("data.min_blur=50", "data.max_pose=0.3"),  # drops 5.7 % of lfw-dev crops
    "no_alignment": ORIGINAL,  # same training, on box crops (--box-crops) instead of aligned ones
    "efficientnet": _with("model.backbone=efficientnet"),
    "mobilenet": _with("model.backbone=mobilenet"),
    "small_cnn": _with("model.backbone=small_cnn"),
    # the recipe's choices together (small CNN + semi-hard P×K), at this table's budget
    "lfw-cpu": _with(*PK, "model.backbone=small_cnn", "loss.name=semi_hard", "augment.rotation=8"),
}


def run(cmd: list[str], log: Path) -> None:
    common.run_logged(cmd, log)


def commands(name: str, args) -> tuple[list[str], list[str], Path]:
    out = Path(args.out) / name
    crops = args.box_crops if name == "no_alignment" else args.crops
    if not crops:
        raise SystemExit("error: the no_alignment row needs --box-crops (tripletface crop --set crop.template=box)")
    common = [f"TRAIN_DIR={crops}", f"CHECKPOINT_DIR={out}", f"TENSORBOARD_LOGDIR={out / 'logs'}",
              f"data.exclude_identities={Path(args.out) / f'holdout{args.fold}.txt'}",
              f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}"]
    train = [sys.executable, "-m", "tripletface", "train", "--quiet", "--preset", "lfw-cpu", "--fresh", "--set",
             *ROWS[name], *common]
    evaluate = [sys.executable, "-m", "tripletface", "evaluate", "--model", str(out / "model.keras"),
                "--data-dir", str(crops), "--aligned", "--pairs", str(Path(args.out) / f"pairs_fold{args.fold}.txt"),
                "--report-dir", str(out / "report")]
    return train, evaluate, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crops", required=True, help="aligned crops of lfw-dev (tripletface crop)")
    p.add_argument("--box-crops", default="", help="unaligned box crops of lfw-dev, for the no_alignment row")
    p.add_argument("--pairs", default="../shared/data/lfw-dev-pairs.txt")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--fold", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--row", action="append", choices=sorted(ROWS), help="rows to run (default: all)")
    p.add_argument("--list", action="store_true", help="print each row's commands and exit")
    args = p.parse_args()
    from tripletface.evaluation.folds import write_fold

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
