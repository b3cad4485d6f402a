"""Per-frame masks (ids not consistent across views) -> scene-wide instances, through the trained Gaussians.

Every per-view thing segment (view v, id j) is its own label in ONE LUDVIG pass over the train views: the same
α·T weights the uplift blends with (uplift.ludvig's accumulation), one forward-cost pass per view whatever the
number of labels. Stuff pixels are already scene-wide (one segment per stuff class) and ride in the same pass.
Per view and Gaussian i the sums give q_i(s) = w_i(s) / Σ_{s' in v} w_i(s'), the share of i's footprint in view
v that lies in segment s (kept sparse: only Gaussians that view v sees with weight >= `min_visibility`).

* affinity: overlap O(s, t) = Σ_i q_i(s)·q_i(t) (sparse Sᵀ S), score = Dice 2 O(s, t) / (O(s, s) + O(t, t)), which is
  1 for two segments with the same soft shares however small the object (IoU of the masses Σ q is the option);
* clustering (things; stuff is merged by class): edges by decreasing score join two clusters unless they hold
  segments of one same view (cannot-link: two segments of one view are two objects, which keeps an
  under-segmented view's merged segment from fusing its two objects); edges between different thing classes
  need twice the overlap threshold. Then a small cluster whose Gaussians mostly belong to a bigger one
  (containment >= `attach_containment`) joins it: an object split in two in some view.
* class: one per instance, the pixel-weighted vote of its segments (void never wins);
* uplift: LUDVIG is linear in the one-hot labels, so an instance's numerator is the sum of its segments' and
  the consistent uplift comes out of the same pass exactly, with no second pass over the views.

Memory: the per-view sums are dense only for one view at a time ([N, labels in that view]); what is kept is
sparse, one entry per (Gaussian, segment) with weight > 0. Nothing is random, so the result is deterministic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from pipeline.common.classes import THING_IDS
from pipeline.common.labels import STUFF_ID_OFFSET
from pipeline.common.progress import progress_bar

from .ludvig import UpliftResult, _accumulate, _use_direct, gaussian_geometry

__all__ = ["AssociateConfig", "Association", "associate", "cluster_segments", "cluster_from_shares", "view_segments",
           "result_from_sums"]


@dataclass(frozen=True)
class AssociateConfig:
    """Knobs of the association (defaults used by the pipeline's per_frame kind)."""

    min_overlap: float = 0.3
    """Overlap score of Gaussian weight above which two thing segments of different views are one instance."""
    score: str = "dice"
    """Overlap score: "iou" = O_st / (m_s + m_t - O_st) with masses m = Σ q; "dice" = 2 O_st / (O_ss + O_tt), which
    stays 1 for two segments with the same soft shares (small objects, whose Gaussians are mostly shared with
    their surroundings, keep a high score)."""
    attach_containment: float = 0.6
    """A small cluster joins a bigger one when this share of its Gaussian weight lies on the bigger one."""
    min_visibility: float = 1e-3
    """Σ α·T of a Gaussian in a view below which it does not take part in that view's affinities."""
    chunk_channels: int = 64
    """Channels per rasterisation block on the gradient route (gsplat)."""


@dataclass
class Association:
    """Scene-wide instances from per-view segments, and the uplift that comes with them."""

    result: UpliftResult  # LUDVIG result over the scene-wide instance ids
    id_to_class: dict[int, int]  # instance id -> class (things 1..K, stuff STUFF_ID_OFFSET + class)
    segment_instance: dict[tuple[int, int], int]  # (view index, per-view id) -> instance id
    stats: dict = field(default_factory=dict)

    def consistent_maps(self, maps: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The per-view id maps rewritten with scene-wide instance ids (0 stays void)."""
        out = []
        for v, m in enumerate(maps):
            m = np.asarray(m, dtype=np.int64)
            uniq, inv = np.unique(m, return_inverse=True)
            lut = np.array([0 if u == 0 else (u if u >= STUFF_ID_OFFSET else self.segment_instance.get((v, int(u)), 0))
                            for u in uniq.tolist()], dtype=np.int64)
            out.append(lut[inv].reshape(m.shape))
        return out


def view_segments(maps: Sequence[np.ndarray], class_maps: Sequence[np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Table of per-view thing segments: view [T], per-view id [T], class [T] (pixel majority, void last),
    class histogram [T, 256] (pixel counts). Ids >= STUFF_ID_OFFSET are scene-wide stuff, not listed."""
    views, ids, hists = [], [], []
    for v, (m, c) in enumerate(zip(maps, class_maps)):
        m = np.asarray(m, dtype=np.int64)
        c = np.asarray(c, dtype=np.int64)
        sel = (m > 0) & (m < STUFF_ID_OFFSET)
        if not sel.any():
            continue
        u, inv = np.unique(m[sel], return_inverse=True)
        h = np.zeros((len(u), 256), np.int64)
        np.add.at(h, (inv, np.clip(c[sel], 0, 255)), 1)
        views.append(np.full(len(u), v, np.int64))
        ids.append(u)
        hists.append(h)
    if not views:
        z = np.zeros(0, np.int64)
        return z, z, z, np.zeros((0, 256), np.int64)
    hist = np.concatenate(hists)
    return np.concatenate(views), np.concatenate(ids), _vote(hist), hist


def _vote(hist: np.ndarray) -> np.ndarray:
    """[T, 256] class counts -> [T] majority class; void (0) only when there is nothing else; ties -> smaller id."""
    h = hist.astype(np.float64).copy()
    has = h[:, 1:].sum(1) > 0
    h[has, 0] = -1
    return h.argmax(1).astype(np.int64)


def cluster_segments(seg_view: np.ndarray, seg_class: np.ndarray, pairs: np.ndarray, score: np.ndarray,
                     cfg: AssociateConfig = AssociateConfig()) -> np.ndarray:
    """[T] cluster index (0..K-1, in order of first segment) of thing segments.

    pairs [E, 2] segment indices (s < t), score [E] (their overlap score). Greedy: strongest edges first, cannot-link within a view.
    """
    T = len(seg_view)
    parent = np.arange(T)
    views = [{int(v)} for v in seg_view]

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    thr = np.where(seg_class[pairs[:, 0]] == seg_class[pairs[:, 1]], cfg.min_overlap, 2 * cfg.min_overlap) \
        if len(pairs) else np.zeros(0)
    ok = score >= thr
    order = np.lexsort((pairs[ok, 1], pairs[ok, 0], -score[ok]))
    for s, t in pairs[ok][order].tolist():
        a, b = find(s), find(t)
        if a == b or not views[a].isdisjoint(views[b]):
            continue
        if len(views[a]) < len(views[b]):
            a, b = b, a
        parent[b] = a
        views[a] |= views[b]
        views[b] = set()
    roots = np.array([find(s) for s in range(T)], dtype=np.int64)
    _, first = np.unique(roots, return_index=True)
    rank = {int(roots[f]): k for k, f in enumerate(sorted(first))}
    return np.array([rank[int(r)] for r in roots], dtype=np.int64)


def _attach(cluster: np.ndarray, S, mass: np.ndarray, cfg: AssociateConfig) -> np.ndarray:
    """Fold small clusters into the bigger cluster holding most of their Gaussian weight (over-segmentation)."""
    import scipy.sparse as sp

    K = int(cluster.max()) + 1 if len(cluster) else 0
    if K < 2:
        return cluster
    T = len(cluster)
    A = sp.csr_matrix((np.ones(T), (np.arange(T), cluster)), shape=(T, K))
    P = (S @ A).tocsr()  # [N, K] Gaussian weight per cluster
    rows = np.asarray(P.sum(1)).ravel()
    P = sp.diags(1.0 / np.maximum(rows, 1e-12)) @ P  # each Gaussian's distribution over clusters
    C = sp.diags(1.0 / np.maximum(mass, 1e-12)) @ (S.T @ P)  # [T, K] share of segment s on cluster k (sparse)
    n_views = np.bincount(cluster, minlength=K)  # one segment per view and cluster after the greedy step
    M = (sp.diags(1.0 / n_views) @ (A.T @ C)).tolil()  # [K, K] mean containment of cluster k's segments in j
    M.setdiag(0)
    M = M.tocsr()
    best = np.asarray(M.argmax(axis=1)).ravel()
    val = np.asarray(M.max(axis=1).toarray()).ravel()
    target = np.arange(K)
    for k in np.argsort(n_views, kind="stable"):
        j = int(best[k])
        if val[k] >= cfg.attach_containment and n_views[j] >= 2 * n_views[k]:
            target[k] = j
    for k in range(K):  # follow chains to their end
        j, seen = k, set()
        while target[j] != j and j not in seen:
            seen.add(j)
            j = target[j]
        target[k] = j
    _, new = np.unique(target[cluster], return_inverse=True)
    return new.astype(np.int64)


def associate(gaussians, cameras, maps: Sequence[np.ndarray], class_maps: Sequence[np.ndarray], *,
              cfg: AssociateConfig = AssociateConfig(), topk: int | None = None, backend: str = "auto",
              method: str = "auto", progress: bool = False) -> Association:
    """Associate per-view segments into scene-wide instances and uplift them (see the module docstring).

    maps: C arrays [H, W] int, per-view thing ids (1..STUFF_ID_OFFSET-1, any numbering per view), stuff as
    STUFF_ID_OFFSET + class, 0 = void; class_maps: C arrays [H, W] int class per pixel; cameras: C views.
    """
    from splat.render import render as render_fn

    geom = gaussian_geometry(gaussians)
    n = int(geom["means"].shape[0])
    n_cam = int(cameras.viewmats.shape[0])
    if len(maps) != n_cam or len(class_maps) != n_cam:
        raise ValueError(f"{len(maps)} id maps and {len(class_maps)} class maps for {n_cam} cameras; give one of each "
                         "per training camera")
    for i, m in enumerate(maps):
        if tuple(np.shape(m)) != (int(cameras.height), int(cameras.width)) or np.shape(class_maps[i]) != np.shape(m):
            raise ValueError(f"label map {i} is {np.shape(m)} (classes {np.shape(class_maps[i])}) but the cameras render "
                             f"{cameras.height}x{cameras.width}; resize the labels nearest-neighbour to match")
    direct = _use_direct(method, backend, geom["means"].device)
    t0 = time.perf_counter()
    seg_view, seg_id, seg_class, seg_hist = view_segments(maps, class_maps)
    T = len(seg_view)
    stuff_ids = np.unique(np.concatenate([np.unique(np.asarray(m)) for m in maps]))
    stuff_ids = stuff_ids[stuff_ids >= STUFF_ID_OFFSET].astype(np.int64)
    starts = np.searchsorted(seg_view, np.arange(n_cam + 1))  # segments of view v: [starts[v], starts[v+1])
    # -- one LUDVIG pass: per view, labels = that view's thing segments + the stuff classes present ------------
    raw_g, raw_l, raw_w = [], [], []  # raw sums, label = segment index (things) or T + stuff index
    q_g, q_s, q_w = [], [], []  # per-view shares of thing segments (affinity)
    with progress_bar(n_cam, "associate (LUDVIG pass)", unit="view", enabled=progress) as bar:
        for v in range(n_cam):
            m = np.asarray(maps[v], dtype=np.int64)
            things = seg_id[starts[v]:starts[v + 1]]
            present_stuff = np.intersect1d(np.unique(m), stuff_ids)
            ids_v = np.concatenate([things, present_stuff])  # ascending: thing ids < STUFF_ID_OFFSET
            glob = np.concatenate([np.arange(starts[v], starts[v + 1]), T + np.searchsorted(stuff_ids, present_stuff)])
            if len(ids_v):
                acc = _accumulate(render_fn, geom, cameras[v], [m], ids_v, 0, len(ids_v), cfg.chunk_channels,
                                  backend, bar, direct).float().cpu()  # [N, L_v]; advances the bar
                g, c = torch.nonzero(acc > 0, as_tuple=True)
                w = acc[g, c]
                raw_g.append(g.numpy().astype(np.int32))
                raw_l.append(glob[c.numpy()].astype(np.int32))
                raw_w.append(w.numpy())
                den_v = acc.sum(1)  # [N]
                nt = len(things)
                sel = (c < nt) & (den_v[g] >= cfg.min_visibility)
                q_g.append(raw_g[-1][sel.numpy()])
                q_s.append(raw_l[-1][sel.numpy()])
                q_w.append((w[sel] / den_v[g[sel]]).numpy())
            else:
                bar.update(1)
    t_pass = time.perf_counter() - t0
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    raw_g, raw_l, raw_w = cat(raw_g, np.int32), cat(raw_l, np.int32), cat(raw_w, np.float32)
    q_g, q_s, q_w = cat(q_g, np.int32), cat(q_s, np.int32), cat(q_w, np.float32)
    sparse_bytes = int(raw_g.nbytes + raw_l.nbytes + raw_w.nbytes + q_g.nbytes + q_s.nbytes + q_w.nbytes)
    # -- affinity and clustering (things) ----------------------------------------------------------------------
    t1 = time.perf_counter()
    cluster, cstats = cluster_from_shares(n, seg_view, seg_class, q_g, q_s, q_w, cfg)
    K = int(cluster.max()) + 1 if T else 0
    inst_class = _vote(np.stack([seg_hist[cluster == k].sum(0) for k in range(K)])) if K else np.zeros(0, np.int64)
    # -- the consistent uplift out of the same sums --------------------------------------------------------------
    inst_ids = np.arange(1, K + 1, dtype=np.int64)
    label_ids = np.concatenate([inst_ids, stuff_ids])  # ascending
    col = np.concatenate([cluster, K + np.arange(len(stuff_ids))])  # label index -> column of label_ids
    result = result_from_sums(raw_g, col[raw_l] if len(raw_l) else raw_l, raw_w, n, label_ids, topk, n_cam)
    id_to_class = {int(i): int(c) for i, c in zip(inst_ids, inst_class)}
    id_to_class.update({int(s): int(s - STUFF_ID_OFFSET) for s in stuff_ids})
    segment_instance = {(int(v), int(j)): int(inst_ids[k]) for v, j, k in zip(seg_view, seg_id, cluster)}
    t_assoc = time.perf_counter() - t1
    stats = {"num_segments": T, "num_stuff_classes": int(len(stuff_ids)), "num_instances": K, **cstats,
             "ludvig_pass_s": round(t_pass, 3), "association_s": round(t_assoc, 3),
             "sparse_entries": int(len(raw_w) + len(q_w)), "sparse_mb": round(sparse_bytes / 2**20, 2),
             "things": int(sum(c in THING_IDS for c in inst_class.tolist()))}
    return Association(result=result, id_to_class=dict(sorted(id_to_class.items())),
                       segment_instance=segment_instance, stats=stats)


def cluster_from_shares(n: int, seg_view: np.ndarray, seg_class: np.ndarray, q_g: np.ndarray, q_s: np.ndarray,
                        q_w: np.ndarray, cfg: AssociateConfig = AssociateConfig()) -> tuple[np.ndarray, dict]:
    """[T] instance index of each thing segment from the sparse shares q (Gaussian q_g, segment q_s, share q_w):
    affinities Sᵀ S, greedy clustering with cannot-link, then folding small clusters into bigger ones."""
    import scipy.sparse as sp

    T = len(seg_view)
    if T == 0:
        return np.zeros(0, np.int64), {"num_clusters_before_attach": 0, "num_edges": 0, "num_edges_above_threshold": 0}
    S = sp.csr_matrix((q_w, (q_g, q_s)), shape=(n, T))  # [N, T]
    mass = np.asarray(S.sum(0)).ravel()  # [T]
    O = (S.T @ S).tocoo()  # [T, T] overlaps
    keep = (O.row < O.col) & (seg_view[O.row] != seg_view[O.col])
    s_, t_, o_ = O.row[keep], O.col[keep], O.data[keep]
    del O
    if cfg.score == "dice":
        sq = np.asarray(S.multiply(S).sum(0)).ravel()  # [T] O_ss
        score = 2 * o_ / np.maximum(sq[s_] + sq[t_], 1e-12)
    else:
        score = o_ / np.maximum(mass[s_] + mass[t_] - o_, 1e-12)
    cluster = cluster_segments(seg_view, seg_class, np.stack([s_, t_], 1).astype(np.int64), score, cfg)
    n_greedy = int(cluster.max()) + 1
    cluster = _attach(cluster, S, mass, cfg)
    return cluster, {"num_clusters_before_attach": n_greedy, "num_edges": int(len(score)),
                     "num_edges_above_threshold": int((score >= cfg.min_overlap).sum())}


def result_from_sums(g: np.ndarray, c: np.ndarray, w: np.ndarray, n: int, label_ids: np.ndarray,
                      topk: int | None, num_views: int) -> UpliftResult:
    """LUDVIG result from sparse numerator entries (Gaussian g, column c, weight w), dense or top-k."""
    import scipy.sparse as sp

    K = len(label_ids)
    num = sp.csr_matrix((w.astype(np.float64), (g, c)), shape=(n, max(K, 1)))  # duplicates are summed
    den = np.asarray(num.sum(1)).ravel()
    has = den > 0
    inv = np.where(has, 1.0 / np.where(has, den, 1.0), 0.0)
    norm = (sp.diags(inv) @ num).tocsr()
    if topk is None or topk >= K:
        weights = norm.toarray()[:, :K].astype(np.float32)
        arg = weights.argmax(1) if K else np.zeros(n, np.int64)
        conf = weights.max(1) if K else np.zeros(n, np.float32)
        label = np.where(has, label_ids[arg] if K else -1, -1).astype(np.int64)
        return UpliftResult(label_ids=label_ids, den=den.astype(np.float32), label=label,
                            confidence=np.where(has, conf, 0).astype(np.float32), weights=weights, num_views=num_views)
    ids = np.full((n, topk), -1, np.int64)
    tw = np.zeros((n, topk), np.float32)
    for r in np.nonzero(has)[0]:  # rows are short (a few instances each)
        lo, hi = norm.indptr[r], norm.indptr[r + 1]
        cols, vals = norm.indices[lo:hi], norm.data[lo:hi]
        o = np.lexsort((cols, -vals))[:topk]
        ids[r, :len(o)] = label_ids[cols[o]]
        tw[r, :len(o)] = vals[o]
    label = np.where(has, ids[:, 0], -1)
    return UpliftResult(label_ids=label_ids, den=den.astype(np.float32), label=label, confidence=tw[:, 0],
                        topk_ids=ids, topk_weights=tw, num_views=num_views)
