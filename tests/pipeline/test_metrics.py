"""Scene PQ / mIoU: one hand-computed case per rule of the PanLift protocol, folder-level behaviour, errors,
and a randomised comparison with a plain-loop reference written straight from the spec's pseudo-code."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from pipeline.common.io import InputError
from pipeline.metrics import (
    confusion_matrix,
    eval_command,
    evaluate_scene,
    json_safe,
    mean_over_scenes,
    miou,
    panoptic_quality,
    print_report,
    read_label,
)

WALL, FLOOR, TABLE = 1, 2, 7  # stuff
CHAIR, SOFA = 5, 6  # things
UNKNOWN = 30  # in neither set -> VOID


def f32(a: int, b: int) -> float:
    """The evaluator's IoU / ratio arithmetic: float32(a) / float32(b)."""
    return float(np.float32(a) / np.float32(b))


def runs(*rs):
    """(pred_class, pred_inst, gt_class, gt_inst, n_pixels) runs -> pred [M,2], gt [M,2]."""
    p = np.concatenate([np.tile(np.array([[a, b]], np.int64), (n, 1)) for a, b, _, _, n in rs])
    g = np.concatenate([np.tile(np.array([[c, d]], np.int64), (n, 1)) for _, _, c, d, n in rs])
    return p, g


# ---------------------------------------------------------------------------------------------------
# rules, on the array API
# ---------------------------------------------------------------------------------------------------


def test_perfect_prediction():
    p, g = runs((WALL, 0, WALL, 0, 500), (CHAIR, 3, CHAIR, 1, 300), (CHAIR, 4, CHAIR, 2, 200))
    r = panoptic_quality(p, g)
    assert (r.pq, r.sq, r.rq, r.pq_th, r.pq_st) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert r.per_class[CHAIR].tp == 2 and r.per_class[WALL].tp == 1
    assert r.things == {CHAIR} and r.stuff == {WALL} and r.void == (CHAIR + 1, 0)


def test_split_instance():
    # one GT chair (400 px) predicted as two ids: 300 + 100
    p, g = runs((WALL, 0, WALL, 0, 600), (CHAIR, 1, CHAIR, 1, 300), (CHAIR, 2, CHAIR, 1, 100))
    r = panoptic_quality(p, g)
    c = r.per_class[CHAIR]
    assert (c.tp, c.fp, c.fn) == (1, 1, 0)
    iou = f32(300, 400)
    assert c.pq == pytest.approx(iou / 1.5, abs=0) and c.sq == iou and c.rq == 1 / 1.5
    assert r.pq == pytest.approx((1 + iou / 1.5) / 2, rel=1e-15)
    assert r.sq == pytest.approx((1 + iou) / 2, rel=1e-15)
    assert r.rq == pytest.approx((1 + 1 / 1.5) / 2, rel=1e-15)


def test_merged_instances():
    # two GT chairs (300 + 100) predicted as one id
    p, g = runs((WALL, 0, WALL, 0, 600), (CHAIR, 7, CHAIR, 1, 300), (CHAIR, 7, CHAIR, 2, 100))
    c = panoptic_quality(p, g).per_class[CHAIR]
    assert (c.tp, c.fp, c.fn) == (1, 0, 1)
    assert c.pq == f32(300, 400) / 1.5


def test_shifted_stuff_ids_are_one_segment():
    # stuff instance ids differ on both sides but the class matches -> one stuff segment each side
    p, g = runs((WALL, 3, WALL, 0, 300), (WALL, 9, WALL, 4, 300), (FLOOR, 0, FLOOR, 8, 400))
    r = panoptic_quality(p, g)
    assert r.pq == 1.0
    assert r.per_class[WALL].tp == 1 and r.per_class[WALL].fp == 0


def test_same_thing_id_across_frames_is_one_segment():
    # three "frames" concatenated: GT chair id 1 (200 px each)
    frames_gt = [(WALL, 0, 300), (CHAIR, 1, 200)]
    consistent = runs(*[(c, i if c == CHAIR else 0, c, i, n) for _ in range(3) for c, i, n in frames_gt])
    r = panoptic_quality(*consistent)
    assert r.pq == 1.0 and r.per_class[CHAIR].tp == 1
    # per-frame ids 11, 12, 13 -> each covers a third of the scene-wide GT segment: IoU 1/3, no match
    per_frame = runs(*[(c, (11 + k) if c == CHAIR else 0, c, i, n)
                       for k in range(3) for c, i, n in frames_gt])
    c = panoptic_quality(*per_frame).per_class[CHAIR]
    assert (c.tp, c.fp, c.fn, c.pq) == (0, 3, 1, 0.0)


def test_same_id_with_two_classes_is_two_segments():
    p, g = runs((WALL, 0, WALL, 0, 600), (CHAIR, 3, CHAIR, 1, 200), (SOFA, 3, SOFA, 1, 200))
    r = panoptic_quality(p, g)
    assert r.pq == 1.0
    assert r.per_class[CHAIR].tp == 1 and r.per_class[SOFA].tp == 1


@pytest.mark.parametrize("on_void, expected_fp", [(51, 0), (50, 1)])
def test_fp_void_ratio(on_void, expected_fp):
    # pred chair segment (100 px) lies on GT-VOID (unknown class) for `on_void` px, on GT wall otherwise
    p, g = runs((WALL, 0, WALL, 0, 900 - (100 - on_void)), (CHAIR, 9, WALL, 0, 100 - on_void),
                (CHAIR, 9, UNKNOWN, 0, on_void), (WALL, 0, UNKNOWN, 0, 100 - on_void))
    r = panoptic_quality(p, g)
    assert r.void == (CHAIR + 1, 0)
    c = r.per_class[CHAIR]
    assert (c.tp, c.fp, c.fn) == (0, expected_fp, 0)
    assert c.pq == 0.0  # den = 0 (ignored) or only an FP: both contribute 0
    inter = 900 - (100 - on_void)
    # pred wall = inter + (100 - on_void) px on GT-VOID; the void part leaves the union: U = inter + 900 - inter
    wall_iou = f32(inter, 900)
    assert r.per_class[WALL].sq == wall_iou
    assert r.pq == pytest.approx(wall_iou / 2, rel=1e-15)


@pytest.mark.parametrize("as_void, expected_fn", [(51, 0), (50, 1)])
def test_fn_void_ratio(as_void, expected_fn):
    # GT chair (100 px): `as_void` px predicted as an unknown class (-> VOID), the rest as wall
    p, g = runs((WALL, 0, WALL, 0, 900), (UNKNOWN, 0, CHAIR, 1, as_void), (WALL, 0, CHAIR, 1, 100 - as_void))
    r = panoptic_quality(p, g)
    c = r.per_class[CHAIR]
    assert (c.tp, c.fp, c.fn) == (0, 0, expected_fn)
    assert r.per_class[WALL].sq == f32(900, 1000 - as_void)
    assert r.pq == pytest.approx(f32(900, 1000 - as_void) / 2, rel=1e-15)


def test_den_zero_category_contributes_zero():
    # a predicted sofa segment lies entirely on GT-VOID: sofa survives (robust) with TP=FP=FN=0
    p, g = runs((WALL, 0, WALL, 0, 900), (SOFA, 2, UNKNOWN, 0, 100))
    r = panoptic_quality(p, g)
    s = r.per_class[SOFA]
    assert (s.tp, s.fp, s.fn, s.pq, s.sq, s.rq) == (0, 0, 0, 0.0, 0.0, 0.0)
    assert r.pq == 0.5 and r.sq == 0.5 and r.rq == 0.5


@pytest.mark.parametrize("n_table, robust", [(4, False), (5, True)])
def test_robust_filter_gt_side(n_table, robust):
    # GT table on n_table of 1000 px (0.4 % / exactly 0.5 %); predicted as wall everywhere
    p, g = runs((WALL, 0, WALL, 0, 1000 - n_table), (WALL, 0, TABLE, 0, n_table))
    r = panoptic_quality(p, g)
    if robust:
        assert r.stuff == {WALL, TABLE} and r.per_class[TABLE].fn == 1
        assert r.pq == pytest.approx(f32(995, 1000) / 2, rel=1e-15)
    else:  # table dropped; its pixels become VOID on both sides, so the wall union shrinks to 996
        assert r.stuff == {WALL} and TABLE not in r.per_class
        assert r.pq == 1.0


@pytest.mark.parametrize("n_chair, robust", [(4, False), (5, True)])
def test_robust_filter_prediction_side_or_rule(n_chair, robust):
    # GT chair covers 50 %, but the prediction has it on only n_chair px (rest predicted as sofa)
    p, g = runs((WALL, 0, WALL, 0, 500), (CHAIR, 1, CHAIR, 1, n_chair), (SOFA, 1, CHAIR, 1, 500 - n_chair))
    r = panoptic_quality(p, g)
    if robust:
        assert r.things == {CHAIR, SOFA}
        assert (r.per_class[CHAIR].fp, r.per_class[CHAIR].fn, r.per_class[SOFA].fp) == (1, 1, 1)
        assert r.pq == pytest.approx(1 / 3, rel=1e-15)
    else:  # chair dropped from the mean; its GT pixels are VOID, so the sofa segment is neither TP nor FP
        assert r.things == {SOFA} and CHAIR not in r.per_class
        s = r.per_class[SOFA]
        assert (s.tp, s.fp, s.fn) == (0, 0, 0)
        assert r.pq == 0.5 and r.pq_th == 0.0 and r.pq_st == 1.0


@pytest.mark.parametrize("n_zero", [10, 4])
def test_class_zero_predicted(n_zero):
    p, g = runs((WALL, 0, WALL, 0, 1000 - n_zero), (0, 0, WALL, 0, n_zero))
    r = panoptic_quality(p, g)
    if n_zero == 10:  # 1 % -> class 0 is a stuff category with one unmatched FP segment, PQ_0 = 0
        assert r.stuff == {0, WALL} and r.per_class[0].fp == 1 and r.per_class[0].pq == 0.0
        assert r.pq == pytest.approx(f32(990, 1000) / 2, rel=1e-15) and r.pq_st == r.pq
    else:  # 0.4 % -> filtered to VOID; the wall union excludes those pixels
        assert r.stuff == {WALL} and r.pq == 1.0


@pytest.mark.parametrize("n_hit, matched", [(100, False), (101, True)])
def test_iou_exactly_half_is_not_a_match(n_hit, matched):
    p, g = runs((WALL, 0, WALL, 0, 800), (CHAIR, 5, CHAIR, 1, n_hit), (WALL, 0, CHAIR, 1, 200 - n_hit))
    c = panoptic_quality(p, g).per_class[CHAIR]
    if matched:
        assert (c.tp, c.fp, c.fn) == (1, 0, 0) and c.pq == f32(101, 200) == c.sq
    else:
        assert f32(n_hit, 200) == 0.5 and (c.tp, c.fp, c.fn, c.pq) == (0, 1, 1, 0.0)


def test_thing_instance_zero_is_an_ordinary_segment():
    p, g = runs((WALL, 0, WALL, 0, 600), (CHAIR, 0, CHAIR, 0, 300), (CHAIR, 3, CHAIR, 3, 100))
    r = panoptic_quality(p, g)
    assert r.per_class[CHAIR].tp == 2 and r.pq == 1.0
    # predicting (chair, 0) over both GT chairs: IoU with (chair, 0) = 300/400 -> match, (chair, 3) -> FN
    p2, g2 = runs((WALL, 0, WALL, 0, 600), (CHAIR, 0, CHAIR, 0, 300), (CHAIR, 0, CHAIR, 3, 100))
    c = panoptic_quality(p2, g2).per_class[CHAIR]
    assert (c.tp, c.fp, c.fn) == (1, 0, 1)


def test_no_surviving_category_is_nan():
    r = panoptic_quality(np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64))
    assert all(math.isnan(v) for v in (r.pq, r.sq, r.rq, r.pq_th, r.pq_st)) and r.per_class == {}
    p, g = runs((UNKNOWN, 0, UNKNOWN + 1, 0, 100))
    r = panoptic_quality(p, g)
    assert math.isnan(r.pq) and r.void == (1, 0)


def test_pq_things_stuff_split():
    p, g = runs((WALL, 0, WALL, 0, 400), (FLOOR, 0, FLOOR, 0, 150), (WALL, 0, FLOOR, 0, 50),
                (CHAIR, 1, CHAIR, 1, 300), (CHAIR, 2, CHAIR, 1, 100))
    r = panoptic_quality(p, g)
    chair = f32(300, 400) / 1.5
    floor = f32(150, 200)
    wall = f32(400, 450)
    assert r.pq_th == chair
    assert r.pq_st == pytest.approx((wall + floor) / 2, rel=1e-15)
    assert r.pq == pytest.approx((wall + floor + chair) / 3, rel=1e-15)


def test_overlapping_things_and_stuff_rejected():
    p, g = runs((WALL, 0, WALL, 0, 10))
    with pytest.raises(ValueError, match="overlap"):
        panoptic_quality(p, g, things={1, 5}, stuff={1})


# ---------------------------------------------------------------------------------------------------
# mIoU
# ---------------------------------------------------------------------------------------------------


def test_miou_and_rule():
    # GT: wall 996, table 4. Pred: wall 990 + chair 6 on GT wall, table 4 on GT table.
    gt = np.array([WALL] * 996 + [TABLE] * 4)
    pred = np.array([WALL] * 990 + [CHAIR] * 6 + [TABLE] * 4)
    value, per = miou(pred, gt, return_per_class=True)
    assert per[WALL] == 990 / 996
    assert per[CHAIR] == 0.0  # 0.6 % predicted, absent in GT: counts as 0 (not both sides < 0.5 %)
    assert math.isnan(per[TABLE])  # < 0.5 % on both sides: NaN although its IoU is 1
    assert value == pytest.approx((990 / 996 + 0.0) / 2, rel=1e-15)


def test_miou_ignores_gt_void_and_out_of_range_predictions():
    gt = np.array([0] * 500 + [WALL] * 1000)
    pred = np.array([CHAIR] * 500 + [WALL] * 900 + [25] * 100)
    cm = confusion_matrix(pred, gt)
    assert cm.sum() == 900 and cm[WALL, WALL] == 900  # GT-0 pixels and predicted class >= 22 are left out
    assert miou(pred, gt) == 1.0
    with pytest.raises(ValueError, match="GT class ids"):
        confusion_matrix(np.array([1]), np.array([22]))


# ---------------------------------------------------------------------------------------------------
# randomised comparison with a plain-loop reference of the spec's pseudo-code
# ---------------------------------------------------------------------------------------------------


def reference_pq(P, G, things, stuff):
    """Direct transcription of the benchmark's PQ pseudo-code with dicts and Python loops (slow, obviously right)."""
    M = len(P)
    P = [tuple(x) for x in P.tolist()]
    G = [tuple(x) for x in G.tolist()]
    cntP, cntG = {}, {}
    for (pc, _), (gc, _) in zip(P, G):
        cntP[pc] = cntP.get(pc, 0) + 1
        cntG[gc] = cntG.get(gc, 0) + 1
    present = set(cntP) | set(cntG)
    nonrobust = {c for cnt in (cntP, cntG) for c, n in cnt.items() if f32(n, M) < np.float32(0.005)}
    th = (set(things) & present) - nonrobust
    st = (set(stuff) & present) - nonrobust
    cats = th | st
    VOID = (1 + max([0] + list(cats)), 0)

    def prep(x):
        c, i = x
        if c in st:
            i = 0
        return (c, i) if c in cats else VOID

    P = [prep(x) for x in P]
    G = [prep(x) for x in G]
    aP, aG, inter = {}, {}, {}
    for p, g in zip(P, G):
        aP[p] = aP.get(p, 0) + 1
        aG[g] = aG.get(g, 0) + 1
        inter[(p, g)] = inter.get((p, g), 0) + 1
    iou_sum = {c: 0.0 for c in cats}
    tp = {c: 0 for c in cats}
    fp = {c: 0 for c in cats}
    fn = {c: 0 for c in cats}
    mP, mG = set(), set()
    for (p, g), n in inter.items():
        if g == VOID or p[0] != g[0]:
            continue
        u = aP[p] - inter.get((p, VOID), 0) + aG[g] - inter.get((VOID, g), 0) - n
        iou = f32(n, u)
        if iou > 0.5:
            mP.add(p); mG.add(g)
            iou_sum[g[0]] += iou
            tp[g[0]] += 1
    for g in set(aG) - mG - {VOID}:
        if f32(inter.get((VOID, g), 0), aG[g]) > 0.5:
            continue
        fn[g[0]] += 1
    for p in set(aP) - mP - {VOID}:
        if f32(inter.get((p, VOID), 0), aP[p]) > 0.5:
            continue
        fp[p[0]] += 1
    pq, sq, rq = {}, {}, {}
    for c in cats:
        den = tp[c] + 0.5 * fp[c] + 0.5 * fn[c]
        pq[c] = iou_sum[c] / den if den > 0 else 0.0
        sq[c] = iou_sum[c] / tp[c] if tp[c] > 0 else 0.0
        rq[c] = tp[c] / den if den > 0 else 0.0
    return cats, th, tp, fp, fn, pq, sq, rq


def random_scene(rng, m):
    """Label lists rich in edge cases: tiny classes, class 0 / unknown predictions, shared and per-frame ids."""
    n_gt_cls = rng.integers(2, 7)
    gt_classes = rng.choice([1, 2, 3, 4, 5, 6, 7, 14, 16, 21], n_gt_cls, replace=False)
    weights = rng.dirichlet(np.ones(n_gt_cls) * 0.7)
    gc = rng.choice(gt_classes, m, p=weights)
    gi = np.where(np.isin(gc, [4, 5, 6, 14, 16]), rng.integers(0, 4, m), rng.integers(0, 2, m) * rng.integers(0, 3))
    # predictions: mostly copy GT in blocks, then corrupt
    pc, pi = gc.copy(), gi.copy()
    block = rng.integers(1, 50)
    flips = np.repeat(rng.random(m // block + 1) < rng.uniform(0, 0.6), block)[:m]
    pc[flips] = rng.choice(np.concatenate([gt_classes, [0, 8, 30]]), flips.sum())
    relabel = np.repeat(rng.random(m // block + 1) < rng.uniform(0, 0.5), block)[:m]
    pi[relabel] = rng.integers(0, 6, relabel.sum())
    return np.stack([pc, pi], 1).astype(np.int64), np.stack([gc, gi], 1).astype(np.int64)


@pytest.mark.parametrize("seed", range(40))
def test_matches_plain_loop_reference(seed):
    from pipeline.common.classes import STUFF_IDS, THING_IDS

    rng = np.random.default_rng(seed)
    P, G = random_scene(rng, int(rng.integers(50, 3000)))
    r = panoptic_quality(P, G)
    cats, th, tp, fp, fn, pq, sq, rq = reference_pq(P, G, THING_IDS, STUFF_IDS)
    assert set(r.per_class) == cats and r.things == th
    for c in cats:
        k = r.per_class[c]
        assert (k.tp, k.fp, k.fn) == (tp[c], fp[c], fn[c]), c
        assert (k.pq, k.sq, k.rq) == (pq[c], sq[c], rq[c]), c
    if cats:
        assert r.pq == pytest.approx(np.mean([pq[c] for c in cats]), rel=1e-14)
        assert r.sq == pytest.approx(np.mean([sq[c] for c in cats]), rel=1e-14)
        assert r.rq == pytest.approx(np.mean([rq[c] for c in cats]), rel=1e-14)
    else:
        assert math.isnan(r.pq)


def test_many_segments_match_reference():
    # every predicted pixel its own chair id: millions of (pred, GT) segment pairs -> the sorting path
    from pipeline.common.classes import STUFF_IDS, THING_IDS

    rng = np.random.default_rng(11)
    m = 3000
    gc = np.where(rng.random(m) < 0.7, CHAIR, WALL)
    G = np.stack([gc, np.where(gc == CHAIR, rng.integers(0, 1500, m), 0)], 1)
    P = np.stack([gc, np.arange(m)], 1)
    P[:100, 1] = 5  # one larger predicted segment
    r = panoptic_quality(P, G)
    cats, th, tp, fp, fn, pq, sq, rq = reference_pq(P, G, THING_IDS, STUFF_IDS)
    for c in cats:
        k = r.per_class[c]
        assert (k.tp, k.fp, k.fn, k.pq, k.sq, k.rq) == (tp[c], fp[c], fn[c], pq[c], sq[c], rq[c])
    assert r.per_class[CHAIR].fp > 1000


def test_large_and_negative_ids_take_the_sorting_path():
    rng = np.random.default_rng(7)
    P, G = random_scene(rng, 2000)
    shifted = P.copy()
    shifted[:, 1] = shifted[:, 1] * (1 << 40) - 5  # same partition into segments, huge id range
    a, b = panoptic_quality(P, G), panoptic_quality(shifted, G)
    assert (a.pq, a.sq, a.rq) == (b.pq, b.sq, b.rq)


# ---------------------------------------------------------------------------------------------------
# folder level
# ---------------------------------------------------------------------------------------------------


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr)).save(path)


def make_scene(root, frames, preds, test=None, train=()):
    """frames: {stem: (sem, inst)} GT; preds: {stem: (sem, inst)} predictions. Returns (scene, pred)."""
    scene, pred = root / "scene", root / "pred"
    for s, (sem, inst) in frames.items():
        _png(scene / "rs_semantics" / f"{s}.png", np.asarray(sem, np.uint8))
        _png(scene / "rs_instance" / f"{s}.png", np.asarray(inst, np.uint16))
    (scene / "splits.json").write_text(json.dumps({"train": list(train), "test": list(test or frames)}))
    (pred / "pred_semantics").mkdir(parents=True, exist_ok=True)
    (pred / "pred_surrogateid").mkdir(parents=True, exist_ok=True)
    for s, (sem, inst) in preds.items():
        _png(pred / "pred_semantics" / f"{s}.png", np.asarray(sem, np.uint8))
        _png(pred / "pred_surrogateid" / f"{s}.png", np.asarray(inst, np.uint16))
    return scene, pred


def toy_frame(shift=0, chair_id=1):
    """A 512x512 frame: void strip, wall, floor, a chair."""
    sem = np.full((512, 512), WALL, np.uint8)
    sem[:32] = 0
    sem[300:] = FLOOR
    inst = np.zeros((512, 512), np.uint16)
    sem[200 + shift:400 + shift, 100:300] = CHAIR
    inst[200 + shift:400 + shift, 100:300] = chair_id
    return sem, inst


def test_folder_perfect_and_json(tmp_path):
    frames = {"0": toy_frame(0), "5": toy_frame(10), "10": toy_frame(20)}
    scene, pred = make_scene(tmp_path, frames, frames)
    out = tmp_path / "eval.json"
    console = Console(record=True, width=120)
    r = evaluate_scene(scene, pred)
    print_report(r, console=console)
    text = console.export_text()
    assert "chair" in text and "PQ 100.0" in text
    assert (r["pq"], r["sq"], r["rq"], r["pq_th"], r["pq_st"], r["miou"]) == (1, 1, 1, 1, 1, 1)
    assert r["num_frames"] == 3 and r["num_missing_predictions"] == 0
    assert r["per_class"][CHAIR] == {"name": "chair", "pq": 1.0, "sq": 1.0, "rq": 1.0, "tp": 1, "fp": 0,
                                     "fn": 0, "iou": 1.0, "thing": True}
    eval_command(scene, pred, json=out)
    data = json.loads(out.read_text())
    assert data["pq"] == 1.0 and data["per_class"][str(CHAIR)]["tp"] == 1


def test_folder_gt_void_pixels_never_count(tmp_path):
    frames = {"0": toy_frame(0)}
    sem, inst = toy_frame(0)
    sem, inst = sem.copy(), inst.copy()
    sem[:32] = SOFA  # garbage on GT-void rows
    inst[:32] = 77
    scene, pred = make_scene(tmp_path, frames, {"0": (sem, inst)})
    r = evaluate_scene(scene, pred)
    assert r["pq"] == 1.0 and SOFA not in r["per_class"]


def test_folder_frames_without_prediction_are_skipped(tmp_path):
    frames = {"0": toy_frame(0), "4": toy_frame(10), "8": toy_frame(30)}
    wrong = (np.full((512, 512), FLOOR, np.uint8), np.zeros((512, 512), np.uint16))
    preds = {"0": frames["0"], "8": frames["8"], "2": wrong}  # "4" missing; "2" is a train frame
    scene, pred = make_scene(tmp_path, {**frames, "2": frames["0"]}, preds, test=["0", "4", "8"], train=["2"])
    r = evaluate_scene(scene, pred)
    assert r["num_frames"] == 2 and r["num_missing_predictions"] == 1 and r["pq"] == 1.0


def test_folder_consistent_vs_per_frame_ids(tmp_path):
    frames = {str(k): toy_frame(0, chair_id=1) for k in range(4)}
    scene, pred = make_scene(tmp_path / "a", frames, frames)
    assert evaluate_scene(scene, pred)["per_class"][CHAIR]["tp"] == 1
    per_frame = {str(k): toy_frame(0, chair_id=10 + k) for k in range(4)}
    scene, pred = make_scene(tmp_path / "b", frames, per_frame)
    c = evaluate_scene(scene, pred)["per_class"][CHAIR]
    assert (c["tp"], c["fp"], c["fn"], c["pq"]) == (0, 4, 1, 0.0)


@pytest.mark.parametrize("shape", [(37, 23), (256, 384), (480, 640)])
def test_read_label_is_pil_nearest_512(tmp_path, shape):
    rng = np.random.default_rng(0)
    for dtype in (np.uint8, np.uint16):
        arr = rng.integers(0, 200 if dtype == np.uint8 else 60000, shape).astype(dtype)
        _png(tmp_path / "x.png", arr)
        expected = np.array(Image.fromarray(arr).resize((512, 512), Image.NEAREST))
        got = read_label(tmp_path / "x.png")
        assert got.shape == (512, 512) and np.array_equal(got.astype(np.int64), expected.astype(np.int64))
        # and it is not a trivial resampling: rows are picked by floor((y + 0.5) * H / 512)
        rows = np.floor((np.arange(512) + 0.5) * shape[0] / 512).astype(int)
        cols = np.floor((np.arange(512) + 0.5) * shape[1] / 512).astype(int)
        assert np.array_equal(got, arr[rows][:, cols])


def test_folder_non_512_inputs_match_manual_resize(tmp_path):
    rng = np.random.default_rng(3)
    gt_sem = np.full((480, 640), WALL, np.uint8)
    gt_sem[:, 400:] = FLOOR
    gt_sem[100:300, 50:250] = CHAIR
    gt_sem[:7] = 0
    gt_inst = np.where(gt_sem == CHAIR, 2, 0).astype(np.uint16)
    p_sem = np.full((256, 384), WALL, np.uint8)  # a prediction at PanLift's render size
    p_sem[:, 241:] = FLOOR
    p_sem[52:161, 30:150] = CHAIR
    p_sem[rng.random((256, 384)) < 0.02] = SOFA
    p_inst = np.where(np.isin(p_sem, [CHAIR, SOFA]), 4, 0).astype(np.uint16)
    scene, pred = make_scene(tmp_path, {"3": (gt_sem, gt_inst)}, {"3": (p_sem, p_inst)})
    r = evaluate_scene(scene, pred)

    def rs(a):
        return np.array(Image.fromarray(a).resize((512, 512), Image.NEAREST)).astype(np.int64)

    gs, gi, ps, pi = rs(gt_sem), rs(gt_inst), rs(p_sem), rs(p_inst)
    v = gs != 0
    expected = panoptic_quality(np.stack([ps[v], pi[v]], 1), np.stack([gs[v], gi[v]], 1))
    assert (r["pq"], r["sq"], r["rq"]) == (expected.pq, expected.sq, expected.rq)
    assert r["miou"] == miou(ps[v], gs[v])
    assert 0 < r["pq"] < 1  # guards the case itself: a partial match, so the equality above is not 1 == 1


def test_mean_over_scenes_and_json_safe():
    a = {"pq": 0.5, "sq": 0.8, "rq": 0.6, "pq_th": float("nan"), "pq_st": 0.5, "miou": 0.7, "num_frames": 3}
    b = {"pq": 0.7, "sq": 0.6, "rq": 0.9, "pq_th": 0.4, "pq_st": 0.9, "miou": 0.5, "num_frames": 2}
    m = mean_over_scenes([a, b])
    assert m["pq"] == pytest.approx(0.6) and m["sq"] == pytest.approx(0.7) and m["rq"] == pytest.approx(0.75)
    assert m["pq_th"] == 0.4 and m["pq_st"] == pytest.approx(0.7) and m["miou"] == pytest.approx(0.6)
    assert m["num_scenes"] == 2 and m["num_frames"] == 5
    assert json_safe({1: float("nan"), "x": [np.float32(0.5), np.int64(3)]}) == {"1": None, "x": [0.5, 3]}


# ---------------------------------------------------------------------------------------------------
# errors: one clear line naming the file
# ---------------------------------------------------------------------------------------------------


def test_errors(tmp_path):
    frames = {"0": toy_frame(0), "1": toy_frame(5)}
    scene, pred = make_scene(tmp_path, frames, frames)
    with pytest.raises(InputError, match="scene folder not found"):
        evaluate_scene(tmp_path / "nope", pred)
    with pytest.raises(InputError, match="prediction folder not found"):
        evaluate_scene(scene, tmp_path / "nope")
    (pred / "pred_surrogateid" / "0.png").unlink()
    with pytest.raises(InputError, match=r"pred_surrogateid/0\.png: file not found"):
        evaluate_scene(scene, pred)
    (pred / "pred_surrogateid" / "0.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"0\.png: cannot read label PNG"):
        evaluate_scene(scene, pred)
    (scene / "rs_instance" / "1.png").unlink()
    _png(pred / "pred_surrogateid" / "0.png", frames["0"][1])
    with pytest.raises(InputError, match=r"rs_instance/1\.png: file not found"):
        evaluate_scene(scene, pred)
    (scene / "splits.json").write_text(json.dumps({"train": [], "test": ["7", "9"]}))
    with pytest.raises(InputError, match="no prediction for any of the 2 test frames"):
        evaluate_scene(scene, pred)
    (scene / "splits.json").write_text("{")
    with pytest.raises(InputError, match="invalid JSON"):
        evaluate_scene(scene, pred)
    (scene / "splits.json").unlink()
    with pytest.raises(InputError, match="splits.json not found"):
        evaluate_scene(scene, pred)
    (scene / "splits.json").write_text(json.dumps({"test": ["0"]}))
    _png(pred / "pred_semantics" / "0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="expected one channel"):
        evaluate_scene(scene, pred)
    import shutil

    shutil.rmtree(pred / "pred_surrogateid")
    with pytest.raises(InputError, match="pred_surrogateid: folder not found"):
        evaluate_scene(scene, pred)


def test_format_pct():
    from pipeline.metrics import format_pct

    assert format_pct(0.98254) == "98.3"
    assert format_pct(1) == "100.0"
    assert format_pct(None) == "–" and format_pct(float("nan")) == "–"
