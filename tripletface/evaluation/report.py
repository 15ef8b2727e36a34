"""Verification report: ROC and distance-histogram PNGs, a Markdown and an HTML page, metrics.json.

The pages are tables of the metrics (:func:`metric_rows`) and of the hardest false accepts and
rejects as thumbnails (:mod:`tripletface.evaluation.hardest_errors`); the figures are
:mod:`tripletface.evaluation.plots`.

Example::

    m = verification_metrics(distances, issame, fold_ids=folds)
    paths = write_report("reports/lfw", m, distances, issame, "LFW dev, resnet50",
                         extra={"model": "model.keras", "pairs": "lfw-dev-pairs.txt"})
    paths["html"]   # reports/lfw/report.html, showing roc.png and hist.png
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from tripletface.evaluation.hardest_errors import THUMB_SIZE
from tripletface.evaluation.metric import METRIC, METRIC_NOTE

__all__ = ["write_report", "to_jsonable", "metric_rows", "as_float"]

ROC_FILE, HIST_FILE, MD_FILE, HTML_FILE, JSON_FILE = "roc.png", "hist.png", "report.md", "report.html", "metrics.json"

_LABELS = {
    "metric": "Distance metric",
    "n_pairs": "Pairs",
    "n_unscored": "Pairs that could not be scored (counted wrong)",
    "n_genuine": "Matched (genuine) pairs",
    "n_impostor": "Mismatched (impostor) pairs",
    "auc": "AUC",
    "eer": "EER",
    "eer_threshold": "Threshold at EER",
    "threshold": "Best-accuracy threshold (all pairs)",
    "accuracy": "Accuracy at that threshold (all pairs, optimistic)",
    "fold_accuracies": "Accuracy per fold",
    "fold_thresholds": "Threshold per fold",
    "fold_sizes": "Pairs per fold",
    "n_folds": "Folds",
    "min_far": "Smallest measurable FAR (1 / impostor pairs)",
    "loss": "Triplet loss (mean hinge)",
    "precision": "Precision",
    "recall": "Recall",
    "ranking_accuracy": "Triplets with d(a,p) < d(a,n)",
    "n_triplets": "Triplets",
    # the same numbers under the names tripletface.evaluation.evaluate uses
    "pairs": "Pairs",
    "matched": "Matched (genuine) pairs",
    "mismatched": "Mismatched (impostor) pairs",
    "folds": "Folds",
    "accuracy_per_fold": "Accuracy per fold",
    "best_threshold_all_pairs": "Best-accuracy threshold (all pairs)",
    "best_accuracy_all_pairs": "Accuracy at that threshold (all pairs, optimistic)",
    "unscored_pairs": "Pairs that could not be scored (counted wrong)",
    "failed_images": "Images that could not be embedded",
    "triplets": "Triplets",
    "unscored_triplets": "Triplets that could not be scored",
    "triplet_loss": "Triplet loss (mean hinge)",
    "triplet_precision": "Triplet pairs: precision (model's threshold)",
    "triplet_recall": "Triplet pairs: recall (model's threshold)",
    "triplet_accuracy": "Triplet pairs: accuracy (model's threshold)",
    "triplet_ranking_accuracy": "Triplets with d(a,p) < d(a,n)",
    "triplet_threshold": "Triplet pairs: the model's threshold (loss units)",
    "triplet_threshold_source": "Triplet pairs: threshold chosen on",
    "triplet_optimistic_precision": "Triplet pairs: precision at their own best threshold (optimistic)",
    "triplet_optimistic_recall": "Triplet pairs: recall at their own best threshold (optimistic)",
    "triplet_optimistic_accuracy": "Triplet pairs: accuracy at their own best threshold (optimistic)",
    "triplet_optimistic_threshold": "Triplet pairs: their own best threshold (optimistic)",
    "triplet_n_triplets": "Triplets scored",
}


def to_jsonable(obj):
    """``obj`` as plain JSON types: numpy scalars/arrays -> Python, tuples -> lists,
    dict keys -> ``str`` (``1e-3`` -> ``"0.001"``), non-finite floats -> ``None``."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return str(f)
        return f"{f:.4f}" if f == 0 or 1e-3 <= abs(f) < 1e5 else f"{f:.3e}"
    if isinstance(v, (list, tuple, np.ndarray)):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v)


def as_float(x):
    """``x`` as a float (a TAR@FAR key may be a string after JSON); None when it is not a number."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _reachability(metrics: dict, n_impostor: int | None) -> dict:
    """{far: reachable} from ``metrics["far_reachable"]``, else from the impostor count."""
    given = metrics.get("far_reachable")
    if isinstance(given, dict):
        return {as_float(k): bool(v) for k, v in given.items()}
    if not n_impostor or not isinstance(metrics.get("tar_at_far"), dict):
        return {}
    return {as_float(k): as_float(k) * n_impostor >= 1 - 1e-9
            for k in metrics["tar_at_far"] if as_float(k) is not None}


def metric_rows(metrics: dict, prefix: str = "", n_impostor: int | None = None) -> list[tuple[str, str]]:
    """(label, formatted value) rows for a metrics dict, headline numbers first.

    Knows the keys of :func:`tripletface.evaluation.verification.verification_metrics` and
    :func:`~tripletface.evaluation.verification.triplet_metrics`; other keys are shown as they are,
    nested dicts with a ``prefix.`` on their labels. A TAR@FAR whose target is below
    1 / impostor pairs (``far_reachable`` False, or judged from ``n_impostor`` when that key
    is absent) is flagged NOT REACHABLE.
    """
    rows: list[tuple[str, str]] = []
    done: set = set()
    if "accuracy_mean" in metrics:
        value = _fmt(metrics["accuracy_mean"])
        if "accuracy_std" in metrics:
            value += f" ± {_fmt(metrics['accuracy_std'])}"
        n_folds = metrics.get("n_folds", metrics.get("folds"))
        if n_folds is not None:
            value += f" ({n_folds} folds)"
        rows.append((prefix + "Accuracy (k-fold; threshold chosen on the other folds)", value))
        done |= {"accuracy_mean", "accuracy_std"}
    for key in ("auc", "eer", "eer_threshold"):
        if key in metrics:
            rows.append((prefix + _LABELS[key], _fmt(metrics[key])))
            done.add(key)
    if isinstance(metrics.get("tar_at_far"), dict):
        reach = _reachability(metrics, n_impostor)
        min_far = metrics.get("min_far", 1.0 / n_impostor if n_impostor else None)
        for far, point in metrics["tar_at_far"].items():
            tar, thr = (point[0], point[1]) if isinstance(point, (list, tuple)) else (point, None)
            value = _fmt(tar) + ("" if thr is None else f" (threshold {_fmt(thr)})")
            far_f = as_float(far)
            if reach.get(far_f, True) is False:
                value += (
                    " — NOT REACHABLE: target FAR is below 1 / impostor pairs"
                    + ("" if min_far is None else f" ({_fmt(min_far)})")
                    + "; this is the TAR at zero false accepts, an estimate"
                )
            rows.append((prefix + f"TAR @ FAR={far if far_f is None else format(far_f, 'g')}", value))
        done |= {"tar_at_far", "far_reachable"}
    for key, value in metrics.items():
        if key in done:
            continue
        if isinstance(value, dict):
            rows.extend(metric_rows(value, prefix=f"{prefix}{key}."))
        else:
            rows.append((prefix + _LABELS.get(key, key), _fmt(value)))
    return rows


def _error_rows(errors: dict):
    """(heading, note, rows) per kind of mistake, for the pages."""
    t = _fmt(errors["threshold"])
    yield ("Hardest false accepts", f"different people decided 'same' (distance < {t}), closest first",
           errors["false_accepts"])
    yield ("Hardest false rejects", f"the same person decided 'different' (distance >= {t}), farthest first",
           errors["false_rejects"])


# ----------------------------------------------------------------------------- pages


def _markdown(title: str, rows, extra_rows, errors: dict | None = None) -> str:
    def table(rs):
        cells = [(a.replace("|", "\\|"), b.replace("|", "\\|")) for a, b in rs]
        return "\n".join(["| | |", "|---|---|", *(f"| {a} | {b} |" for a, b in cells)])

    parts = [f"# {title}", "", METRIC_NOTE, "", "## Results", "", table(rows), ""]
    if extra_rows:
        parts += ["## Run", "", table(extra_rows), ""]
    parts += [
        "## ROC", "", f"![ROC curve]({ROC_FILE})", "",
        "## Genuine vs impostor distances", "", f"![Distance histogram]({HIST_FILE})", "",
    ]
    if errors:
        parts += [f"Threshold {_fmt(errors['threshold'])}: {errors['threshold_source']}.", ""]
        for heading, note, items in _error_rows(errors):
            parts += [f"## {heading}", "", f"{note.capitalize()}.", ""]
            if not items:
                parts += ["None.", ""]
                continue
            parts += ["| distance | image A | image B |", "|---|---|---|"]
            for r in items:
                cells = [f"![{Path(r['image_' + x]).name}]({r['thumb_' + x]}) {Path(r['image_' + x]).name}"
                         if r["thumb_" + x] else f"{Path(r['image_' + x]).name} (unreadable)" for x in "ab"]
                parts.append(f"| {r['distance']:.4f} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            parts.append("")
    parts += [f"All numbers: [{JSON_FILE}]({JSON_FILE})", ""]
    return "\n".join(parts)


def _html(title: str, rows, extra_rows, errors: dict | None = None) -> str:
    e = html.escape

    def table(rs):
        body = "\n".join(f"<tr><th>{e(a)}</th><td>{e(b)}</td></tr>" for a, b in rs)
        return f"<table>\n{body}\n</table>"

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
        "th{font-weight:normal;color:#444}img{max-width:100%}</style>",
        "</head>",
        "<body>",
        f"<h1>{e(title)}</h1>",
        f"<p>{e(METRIC_NOTE)}</p>",
        "<h2>Results</h2>",
        table(rows),
    ]
    if extra_rows:
        parts += ["<h2>Run</h2>", table(extra_rows)]
    parts += [
        "<h2>ROC</h2>",
        f'<img src="{ROC_FILE}" alt="ROC curve">',
        "<h2>Genuine vs impostor distances</h2>",
        f'<img src="{HIST_FILE}" alt="Distance histogram">',
    ]
    if errors:
        parts.append(f"<p>Threshold {e(_fmt(errors['threshold']))}: {e(errors['threshold_source'])}.</p>")
        for heading, note, items in _error_rows(errors):
            parts += [f"<h2>{e(heading)}</h2>", f"<p>{e(note.capitalize())}.</p>"]
            if not items:
                parts.append("<p>None.</p>")
                continue
            parts.append('<table class="pairs">')
            for r in items:
                cells = []
                for x in "ab":
                    name = e(Path(r["image_" + x]).name)
                    img = (f'<img src="{e(r["thumb_" + x])}" alt="{name}" width="{THUMB_SIZE}"><br>'
                           if r["thumb_" + x] else "(unreadable) ")
                    cells.append(f'<td title="{e(r["image_" + x])}">{img}{name}</td>')
                parts.append(f"<tr><th>{r['distance']:.4f}</th>{''.join(cells)}</tr>")
            parts.append("</table>")
    parts += [
        f'<p>All numbers: <a href="{JSON_FILE}">{JSON_FILE}</a></p>',
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def write_report(
    report_dir,
    metrics: dict,
    distances,
    issame,
    title: str,
    extra: dict | None = None,
    *,
    threshold: float | None = None,
    threshold_source: str | None = None,
    pair_files=None,
    n_errors: int = 5,
) -> dict:
    """Write roc.png, hist.png, report.md, report.html and metrics.json into ``report_dir``.

    ``metrics``: e.g. :func:`~tripletface.evaluation.verification.verification_metrics` output, optionally
    with nested dicts (say ``metrics["triplets"] = triplet_metrics(...)``); ``distances`` and
    ``issame``: the per-pair arrays it came from (NaN = unscored; shown in the counts, not in
    the histogram, and ranked worst in the ROC). ``extra``: provenance shown under "Run"
    (model, data, pairs file, command). The pages reference the PNGs by relative path.

    The histogram's threshold line is ``threshold``, else ``metrics["threshold"]`` (or
    ``"best_threshold_all_pairs"``), else the best-accuracy threshold on these pairs;
    ``threshold_source`` says where it came from.

    ``pair_files``: the ``(image_a, image_b)`` of each pair. With it the pages show the
    ``n_errors`` hardest false accepts and false rejects at that threshold (see
    :func:`hardest_errors`), each as two thumbnails (``errors/*.jpg``) with its distance.

    metrics.json holds ``{"title", "metric", "note", "metrics", "extra"}`` with
    ``metrics``/``extra`` passed through :func:`to_jsonable`, and ``"hardest_errors"`` with
    ``pair_files``.

    Returns ``{"roc", "hist", "markdown", "html", "json"}`` (plus ``"errors"``, the thumbnail
    folder, with ``pair_files``) -> :class:`~pathlib.Path`.
    """
    from tripletface.evaluation.hardest_errors import ERRORS_DIR, write_examples
    from tripletface.evaluation.plots import plot_hist, plot_roc
    from tripletface.evaluation.verification import best_threshold, score_with_failures

    if not isinstance(metrics, dict):
        raise ValueError(f"metrics must be a dict, received: {type(metrics).__name__}")
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"extra must be a dict or None, received: {type(extra).__name__}")
    title = str(title)
    filled, _ = score_with_failures(distances, issame)  # checks shapes and values
    d = np.asarray(distances, dtype=np.float64)
    s = np.asarray(issame).astype(bool)

    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "roc": out / ROC_FILE,
        "hist": out / HIST_FILE,
        "markdown": out / MD_FILE,
        "html": out / HTML_FILE,
        "json": out / JSON_FILE,
    }
    best_source = "the best-accuracy threshold on these pairs (optimistic: chosen on the pairs it scores)"
    if threshold is None:
        threshold = metrics.get("threshold", metrics.get("best_threshold_all_pairs"))
        threshold_source = best_source
    if as_float(threshold) is None or not math.isfinite(as_float(threshold)):
        threshold = best_threshold(filled, s)[0]
        threshold_source = best_source
    threshold_source = threshold_source or "given"
    n_impostor = int((~s).sum())
    plot_roc(paths["roc"], metrics, filled, s, title, _reachability(metrics, n_impostor))
    plot_hist(paths["hist"], metrics, d, s, title, float(threshold))

    rows = metric_rows(metrics, n_impostor=n_impostor)
    extra_rows = [(str(k), _fmt(v)) for k, v in (extra or {}).items()]
    errors = None
    if pair_files is not None:
        errors = write_examples(out, d, s, list(pair_files), float(threshold), threshold_source, n_errors)
        paths["errors"] = out / ERRORS_DIR
    paths["markdown"].write_text(_markdown(title, rows, extra_rows, errors), encoding="utf-8")
    paths["html"].write_text(_html(title, rows, extra_rows, errors), encoding="utf-8")
    payload = {
        "title": title,
        "metric": METRIC,
        "note": METRIC_NOTE,
        "metrics": to_jsonable(metrics),
        "extra": to_jsonable(extra or {}),
    }
    if errors is not None:
        payload["hardest_errors"] = to_jsonable(errors)
    paths["json"].write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return paths
