"""``tripletface demo``: the whole pipeline on LFW in one command.

crop (all of lfw-dev, resumable) -> train a short preset on the identities *outside* the held-out
fold -> evaluate on that fold's pairs of ``lfw-dev-pairs.txt`` -> compare two photos -> report.
Data comes from ``--data``, else ``$TRIPLETFACE_DATA``, else ``../shared/data`` (a folder holding
``lfw-dev/`` and ``lfw-dev-pairs.txt``).

stdout gets a few summary lines (accuracy on the held-out fold, the two comparisons, where the
report is); each step's own output and progress go to stderr. All the numbers are written to
``OUT/report/demo.json`` (``OUT/demo.json`` with ``--crop-only``), and printed instead of the
summary with ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from tripletface.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tripletface.cli.flags import add_config_arguments, number

    parser.add_argument("--data", default=None, help="folder with lfw-dev/ and lfw-dev-pairs.txt")
    parser.add_argument("--output", "--out", dest="out", default="runs/demo", metavar="DIR",
                        help="output folder (default: runs/demo)")
    parser.add_argument("--holdout-fold", type=number(int, 1), default=1,
                        help="pairs fold to hold out and score (1-based)")
    parser.add_argument("--crop-only", action="store_true", help="stop after cropping")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object (it is written to OUT/report/demo.json "
                             "either way)")
    add_config_arguments(parser, default_preset="demo")


def find_data(explicit: str | None = None, download_to: Path | None = None) -> tuple[Path, Path]:
    """(images dir, pairs file): from ``explicit``, ``$TRIPLETFACE_DATA`` or ``../shared/data``
    (``lfw-dev/`` + ``lfw-dev-pairs.txt``, or a full ``lfw/`` + ``pairs.txt``), else downloaded."""
    if explicit:
        candidates = [Path(explicit)]
    else:
        candidates = [Path(os.environ["TRIPLETFACE_DATA"])] if os.environ.get("TRIPLETFACE_DATA") else []
        for c in (Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"):
            if all(c.resolve() != seen.resolve() for seen in candidates):  # run from the clone: one folder
                candidates.append(c)
    for c in candidates:
        for images, pairs in (("lfw-dev", "lfw-dev-pairs.txt"), ("lfw", "pairs.txt")):
            if (c / images).is_dir() and (c / pairs).is_file():
                return c / images, c / pairs
    if explicit:
        raise InputError(f"{explicit}: no lfw-dev/ + lfw-dev-pairs.txt (or lfw/ + pairs.txt) there")
    from tripletface.data.download import fetch_lfw

    root = download_to or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tripletface"
    print(f"no local LFW found (looked in: {', '.join(str(c) for c in candidates)}); downloading to {root}",
          file=sys.stderr)
    return fetch_lfw(root)


def _step(title: str) -> float:
    print(f"\n== {title}", file=sys.stderr, flush=True)
    return time.time()


def run(args: argparse.Namespace) -> int:
    from tripletface.cli.main import main as cli_main
    from tripletface.evaluation.folds import write_fold

    def cli(argv: list[str]) -> int:
        """A step's own output goes to stderr with the progress: stdout is the demo's summary."""
        with contextlib.redirect_stdout(sys.stderr):
            return cli_main(argv)

    lfw, pairs_file = find_data(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cropped = out / "cropped"
    summary: dict = {"data": str(lfw), "pairs": str(pairs_file)}
    t0 = _step(f"crop {lfw} -> {cropped}")
    rc = cli(["crop", str(lfw), str(cropped)])
    if rc != 0:
        return rc
    summary["crop_seconds"] = round(time.time() - t0, 1)
    if args.crop_only:
        summary["cropped"] = str(cropped)
        _finish(summary, [f"cropped {lfw} -> {cropped} in {summary['crop_seconds']:.0f} s "
                          f"(manifest: {cropped / 'manifest.jsonl'})"], out / "demo.json", args.json)
        return 0
    if not pairs_file.is_file():
        raise InputError(f"{pairs_file}: pairs file not found")
    fold_pairs, holdout = out / f"pairs_fold{args.holdout_fold}.txt", out / "holdout_identities.txt"
    n_pairs, n_ids = write_fold(pairs_file, args.holdout_fold, fold_pairs, holdout, cropped)
    print(f"held out fold {args.holdout_fold}: {n_pairs} pairs, {n_ids} identities excluded from training",
          file=sys.stderr)

    t0 = _step("train")
    ckpt = out / "checkpoints"
    train_args = ["train", "--preset", args.preset or "demo"]
    if args.config:
        train_args += ["--config", args.config]
    train_args += ["--set", f"TRAIN_DIR={cropped}", f"CHECKPOINT_DIR={ckpt}",
                   f"TENSORBOARD_LOGDIR={out / 'logs'}", f"data.exclude_identities={holdout}", *args.overrides]
    rc = cli(train_args)
    if rc != 0:
        return rc
    summary["train_seconds"] = round(time.time() - t0, 1)
    model = ckpt / "model.keras"

    t0 = _step(f"evaluate on fold {args.holdout_fold} (identities never seen in training)")
    report = out / "report"
    rc = cli(["evaluate", "--model", str(model), "--data-dir", str(cropped), "--aligned", "--pairs", str(fold_pairs),
              "--report-dir", str(report)])
    if rc != 0:
        return rc
    metrics = json.loads((report / "metrics.json").read_text())["metrics"]
    summary.update({k: metrics[k] for k in ("accuracy_mean", "accuracy_std", "auc", "eer", "n_pairs")
                    if k in metrics})

    _step("compare two photos (raw, detected and aligned with the model's settings)")
    from tripletface.cli.compare import compare
    from tripletface.inference.embedder import Embedder
    from tripletface.data.pairs import pair_paths, read_pairs

    sel = read_pairs(fold_pairs)
    embedder = Embedder.load(model)
    summary["compare"] = []
    for p in (next(p for p in sel if p.same), next(p for p in sel if not p.same)):
        a, b = pair_paths(lfw, p)
        r = compare(embedder, a, b)
        summary["compare"].append({**r, "truly": "same" if p.same else "different"})
    summary["model"] = str(model)
    summary["report"] = str(report / "report.html")
    lines = [f"accuracy {summary['accuracy_mean']:.4f} ± {summary['accuracy_std']:.4f}  AUC {summary['auc']:.4f}  "
             f"EER {summary['eer']:.4f}  on fold {args.holdout_fold} of {pairs_file.name} "
             f"({summary.get('n_pairs', n_pairs)} pairs of {n_ids} identities never trained on)"]
    for c in summary["compare"]:
        right = "right" if c["verdict"] == c["truly"] else "wrong"
        lines.append(f"{Path(c['image_a']).name} vs {Path(c['image_b']).name} (truly {c['truly']}): "
                     f"distance {c['distance']:.4f}, threshold {c['threshold']:.4f} -> {c['verdict']} ({right})")
    lines.append(f"model: {model}")
    lines.append(f"report: {summary['report']} (all numbers: {report / 'demo.json'})")
    _finish(summary, lines, report / "demo.json", args.json)
    return 0


def _finish(summary: dict, lines: list[str], json_path: Path, as_json: bool) -> None:
    """Write the summary JSON to ``json_path``; print ``lines`` (or, with ``--json``, the JSON) on stdout."""
    from tripletface.errors import os_error
    from tripletface.evaluation.report import to_jsonable

    text = json.dumps(to_jsonable(summary), indent=2) + "\n"
    try:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise os_error(e, "the demo summary") from None
    if as_json:
        sys.stdout.write(text)
    for line in lines:
        print(line, file=sys.stderr if as_json else sys.stdout)
