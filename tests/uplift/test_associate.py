"""Association of per-frame segments through the Gaussians: clustering rules by hand, and on a toy scene the
association recovers the consistent ids and its uplift equals plain LUDVIG on consistent masks (linearity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.common.labels import STUFF_ID_OFFSET
from splat.render import render
from tests.uplift.test_ludvig import _cameras, _gaussians
from uplift.associate import AssociateConfig, associate, cluster_segments, view_segments
from uplift.ludvig import uplift

CHAIR, FLOOR = 5, 2


def test_cluster_greedy_cannot_link_and_class_threshold():
    # segments: view 0: a0, b0 (two chairs); view 1: ab1 (both merged, under-segmented); view 2: a2, b2
    view = np.array([0, 0, 1, 2, 2])
    cls = np.array([CHAIR, CHAIR, CHAIR, CHAIR, CHAIR])
    pairs = np.array([[0, 3], [1, 4], [0, 2], [1, 2], [2, 3], [2, 4]])
    iou = np.array([0.9, 0.85, 0.5, 0.45, 0.5, 0.45])
    c = cluster_segments(view, cls, pairs, iou, AssociateConfig(min_overlap=0.3))
    # a0-a2 and b0-b2 join first; ab1 joins a's cluster (0.5 > 0.45); b's cluster may not join it (view 0 and 2
    # already hold a and b): the merged segment never fuses the two chairs
    assert c.tolist() == [0, 1, 0, 0, 1]
    # different classes need twice the threshold: 0.5 < 2 x 0.3 keeps a sofa-labelled ab1 apart
    c2 = cluster_segments(view, np.array([CHAIR, CHAIR, 6, CHAIR, CHAIR]), pairs, iou, AssociateConfig(min_overlap=0.3))
    assert c2.tolist() == [0, 1, 2, 0, 1]
    # below threshold nothing joins
    assert cluster_segments(view, cls, pairs, iou * 0.1, AssociateConfig()).tolist() == [0, 1, 2, 3, 4]


def test_view_segments_vote_and_stuff_excluded():
    m = np.array([[3, 3, 3, STUFF_ID_OFFSET + FLOOR], [7, 7, 0, 0]])
    c = np.array([[CHAIR, CHAIR, 6, FLOOR], [0, 0, 0, 0]])
    view, ids, cls, hist = view_segments([m], [c])
    assert view.tolist() == [0, 0] and ids.tolist() == [3, 7]
    assert cls.tolist() == [CHAIR, 0]  # majority; void only when there is nothing else
    assert hist[0, CHAIR] == 2 and hist[0, 6] == 1 and hist[1, 0] == 2


def _toy():
    """Two same-class objects (Gaussians x < -0.1 / x > 0.1) and a stuff group in between, seen from 3 views;
    consistent maps from rendering each Gaussian's group one-hot."""
    g = _gaussians(n=60, seed=3)
    x = g["means"][:, 0]
    group = torch.where(x < -0.1, 0, torch.where(x > 0.1, 1, 2))
    cams = _cameras([[0.0, 0.0, 0.0], [0.4, 0.1, 0.2], [-0.4, -0.1, 0.1]], w=24, h=18, f=18.0)
    onehot = torch.nn.functional.one_hot(group, 3).float()
    out = render(g, cams, onehot, backend="torch", render_depth=False)
    arg = out.features.argmax(-1).numpy()  # [C, H, W]
    covered = out.alpha[..., 0].numpy() > 0.3
    ids = np.array([1, 2, STUFF_ID_OFFSET + FLOOR])[arg]
    cons = [np.where(covered[v], ids[v], 0) for v in range(3)]
    cls = [np.where(m == 0, 0, np.where(m >= STUFF_ID_OFFSET, FLOOR, CHAIR)) for m in cons]
    return g, cams, cons, cls


def test_associate_recovers_consistent_ids_and_equals_plain_uplift():
    g, cams, cons, cls = _toy()
    shuffle = [{1: 1, 2: 2}, {1: 9, 2: 4}, {1: 2, 2: 1}]  # per-view ids, colliding across views on purpose
    per_view = [np.vectorize(lambda i, v=v: shuffle[v].get(int(i), int(i)))(m) for v, m in enumerate(cons)]
    a = associate(g, cams, per_view, cls, cfg=AssociateConfig(min_overlap=0.2))
    got = a.consistent_maps(per_view)
    # one renaming maps the associated ids onto the true ones in every view
    pairs = {(int(x), int(y)) for m, c in zip(got, cons) for x, y in zip(m.ravel(), c.ravel())}
    fwd = {}
    for x, y in pairs:
        assert fwd.setdefault(x, y) == y
    assert sorted(fwd.values()) == sorted({int(i) for m in cons for i in np.unique(m)})
    assert a.id_to_class[STUFF_ID_OFFSET + FLOOR] == FLOOR and a.stats["num_instances"] == 2
    assert all(a.id_to_class[i] == CHAIR for i in (1, 2))
    # LUDVIG is linear in the labels: the association's uplift is plain LUDVIG of the consistent maps
    ref = uplift(g, cams, cons, progress=False)
    back = {v: k for k, v in fwd.items()}
    cols = [int(np.nonzero(a.result.label_ids == back[int(i)])[0][0]) for i in ref.label_ids]
    np.testing.assert_allclose(a.result.weights[:, cols], ref.weights, atol=1e-5)
    np.testing.assert_allclose(a.result.den, ref.den, rtol=1e-5, atol=1e-7)
    # deterministic
    b = associate(g, cams, per_view, cls, cfg=AssociateConfig(min_overlap=0.2))
    assert b.segment_instance == a.segment_instance and np.array_equal(b.result.weights, a.result.weights)


def test_associate_topk_keeps_the_argmax():
    g, cams, cons, cls = _toy()
    dense = associate(g, cams, cons, cls)
    top = associate(g, cams, cons, cls, topk=1)
    assert top.result.weights is None and np.array_equal(top.result.label, dense.result.label)
    np.testing.assert_allclose(top.result.confidence, dense.result.confidence, atol=1e-6)


def test_associate_rejects_maps_of_another_size():
    g, cams, cons, cls = _toy()
    with pytest.raises(ValueError, match="label map 0"):
        associate(g, cams, [m[:-1] for m in cons], [c[:-1] for c in cls])


def test_render_voids_pixels_covered_by_unlabelled_gaussians():
    """Only the left blob is labelled: the right blob's pixels (opaque, but no labelled weight) used to take the
    left label by the unbounded nearest fallback; now they are void beyond fill_px, and stats count them."""
    from tests.uplift.test_ludvig import _two_objects
    from uplift.render import render_panoptic

    g, cams = _two_objects()
    lab = np.zeros((16, 32), np.int64)
    lab[:, :12] = 300  # the right part (right blob) is void in the masks: its Gaussian stays unlabelled
    res = uplift(g, cams, [lab], progress=False)
    assert res.label.tolist() == [300, -1]
    old, _, _ = render_panoptic(g, res, cams, {300: CHAIR})
    assert (old == 300).all()  # unbounded: the whole image, right blob included, is the chair
    stats: dict = {}
    inst, sem, _ = render_panoptic(g, res, cams, {300: CHAIR}, min_labelled_share=0.5, fill_px=3.0, stats=stats)
    assert inst[0, 8, 8] == 300 and inst[0, 8, 23] == 0 and sem[0, 8, 23] == 0  # right blob centre (u = 22.7): void
    ok_cols = np.nonzero(inst[0, 8] == 300)[0]
    assert ok_cols.max() <= 16 + 3  # labels reach at most fill_px past the left blob's labelled pixels
    assert stats["pixels"] == 16 * 32 and stats["void"] == int((sem == 0).sum()) > 0
    assert stats["below_min_weight"] == stats["void"] + stats["filled"]


def test_split_segment_is_folded_back_into_its_object():
    """Object A (Gaussians 0-9) whole in views 0 and 1, split in two in view 2; object B (10-19) whole everywhere.
    The greedy step may take only one half of A (cannot-link), the attach step folds the other half back."""
    from uplift.associate import cluster_from_shares

    A, B = np.arange(10), np.arange(10, 20)
    segs = [(0, A), (0, B), (1, A), (1, B), (2, A[:5]), (2, A[5:]), (2, B)]
    view = np.array([v for v, _ in segs])
    q_g = np.concatenate([g for _, g in segs]).astype(np.int32)
    q_s = np.concatenate([np.full(len(g), k) for k, (_, g) in enumerate(segs)]).astype(np.int32)
    cluster, st = cluster_from_shares(20, view, np.full(len(segs), CHAIR), q_g, q_s, np.ones(len(q_g), np.float32))
    assert st["num_clusters_before_attach"] == 3  # A, B and the half of A that view 2 could not join
    assert cluster.tolist() == [0, 1, 0, 1, 0, 0, 1]
