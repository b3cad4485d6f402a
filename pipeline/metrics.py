"""Scene-level Panoptic Quality (PQ^scene) and mIoU exactly as the Panoptic Lifting benchmark computes them.

Every number the project reports goes through this module, so it reproduces the published protocol rule
for rule (written from the benchmark's description, not from upstream code):

* every label PNG (GT and prediction) is resized to 512×512 with PIL NEAREST, cast to integers, and pixels
  whose GT class is 0 are dropped; all test frames of a scene are concatenated into one pixel list;
* a *segment* is a unique (class, instance) pair over that whole list (stuff instances are set to 0 first);
* categories = classes present (in prediction or GT) that are robust on *both* sides: a class covering
  < 0.5 % (strict) of the pixels in the prediction OR in the GT is dropped and its pixels become VOID on
  both sides; VOID = (1 + max({0} ∪ categories), 0);
* IoU uses the void-corrected union and must be > 0.5 (strict); unmatched segments lying > 50 % (strict) on
  the other side's VOID are neither FP nor FN;
* PQ/SQ/RQ = plain means over the surviving categories (class 0 included when predicted on ≥ 0.5 %),
  NaN when none survives; the dataset number is the arithmetic mean of the per-scene numbers.

Numerical fidelity: the upstream metric runs on torch tensors, so integer ratios (IoU, the void ratios and
the 0.5 % robustness ratio) are float32(a) / float32(b) compared in float32; per-class IoU sums accumulate
in float64. mIoU runs on numpy float64, as upstream.

Naming: upstream's evaluate.py unpacks ``pq, rq, sq`` from a function returning ``(pq, sq, rq)`` and so
prints RQ under "sq" and SQ under "rq". Here ``sq`` is the segmentation quality (mean IoU of matches) and
``rq`` the recognition quality (TP / (TP + FP/2 + FN/2)), per the PQ definition.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from PIL import Image

from .common.classes import NUM_CLASSES, PANLIFT_CLASSES, STUFF_IDS, THING_IDS
from .common.io import OUTPUT_FILE_KEY, InputError, check_output_file, read_document, write_json

__all__ = [
    "HEADLINE_KEYS",
    "HEADLINE_LABELS",
    "headline",
    "format_pct",
    "ROBUST_FRACTION",
    "IMAGE_DIM",
    "ClassPQ",
    "PQResult",
    "panoptic_quality",
    "confusion_matrix",
    "miou",
    "read_label",
    "evaluate_scene",
    "mean_over_scenes",
    "json_safe",
    "print_report",
    "eval_command",
]

ROBUST_FRACTION = 0.005  # a class below 0.5 % of the scene's valid pixels (strict) is not evaluated
IMAGE_DIM = (512, 512)  # (W, H) every label PNG is resized to, as in PanLift's evaluate.py
HEADLINE_KEYS = ("pq", "sq", "rq", "pq_th", "pq_st", "miou")  # the scores every table and summary shows, in order
HEADLINE_LABELS = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU")  # their column headers

_F32_HALF = np.float32(0.5)
_F32_ROBUST = np.float32(ROBUST_FRACTION)
_NAN = float("nan")


# ----------------------------------------------------------------------------------------------------
# Panoptic quality (array core)
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassPQ:
    """Per-category statistics of one scene (only categories that survive the filtering)."""

    tp: int
    fp: int
    fn: int
    iou_sum: float  # float64 sum of the float32 IoUs of the matches
    pq: float
    sq: float
    rq: float
    thing: bool


@dataclass(frozen=True)
class PQResult:
    """Scene-level PQ. Means are over surviving categories; NaN when there are none."""

    pq: float
    sq: float
    rq: float
    pq_th: float  # mean PQ over surviving thing categories (NaN if none)
    pq_st: float  # mean PQ over surviving stuff categories (NaN if none; includes predicted class 0)
    per_class: dict[int, ClassPQ] = field(default_factory=dict)
    things: frozenset[int] = frozenset()  # surviving thing categories
    stuff: frozenset[int] = frozenset()  # surviving stuff categories
    void: tuple[int, int] = (1, 0)  # the (class, instance) every non-category pixel was mapped to
    num_pixels: int = 0


def _f32_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """int/int as torch does it for int64 tensors: both cast to float32, then an IEEE float32 division."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(num).astype(np.float32) / np.asarray(den).astype(np.float32)


def _int_array(x: Any, what: str) -> np.ndarray:
    """Label ids as an integer array that mixes safely with int64 (native small dtypes are kept)."""
    a = np.asarray(x).reshape(-1)
    if a.dtype == bool:
        return a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{what} must hold integer label ids, got dtype {a.dtype}")
    return a.astype(np.int64) if a.dtype == np.uint64 else a


class _Codes:
    """Integer keys [M] factorised into unique values and counts; pixel codes come later, through a remap.

    Keeping the key -> segment table instead of a per-pixel inverse lets `take(remap)` fuse "pixel -> raw
    segment -> merged segment" into one gather, written over the key buffer (the class owns `key`), so a
    scene of 25 M pixels allocates few fresh pages (first-touch page faults dominate on this machine).
    """

    def __init__(self, key: np.ndarray):
        self.key = key
        self._lut = self._inv = None
        if key.size == 0:
            self.uniq, self.counts = key[:0], np.zeros(0, np.int64)
            self._inv = np.zeros(0, np.int64)
            return
        kmin, kmax = int(key.min()), int(key.max())
        span = kmax - kmin + 1
        if span <= max(1 << 20, min(4 * key.size, 1 << 24)):  # O(M) counting, at most 16 M bins
            if kmin != 0:
                key -= kmin
            counts_full = np.bincount(key, minlength=span)
            present = np.flatnonzero(counts_full)
            self._lut = np.zeros(span, np.int64)
            self._lut[present] = np.arange(present.size)
            self.uniq, self.counts = present + kmin, counts_full[present]
        else:  # sparse keys: sort
            self.uniq, inv, self.counts = np.unique(key, return_inverse=True, return_counts=True)
            self._inv = inv.reshape(-1)
            self.key = None

    def take(self, remap: np.ndarray) -> np.ndarray:
        """Per-pixel `remap[segment index]`; consumes the key buffer (call once)."""
        if self._inv is not None:
            return remap[self._inv]
        key, self.key = self.key, None
        return np.take(remap[self._lut], key, out=key, mode="clip")  # in place; indices are valid


def _segments(cls: np.ndarray, inst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Codes]:
    """Raw (class, instance) segments of a pixel list.

    cls, inst: [M] int  ->  seg_cls [S], seg_inst [S] int64, area [S], pixel codes (pixel -> segment).
    """
    if cls.size == 0:
        e = np.zeros(0, np.int64)
        return e, e, e, _Codes(e)
    cmin, cmax = int(cls.min()), int(cls.max())
    imin, imax = int(inst.min()), int(inst.max())
    ispan = imax - imin + 1
    if (cmax - cmin + 1) * ispan < (1 << 62):
        key = cls.astype(np.int64)
        if cmin != 0:
            key -= cmin
        key *= ispan
        key += inst
        if imin != 0:
            key -= imin
        c = _Codes(key)
        return c.uniq // ispan + cmin, c.uniq % ispan + imin, c.counts, c
    # Absurd id ranges: factorise rows by sorting (slow but exact).
    rows, inv, area = np.unique(np.stack([cls.astype(np.int64), inst.astype(np.int64)], 1), axis=0,
                                return_inverse=True, return_counts=True)
    return rows[:, 0], rows[:, 1], area, _Codes(inv.reshape(-1))


def _class_counts(seg_cls: np.ndarray, area: np.ndarray) -> dict[int, int]:
    classes, inv = np.unique(seg_cls, return_inverse=True)
    counts = np.bincount(inv.reshape(-1), weights=None if area.size == 0 else area, minlength=classes.size)
    return {int(c): int(n) for c, n in zip(classes.tolist(), np.rint(counts).astype(np.int64).tolist())}


def _collapse(seg_cls, seg_inst, area, cats: np.ndarray, stuff: np.ndarray, void_cls: int):
    """Apply 'stuff instance -> 0' and 'non-category -> VOID' on the segment table, then merge duplicates.

    Returns (cls [S'], inst [S'], area [S'], old->new index map [S]).
    """
    in_cat = np.isin(seg_cls, cats)
    is_stuff = np.isin(seg_cls, stuff)
    new_cls = np.where(in_cat, seg_cls, void_cls)
    new_inst = np.where(in_cat & ~is_stuff, seg_inst, 0)
    if new_cls.size == 0:
        e = np.zeros(0, np.int64)
        return e, e, e, e
    rows, remap = np.unique(np.stack([new_cls, new_inst], 1), axis=0, return_inverse=True)
    remap = remap.reshape(-1)
    merged_area = np.bincount(remap, weights=area, minlength=rows.shape[0])
    return rows[:, 0], rows[:, 1], np.rint(merged_area).astype(np.int64), remap


def _robust_categories(p_cls, p_area, g_cls, g_area, m: int, things: set[int], stuff: set[int]
                       ) -> tuple[frozenset[int], frozenset[int]]:
    """The scene-PQ category filter: classes present on either side and robust on both (a class below
    ROBUST_FRACTION of the scene's pixels, strictly, on either side is not evaluated)."""
    p_counts, g_counts = _class_counts(p_cls, p_area), _class_counts(g_cls, g_area)
    present = set(p_counts) | set(g_counts)
    nonrobust = set()
    for counts in (p_counts, g_counts):
        if counts:
            cs = np.array(list(counts.keys()), np.int64)
            ns = np.array(list(counts.values()), np.int64)
            frac = _f32_ratio(ns, np.full_like(ns, m))
            nonrobust |= set(cs[frac < _F32_ROBUST].tolist())
    return frozenset((things & present) - nonrobust), frozenset((stuff & present) - nonrobust)


def _pq_columns(pc, pi, gc, gi, things: Iterable[int], stuff: Iterable[int]) -> PQResult:
    """The PQ core on four [M] columns (pred class, pred instance, GT class, GT instance)."""
    things, stuff = {int(c) for c in things}, {int(c) for c in stuff}
    if things & stuff:
        raise ValueError(f"things and stuff overlap: {sorted(things & stuff)}")
    pc, pi = _int_array(pc, "pred classes"), _int_array(pi, "pred instances")
    gc, gi = _int_array(gc, "GT classes"), _int_array(gi, "GT instances")
    m = int(pc.size)
    if not (pi.size == m and gc.size == m and gi.size == m):
        raise ValueError("prediction and GT pixel lists differ in length")

    p_cls, p_inst, p_area, p_codes = _segments(pc, pi)
    g_cls, g_inst, g_area, g_codes = _segments(gc, gi)

    kept_things, kept_stuff = _robust_categories(p_cls, p_area, g_cls, g_area, m, things, stuff)
    cats = sorted(kept_things | kept_stuff)
    void_cls = 1 + max([0] + cats)
    cats_a = np.array(cats, np.int64)
    stuff_a = np.array(sorted(kept_stuff), np.int64)

    # --- segments after collapsing stuff instances and non-categories to VOID ------------------------
    P_cls, _, P_area, p_map = _collapse(p_cls, p_inst, p_area, cats_a, stuff_a, void_cls)
    G_cls, G_inst, G_area, g_map = _collapse(g_cls, g_inst, g_area, cats_a, stuff_a, void_cls)
    nP, nG = P_cls.size, G_cls.size

    # --- intersections: unique (pred segment, GT segment) pairs ----------------------------------------
    if m:
        pair_key = p_codes.take(p_map * nG)  # [M]
        pair_key += g_codes.take(g_map)
        pairs = _Codes(pair_key)
        pair_ids, inter = pairs.uniq, pairs.counts
    else:
        pair_ids, inter = np.zeros(0, np.int64), np.zeros(0, np.int64)
    pp, gg = pair_ids // max(nG, 1), pair_ids % max(nG, 1)

    p_is_void = P_cls == void_cls  # at most one True: VOID is the single segment (void_cls, 0)
    g_is_void = G_cls == void_cls
    inter_with_gt_void = np.zeros(nP, np.int64)  # |p ∩ GT-VOID|
    inter_with_gt_void[pp[g_is_void[gg]]] = inter[g_is_void[gg]]
    inter_with_pred_void = np.zeros(nG, np.int64)  # |PRED-VOID ∩ g|
    inter_with_pred_void[gg[p_is_void[pp]]] = inter[p_is_void[pp]]

    cand = ~g_is_void[gg] & (P_cls[pp] == G_cls[gg])
    cp, cg, ci = pp[cand], gg[cand], inter[cand]
    union = P_area[cp] - inter_with_gt_void[cp] + G_area[cg] - inter_with_pred_void[cg] - ci
    iou = _f32_ratio(ci, union)  # float32, as torch int64 / int64
    hit = iou > _F32_HALF  # strict
    matched_p = np.zeros(nP, bool)
    matched_p[cp[hit]] = True
    matched_g = np.zeros(nG, bool)
    matched_g[cg[hit]] = True

    n_cat = len(cats)
    cat_index = {c: k for k, c in enumerate(cats)}
    def cat_of(cls: np.ndarray) -> np.ndarray:  # category class ids -> index into `cats`
        return np.searchsorted(cats_a, cls)

    iou_sum = np.zeros(n_cat, np.float64)
    tp = np.zeros(n_cat, np.int64)
    hit_cat = cat_of(G_cls[cg[hit]])
    np.add.at(iou_sum, hit_cat, iou[hit].astype(np.float64))
    np.add.at(tp, hit_cat, 1)

    # FN: unmatched GT segments unless mostly (> 0.5, strict) predicted as VOID.
    fn_mask = ~matched_g & ~g_is_void & ~(_f32_ratio(inter_with_pred_void, G_area) > _F32_HALF)
    fn = np.bincount(cat_of(G_cls[fn_mask]), minlength=n_cat)[:n_cat] if n_cat else np.zeros(0, np.int64)
    # FP: unmatched predicted segments unless mostly (> 0.5, strict) over GT VOID.
    fp_mask = ~matched_p & ~p_is_void & ~(_f32_ratio(inter_with_gt_void, P_area) > _F32_HALF)
    fp = np.bincount(cat_of(P_cls[fp_mask]), minlength=n_cat)[:n_cat] if n_cat else np.zeros(0, np.int64)

    den = tp + 0.5 * fp + 0.5 * fn  # exact in float64
    with np.errstate(divide="ignore", invalid="ignore"):
        pq_c = np.where(den > 0, iou_sum / den, 0.0)
        sq_c = np.where(tp > 0, iou_sum / np.maximum(tp, 1), 0.0)
        rq_c = np.where(den > 0, tp / den, 0.0)

    def mean(values: np.ndarray, sel: Iterable[int]) -> float:
        idx = [cat_index[c] for c in sel]
        return float(np.mean(values[idx])) if idx else _NAN

    per_class = {
        c: ClassPQ(tp=int(tp[k]), fp=int(fp[k]), fn=int(fn[k]), iou_sum=float(iou_sum[k]), pq=float(pq_c[k]),
                   sq=float(sq_c[k]), rq=float(rq_c[k]), thing=c in kept_things)
        for k, c in enumerate(cats)
    }
    return PQResult(
        pq=mean(pq_c, cats), sq=mean(sq_c, cats), rq=mean(rq_c, cats),
        pq_th=mean(pq_c, sorted(kept_things)), pq_st=mean(pq_c, sorted(kept_stuff)),
        per_class=per_class, things=kept_things, stuff=kept_stuff, void=(void_cls, 0), num_pixels=m,
    )


def panoptic_quality(pred: np.ndarray, gt: np.ndarray, things: Iterable[int] = THING_IDS,
                     stuff: Iterable[int] = STUFF_IDS) -> PQResult:
    """Scene PQ of concatenated *valid* pixels (the caller drops GT-class-0 pixels first, as upstream).

    pred, gt: [M, 2] int (class, instance). `things` / `stuff` are the candidate category sets (disjoint);
    classes in neither are unknown and become VOID.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.ndim != 2 or pred.shape[1] != 2 or pred.shape != gt.shape:
        raise ValueError(f"pred and gt must both be [M, 2] (class, instance); got {pred.shape} and {gt.shape}")
    return _pq_columns(pred[:, 0], pred[:, 1], gt[:, 0], gt[:, 1], things, stuff)


# ----------------------------------------------------------------------------------------------------
# mIoU
# ----------------------------------------------------------------------------------------------------


def confusion_matrix(pred_sem: np.ndarray, gt_sem: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """[C, C] int64 counts, rows = predicted class, cols = GT class, over pixels with GT class != 0.

    Upstream builds the matrix with the prediction in the row slot and keeps only pixels whose predicted
    class is in [0, C): a predicted class >= C (possible in a uint8 PNG) is silently left out of the
    matrix and of its total. IoU and the robustness rule are symmetric, so the orientation is otherwise
    irrelevant. GT classes must lie in [0, C).
    """
    p, g = _int_array(pred_sem, "pred_sem"), _int_array(gt_sem, "gt_sem")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt semantics differ in size: {p.size} vs {g.size}")
    valid = g != 0
    if not valid.all():
        p, g = p[valid], g[valid]
    if g.size and (int(g.min()) < 0 or int(g.max()) >= num_classes):
        raise ValueError(f"GT class ids must lie in [0, {num_classes}); found {int(g.min())}..{int(g.max())}")
    if p.size and (int(p.min()) < 0 or int(p.max()) >= num_classes):
        keep = (p >= 0) & (p < num_classes)
        p, g = p[keep], g[keep]
    idx = p.astype(np.int64) * num_classes
    idx += g
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _miou_from_cm(cm: np.ndarray) -> tuple[float, np.ndarray]:
    """mIoU and per-class IoU [C] (NaN where undefined or non-robust on both sides: AND rule)."""
    cm = cm.astype(np.float64)
    diag, rows, cols = np.diag(cm), cm.sum(1), cm.sum(0)
    total = cm.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = diag / (rows + cols - diag)
        nonrobust = (rows / total < ROBUST_FRACTION) & (cols / total < ROBUST_FRACTION)
    iou[nonrobust] = np.nan
    finite = ~np.isnan(iou)
    return (float(np.mean(iou[finite])) if finite.any() else _NAN), iou


def miou(pred_sem: np.ndarray, gt_sem: np.ndarray, num_classes: int = NUM_CLASSES, *,
         return_per_class: bool = False) -> float | tuple[float, np.ndarray]:
    """Scene mIoU as PanLift computes it: one confusion matrix over all pixels, AND-rule non-robust classes -> NaN,
    nanmean. Pixels with GT class 0 are ignored. With `return_per_class`, also the [C] per-class IoUs."""
    value, per_class = _miou_from_cm(confusion_matrix(pred_sem, gt_sem, num_classes))
    return (value, per_class) if return_per_class else value


# ----------------------------------------------------------------------------------------------------
# Folder level
# ----------------------------------------------------------------------------------------------------


def read_label(path: Path, image_dim: tuple[int, int] | None = IMAGE_DIM) -> np.ndarray:
    """A label PNG as PanLift's evaluator sees it: PIL open -> resize(image_dim, NEAREST) -> array [H, W].

    `image_dim` is PIL's (W, H); None keeps the stored size. Values keep their PNG dtype (all fit int64).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            if image_dim is not None and im.size != tuple(image_dim):
                im = im.resize(tuple(image_dim), Image.NEAREST)
            else:
                im.load()
            arr = np.array(im)
    except Exception as e:  # PIL raises many types on corrupt files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: cannot read label PNG ({msg}); re-export it as a single-channel PNG") from None
    if arr.ndim != 2:
        raise InputError(f"{path}: label PNG has shape {arr.shape}; expected one channel (class or instance ids)")
    return arr


def _stem_order(stems: Iterable[str]) -> list[str]:
    stems = list(stems)
    try:
        return sorted(stems, key=lambda s: (int(s), s))  # int() like upstream (accepts '0_0012' too)
    except ValueError:
        return sorted(stems)


def _read_test_stems(scene_dir: Path) -> list[str]:
    split_path = scene_dir / "splits.json"
    splits = read_document(split_path, "splits.json not found; the scene needs {\"train\": [...], \"test\": [...]}")
    if not isinstance(splits, dict) or not isinstance(splits.get("test"), list):
        raise InputError(f"{split_path}: needs a \"test\" list of frame stems")
    return list(dict.fromkeys(str(s) for s in splits["test"]))


def _class_name(c: int) -> str:
    return PANLIFT_CLASSES[c] if 0 <= c < len(PANLIFT_CLASSES) else f"class {c}"


def evaluate_scene(scene_dir: Path, pred_dir: Path, *, things: Iterable[int] = THING_IDS,
                   stuff: Iterable[int] = STUFF_IDS,
                   image_dim: tuple[int, int] | None = IMAGE_DIM) -> dict[str, Any]:
    """PQ^scene, SQ, RQ, PQ_th, PQ_st and mIoU of one scene's test-view predictions (fractions in [0, 1]).

    Reads `pred_dir/pred_semantics/<stem>.png` and `pred_dir/pred_surrogateid/<stem>.png` for the stems of
    `scene_dir/splits.json["test"]`; a test stem without `pred_semantics` is skipped like upstream does,
    but counted in `num_missing_predictions`. GT comes from `rs_semantics/` and `rs_instance/`.

    `sq` and `rq` are named correctly here; upstream's evaluate.py prints them swapped (RQ as "sq").
    NaN marks an undefined mean (no surviving category); pass the result through `json_safe` before
    writing JSON.
    """
    scene_dir, pred_dir = Path(scene_dir), Path(pred_dir)
    if not scene_dir.is_dir():
        raise InputError(f"{scene_dir}: scene folder not found; pass --scene <PanLift scene folder>")
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: prediction folder not found; pass --pred <folder with pred_semantics/>")
    sem_dir, inst_dir = pred_dir / "pred_semantics", pred_dir / "pred_surrogateid"
    for d in (sem_dir, inst_dir):
        if not d.is_dir():
            raise InputError(f"{d}: folder not found; the prediction folder needs pred_semantics/ and pred_surrogateid/")
    test = _read_test_stems(scene_dir)
    have = [s for s in test if (sem_dir / f"{s}.png").is_file()]
    if not have:
        raise InputError(f"{sem_dir}: no prediction for any of the {len(test)} test frames in "
                         f"{scene_dir / 'splits.json'}; expected files like {sem_dir / (test[0] if test else '<stem>')}.png")
    stems = _stem_order(have)

    def load(s: str) -> tuple[np.ndarray, ...]:
        g_sem = read_label(scene_dir / "rs_semantics" / f"{s}.png", image_dim)
        g_ins = read_label(scene_dir / "rs_instance" / f"{s}.png", image_dim)
        p_sem = read_label(sem_dir / f"{s}.png", image_dim)
        p_ins = read_label(inst_dir / f"{s}.png", image_dim)
        shapes = {g_sem.shape, g_ins.shape, p_sem.shape, p_ins.shape}
        if len(shapes) != 1:
            raise InputError(f"{sem_dir / (s + '.png')}: label maps of frame {s} differ in size {sorted(shapes)}; "
                             "evaluate with the default 512x512 resize")
        valid = g_sem != 0  # GT class 0 is void: those pixels never count
        pc, gc = p_sem[valid], g_sem[valid]
        if gc.size and (int(gc.min()) < 0 or int(gc.max()) >= NUM_CLASSES):
            raise InputError(f"{scene_dir / 'rs_semantics' / (s + '.png')}: GT class ids must lie in "
                             f"0..{NUM_CLASSES - 1}; found {int(gc.min())}..{int(gc.max())}")
        cm = confusion_matrix(pc, gc, NUM_CLASSES)  # additive over frames; small arrays stay in cache
        return pc, p_ins[valid], gc, g_ins[valid], cm

    # PNG decoding and resizing release the GIL: a few threads roughly halve the reading time.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        loaded = list(pool.map(load, stems))
    pc, pi, gc, gi, cms = zip(*loaded)
    del loaded
    pc, pi, gc, gi = (np.concatenate(x) for x in (pc, pi, gc, gi))

    things, stuff = frozenset(int(c) for c in things), frozenset(int(c) for c in stuff)
    pq = _pq_columns(pc, pi, gc, gi, things, stuff)
    del pc, pi, gc, gi
    miou_value, class_iou = _miou_from_cm(np.sum(cms, axis=0))

    per_class: dict[int, dict[str, Any]] = {}
    ids = set(pq.per_class) | {c for c in range(NUM_CLASSES) if not np.isnan(class_iou[c])}
    for c in sorted(ids):
        st = pq.per_class.get(c)
        per_class[c] = {
            "name": _class_name(c),
            "pq": st.pq if st else _NAN, "sq": st.sq if st else _NAN, "rq": st.rq if st else _NAN,
            "tp": st.tp if st else None, "fp": st.fp if st else None, "fn": st.fn if st else None,
            "iou": float(class_iou[c]) if c < NUM_CLASSES else _NAN,
            "thing": c in things,
        }
    return {
        "pq": pq.pq, "sq": pq.sq, "rq": pq.rq, "pq_th": pq.pq_th, "pq_st": pq.pq_st, "miou": miou_value,
        "num_frames": len(stems), "num_missing_predictions": len(test) - len(stems),
        "num_pixels": pq.num_pixels,
        "per_class": per_class,
    }


def headline(result: Mapping[str, Any]) -> dict[str, Any]:
    """The HEADLINE_KEYS of an `evaluate_scene` result (None when absent): what manifests and summaries keep."""
    return {k: result.get(k) for k in HEADLINE_KEYS}


def mean_over_scenes(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Dataset numbers = arithmetic mean of per-scene numbers (as the published tables).

    pq/sq/rq/miou use the plain mean (a NaN scene makes the mean NaN, as upstream would); pq_th/pq_st
    average over the scenes where they are defined, since a scene may have no surviving thing class.
    """
    results = list(results)

    def num(v: Any) -> float:
        return _NAN if v is None else float(v)

    out: dict[str, Any] = {"num_scenes": len(results)}
    for k in HEADLINE_KEYS:
        vals = [num(r.get(k)) for r in results]
        if k in ("pq_th", "pq_st"):
            vals = [v for v in vals if not math.isnan(v)]
        out[k] = float(np.mean(vals)) if vals else _NAN
    out["num_frames"] = int(sum(int(r.get("num_frames", 0)) for r in results))
    out["num_missing_predictions"] = int(sum(int(r.get("num_missing_predictions", 0)) for r in results))
    return out


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, dict keys -> str: strict JSON for `write_json`."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    return obj


def format_pct(v: Any) -> str:
    """A score in [0, 1] as the published tables print it (×100, one decimal); '–' when absent or NaN."""
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100.0 * float(v):.1f}"


def print_report(result: Mapping[str, Any], console=None) -> None:
    """Per-class table and summary line of `evaluate_scene`'s result (×100, like the published tables)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="Scene-level panoptic quality (PanLift protocol, ×100)")
    for col in ("id", "class", "kind", "PQ", "SQ", "RQ", "TP", "FP", "FN", "IoU"):
        table.add_column(col, justify="left" if col in ("class", "kind") else "right")
    for cid, r in sorted(result.get("per_class", {}).items(), key=lambda kv: int(kv[0])):
        cnt = [("–" if r.get(k) is None else str(r[k])) for k in ("tp", "fp", "fn")]
        table.add_row(str(cid), str(r.get("name", "")), "thing" if r.get("thing") else "stuff",
                      format_pct(r.get("pq")), format_pct(r.get("sq")), format_pct(r.get("rq")), *cnt, format_pct(r.get("iou")))
    console.print(table)
    console.print(
        f"PQ {format_pct(result.get('pq'))}  SQ {format_pct(result.get('sq'))}  RQ {format_pct(result.get('rq'))}  "
        f"PQ_th {format_pct(result.get('pq_th'))}  PQ_st {format_pct(result.get('pq_st'))}  mIoU {format_pct(result.get('miou'))}  "
        f"· {result.get('num_frames', '?')} test frames"
        + (f", {result['num_missing_predictions']} without prediction (skipped)"
           if result.get("num_missing_predictions") else "")
    )
    console.print("[dim]SQ = mean IoU of matches, RQ = TP/(TP+FP/2+FN/2); upstream's evaluate.py prints these two swapped.[/dim]")


def eval_command(scene: Path, pred: Path, json: Path | None = None) -> dict[str, Any]:
    """`python -m pipeline eval --scene SCENE_DIR --pred PRED_DIR [--json OUT.json]`."""
    if json is not None:  # before the work: a folder or a file this command did not write is never replaced
        json = check_output_file(json, "pipeline eval")
    result = evaluate_scene(Path(scene), Path(pred))
    print_report(result)
    if json is not None:
        write_json(json, {OUTPUT_FILE_KEY: "pipeline eval", **json_safe(result)})
    return result
