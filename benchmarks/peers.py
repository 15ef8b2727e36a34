"""Tripletface against the peers users would pick instead (issue 14), side by side in one run.

Every contender runs on the same raw LFW photos (an evenly spaced ``--images`` sample of
lfw-dev, :func:`common.image_sample`), in its own processes, alternated A B C A B C ... for
``--rounds`` rounds. Two figures per contender:

* **whole process**: a fresh process does the whole job once -- Python start-up, imports,
  building the detector/model, reading the photos, the work -- timed from outside (wall
  seconds). For ``tripletface`` this is the CLI itself (``tripletface crop IN OUT``,
  ``tripletface embed IN --output X.npz``) on a folder of symlinks to the photos.
* **steady**: a warm worker process (started once per stage, warmed up by a full untimed
  pass) times one pass over the photos per round. For ``tripletface`` the steady pass is the
  library call the CLI makes (:func:`tripletface.faces.crop.crop_folder`,
  :meth:`tripletface.inference.embedder.Embedder.embed_files`); for the detector peers it is the
  detector call alone, on photos decoded (and half-scaled) beforehand -- detection only.

=================  =============================================  ===================================
stage              contenders                                     target (ours / peer)
=================  =============================================  ===================================
detect + align     ``tripletface crop``; ``mtcnn`` ``detect_faces(list)`` half-scaled, full scale,
                   one image at a time; facenet-pytorch ``MTCNN`` batches of 32
                                                                  crop steady >= 0.9x mtcnn half-scale
raw photo -> emb.  ``tripletface embed`` (bundled model);          embed steady >= 0.9x mtcnn
                   face_recognition (dlib HOG + ResNet), Pool(2)   half-scale; >= 5x face_recognition
                                                                  (whole and steady)
training step      ``tripletface train --preset lfw-cpu`` (its     >= 1.2x PyTorch channels_last
                   trainer and tf.data pipeline, steady steps);
                   PyTorch + pytorch-metric-learning, same net
                   (channels_last, default layout)
=================  =============================================  ===================================

The PyTorch net mirrors ``tripletface.model.build._small_cnn`` layer for layer (its parameter count
is checked against the Keras model's); it trains on one in-memory batch of the same shape
(``TripletMarginMiner`` semi-hard + ``TripletMarginLoss``, margin and learning rate from the
preset, Adam), so the tripletface figure, which includes its input pipeline, is the harder one.

Peers live in their own virtualenv, never the project's: ``--install`` makes it (default
``runs/peers-venv``) with torch (the local CPU wheel), pytorch-metric-learning, dlib-bin +
face_recognition, and facenet-pytorch when a release installs against that torch without
pulling another. The ``mtcnn`` package is the project's own dependency and runs in the
project's Python. A peer that is not installed is SKIPPED with its reason in the table.

    python benchmarks/peers.py --install                   # make the peers' venv, then run everything
    python benchmarks/peers.py --only crop,embed --images 300 --rounds 3 --json peers.json
    python benchmarks/peers.py --only embed --images 1000  # the 5x face_recognition target is for 1,000

Issue 14's own figures (another, faster machine) are shown beside ours for reference: judge
by the ratios, measured side by side here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HERE = Path(__file__).resolve().parent
STAGES = ("crop", "embed", "train")
STAGE_NAMES = {"crop": "detect + align", "embed": "raw photo -> embedding",
               "train": "training step, small_cnn at 64, PxK 32x4, semi-hard"}
DEFAULT_VENV = common.REPO_ROOT / "runs" / "peers-venv"
TORCH_PIN = "torch==2.13.0"  # a local CPU wheel on this machine; a plain `pip install torch` is a multi-GB CUDA build
INSTALL_NOTES = "peers-install.json"  # in the venv: why a peer was not installed
ISSUE_LABEL = "issue 14, other machine"
_PROTO = "@@peers "  # prefix of the protocol lines a child writes


@dataclass(frozen=True)
class Contender:
    key: str
    stage: str
    label: str
    ours: bool
    venv: str  # "project" (this Python) or "peers" (the peers' venv)
    issue_whole: object = None  # issue 14's figures (img/s; a (lo, hi) range; None = not measured)
    issue_steady: object = None
    whole: bool = True  # has a whole-process figure


CONTENDERS = (
    Contender("crop", "crop", "tripletface crop", True, "project", 50.9, 142.9),
    Contender("mtcnn_half", "crop", "mtcnn detect_faces(list), half-scaled photos (detection only)", False,
              "project", 63.0, 212.0),
    Contender("mtcnn_full", "crop", "mtcnn detect_faces(list), full scale", False, "project", 42.8, 83.5),
    Contender("facenet", "crop", "facenet-pytorch MTCNN, batches of 32", False, "peers", 48.0, 84.9),
    Contender("mtcnn_single", "crop", "mtcnn, one image at a time", False, "project", 15.7, 19.2),
    Contender("embed", "embed", "tripletface embed (bundled model)", True, "project", 49.9, 120.1),
    Contender("face_recognition", "embed", "face_recognition (dlib HOG + ResNet), two worker processes", False,
              "peers", 24.9, 26.6),
    Contender("train", "train", "tripletface train --preset lfw-cpu (real pipeline)", True, "project", None,
              (224, 227), whole=False),
    Contender("torch_cl", "train", "PyTorch 2 + pytorch-metric-learning, same net, channels_last", False, "peers",
              None, (221, 229), whole=False),
    Contender("torch", "train", "the same in PyTorch's default memory layout", False, "peers", None, (119, 124),
              whole=False),
)
BY_KEY = {c.key: c for c in CONTENDERS}


@dataclass(frozen=True)
class Target:
    stage: str  # the stage whose table section shows it
    ours: str
    peer: str
    ratio: float  # ours / peer must be >= this
    measures: tuple  # ("steady",) or ("whole", "steady"): every one must meet it


TARGETS = (
    Target("crop", "crop", "mtcnn_half", 0.9, ("steady",)),
    Target("embed", "embed", "mtcnn_half", 0.9, ("steady",)),
    Target("embed", "embed", "face_recognition", 5.0, ("whole", "steady")),
    Target("train", "train", "torch_cl", 1.2, ("steady",)),
)


# =========================================================================== table logic

def _issue_cell(c: Contender) -> str:
    def one(v):
        if v is None:
            return "—"
        if isinstance(v, (tuple, list)):
            return f"{v[0]:g}–{v[1]:g}"
        return f"{v:g}"

    return f"{one(c.issue_whole)} / {one(c.issue_steady)}"


def _figure(m: dict | None, measure: str) -> float | None:
    """The median img/s over rounds of ``measure`` ("whole" | "steady"), None when not measured."""
    if not m or m.get("skip") or m.get("error"):
        return None
    values = [v for v in m.get(measure) or [] if v is not None]
    return common.median(values) if values else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def build_rows(results: dict, stages=STAGES) -> list[dict]:
    """One row per contender of each stage in ``stages`` that ``results`` has (``results[key]``:
    ``{"whole": [img/s per round], "steady": [...], "found": n, "images": n}``, or ``{"skip": reason}``
    / ``{"error": reason}``), plus, in the embed stage, the mtcnn half-scale reference of its target.

    Each peer row carries ours/peer (whole and steady) and, where issue 14 sets one, the target
    and ``met`` / ``MISSED`` (``n/a`` when a side was not measured).
    """
    rows = []
    for stage in stages:
        ours = next(c for c in CONTENDERS if c.stage == stage and c.ours)
        keys = [c.key for c in CONTENDERS if c.stage == stage and c.key in results]
        refs = [t.peer for t in TARGETS if t.stage == stage and BY_KEY[t.peer].stage != stage]
        for key in keys + refs:
            c = BY_KEY[key]
            m = results.get(key)
            whole, steady = _figure(m, "whole"), _figure(m, "steady")
            label = c.label if c.stage == stage else f"{c.label} (the detect + align row)"
            row = {"stage": stage, "key": key, "contender": label, "ours": c.ours and c.stage == stage,
                   "whole_img_s": whole, "steady_img_s": steady, "issue": _issue_cell(c),
                   "skip": (m or {}).get("skip"), "error": (m or {}).get("error"),
                   "faces": _faces(m), "ratio_whole": None, "ratio_steady": None, "target": None,
                   "status": "-", "note": (m or {}).get("note", "")}
            if m is None:
                row["skip"] = "not measured in this run (needs --only " + c.stage + ")"
            if not row["ours"]:
                o = results.get(ours.key)
                row["ratio_whole"] = _ratio(_figure(o, "whole"), whole)
                row["ratio_steady"] = _ratio(_figure(o, "steady"), steady)
                t = next((t for t in TARGETS if t.stage == stage and t.peer == key), None)
                if t is not None:
                    row["target"] = f">= {t.ratio:g}x ({' and '.join(t.measures)})"
                    got = [row[f"ratio_{x}"] for x in t.measures]
                    row["status"] = ("n/a" if any(g is None for g in got)
                                     else "met" if all(g >= t.ratio for g in got) else "MISSED")
            rows.append(row)
    return rows


def _faces(m: dict | None) -> str:
    if not m or m.get("found") is None or not m.get("images"):
        return ""
    return f"{m['found']}/{m['images']}"


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    last = None
    for r in rows:
        stage = STAGE_NAMES[r["stage"]] if r["stage"] != last else ""
        last = r["stage"]
        if r["skip"] or r["error"]:
            what = "SKIPPED" if r["skip"] else "FAILED"
            out.append([stage, r["contender"], what, what, r["issue"], "", r["target"] or "",
                        r["status"] if r["target"] else "", r["skip"] or r["error"]])
            continue
        ratio = ""
        if not r["ours"]:
            ratio = f"{common.fmt(r['ratio_whole'], '.2f')} / {common.fmt(r['ratio_steady'], '.2f')}"
        note = "; ".join(x for x in (f"faces {r['faces']}" if r["faces"] else "", r["note"]) if x)
        out.append([stage, r["contender"], common.fmt(r["whole_img_s"], ".1f", "—"),
                    common.fmt(r["steady_img_s"], ".1f", "—"), r["issue"], ratio, r["target"] or "", r["status"],
                    note])
    return out


def print_rows(rows: list[dict], file=None) -> None:
    common.print_table(["stage", "contender", "whole process img/s", "steady img/s",
                        f"{ISSUE_LABEL}: whole / steady", "ours/peer: whole / steady", "target", "status", "note"],
                       table_rows(rows), file=file)


# =========================================================================== children
# Each contender's work as setup(files, params, warm) -> state and run(state) -> {"images", "seconds", "found"}.
# They run in child processes (`peers.py --child KEY`), in the project's Python or the peers' venv:
# these functions import nothing at module level.

def _decode(files, scale: float = 1.0):
    import numpy as np
    from PIL import Image

    out = []
    for f in files:
        img = Image.open(f).convert("RGB")
        if scale != 1.0:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
        out.append(np.asarray(img))
    return out


def _chunks(items, n):
    return [items[i:i + n] for i in range(0, len(items), n)]


def _mtcnn_setup(files, params, warm):
    try:
        from mtcnn import MTCNN
    except ImportError as e:
        raise _Skip(f"the mtcnn package is not installed ({e})")
    scale = 0.5 if params["mode"] == "half" else 1.0
    state = {"det": MTCNN(), "images": _decode(files, scale), "mode": params["mode"], "batch": params["batch"]}
    if warm:
        state["warm"] = _mtcnn_run(state, warmup=True)
    return state


def _mtcnn_run(state, warmup=False):
    det, images = state["det"], state["images"]
    if warmup and state["mode"] == "single":
        images = images[:8]
    t0 = time.perf_counter()
    found = 0
    if state["mode"] == "single":
        for img in images:
            found += bool(det.detect_faces(img))
    else:
        for chunk in _chunks(images, state["batch"]):
            found += sum(bool(faces) for faces in det.detect_faces(chunk))
    return {"images": len(images), "seconds": time.perf_counter() - t0, "found": found}


def _facenet_setup(files, params, warm):
    try:
        from facenet_pytorch import MTCNN
    except ImportError as e:
        raise _Skip(_install_note("facenet_pytorch") or f"facenet-pytorch is not installed ({e})")
    except Exception as e:  # noqa: BLE001 - e.g. a torchvision built for another torch
        raise _Skip(f"facenet-pytorch does not load here: {_one_line(e)}")
    state = {"det": MTCNN(keep_all=True, device="cpu"), "images": _decode(files), "batch": params["batch"]}
    if warm:
        _facenet_run(state)
    return state


def _facenet_run(state):
    import numpy as np

    t0 = time.perf_counter()
    found = 0
    for chunk in _chunks(state["images"], state["batch"]):
        boxes, _ = state["det"].detect(np.stack(chunk))
        found += sum(b is not None and len(b) > 0 for b in boxes)
    return {"images": len(state["images"]), "seconds": time.perf_counter() - t0, "found": found}


def _fr_init(warm_path):
    import face_recognition

    if warm_path:
        img = face_recognition.load_image_file(warm_path)
        face_recognition.face_encodings(img, face_recognition.face_locations(img))


def _fr_one(path):
    import face_recognition

    img = face_recognition.load_image_file(path)
    return len(face_recognition.face_encodings(img, face_recognition.face_locations(img))) > 0


def _fr_setup(files, params, warm):
    import multiprocessing

    try:
        import face_recognition  # noqa: F401
    except ImportError as e:
        raise _Skip(_install_note("face_recognition") or f"face_recognition is not installed ({e})")
    except SystemExit:  # face_recognition exits when face_recognition_models is missing
        raise _Skip(_install_note("face_recognition") or "face_recognition_models is not installed")
    pool = multiprocessing.get_context("fork").Pool(params["workers"], initializer=_fr_init,
                                                    initargs=(str(files[0]) if warm else None,))
    return {"pool": pool, "files": [str(f) for f in files]}


def _fr_run(state):
    t0 = time.perf_counter()
    found = sum(state["pool"].map(_fr_one, state["files"], chunksize=4))
    return {"images": len(state["files"]), "seconds": time.perf_counter() - t0, "found": found}


def _torch_net(torch, width: float, embedding_dim: int, dropout: float):
    """``tripletface.model.build._small_cnn`` + GAP + (Dropout) + Dense + L2 normalisation, in PyTorch.

    Keras' ``padding="same"`` with stride 2 on even sides pads (0, 1) where ``padding=1`` pads (1, 1):
    the same output size and parameter count; BatchNormalization's epsilon 1e-3 and momentum 0.99 (0.01
    in PyTorch's convention) as in Keras."""
    nn = torch.nn
    layers = []
    cin = 3
    for i, ch in enumerate((32, 64, 128, 256)):
        ch = max(8, int(ch * width))
        for j in range(2):
            stride = 2 if (j == 0 and i > 0) else 1
            layers += [nn.Conv2d(cin, ch, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(ch, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)]
            cin = ch

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
            self.embedding = nn.Linear(cin, embedding_dim)

        def forward(self, x):  # x: pixels 0..255, as the Keras model's FacePreprocess("tf") takes them
            x = self.features(x / 127.5 - 1.0)
            x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
            return nn.functional.normalize(self.embedding(self.dropout(x)), dim=1)

    return Net()


def _torch_setup(files, params, warm):
    try:
        import torch
        from pytorch_metric_learning import distances, losses, miners
    except ImportError as e:
        raise _Skip(_install_note("torch") or f"torch / pytorch-metric-learning is not installed ({e})")
    torch.manual_seed(0)
    net = _torch_net(torch, params["width"], params["embedding_dim"], params["dropout"])
    n_params = sum(p.numel() for p in net.parameters())
    n_buffers = sum(b.numel() for name, b in net.named_buffers() if not name.endswith("num_batches_tracked"))
    fmt = torch.channels_last if params["channels_last"] else torch.contiguous_format
    net = net.to(memory_format=fmt).train()
    p, k, (h, w) = params["p"], params["k"], params["image_size"]
    gen = torch.Generator().manual_seed(0)
    x = (torch.randint(0, 256, (p * k, 3, h, w), generator=gen).float()).contiguous(memory_format=fmt)
    y = torch.arange(p).repeat_interleave(k)
    # tripletface's loss uses squared L2 distance between unit embeddings (loss.distance squared_l2)
    dist = distances.LpDistance(normalize_embeddings=True, p=2, power=2)
    state = {"torch": torch, "net": net, "x": x, "y": y, "steps": params["steps"],
             "opt": torch.optim.Adam(net.parameters(), lr=params["learning_rate"]),
             "miner": miners.TripletMarginMiner(margin=params["margin"], type_of_triplets="semihard", distance=dist),
             "loss": losses.TripletMarginLoss(margin=params["margin"], distance=dist),
             "info": {"params": n_params, "params_and_bn_statistics": n_params + n_buffers,
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "memory_format": "channels_last" if params["channels_last"] else "contiguous"}}
    if warm:
        _torch_steps(state, 3)
    return state


def _torch_steps(state, steps):
    net, x, y, opt = state["net"], state["x"], state["y"], state["opt"]
    loss = None
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        emb = net(x)
        loss = state["loss"](emb, y, state["miner"](emb, y))
        loss.backward()
        opt.step()
    return float(loss)


def _torch_run(state):
    t0 = time.perf_counter()
    _torch_steps(state, state["steps"])
    return {"images": state["steps"] * int(state["x"].shape[0]), "seconds": time.perf_counter() - t0}


def _link_folder(files, root: Path) -> Path:
    from bench_crop import link_dataset

    link_dataset(files, root)
    return root


def _crop_setup(files, params, warm):
    common.quiet_tensorflow()
    from tripletface.cli.startup import import_tensorflow_quietly
    from tripletface.config import load_config

    import_tensorflow_quietly()
    tmp = Path(tempfile.mkdtemp(prefix="peers_crop_"))
    state = {"cfg": load_config().crop, "src": _link_folder(files, tmp / "in"), "tmp": tmp, "n": 0}
    if warm:
        _crop_run(state)
    return state


def _crop_run(state):
    from tripletface.faces.crop import crop_folder

    state["n"] += 1
    out = state["tmp"] / f"out{state['n']}"
    t0 = time.perf_counter()
    summary = crop_folder(state["src"], out, state["cfg"], progress=False)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return {"images": summary.processed, "seconds": seconds, "found": summary.counts.get("ok", 0),
            "crop_dataset_seconds": summary.seconds}


def _embed_setup(files, params, warm):
    common.quiet_tensorflow()
    from tripletface.cli.startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    from tripletface.inference.embedder import Embedder

    state = {"emb": Embedder.load(None, batch_size=params["batch"]), "files": [str(f) for f in files]}
    if warm:
        _embed_run(state)
    return state


def _embed_run(state):
    t0 = time.perf_counter()
    _, failures = state["emb"].embed_files(state["files"], aligned=False)
    return {"images": len(state["files"]), "seconds": time.perf_counter() - t0,
            "found": len(state["files"]) - len(failures)}


def _train_setup(files, params, warm):
    """The lfw-cpu preset's trainer, built as ``tripletface train`` and bench_train.measure build it,
    fed by its real tf.data pipeline on aligned crops (and, for reference, by one in-memory batch)."""
    common.quiet_tensorflow()
    from tripletface.cli.startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras
    import numpy as np
    import tensorflow as tf

    import bench_train
    from tripletface.data.samplers import build_train_dataset
    from tripletface.config import load_config
    from tripletface.training.trainer import build_embedder, build_trainer

    cfg = load_config(preset="lfw-cpu")
    crops = Path(params["crops"]) if params.get("crops") else common.default_crops()
    index = bench_train.load_index(crops, params["train_images"])
    (h, w), p, k = tuple(cfg.model.image_size), cfg.data.p, cfg.data.k
    keras.utils.set_random_seed(cfg.train.seed)
    embedder = build_embedder(cfg, weights=None)
    trainer, _ = build_trainer(cfg, embedder)  # as tripletface.training.loop.train builds and compiles it
    rng = np.random.default_rng(0)
    bare = tf.data.Dataset.from_tensors((tf.constant(rng.integers(0, 256, (p * k, h, w, 3)).astype(np.float32)),
                                         tf.constant(np.repeat(np.arange(p, dtype=np.int32), k)))).repeat()
    real = build_train_dataset(cfg, index)
    state = {"trainer": trainer, "real": real, "bare": bare, "steps": params["steps"], "batch": p * k,
             "block": bench_train._block,
             "info": {"params": int(sum(np.prod(v.shape) for v in embedder.trainable_weights)),
                      "params_and_bn_statistics": int(embedder.count_params()), "crops": str(crops),
                      "images_in_data": len(index), "jit_compile": bool(cfg.train.jit_compile),
                      "fused_batch_norm": bool(cfg.train.fused_batch_norm),
                      "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(TensorFlow's default)")}}
    if warm:
        bench_train._block(trainer, bare, 2)
        bench_train._block(trainer, real, max(2, params["steps"]))  # fills the decoded-image cache
    return state


def _train_run(state):
    secs, steps, _, _ = state["block"](state["trainer"], state["real"], state["steps"])
    bare_secs, _, _, _ = state["block"](state["trainer"], state["bare"], state["steps"])
    return {"images": steps * state["batch"], "seconds": secs, "bare_img_s": steps * state["batch"] / bare_secs}


CHILDREN = {
    "mtcnn_half": (_mtcnn_setup, _mtcnn_run), "mtcnn_full": (_mtcnn_setup, _mtcnn_run),
    "mtcnn_single": (_mtcnn_setup, _mtcnn_run), "facenet": (_facenet_setup, _facenet_run),
    "face_recognition": (_fr_setup, _fr_run), "torch_cl": (_torch_setup, _torch_run),
    "torch": (_torch_setup, _torch_run), "crop": (_crop_setup, _crop_run), "embed": (_embed_setup, _embed_run),
    "train": (_train_setup, _train_run),
}


def _one_line(e: BaseException) -> str:
    return ((str(e).strip().splitlines() or [type(e).__name__])[-1])[:200]


class _Skip(Exception):
    """The peer is not installed (or cannot run here): its row says why."""


def _install_note(name: str) -> str | None:
    """Why ``--install`` left ``name`` out, from the venv's notes (None when it did not)."""
    notes = Path(sys.prefix) / INSTALL_NOTES
    try:
        return json.loads(notes.read_text()).get(name)
    except (OSError, ValueError):
        return None


def child_main(key: str, files_list: Path, params: dict, once: bool) -> int:
    """A contender's process: with ``once`` do the whole job and report; else warm up, say ready, and
    time one pass per ``run`` line read on stdin until ``quit``. Protocol lines go to the real stdout;
    anything the libraries print goes to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def say(obj):
        proto.write(_PROTO + json.dumps(obj) + "\n")
        proto.flush()

    setup, run = CHILDREN[key]
    files = [Path(line) for line in files_list.read_text().splitlines() if line]
    try:
        state = setup(files, params, warm=not once)
    except _Skip as e:
        say({"skip": str(e)})
        return 0
    if once:
        say(run(state))
        return 0
    say({"ready": True, "info": state.get("info", {}), "warm": state.get("warm")})
    for line in sys.stdin:
        if line.strip() == "run":
            say(run(state))
        else:
            break
    if "pool" in state:
        state["pool"].close()
    if "tmp" in state:
        shutil.rmtree(state["tmp"], ignore_errors=True)
    return 0


# =========================================================================== the parent

def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def install(venv: Path, log: Path) -> dict:
    """Make ``venv`` with the peers (nothing in the project's venv); returns {peer: why not installed}."""
    notes = {}
    py = venv_python(venv)
    if not py.exists():
        base = getattr(sys, "_base_executable", None) or sys.executable
        common.run_logged([base, "-m", "venv", str(venv)], log, echo=True)
    pip = [str(py), "-m", "pip", "install", "--quiet"]

    def step(name, *args) -> bool:
        try:
            common.run_logged(pip + list(args), log, echo=True)
            return True
        except SystemExit as e:
            notes[name] = f"pip install failed (see {log}): {e}".replace("\n", " ")[:300]
            return False

    step("torch", TORCH_PIN, "pytorch-metric-learning")
    # face_recognition pins `dlib`, which compiles for many minutes; dlib-bin is the same library prebuilt.
    # face_recognition_models imports pkg_resources, which setuptools >= 80 no longer ships.
    if step("face_recognition", "dlib-bin", "face_recognition_models", "setuptools<80", "click", "numpy", "pillow"):
        step("face_recognition", "--no-deps", "face_recognition")
    # facenet-pytorch's newest releases pin an old torch: only a release that installs against ours
    torch_v = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"], capture_output=True,
                             text=True).stdout.strip()
    if torch_v:
        pin = venv / "torch-pin.txt"
        pin.write_text(f"torch=={torch_v}\n")
        if not step("facenet_pytorch", "-c", str(pin), "facenet-pytorch"):
            notes["facenet_pytorch"] = (f"no facenet-pytorch release installs against torch {torch_v} without "
                                        f"another torch (see {log})")
        else:  # it installs (an older release, unpinned): but torchvision from PyPI may not load against ours
            check = subprocess.run([str(py), "-c", "from facenet_pytorch import MTCNN"], capture_output=True,
                                   text=True)
            if check.returncode != 0:
                why = (check.stderr.strip().splitlines() or ["import failed"])[-1][:200]
                notes["facenet_pytorch"] = (f"newest release pins torch<2.3; the older one that fits torch {torch_v} "
                                            f"needs PyPI's torchvision, which does not load against it ({why})")
                subprocess.run(pip[:-2] + ["uninstall", "--yes", "--quiet", "facenet-pytorch", "torchvision"],
                               capture_output=True)
    else:
        notes["facenet_pytorch"] = "torch is not installed in the peers' venv"
    (venv / INSTALL_NOTES).write_text(json.dumps(notes, indent=2) + "\n")
    return notes


class Worker:
    """A warm contender process (``--child KEY``) answering ``run`` with one timed pass."""

    def __init__(self, python, key, files_list, params, log: Path):
        self.key = key
        self.log = log
        self.proc = subprocess.Popen([str(python), __file__, "--child", key, "--files", str(files_list),
                                      "--params", json.dumps(params)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(log, "a"), text=True, env=_child_env(),
                                     cwd=common.REPO_ROOT)
        self.skip = self.error = None
        self.info = {}

    def read(self) -> dict | None:
        for line in self.proc.stdout:
            if line.startswith(_PROTO):
                return json.loads(line[len(_PROTO):])
        self.proc.wait()
        self.error = f"exited {self.proc.returncode}: {_last_line(self.log)}"
        return None

    def ready(self) -> bool:
        msg = self.read()
        if msg and "skip" in msg:
            self.skip = msg["skip"]
        elif msg:
            self.info = msg.get("info", {})
        return bool(msg) and not self.skip

    def run(self) -> dict | None:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(common.REPO_ROOT)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return (lines[-1] if lines else "no output")[:240] + f" (log {log})"


def _tripletface_cli() -> list[str]:
    exe = Path(sys.executable).parent / "tripletface"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tripletface"]


def whole_process(c: Contender, python, files_list: Path, src: Path, params: dict, tmp: Path, log: Path) -> dict:
    """One fresh process doing the whole job, wall seconds from outside; {"seconds"} or {"skip"} / {"error"}."""
    out = tmp / f"whole_{c.key}"
    shutil.rmtree(out, ignore_errors=True)
    if c.key == "crop":
        cmd = _tripletface_cli() + ["crop", str(src), str(out), "--no-progress"]
    elif c.key == "embed":
        out.mkdir()
        cmd = _tripletface_cli() + ["embed", str(src), "--output", str(out / "e.npz"), "--no-progress"]
    else:
        cmd = [str(python), __file__, "--child", c.key, "--once", "--files", str(files_list),
               "--params", json.dumps(params)]
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env=_child_env(),
                              cwd=common.REPO_ROOT)
        seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        return {"error": f"exited {proc.returncode}: {_last_line(log)}"}
    msg = next((json.loads(ln[len(_PROTO):]) for ln in proc.stdout.splitlines() if ln.startswith(_PROTO)), {})
    if "skip" in msg:
        return {"skip": msg["skip"]}
    return {"seconds": seconds}


def child_params(key: str, args) -> dict:
    if key.startswith("mtcnn_"):
        return {"mode": key.split("_", 1)[1], "batch": 32}
    if key == "facenet":
        return {"batch": 32}
    if key == "face_recognition":
        return {"workers": 2}
    if key == "embed":
        return {"batch": 64}
    if key in ("torch", "torch_cl", "train"):
        from tripletface.config import load_config

        cfg = load_config(preset="lfw-cpu")
        return {"width": cfg.model.width, "embedding_dim": cfg.model.embedding_dim, "dropout": cfg.model.dropout,
                "image_size": list(cfg.model.image_size), "p": cfg.data.p, "k": cfg.data.k,
                "margin": cfg.loss.margin, "learning_rate": cfg.train.learning_rate, "steps": args.steps,
                "channels_last": key == "torch_cl", "train_images": args.train_images,
                "crops": str(args.crops) if args.crops else None}
    return {}


def run_stage(stage: str, keys: list[str], files: list[Path], args, tmp: Path, logs: Path, log=print) -> dict:
    """Measure ``keys`` (contenders of ``stage``) alternated over ``args.rounds`` rounds."""
    results = {}
    files_list = tmp / "files.txt"
    files_list.write_text("".join(f"{f}\n" for f in files))
    src = tmp / "photos"
    if not src.exists():
        _link_folder(files, src)
    venv_py = venv_python(args.venv)
    contenders = [BY_KEY[k] for k in keys]
    workers, pythons = {}, {}
    for c in contenders:
        if c.venv == "peers" and not venv_py.exists():
            results[c.key] = {"skip": f"no peers' venv at {args.venv} (run with --install)"}
            continue
        pythons[c.key] = venv_py if c.venv == "peers" else Path(sys.executable)
        results[c.key] = {"whole": [], "steady": [], "rounds": []}
    # start every warm worker (untimed warm-up), then alternate
    for c in contenders:
        if c.key in pythons:
            workers[c.key] = Worker(pythons[c.key], c.key, files_list, child_params(c.key, args),
                                    logs / f"{c.key}.log")
    try:
        for key, w in workers.items():
            if not w.ready():
                results[key] = {"skip": w.skip} if w.skip else {"error": w.error}
            elif w.info:
                results[key]["info"] = w.info
        live = [c for c in contenders if "whole" in results[c.key]]
        for r in range(args.rounds):
            for c in live:
                if c.whole and "error" not in results[c.key] and "skip" not in results[c.key]:
                    res = whole_process(c, pythons[c.key], files_list, src, child_params(c.key, args), tmp,
                                        logs / f"{c.key}.whole.log")
                    if "seconds" in res:
                        results[c.key]["whole"].append(len(files) / res["seconds"])
                        log(f"  round {r + 1} {c.key:>16s} whole process {res['seconds']:6.1f} s  "
                            f"{len(files) / res['seconds']:7.1f} img/s  (load {common.load_average()})")
                    else:
                        results[c.key] = res
            for c in live:
                if "error" in results[c.key] or "skip" in results[c.key]:
                    continue
                res = workers[c.key].run()
                if res is None:
                    results[c.key] = {"error": workers[c.key].error}
                    continue
                ips = res["images"] / res["seconds"]
                results[c.key]["steady"].append(ips)
                results[c.key]["rounds"].append(res)
                results[c.key].update(images=res["images"], found=res.get("found"))
                log(f"  round {r + 1} {c.key:>16s} steady        {res['seconds']:6.1f} s  {ips:7.1f} img/s"
                    + (f"  faces {res['found']}/{res['images']}" if res.get("found") is not None else "")
                    + (f"  (bare step {res['bare_img_s']:.1f} img/s)" if "bare_img_s" in res else ""))
    finally:
        for w in workers.values():
            w.close()
    _notes(stage, results)
    return results


def _notes(stage: str, results: dict) -> None:
    if stage == "train":
        ours = results.get("train", {})
        bare = [r["bare_img_s"] for r in ours.get("rounds", []) if "bare_img_s" in r]
        keras_n = ours.get("info", {}).get("params_and_bn_statistics")
        if bare:
            ours["note"] = f"same trainer on one in-memory batch: {common.median(bare):.1f} img/s"
        for key in ("torch_cl", "torch"):
            info = results.get(key, {}).get("info", {})
            if info and keras_n is not None:
                keras_t = ours["info"]["params"]
                same = info["params_and_bn_statistics"] == keras_n and info["params"] == keras_t
                results[key]["params_match"] = same
                results[key]["note"] = (f"{info['params']} trainable parameters, {info['params_and_bn_statistics']} with "
                                        f"BN statistics ({'=' if same else '!='} Keras {keras_t}, {keras_n})")


def parse_list(text: str, allowed, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in items if s not in allowed]
    if unknown:
        raise SystemExit(f"error: --{what}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return items


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(STAGES), help="stages: " + ",".join(STAGES) + " (default: all)")
    parser.add_argument("--contenders", default=None,
                        help="only these contenders (default: all of the stages): " + ",".join(BY_KEY))
    parser.add_argument("--images", type=int, default=300, help="raw LFW photos per pass (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, contenders alternated (default 3)")
    parser.add_argument("--steps", type=int, default=8, help="training steps timed per round (default 8)")
    parser.add_argument("--train-images", type=int, default=2000,
                        help="crops the tripletface training pipeline samples from (default 2000)")
    parser.add_argument("--crops", type=Path, default=None, help="aligned crops for training (default: see "
                        "bench_train.py)")
    parser.add_argument("--data", type=Path, default=common.data_root() / "lfw-dev", help="raw LFW photos")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the peers' virtualenv (default: "
                        "%(default)s)")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "tripletface_peers_logs",
                        help="each contender's output goes here (default: %(default)s; emptied first)")
    parser.add_argument("--install", action="store_true", help="create/update the peers' venv first")
    parser.add_argument("--install-only", action="store_true", help="create/update the peers' venv and stop")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--files", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, args.files, json.loads(args.params), args.once)

    stages = parse_list(args.only, STAGES, "only")
    chosen = parse_list(args.contenders, tuple(BY_KEY), "contenders") if args.contenders else list(BY_KEY)
    for name, value in (("images", args.images), ("rounds", args.rounds), ("steps", args.steps)):
        if value < 1:
            raise SystemExit(f"error: --{name} must be >= 1, received: {value}")
    files = common.image_sample(args.data, args.images) if ({"crop", "embed"} & set(stages)) else []
    if {"crop", "embed"} & set(stages) and not files:
        raise SystemExit(f"error: {args.data}: no LFW photos found (set TRIPLETFACE_DATA or --data)")
    args.venv = args.venv.resolve()
    if args.install or args.install_only:
        install_log = args.venv.parent / "peers-install.log"
        args.venv.parent.mkdir(parents=True, exist_ok=True)
        notes = install(args.venv, install_log)
        for name, why in notes.items():
            print(f"peers: {name} not installed: {why}", file=sys.stderr)
        if args.install_only:
            print(f"peers' venv: {args.venv} (log {install_log})")
            return 0
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    results = {}
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    logs = args.logs
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="tripletface_peers_") as tmp:
        for stage in stages:
            keys = [c.key for c in CONTENDERS if c.stage == stage and c.key in chosen]
            if not keys:
                continue
            size = f"{args.steps} steps" if stage == "train" else f"{len(files)} photos"
            log(f"== {STAGE_NAMES[stage]}: {', '.join(keys)}; {size} x {args.rounds} rounds "
                f"(load {common.load_average()})")
            results.update(run_stage(stage, keys, files, args, Path(tmp), logs, log))
    rows = build_rows(results, [s for s in stages if any(BY_KEY[k].stage == s for k in results)])
    print_rows(rows)
    print(f"{len(files)} raw LFW photos from {args.data}; {args.rounds} rounds; load average "
          f"{common.load_average()} on {os.cpu_count()} CPUs; '{ISSUE_LABEL}': the figures issue 14 reports "
          "(reference only)")
    common.save_results(args.json, __file__, argv, rows=rows, measurements=results, images=len(files),
                        rounds=args.rounds, started=started, venv=str(args.venv),
                        targets=[t.__dict__ for t in TARGETS])
    ours_failed = [r for r in rows if r["ours"] and r["error"]]
    return 1 if ours_failed else 0


if __name__ == "__main__":
    common.quiet_tensorflow()
    raise SystemExit(main())
