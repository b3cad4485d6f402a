"""PanSt3R mask merging: multi-view query masks -> one consistent panoptic id map per view.

Same semantics as the official merges: mask logits go through sigmoid, then bilinear upsampling
(align_corners=False) to the network resolution; areas are counted jointly over all views; ties between
queries go to the lowest index. Unlike the official code, which upsamples every mask of every view at once
([Q, V, H, W], ~8 GB for 50 views), everything here streams one view and one chunk of queries at a time:
only per-view owner / confidence maps and per-query counters are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import qubo as _qubo

__all__ = ["PanopticResult", "panoptic_standard", "panoptic_qubo", "upsample_probs", "STANDARD_DEFAULTS"]

# Official defaults per version: mask_threshold, overlap_threshold, niters.
STANDARD_DEFAULTS = {"v2": (0.25, 0.5, 2), "v1": (0.5, 0.8, 1)}

_CHUNK_BYTES = 64 << 20  # upper bound for one [chunk, H, W] float32 block of upsampled masks


@dataclass
class PanopticResult:
    """Merged panoptic prediction at network resolution; ids are shared across views (0 = void)."""

    pan: list[np.ndarray] = field(default_factory=list)  # V × [H, W] int32
    conf: list[np.ndarray] = field(default_factory=list)  # V × [H, W] float32
    segments: list[dict] = field(default_factory=list)  # one dict per id, in id order


def upsample_probs(mask_logits: torch.Tensor, true_shape: tuple[int, int]) -> torch.Tensor:
    """[k, h, w] mask logits -> [k, H, W] float32 probabilities: sigmoid first, then bilinear resize.

    Queries are the channels of one [1, k, h, w] image, as in the official call. PyTorch's CPU kernel
    vectorises over channels and handles a remainder of k mod 8 with scalar code that rounds differently
    (1 ulp); padding k to a multiple of 16 keeps every query on the vectorised path, so a chunk of queries
    gives bit-identical values to upsampling all 200 (a multiple of 8) at once.
    """
    p = torch.sigmoid(mask_logits.float())
    if tuple(p.shape[-2:]) == tuple(true_shape):
        return p
    k = p.shape[0]
    pad = (-k) % 16
    if pad and k:
        p = torch.cat([p, p[-1:].expand(pad, -1, -1)], 0)
    return F.interpolate(p[None], size=tuple(true_shape), mode="bilinear", align_corners=False)[0, :k]


def _chunks(idx: torch.Tensor, hw: tuple[int, int]) -> Iterator[tuple[int, torch.Tensor]]:
    """Split query indices into chunks whose upsampled masks fit in _CHUNK_BYTES; yields (offset, indices)."""
    step = max(16, _CHUNK_BYTES // (4 * hw[0] * hw[1]) // 16 * 16)  # multiple of 16: see upsample_probs
    for s in range(0, idx.numel(), step):
        yield s, idx[s:s + step]


def _check_inputs(pred_logits: torch.Tensor, pred_masks: Sequence[torch.Tensor]) -> None:
    if pred_logits.ndim != 2:
        raise ValueError(f"pred_logits must be [Q, C], got {tuple(pred_logits.shape)}")
    if len(pred_masks) == 0:
        raise ValueError("pred_masks is empty: need one [Q, h, w] tensor per view")
    for v, m in enumerate(pred_masks):
        if m.ndim != 3 or m.shape[0] != pred_logits.shape[0]:
            raise ValueError(f"pred_masks[{v}] must be [Q={pred_logits.shape[0]}, h, w], got {tuple(m.shape)}")


@torch.no_grad()
def _owners(mask_logits: torch.Tensor, cand: torch.Tensor, weight: Optional[torch.Tensor], hw: tuple[int, int],
            count_ge: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Per-pixel winner among candidate queries of one view, streamed over query chunks.

    mask_logits: [Q, h, w]; cand: [K] query indices (winner ties -> lowest position in cand);
    weight: [K] per-candidate factor applied before the argmax (class score) or None.
    Returns owner [H, W] int64 (position in cand), val [H, W] float32 (the owner's mask probability) and,
    when count_ge is set, counts [K] of pixels with probability >= count_ge.
    """
    best = torch.full(hw, -float("inf"))
    owner = torch.zeros(hw, dtype=torch.int64)
    val = torch.zeros(hw)
    counts = torch.zeros(cand.numel(), dtype=torch.int64) if count_ge is not None else None
    for off, idx in _chunks(cand, hw):
        m = upsample_probs(mask_logits[idx], hw)  # [k, H, W]
        p = m * weight[off:off + idx.numel(), None, None] if weight is not None else m
        cmax, carg = p.max(0)  # ties -> first index in the chunk
        upd = cmax > best  # strict: earlier chunks win ties
        best = torch.where(upd, cmax, best)
        owner = torch.where(upd, carg + off, owner)
        val = torch.where(upd, m.gather(0, carg[None])[0], val)
        if counts is not None:
            counts[off:off + idx.numel()] = (m >= count_ge).sum((1, 2))
    return owner, val, counts


@torch.no_grad()
def panoptic_standard(pred_logits: torch.Tensor, pred_masks: Sequence[torch.Tensor], true_shape: tuple[int, int], *,
                      version: str = "v2", cls_threshold: float = 0.1, mask_threshold: Optional[float] = None,
                      overlap_threshold: Optional[float] = None, niters: Optional[int] = None,
                      void_confidence: float = 0.1) -> PanopticResult:
    """MaskFormer-style merge (official `panoptic_inference_v2`, or `_v1` with version="v1").

    pred_logits: [Q, C] class logits (sigmoid label mode); pred_masks: V × [Q, h, w] mask logits;
    true_shape: (H, W). Queries with max class probability > cls_threshold are candidates; each pixel goes
    to the candidate maximising score·mask; a candidate becomes a segment if the pixels it wins with
    mask >= mask_threshold are at least overlap_threshold of its own mask >= 0.5 area (both over all views).
    niters passes: each later pass re-runs the assignment among the previous pass's segments only.
    """
    if version not in STANDARD_DEFAULTS:
        raise ValueError(f"unknown version {version!r}; use 'v2' or 'v1'")
    _check_inputs(pred_logits, pred_masks)
    d_mask, d_overlap, d_iters = STANDARD_DEFAULTS[version]
    mask_threshold = d_mask if mask_threshold is None else mask_threshold
    overlap_threshold = d_overlap if overlap_threshold is None else overlap_threshold
    niters = d_iters if niters is None else niters
    hw = (int(true_shape[0]), int(true_shape[1]))

    probs = torch.sigmoid(pred_logits.float())  # [Q, C]
    scores, labels = probs.max(-1)  # [Q]
    cand = torch.nonzero(scores > cls_threshold).flatten()  # [K] original query indices, ascending
    orig_area = None  # [Q] pixels with mask >= 0.5 over all views, filled on the first pass
    owners: list[tuple[torch.Tensor, torch.Tensor]] = []
    selected = torch.zeros(0, dtype=torch.bool)
    won = np.zeros(0, dtype=np.int64)
    for it in range(max(1, niters)):
        owners = []
        if cand.numel() == 0:
            selected = torch.zeros(0, dtype=torch.bool)
            break
        won = np.zeros(cand.numel(), dtype=np.int64)  # [K] owned pixels with mask >= mask_threshold
        first = orig_area is None
        area_now = np.zeros(cand.numel(), dtype=np.int64)
        for masks_v in pred_masks:
            owner, val, cnt = _owners(masks_v, cand, scores[cand], hw, count_ge=0.5 if first else None)
            keep = val >= mask_threshold
            won += np.bincount(owner[keep].numpy(), minlength=cand.numel())
            if first:
                area_now += cnt.numpy()
            owners.append((owner.to(torch.int16 if cand.numel() < 32768 else torch.int32), val))
        if first:
            orig_area = np.zeros(scores.numel(), dtype=np.int64)
            orig_area[cand.numpy()] = area_now
        orig = orig_area[cand.numpy()]
        ratio = np.divide(won, orig, out=np.zeros(won.shape, dtype=np.float64), where=orig > 0)
        sel = (won > 0) & (orig > 0) & (ratio >= overlap_threshold)
        selected = torch.from_numpy(sel)
        if it + 1 < max(1, niters):
            cand = cand[selected]

    res = PanopticResult()
    if not owners or not bool(selected.any()):
        for _v in pred_masks:
            res.pan.append(np.zeros(hw, dtype=np.int32))
            res.conf.append(np.full(hw, void_confidence, dtype=np.float32))
        return res
    ids = torch.cumsum(selected.to(torch.int32), 0) * selected  # [K] segment id per candidate, 0 if dropped
    for owner, val in owners:
        owner = owner.long()
        assigned = (val >= mask_threshold) & selected[owner]
        res.pan.append(torch.where(assigned, ids[owner], 0).to(torch.int32).numpy())
        res.conf.append(torch.where(assigned, val, torch.tensor(void_confidence)).to(torch.float32).numpy())
    for k in torch.nonzero(selected).flatten().tolist():
        q = int(cand[k])
        res.segments.append({"id": int(ids[k]), "query_id": q, "category_id": int(labels[q]),
                             "score": float(scores[q]), "area": int(won[k])})
    return res


@torch.no_grad()
def panoptic_qubo(pred_logits: torch.Tensor, pred_masks: Sequence[torch.Tensor], true_shape: tuple[int, int], *,
                  seed: int = 0, prob_threshold: float = 0.01, penalty: float = 1.0, cutoff: float = 0.0,
                  lambda_reg: float = 1e-3, backend: str = "auto", **solver) -> PanopticResult:
    """QUBO merge (official `panoptic_inference_qubo`); the selection comes from the seeded `qubo.solve`.

    All queries are candidates (no class pre-filter). The selected masks split every pixel by their soft
    probability (argmax, ties -> lowest query); an owner whose cls_prob · mean winning probability is below
    prob_threshold leaves its pixels void. `conf` is the max selected probability, void pixels included.
    Segments carry the ORIGINAL query index as query_id (query_id_in_selection is the official field).
    solver: options of `qubo.solve` (num_starts, num_redo, num_iters, t0, t_end, insert_passes).
    """
    _check_inputs(pred_logits, pred_masks)
    hw = (int(true_shape[0]), int(true_shape[1]))

    def views() -> Iterator[torch.Tensor]:
        for masks_v in pred_masks:
            yield upsample_probs(masks_v, hw)  # [Q, H, W], one view at a time

    Q = _qubo.build_qubo(views(), penalty=penalty, cutoff=cutoff, pad_hw=hw)
    x = _qubo.solve(Q, lambda_reg=lambda_reg, seed=seed, backend=backend, **solver)
    sel = torch.from_numpy(np.flatnonzero(x))  # [S] original query indices
    res = PanopticResult()
    if sel.numel() == 0:  # the official code crashes here; we return all void
        for _v in pred_masks:
            res.pan.append(np.zeros(hw, dtype=np.int32))
            res.conf.append(np.zeros(hw, dtype=np.float32))
        return res
    cls_prob, cls_id = torch.sigmoid(pred_logits.float()[sel]).max(-1)  # [S]
    owners = []
    count = np.zeros(sel.numel(), dtype=np.int64)
    conf_sum = np.zeros(sel.numel(), dtype=np.float64)
    for masks_v in pred_masks:
        owner, val, _c = _owners(masks_v, sel, None, hw)
        o = owner.numpy().ravel()
        count += np.bincount(o, minlength=sel.numel())
        conf_sum += np.bincount(o, weights=val.numpy().ravel().astype(np.float64), minlength=sel.numel())
        owners.append((owner, val))
    ids = np.zeros(sel.numel(), dtype=np.int32)
    nid = 0
    for i in np.flatnonzero(count > 0):
        mask_conf = conf_sum[i] / count[i]
        cp = float(cls_prob[i])
        if cp * mask_conf < prob_threshold:
            continue
        nid += 1
        ids[i] = nid
        res.segments.append({"id": nid, "query_id": int(sel[i]), "query_id_in_selection": int(i),
                             "category_id": int(cls_id[i]), "score": cp, "class_prob": cp,
                             "mask_conf": float(mask_conf), "area": int(count[i])})
    ids_t = torch.from_numpy(ids)
    for owner, val in owners:
        res.pan.append(ids_t[owner].numpy().astype(np.int32))
        res.conf.append(val.numpy().astype(np.float32))
    return res
