"""Verification report: files exist, PNGs are real images, HTML parses and shows both plots."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pytest
from PIL import Image

from tripletface.evaluation import verification as v
from tripletface.evaluation.report import to_jsonable, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    n = 400
    s = np.tile(np.repeat([True, False], 40), 5)
    d = np.where(s, rng.normal(0.8, 0.2, n), rng.normal(1.3, 0.15, n))
    d[[3, 50]] = np.nan  # one matched, one mismatched pair unscored
    m = v.verification_metrics(d, s, fold_ids=np.repeat(np.arange(5), 80), far_targets=(1e-3, 1e-2))
    m["triplets"] = v.triplet_metrics(rng.random(20), rng.random(20) + 0.5, margin=0.2)
    return m, d, s


def test_write_report_files(tmp_path, scored):
    m, d, s = scored
    backend = matplotlib.get_backend()
    paths = write_report(tmp_path / "rep", m, d, s, "LFW dev <test>", extra={"model": "m.keras", "pairs": "p.txt"})
    assert matplotlib.get_backend() == backend  # no global backend switch
    assert set(paths) == {"roc", "hist", "markdown", "html", "json"}
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0 and p.parent == tmp_path / "rep"

    for key in ("roc", "hist"):
        assert paths[key].read_bytes()[:8] == PNG_MAGIC
        with Image.open(paths[key]) as im:
            im.load()
            assert im.format == "PNG"
            assert 300 <= im.width <= 3000 and 200 <= im.height <= 3000

    page = paths["html"].read_text()
    parser = _Collect()
    parser.feed(page)
    parser.close()
    assert sorted(parser.images) == ["hist.png", "roc.png"]  # relative references
    assert all((paths["html"].parent / src).is_file() for src in parser.images)
    text = " ".join(parser.text)
    assert "LFW dev <test>" in text  # escaped in the source, intact once parsed
    assert "cosine" in text and "euclidean" in text and "identical decisions" in text
    assert f"{m['auc']:.4f}" in text and f"{m['eer']:.4f}" in text
    assert "NOT REACHABLE" in text  # FAR 1e-3 < 1/200 impostors
    assert "m.keras" in text

    md = paths["markdown"].read_text()
    assert "](roc.png)" in md and "](hist.png)" in md
    assert "identical decisions" in md and "| Pairs that could not be scored (counted wrong) | 2 |" in md
    assert "triplets.Triplet loss (mean hinge)" in md


def test_metrics_json_round_trips(tmp_path, scored):
    m, d, s = scored
    paths = write_report(tmp_path, m, d, s, "t")
    loaded = json.loads(paths["json"].read_text())
    assert loaded["metric"] == "euclidean" and loaded["title"] == "t"
    assert loaded["metrics"] == to_jsonable(m)
    assert to_jsonable(loaded) == loaded
    assert loaded["metrics"]["n_unscored"] == 2
    assert loaded["metrics"]["tar_at_far"]["0.01"] == pytest.approx(list(m["tar_at_far"][0.01]))
    assert loaded["metrics"]["far_reachable"] == {"0.001": False, "0.01": True}
    assert loaded["extra"] == {}


def test_to_jsonable():
    out = to_jsonable({1e-3: (np.float32(0.5), np.int64(3)), "a": np.array([1.0, np.inf]), "b": np.bool_(True)})
    assert out == {"0.001": [0.5, 3], "a": [1.0, None], "b": True}
    json.dumps(out, allow_nan=False)


def test_report_with_other_key_names_and_filled_distances(tmp_path, scored):
    """Keys as tripletface.evaluation.evaluate names them, distances already filled with +-inf, no
    far_reachable: reachability is judged from the impostor count, the line from the data."""
    m, d, s = scored
    filled, n = v.score_with_failures(d, s)
    roc = v.roc_metrics(filled, s)
    metrics = {"pairs": 400, "folds": 5, "accuracy_mean": m["accuracy_mean"], "accuracy_std": 0.01,
               "auc": roc["auc"], "eer": roc["eer"], "eer_threshold": roc["eer_threshold"],
               "tar_at_far": to_jsonable(roc["tar_at_far"]), "unscored_pairs": n,
               "best_threshold_all_pairs": m["threshold"]}
    paths = write_report(tmp_path, metrics, filled, s, "evaluate-style")
    md = paths["markdown"].read_text()
    assert "(5 folds)" in md and "| Pairs that could not be scored (counted wrong) | 2 |" in md
    row_1e3 = next(line for line in md.splitlines() if "TAR @ FAR=0.001" in line)
    row_1e2 = next(line for line in md.splitlines() if "TAR @ FAR=0.01 " in line)
    assert "NOT REACHABLE" in row_1e3 and "NOT REACHABLE" not in row_1e2
    assert f"| Best-accuracy threshold (all pairs) | {m['threshold']:.4f} |" in md
    with Image.open(paths["hist"]) as im:
        assert im.format == "PNG"


def test_report_with_one_kind_of_pair(tmp_path):
    """No ROC exists with one kind of pair; the report still writes a valid placeholder."""
    paths = write_report(tmp_path, {"n_pairs": 3}, [0.1, 0.2, np.nan], [True, True, True], "one kind")
    with Image.open(paths["roc"]) as im:
        assert im.format == "PNG"


def test_report_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="issame"):
        write_report(tmp_path, {}, [0.1, 0.2], [True], "x")
    with pytest.raises(ValueError, match="metrics"):
        write_report(tmp_path, [], [0.1], [True], "x")


def _figure_of(monkeypatch, draw):
    """Run ``draw`` and return the figure it drew, laid out as saved (``_save`` is stubbed)."""
    from tripletface.evaluation import plots

    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: (fig.canvas.draw(), saved.append(fig)))
    draw()
    return saved[0]


@pytest.mark.parametrize("plot", ["roc", "hist"])
def test_plots_keep_title_inside_and_legend_off_the_data(monkeypatch, tmp_path, scored, plot):
    """The title of a long model name is not cut off, and the legend never covers the plotted data."""
    from tripletface.evaluation import plots

    m, d, s = scored
    title = "tripletface evaluation: a_rather_long_model_name_from_a_checkpoint_folder_20240101.keras"
    filled, _ = v.score_with_failures(d, s)
    if plot == "roc":
        fig = _figure_of(monkeypatch, lambda: plots.plot_roc(tmp_path / "r.png", m, filled, s, title, {}))
    else:
        fig = _figure_of(monkeypatch, lambda: plots.plot_hist(tmp_path / "h.png", m, d, s, title, 1.0))
    renderer = fig.canvas.get_renderer()
    figbox = fig.bbox
    (ax,) = fig.axes
    title_box = ax.title.get_window_extent(renderer)
    assert figbox.x0 <= title_box.x0 and title_box.x1 <= figbox.x1 and title_box.y1 <= figbox.y1
    legend_box = ax.get_legend().get_window_extent(renderer)
    assert not legend_box.overlaps(ax.get_window_extent(renderer))  # outside the axes, under them
    assert figbox.y0 <= legend_box.y0


def test_plot_pngs_have_a_clear_border(tmp_path, scored):
    """Nothing drawn touches the edge of the PNG (a cut title or legend would)."""
    m, d, s = scored
    paths = write_report(tmp_path, m, d, s, "tripletface evaluation: " + "very_long_model_name_" * 4 + ".keras")
    for key in ("roc", "hist"):
        with Image.open(paths[key]) as im:
            a = np.asarray(im.convert("L"))
        border = np.concatenate([a[:2].ravel(), a[-2:].ravel(), a[:, :2].ravel(), a[:, -2:].ravel()])
        assert border.min() >= 250, key


def test_hardest_errors_are_the_hardest():
    d = np.array([0.2, 0.9, 0.5, 1.4, np.nan, 0.7, 1.1, 0.3, 1.6, 0.95])
    s = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1, 0], bool)
    from tripletface.evaluation.hardest_errors import hardest_errors

    e = hardest_errors(d, s, threshold=1.0, k=2)
    assert e["false_accepts"] == [0, 2]  # mismatched with d < 1: 0.2, 0.5, 0.9, 0.95 -> the two closest
    assert e["false_rejects"] == [8, 3]  # matched with d >= 1: 1.6, 1.4, 1.1 -> the two farthest
    assert hardest_errors(d, s, threshold=0.0, k=5) == {"false_accepts": [], "false_rejects": [8, 3, 6, 5, 7]}


def test_report_shows_hardest_false_accepts_and_rejects(tmp_path):
    """Each error is a pair of thumbnails with its distance, hardest first; thumbnails are files
    the page references."""
    rng = np.random.default_rng(1)
    n = 40
    s = np.repeat([True, False], n // 2)
    d = np.where(s, rng.uniform(0.3, 1.2, n), rng.uniform(0.8, 1.7, n))
    files = []
    for i in range(n):
        pair = []
        for side in "ab":
            p = tmp_path / "img" / f"p{i}{side}.png"
            p.parent.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (150, 120, 3), dtype=np.uint8)).save(p)
            pair.append(p)
        files.append(tuple(pair))
    files[0] = (tmp_path / "img" / "missing.jpg", files[0][1])
    t = 1.0
    paths = write_report(tmp_path / "rep", {}, d, s, "errors", threshold=t, threshold_source="the model's",
                         pair_files=files, n_errors=3)
    fa = [i for i in np.argsort(d) if not s[i] and d[i] < t][:3]
    fr = [i for i in np.argsort(-d) if s[i] and d[i] >= t][:3]
    assert len(fa) == 3 and len(fr) == 3
    saved = json.loads(paths["json"].read_text())["hardest_errors"]
    assert [r["pair"] for r in saved["false_accepts"]] == fa and [r["pair"] for r in saved["false_rejects"]] == fr
    assert saved["threshold"] == t and saved["threshold_source"] == "the model's"

    parser = _Collect()
    parser.feed(paths["html"].read_text())
    thumbs = [src for src in parser.images if src.startswith("errors/")]
    expected = [f"errors/{kind}_{r}_{x}.jpg" for kind in ("false_accepts", "false_rejects")
                for r in (1, 2, 3) for x in "ab"]
    assert thumbs == expected
    for src in thumbs:
        with Image.open(paths["html"].parent / src) as im:
            assert im.format == "JPEG" and max(im.size) <= 112
    text = " ".join(parser.text)
    for i in fa + fr:
        assert f"{d[i]:.4f}" in text and files[i][1].name in text
    md = paths["markdown"].read_text()
    assert "## Hardest false accepts" in md and "](errors/false_rejects_1_a.jpg)" in md


def test_report_unreadable_thumbnail_is_named_not_fatal(tmp_path):
    d = np.array([0.2, 1.5])
    s = np.array([False, True])
    paths = write_report(tmp_path, {}, d, s, "x", threshold=1.0,
                         pair_files=[(tmp_path / "gone_a.jpg", tmp_path / "gone_b.jpg")] * 2)
    html_text = paths["html"].read_text()
    assert "gone_a.jpg" in html_text and "(unreadable)" in html_text
    assert list((tmp_path / "errors").iterdir()) == []
