"""The report's figures: the ROC curve and the genuine/impostor distance histogram, as PNGs.

Plots are drawn on :class:`matplotlib.figure.Figure` objects with an explicit Agg canvas,
so nothing goes through ``pyplot``: the user's backend and pyplot's figure list are never
touched, and each figure is released when the function returns. matplotlib is imported when a
figure is drawn, not with this module.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tripletface.evaluation.metric import METRIC
from tripletface.evaluation.report import as_float
from tripletface.evaluation.verification import roc_points

__all__ = ["plot_roc", "plot_hist"]


def _new_figure(width: float = 6.4, height: float = 6.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # constrained layout fits the (wrapped) title and the legend below the axes inside the figure
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas for this figure only; pyplot and the global backend untouched
    return fig


def _title(ax, text: str) -> None:
    """A title wrapped to the axes' width: a long model name never runs off the figure."""
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(text, 60)) or text)


def _legend_below(ax) -> None:
    """The legend under the axes, outside them: it never covers a curve or a bar."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize="small", frameon=False)


def _save(fig, path: Path) -> None:
    fig.savefig(path, format="png")
    fig.clear()


def plot_roc(path: Path, metrics: dict, d: np.ndarray, s: np.ndarray, title: str, reach: dict) -> None:
    fig = _new_figure()
    ax = fig.add_subplot()
    n_diff = int((~s).sum())
    if s.all() or not s.any():
        ax.text(0.5, 0.5, "ROC undefined: pairs of only one kind", ha="center", va="center")
        ax.set_axis_off()
    else:
        fpr, tpr = roc_points(d, s)
        xmin = 10.0 ** math.floor(math.log10(0.5 / n_diff))
        auc = metrics.get("auc")
        ax.plot(np.clip(fpr, xmin, 1.0), tpr, lw=2, label="ROC" + ("" if auc is None else f" (AUC = {auc:.4f})"))
        chance = np.logspace(math.log10(xmin), 0, 100)
        ax.plot(chance, chance, ls=":", color="grey", label="chance")
        eer = metrics.get("eer")
        if eer is not None:
            ax.plot([max(eer, xmin)], [1.0 - eer], "o", color="C3", label=f"EER = {eer:.4f}")
        for far, point in (metrics.get("tar_at_far") or {}).items():
            far_f = as_float(far)
            tar = point[0] if isinstance(point, (list, tuple)) else point
            if far_f is None or tar is None:
                continue
            note = "" if reach.get(far_f, True) else " (not reachable)"
            ax.axvline(max(far_f, xmin), ls="--", lw=0.8, color="grey")
            ax.plot([max(far_f, xmin)], [tar], "x", ms=8, mew=2, label=f"TAR@FAR={far_f:g}: {tar:.4f}{note}")
        ax.set_xscale("log")
        ax.set_xlim(xmin, 1.0)
        ax.set_ylim(0.0, 1.01)
        ax.set_xlabel("False accept rate (FAR, log scale)")
        ax.set_ylabel("True accept rate (TAR)")
        ax.grid(True, which="both", alpha=0.3)
        _legend_below(ax)
    _title(ax, f"{title}: ROC")
    _save(fig, path)


def plot_hist(path: Path, metrics: dict, d: np.ndarray, s: np.ndarray, title: str, threshold: float) -> None:
    fig = _new_figure()
    ax = fig.add_subplot()
    finite = np.isfinite(d)
    genuine, impostor = d[finite & s], d[finite & ~s]
    values = d[finite]
    if values.size:
        lo, hi = float(values.min()), float(values.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 51)
        ax.hist(genuine, bins=bins, alpha=0.6, color="C0", label=f"genuine (matched, n={genuine.size})")
        ax.hist(impostor, bins=bins, alpha=0.6, color="C1", label=f"impostor (mismatched, n={impostor.size})")
    if math.isfinite(threshold):
        ax.axvline(threshold, color="k", lw=1.5, label=f"threshold = {threshold:.4f}")
    eer_t = metrics.get("eer_threshold")
    if eer_t is not None and math.isfinite(eer_t) and eer_t != threshold:
        ax.axvline(eer_t, color="C3", ls="--", lw=1.2, label=f"EER threshold = {eer_t:.4f}")
    unscored = int(d.size - finite.sum())
    ax.set_xlabel(f"{METRIC} distance on L2-normalised embeddings (smaller = more alike)")
    ax.set_ylabel("pairs")
    _title(ax, f"{title}: distances" + (f" ({unscored} unscored pairs not shown)" if unscored else ""))
    _legend_below(ax)
    _save(fig, path)
