"""Triplet losses and mining against plain Python loops over all triplets.

The references below walk indices in Python and use TensorFlow ops on single rows in
float64, so ``tf.GradientTape`` gives reference gradients too. The semi-hard miner is
also checked against an independent numpy port of ``tfa.losses.triplet_semihard_loss``.
Batches are tiny (B = 12, D = 8) to keep the file fast on a shared CPU.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from tripletface import losses as L  # noqa: E402
from tripletface.config import LossConfig  # noqa: E402

B, D = 12, 8
LABELS_PK = np.repeat(np.arange(4), 3)  # P=4 identities × K=3 images
LABELS_MIXED = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 4, 5])  # 3 singletons: anchors without positive
MININGS = ("batch_all", "batch_hard", "semi_hard")
DISTANCES = ("squared_l2", "l2", "cosine")
VALUE_TOL = 1e-5
GRAD_TOL = dict(rtol=1e-4, atol=1e-5)


def unit_rows(n, d=D, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- references

def ref_dist(u, v, name):
    """One oriented distance between two float64 rows, with TF ops (differentiable)."""
    if name == "squared_l2":
        return tf.reduce_sum(tf.square(u - v))
    if name == "l2":
        return tf.sqrt(tf.reduce_sum(tf.square(u - v)))
    if name == "cosine":
        return 1.0 - tf.reduce_sum(u * v) / (tf.norm(u) * tf.norm(v))
    if name == "neg_dot":  # a similarity, oriented: smaller is closer
        return -tf.reduce_sum(u * v)
    raise AssertionError(name)


def ref_triplets(labels, cand_labels, dv, mining):
    """Mined (a, p, n) index triplets, chosen with Python comparisons on float values."""
    n_anchor, n_cand = len(labels), len(cand_labels)
    out = []
    for a in range(n_anchor):
        pos = [j for j in range(n_cand) if j != a and cand_labels[j] == labels[a]]
        neg = [j for j in range(n_cand) if cand_labels[j] != labels[a]]
        if mining == "batch_all":
            out += [(a, p, n) for p in pos for n in neg]
        elif mining == "batch_hard":
            if pos and neg:
                out.append((a, max(pos, key=lambda j: dv[a, j]), min(neg, key=lambda j: dv[a, j])))
        elif mining == "semi_hard":
            if not neg:
                continue
            for p in pos:
                farther = [n for n in neg if dv[a, n] > dv[a, p]]
                n = min(farther, key=lambda j: dv[a, j]) if farther else max(neg, key=lambda j: dv[a, j])
                out.append((a, p, n))
        else:
            raise AssertionError(mining)
    return out


def ref_reduce(pairs, margin, soft, nonzero):
    """pairs: list of (d_ap, d_an) float64 tensors -> (loss, stats) like the library."""
    losses = [tf.math.softplus(ap - an) if soft else tf.maximum(ap - an + margin, 0.0) for ap, an in pairs]
    if nonzero:
        denom = sum(float(v) > 0 for v in losses)
    else:
        denom = len(losses)
    loss = tf.add_n(losses) / max(denom, 1) if losses else tf.constant(0.0, tf.float64)
    m = 0.0 if soft else margin
    n = len(pairs)
    stats = {
        "active_fraction": sum(float(ap - an) + m > 0 for ap, an in pairs) / max(n, 1),
        "pos_dist": sum(float(ap) for ap, _ in pairs) / max(n, 1),
        "neg_dist": sum(float(an) for _, an in pairs) / max(n, 1),
        "valid_triplets": float(n),
    }
    return loss, stats


def ref_online(x, labels, mining, margin, dist, soft, memory=None):
    """Reference loss on a float64 tf.Variable ``x`` (B, D); memory rows are constants."""
    rows = tf.unstack(x)
    cands, cand_labels = list(rows), list(labels)
    if memory is not None:
        cands += [tf.constant(r, tf.float64) for r in memory[0]]
        cand_labels += list(memory[1])
    d = {(a, j): ref_dist(rows[a], cands[j], dist)
         for a in range(len(rows)) for j in range(len(cands)) if j != a}
    dv = {k: float(v) for k, v in d.items()}
    trip = ref_triplets(list(labels), cand_labels, dv, mining)
    return ref_reduce([(d[a, p], d[a, n]) for a, p, n in trip], margin, soft, nonzero=mining == "batch_all")


def ref_explicit(x, margin, dist, soft):
    rows = tf.unstack(x)
    b = len(rows) // 3
    pairs = [(ref_dist(rows[i], rows[b + i], dist), ref_dist(rows[i], rows[2 * b + i], dist)) for i in range(b)]
    return ref_reduce(pairs, margin, soft, nonzero=False)


def loss_and_grad(fn, x):
    var = tf.Variable(x)
    with tf.GradientTape() as tape:
        loss, stats = fn(var)
    return loss, stats, tape.gradient(loss, var)


def check_against_reference(ours, ref, x32):
    loss, stats, grad = loss_and_grad(ours, x32)
    rloss, rstats, rgrad = loss_and_grad(ref, x32.astype(np.float64))
    assert loss.dtype == tf.float32
    assert abs(float(loss) - float(rloss)) < VALUE_TOL, (float(loss), float(rloss))
    for k, v in rstats.items():
        assert stats[k].dtype == tf.float32
        assert abs(float(stats[k]) - v) < VALUE_TOL, (k, float(stats[k]), v)
    if rgrad is None:  # reference had no triplet at all
        rgrad = np.zeros_like(x32)
    np.testing.assert_allclose(grad.numpy(), np.asarray(rgrad), **GRAD_TOL)
    return float(loss)


# --------------------------------------------------------------------------- online mining vs loops

@pytest.mark.parametrize("labels", [LABELS_PK, LABELS_MIXED], ids=["pk", "mixed"])
@pytest.mark.parametrize("dist", DISTANCES)
@pytest.mark.parametrize("mining", MININGS)
def test_online_mining_matches_loop(mining, dist, labels):
    x = unit_rows(B, seed=1)
    loss_obj = L.OnlineTripletLoss(mining=mining, margin=0.2, distance=dist)
    value = check_against_reference(
        lambda v: loss_obj.compute_with_stats(labels, v),
        lambda v: ref_online(v, labels, mining, 0.2, dist, False), x)
    assert value > 0  # random embeddings violate the margin somewhere: the test compares real numbers
    assert float(loss_obj(labels, x)) == pytest.approx(value, abs=1e-7)  # Keras call path, same value


@pytest.mark.parametrize("dist", ("squared_l2", "l2"))
@pytest.mark.parametrize("mining", MININGS)
def test_soft_margin_matches_loop(mining, dist):
    x = unit_rows(B, seed=2)
    loss_obj = L.OnlineTripletLoss(mining=mining, margin=0.2, distance=dist, soft_margin=True)
    check_against_reference(lambda v: loss_obj.compute_with_stats(LABELS_MIXED, v),
                            lambda v: ref_online(v, LABELS_MIXED, mining, 0.2, dist, True), x)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("dist", DISTANCES)
def test_explicit_triplet_loss_matches_loop(dist, soft):
    x = unit_rows(3 * 6, seed=3)
    loss_obj = L.TripletLoss(margin=0.2, distance=dist, soft_margin=soft)
    value = check_against_reference(lambda v: loss_obj.compute_with_stats(None, v),
                                    lambda v: ref_explicit(v, 0.2, dist, soft), x)
    assert float(loss_obj(np.zeros(18), x)) == pytest.approx(value, abs=1e-7)


@pytest.mark.parametrize("mining", ("batch_hard", "semi_hard"))
def test_inverted_similarity_shares_the_code_path(mining):
    """A similarity (is_inverted=True) goes through the same miners: hardest = least similar."""

    class DotSimilarity(L.Distance):
        name = "dot"
        is_inverted = True

        def _matrix(self, x, y):
            return tf.matmul(x, y, transpose_b=True)

    x = unit_rows(B, seed=4)
    loss, stats, grad = loss_and_grad(
        lambda v: L.online_triplet_loss(LABELS_PK, v, mining, 0.3, distance=DotSimilarity()), x)
    rloss, rstats, rgrad = loss_and_grad(lambda v: ref_online(v, LABELS_PK, mining, 0.3, "neg_dot", False),
                                         x.astype(np.float64))
    assert abs(float(loss) - float(rloss)) < VALUE_TOL
    # stats are reported in the similarity's own direction
    assert float(stats["pos_dist"]) == pytest.approx(-rstats["pos_dist"], abs=VALUE_TOL)
    assert float(stats["neg_dist"]) == pytest.approx(-rstats["neg_dist"], abs=VALUE_TOL)
    np.testing.assert_allclose(grad.numpy(), rgrad.numpy(), **GRAD_TOL)


def test_graph_mode_with_unknown_batch_size():
    x = unit_rows(B, seed=5)
    fn = tf.function(lambda lab, v: L.online_triplet_loss(lab, v, "semi_hard", 0.2, "l2")[0],
                     input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, D], tf.float32)])
    eager = float(L.online_triplet_loss(LABELS_PK, x, "semi_hard", 0.2, "l2")[0])
    assert float(fn(tf.constant(LABELS_PK, tf.int32), tf.constant(x))) == pytest.approx(eager, abs=1e-6)


# --------------------------------------------------------------------------- semi-hard = tfa

def tfa_semihard_numpy(labels, emb, margin):
    """numpy port of tfa.losses.triplet_semihard_loss (tile + masked min/max formulation)."""
    emb = emb.astype(np.float64)
    sq = (emb ** 2).sum(axis=1)
    pdist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * emb @ emb.T, 0.0)
    np.fill_diagonal(pdist, 0.0)
    adjacency = labels[:, None] == labels[None, :]
    adjacency_not = ~adjacency
    b = len(labels)

    def masked_minimum(data, mask):
        axis_max = data.max(axis=1, keepdims=True)
        return ((data - axis_max) * mask).min(axis=1, keepdims=True) + axis_max

    def masked_maximum(data, mask):
        axis_min = data.min(axis=1, keepdims=True)
        return ((data - axis_min) * mask).max(axis=1, keepdims=True) + axis_min

    pdist_tile = np.tile(pdist, (b, 1))
    mask = np.tile(adjacency_not, (b, 1)) & (pdist_tile > pdist.T.reshape(-1, 1))
    mask_final = (mask.sum(axis=1, keepdims=True) > 0).reshape(b, b).T
    negatives_outside = masked_minimum(pdist_tile, mask).reshape(b, b).T
    negatives_inside = np.tile(masked_maximum(pdist, adjacency_not), (1, b))
    semi_hard = np.where(mask_final, negatives_outside, negatives_inside)
    loss_mat = margin + pdist - semi_hard
    mask_positives = adjacency.astype(np.float64) - np.eye(b)
    return np.maximum(loss_mat * mask_positives, 0.0).sum() / mask_positives.sum()


@pytest.mark.parametrize("margin", [0.2, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_semi_hard_equals_tfa_algorithm(seed, margin):
    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(0, 4, size=B)
    x = unit_rows(B, seed=200 + seed)
    ours = float(L.OnlineTripletLoss("semi_hard", margin=margin)(labels, x))
    assert ours == pytest.approx(tfa_semihard_numpy(labels, x, margin), abs=VALUE_TOL)


def test_semi_hard_ties_are_not_farther():
    """A negative exactly as far as the positive is not 'farther' (strict >, as in tfa).

    Points a=(0,0), p=(1,0) (label 0), n1=(0,1), n2=(2,0) (label 1); squared L2 is exact here.
    Pair (a,p): d=1, n1 ties at 1 -> n2 (4), loss 0. Pair (p,a): d=1, n2 ties -> n1 (2), loss 0.
    Pair (n1,n2): d=5, no negative farther -> farthest 2, loss 3.2. Pair (n2,n1): 5 - 4 + 0.2 = 1.2.
    """
    x = np.array([[0, 0], [1, 0], [0, 1], [2, 0]], np.float32)
    labels = np.array([0, 0, 1, 1])
    ours = float(L.online_triplet_loss(labels, x, "semi_hard", margin=0.2)[0])
    assert ours == pytest.approx((3.2 + 1.2) / 4, abs=1e-6)
    assert ours == pytest.approx(tfa_semihard_numpy(labels, x, 0.2), abs=1e-6)


# --------------------------------------------------------------------------- no valid triplet

@pytest.mark.parametrize("labels", [np.zeros(B, int), np.arange(B)], ids=["one_identity", "all_different"])
@pytest.mark.parametrize("dist", DISTANCES)
@pytest.mark.parametrize("mining", MININGS)
def test_no_valid_triplet_gives_zero_loss_and_zero_gradients(mining, dist, labels):
    x = unit_rows(B, seed=6)
    loss, stats, grad = loss_and_grad(lambda v: L.online_triplet_loss(labels, v, mining, 0.2, dist), x)
    assert float(loss) == 0.0
    assert float(stats["valid_triplets"]) == 0.0 and float(stats["active_fraction"]) == 0.0
    assert grad is not None and np.all(np.isfinite(grad.numpy())) and not np.any(grad.numpy())


@pytest.mark.parametrize("mining", MININGS)
def test_no_valid_triplet_with_memory(mining):
    """All identities different and a memory of empty slots only: still no triplet."""
    empty = (np.zeros((4, D), np.float32), np.full(4, L.EMPTY_LABEL))
    loss, stats, grad = loss_and_grad(
        lambda v: L.online_triplet_loss(np.arange(B), v, mining, 0.2, "l2", memory=empty), unit_rows(B, seed=9))
    assert float(loss) == 0.0 and float(stats["valid_triplets"]) == 0.0
    assert np.all(np.isfinite(grad.numpy())) and not np.any(grad.numpy())


@pytest.mark.parametrize("mining", MININGS)
def test_memory_with_zero_distances_has_finite_gradient(mining):
    bank = L.MemoryBank(8, D)
    row = unit_rows(1, seed=8)
    bank.enqueue(np.concatenate([row, unit_rows(2, seed=7)]), [0, 100, 101])  # a copy of the batch rows
    loss, _, grad = loss_and_grad(
        lambda v: L.online_triplet_loss(np.zeros(B, int), v, mining, 2.5, "l2", memory=bank.contents()),
        np.repeat(row, B, axis=0))  # one identity, identical rows: every d_ap is 0, memory gives negatives
    assert float(loss) > 0 and np.all(np.isfinite(grad.numpy()))


@pytest.mark.parametrize("mining", MININGS + ("triplet",))
def test_zero_l2_distance_has_finite_gradient(mining):
    """Identical rows (distance 0) under the L2 distance: gradient finite (safe sqrt), never NaN."""
    x = np.repeat(unit_rows(4, seed=10), 3, axis=0)  # rows 0-2 identical, 3-5 identical, ...
    margin = 2.5  # > any distance between unit rows: every triplet active, gradients flow through d_ap = 0
    if mining == "triplet":
        u = unit_rows(4, seed=10)
        x = np.concatenate([u, u, u[::-1]])  # positives equal to their anchors
        fn = lambda v: L.TripletLoss(margin, distance="l2").compute_with_stats(None, v)  # noqa: E731
    else:
        fn = lambda v: L.online_triplet_loss(LABELS_PK, v, mining, margin, "l2")  # noqa: E731
    loss, _, grad = loss_and_grad(fn, x)
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert np.all(np.isfinite(grad.numpy()))


@pytest.mark.parametrize("dist", DISTANCES)
def test_from_euclidean_maps_a_stored_threshold_to_the_loss_units(dist):
    """A model's Euclidean threshold in a loss distance's units: the value the distance itself gives
    for unit vectors that far apart, so both decide every pair alike."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, D))
    y = rng.normal(size=(20, D))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    d = L.get_distance(dist)
    euclid = np.linalg.norm(x - y, axis=1)
    np.testing.assert_allclose(d.from_euclidean(euclid), d.paired(x, y).numpy(), atol=1e-5)
    t = float(np.median(euclid))
    assert np.array_equal(d.paired(x, y).numpy() < d.from_euclidean(t), euclid < t)


def test_safe_sqrt_gradient_at_zero():
    v = tf.Variable([0.0, 4.0])
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(L.distances.safe_sqrt(v))
    np.testing.assert_allclose(tape.gradient(y, v).numpy(), [0.0, 0.25])


# --------------------------------------------------------------------------- mixed precision

# Embedding quantisation changes distances by ~1e-3 (float16, 11-bit mantissa) and ~1e-2
# (bfloat16, 8-bit): the tolerances against the float32 loss.
HALF_TOL = {"float16": 5e-3, "bfloat16": 3e-2}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("mining", MININGS + ("triplet",))
def test_half_precision_inputs(mining, dtype):
    x32 = unit_rows(B, seed=11)
    if mining == "triplet":
        loss_obj, labels = L.TripletLoss(margin=0.2), None
    else:
        loss_obj, labels = L.OnlineTripletLoss(mining, margin=0.2), LABELS_PK
    x_half = tf.cast(tf.constant(x32), dtype)
    loss, stats, grad = loss_and_grad(lambda v: loss_obj.compute_with_stats(labels, v), x_half)
    assert loss.dtype == tf.float32 and all(s.dtype == tf.float32 for s in stats.values())
    assert grad.dtype == x_half.dtype and np.all(np.isfinite(tf.cast(grad, tf.float32).numpy()))
    # computed in float32: identical to the float32 loss of the same (quantised) values
    same_values = float(loss_obj.compute_with_stats(labels, tf.cast(x_half, tf.float32))[0])
    assert float(loss) == pytest.approx(same_values, abs=1e-6)
    full = float(loss_obj.compute_with_stats(labels, x32)[0])
    assert abs(float(loss) - full) < HALF_TOL[dtype], (float(loss), full)


# --------------------------------------------------------------------------- XBM's contrastive loss

def ref_contrastive(x, labels, margin, memory=None):
    """The XBM contrastive loss by a loop over every (anchor, candidate) pair, float64 TF ops."""
    rows = tf.unstack(x)
    cands, cand_labels = list(rows), list(labels)
    if memory is not None:
        cands += [tf.constant(r, tf.float64) for r in memory[0]]
        cand_labels += list(memory[1])
    terms, pos_d, neg_d, active = [], [], [], 0
    for a in range(len(rows)):
        for j in range(len(cands)):
            if j == a:
                continue
            d = ref_dist(rows[a], cands[j], "cosine")
            if cand_labels[j] == labels[a]:
                terms.append(d)
                pos_d.append(float(d))
                active += float(d) > 0
            else:
                neg_d.append(float(d))
                if 1.0 - float(d) > margin:
                    terms.append(1.0 - d)
                    active += 1
    loss = tf.add_n(terms) / len(rows) if terms else tf.constant(0.0, tf.float64)
    n = len(pos_d) + len(neg_d)
    stats = {"active_fraction": active / max(n, 1), "pos_dist": sum(pos_d) / max(len(pos_d), 1),
             "neg_dist": sum(neg_d) / max(len(neg_d), 1), "valid_triplets": float(n)}
    return loss, stats


@pytest.mark.parametrize("margin", [0.5, 0.0, -0.2])
@pytest.mark.parametrize("labels", [LABELS_PK, LABELS_MIXED], ids=["pk", "mixed"])
def test_contrastive_loss_matches_loop(labels, margin):
    x = unit_rows(B, seed=30)
    value = check_against_reference(lambda v: L.contrastive_loss(labels, v, margin),
                                    lambda v: ref_contrastive(v, list(labels), margin), x)
    assert value > 0


def test_contrastive_loss_with_memory_matches_loop():
    bank = L.MemoryBank(16, D)
    mem_x, mem_labels = unit_rows(10, seed=31), np.array([0, 1, 2, 3, 7, 8, 0, 1, 9, 9])
    bank.enqueue(mem_x, mem_labels)  # 6 empty slots: never candidates
    x = unit_rows(B, seed=32)
    loss_obj = L.ContrastiveLoss(margin=0.1)
    check_against_reference(lambda v: loss_obj.compute_with_stats(LABELS_MIXED, v, memory=bank.contents()),
                            lambda v: ref_contrastive(v, list(LABELS_MIXED), 0.1,
                                                      memory=(mem_x.astype(np.float64), list(mem_labels))), x)
    empty = L.MemoryBank(8, D)
    assert float(loss_obj.compute_with_stats(LABELS_PK, x, memory=empty.contents())[0]) == pytest.approx(
        float(loss_obj(LABELS_PK, x)))


def test_contrastive_loss_config_and_errors():
    obj = L.get_loss(LossConfig(name="contrastive", contrastive_margin=0.3))
    assert isinstance(obj, L.ContrastiveLoss) and obj.margin == 0.3
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(restored) is L.ContrastiveLoss and restored.get_config() == obj.get_config()
    with pytest.raises(ValueError, match=r"margin \(a cosine similarity\) must be in \[-1, 1\), received: 1.5"):
        L.ContrastiveLoss(margin=1.5)
    # every pair far apart and every positive identical: nothing to learn, loss 0
    x = np.zeros((4, D), np.float32)
    x[[0, 1], 0] = 1.0
    x[[2, 3], 1] = 1.0
    loss, stats = L.contrastive_loss([0, 0, 1, 1], x, margin=0.5)
    assert float(loss) == 0.0 and float(stats["active_fraction"]) == 0.0


# --------------------------------------------------------------------------- memory bank (XBM)

@pytest.mark.parametrize("dist", ("squared_l2", "l2"))
@pytest.mark.parametrize("mining", MININGS)
def test_memory_bank_loss_matches_loop(mining, dist):
    bank = L.MemoryBank(16, D)
    mem_x, mem_labels = unit_rows(10, seed=12), np.array([0, 1, 2, 3, 7, 8, 0, 1, 9, 9])
    bank.enqueue(mem_x, mem_labels)  # 10 of 16 slots filled: 6 must be ignored
    x = unit_rows(B, seed=13)
    loss_obj = L.OnlineTripletLoss(mining, margin=0.2, distance=dist)
    check_against_reference(lambda v: loss_obj.compute_with_stats(LABELS_MIXED, v, memory=bank.contents()),
                            lambda v: ref_online(v, LABELS_MIXED, mining, 0.2, dist, False,
                                                 memory=(mem_x.astype(np.float64), mem_labels)), x)
    # the explicit valid mask gives the same
    with_valid = loss_obj.compute_with_stats(LABELS_MIXED, x, memory=bank.contents(with_valid=True))[0]
    assert float(with_valid) == pytest.approx(float(loss_obj.compute_with_stats(
        LABELS_MIXED, x, memory=bank.contents())[0]), abs=1e-7)


def test_empty_memory_bank_changes_nothing():
    bank = L.MemoryBank(32, D)  # all slots empty (zero embeddings): none may be used
    x = unit_rows(B, seed=14)
    for mining in MININGS:
        plain, s_plain = L.online_triplet_loss(LABELS_PK, x, mining)
        mem, s_mem = L.online_triplet_loss(LABELS_PK, x, mining, memory=bank.contents())
        assert float(mem) == float(plain)
        assert float(s_mem["valid_triplets"]) == float(s_plain["valid_triplets"])
    # a valid mask excludes slots too, whatever their labels
    filled = (unit_rows(4, seed=15), np.array([0, 1, 2, 3]), np.zeros(4, bool))
    assert float(L.online_triplet_loss(LABELS_PK, x, "batch_hard", memory=filled)[0]) == pytest.approx(
        float(L.online_triplet_loss(LABELS_PK, x, "batch_hard")[0]))


def test_memory_bank_ring_buffer():
    bank = L.MemoryBank(5, 2)
    emb = np.arange(14, dtype=np.float32).reshape(7, 2)
    assert not np.any(bank.valid_mask().numpy())
    bank.enqueue(emb[:3], [0, 1, 2])
    assert int(bank.pointer.numpy()) == 3 and int(bank.filled.numpy()) == 3
    np.testing.assert_array_equal(bank.valid_mask().numpy(), [1, 1, 1, 0, 0])
    bank.enqueue(emb[3:7], [3, 4, 5, 6])  # wraps around: slots 3, 4, 0, 1
    e, lab, valid = bank.contents(with_valid=True)
    assert int(bank.pointer.numpy()) == 2 and int(bank.filled.numpy()) == 5 and np.all(valid.numpy())
    np.testing.assert_array_equal(lab.numpy(), [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(e.numpy(), emb[[5, 6, 2, 3, 4]])
    bank.enqueue(emb, np.arange(7))  # more rows than slots: the last 5 are kept
    assert sorted(bank.contents()[1].numpy().tolist()) == [2, 3, 4, 5, 6]
    bank.reset()
    assert int(bank.filled.numpy()) == 0 and np.all(bank.contents()[1].numpy() == L.EMPTY_LABEL)


def test_memory_bank_enqueue_in_graph_and_no_gradient():
    bank = L.MemoryBank(6, D)
    x = tf.Variable(unit_rows(4, seed=16))

    @tf.function
    def step(labels):
        with tf.GradientTape() as tape:
            emb = x * 2.0
            bank.enqueue(emb, labels)
            mem = bank.contents()[0]
            total = tf.reduce_sum(mem)
        return tape.gradient(total, x)

    assert step(tf.constant([1, 2, 3, 4], tf.int32)) is None  # the bank holds no gradient path
    assert int(bank.filled.numpy()) == 4
    np.testing.assert_allclose(bank.contents()[0].numpy()[:4], 2.0 * x.numpy())


def test_memory_bank_checkpoint_and_config(tmp_path):
    bank = L.MemoryBank(8, D, name="bank")
    bank.enqueue(unit_rows(5, seed=17), [1, 2, 3, 4, 5])
    path = tf.train.Checkpoint(bank=bank).save(str(tmp_path / "ckpt"))
    restored = L.MemoryBank(8, D)
    tf.train.Checkpoint(bank=restored).restore(path).assert_consumed()
    np.testing.assert_array_equal(restored.contents()[0].numpy(), bank.contents()[0].numpy())
    np.testing.assert_array_equal(restored.contents()[1].numpy(), bank.contents()[1].numpy())
    assert int(restored.pointer.numpy()) == 5 and int(restored.filled.numpy()) == 5
    config = bank.get_config()
    assert config["size"] == 8 and config["dim"] == D
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(bank))
    assert type(clone) is type(bank) and clone.get_config() == config
    assert not bank.trainable_weights and len(bank.non_trainable_weights) == 4


def test_memory_bank_bad_arguments():
    with pytest.raises(ValueError, match="size must be an integer > 0, received: 0"):
        L.MemoryBank(0, D)
    with pytest.raises(ValueError, match="dim"):
        L.MemoryBank(4, -3)
    bank = L.MemoryBank(4, D)
    with pytest.raises(ValueError, match="8 columns"):
        bank.enqueue(np.zeros((2, 3), np.float32), [0, 1])
    with pytest.raises(ValueError, match="memory embeddings must have 8 columns"):
        L.online_triplet_loss(LABELS_PK, unit_rows(B), memory=(np.zeros((2, 3)), [0, 1]))
    with pytest.raises(ValueError, match="memory must be"):
        L.online_triplet_loss(LABELS_PK, unit_rows(B), memory=np.zeros((2, D)))
    with pytest.raises(ValueError, match="memory is not supported by TripletLoss"):
        L.TripletLoss().compute_with_stats(None, unit_rows(6), memory=bank.contents())


# --------------------------------------------------------------------------- collapse

@pytest.mark.parametrize("dist", DISTANCES)
def test_collapse_flagged_on_equal_embeddings(dist):
    same = np.repeat(unit_rows(1, seed=18), B, axis=0)
    _, stats = L.online_triplet_loss(LABELS_PK, same, "batch_all", distance=dist)
    assert L.is_collapsed(stats, 1e-3)
    _, stats = L.online_triplet_loss(LABELS_PK, unit_rows(B, seed=19), "batch_all", distance=dist)
    assert not L.is_collapsed(stats, 1e-3)
    _, stats = L.online_triplet_loss(np.arange(B), same, "batch_all", distance=dist)  # no triplet: not collapse
    assert not L.is_collapsed(stats, 1e-3)


def test_collapse_stuck_at_the_margin():
    """The runs that drew every embedding into a small cap (docs/RECIPE.md: the memory bank, batch-hard
    from mid-run) stayed above the absolute threshold; with the margin they are flagged, a healthy
    epoch (the same runs' first) is not, and neither is a small distance with triplets still satisfied."""
    stuck = {"pos_dist": 0.009, "neg_dist": 0.006, "active_fraction": 1.0, "valid_triplets": 384.0}
    assert not L.is_collapsed(stuck, 1e-3) and L.is_collapsed(stuck, 1e-3, margin=0.2)
    assert not L.is_collapsed({"pos_dist": 0.83, "neg_dist": 0.88, "active_fraction": 0.956}, 1e-3, margin=0.2)
    assert not L.is_collapsed({**stuck, "active_fraction": 0.6}, 1e-3, margin=0.2)
    assert not L.is_collapsed({**stuck, "neg_dist": 0.05}, 1e-3, margin=0.2)
    assert not L.is_collapsed({"pos_dist": 0.009, "neg_dist": 0.006}, 1e-3, margin=0.2)  # no active_fraction
    # the loss's own stats on equal embeddings, from the trainer's point of view
    x = np.tile(unit_rows(1, seed=40), (B, 1)) + 1e-3 * unit_rows(B, seed=41)
    _, stats = L.online_triplet_loss(LABELS_PK, x, "semi_hard")
    assert L.is_collapsed(stats, 1e-9, margin=0.2)


def test_is_collapsed_arguments():
    assert L.is_collapsed({"pos_dist": 1e-4, "neg_dist": 2e-4}, 1e-3)
    assert not L.is_collapsed({"pos_dist": 1e-4, "neg_dist": 0.5}, 1e-3)
    with pytest.raises(ValueError, match="threshold must be a number > 0, received: 0"):
        L.is_collapsed({"pos_dist": 0.0, "neg_dist": 0.0}, 0)
    with pytest.raises(ValueError, match="neg_dist"):
        L.is_collapsed({"pos_dist": 0.0}, 1e-3)


# --------------------------------------------------------------------------- Keras citizenship

def _losses_to_round_trip():
    return [L.TripletLoss(margin=0.5, distance="cosine", soft_margin=True, name="t"),
            L.OnlineTripletLoss(mining="batch_hard", margin=0.3, distance="l2", name="o")]


@pytest.mark.parametrize("index", [0, 1])
def test_loss_config_round_trip(index):
    loss_obj = _losses_to_round_trip()[index]
    config = loss_obj.get_config()
    clone = type(loss_obj).from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(loss_obj)
    assert serialized["registered_name"] == f"tripletface>{type(loss_obj).__name__}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(loss_obj) and restored.get_config() == config
    x = unit_rows(B, seed=20)
    assert float(restored(LABELS_PK, x)) == float(loss_obj(LABELS_PK, x))


def test_loss_survives_a_keras_file_and_trains(tmp_path):
    """Compiled into a model, saved to .keras, loaded with safe_mode, and fit runs on it."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(D)])
    model.compile(optimizer="sgd", loss=L.OnlineTripletLoss("semi_hard", margin=0.25, distance="l2"))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.loss, L.OnlineTripletLoss)
    assert loaded.loss.get_config() == model.loss.get_config()
    xs = np.random.default_rng(0).normal(size=(B, 4)).astype(np.float32)
    hist = loaded.fit(xs, LABELS_PK.astype(np.int32), batch_size=B, epochs=2, verbose=0)
    assert all(np.isfinite(hist.history["loss"])) and hist.history["loss"][0] > 0


def test_get_loss_from_config():
    for name in MININGS:
        obj = L.get_loss(LossConfig(name=name, margin=0.4, distance="cosine", soft_margin=True))
        assert isinstance(obj, L.OnlineTripletLoss)
        assert (obj.mining, obj.margin, obj.distance, obj.soft_margin) == (name, 0.4, "cosine", True)
    obj = L.get_loss(LossConfig(name="triplet"))
    assert isinstance(obj, L.TripletLoss) and obj.margin == 0.2 and obj.distance == "squared_l2"
    with pytest.raises(ValueError, match="loss.name must be one of .*, received: 'arcface'"):
        L.get_loss(LossConfig(name="arcface"))


@pytest.mark.parametrize("kwargs, message", [
    ({"margin": -1.0}, "margin must be a finite number >= 0, received: -1.0"),
    ({"margin": "0.2"}, "margin must be"),
    ({"distance": "l1"}, "distance must be one of squared_l2|l2|cosine, received: 'l1'"),
    ({"soft_margin": "yes"}, "soft_margin must be True or False, received: 'yes'"),
    ({"mining": "hardest"}, "mining must be one of batch_all|batch_hard|semi_hard, received: 'hardest'"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("|", r"\|").replace("(", r"\(")):
        L.OnlineTripletLoss(**kwargs)


def test_triplet_loss_needs_three_blocks():
    with pytest.raises(ValueError, match="3B rows"):
        L.TripletLoss().compute_with_stats(None, unit_rows(10))


def test_command_layer_imports_load_no_keras():
    """The losses load Keras (their classes are plain registered Keras classes); the laziness is the
    command layer's: ``import tripletface``, ``tripletface.config``, ``tripletface.cli.main`` and
    ``tripletface --help`` (which imports every command module) load no Keras, no TensorFlow, and
    neither the losses nor the model modules."""
    code = ("import sys, tripletface, tripletface.config, tripletface.cli.main as cli\n"
            "assert cli.main(['--help']) == 0\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow') "
            "or m.startswith(('tripletface.losses', 'tripletface.model')))\n"
            "assert not heavy, f'loaded at import: {heavy[:10]}'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
