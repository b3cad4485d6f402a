"""Keyframe choice for PanSt3R: which views build the memory and carry the queries.

* "linspace" is the official default: `np.linspace(0, V-1, K, dtype=int)`, so view 0 (the reference /
  world frame) always comes first.
* "fps" replaces the official ASMK retrieval (which needs a retrieval checkpoint we do not have) by
  farthest-point sampling on a global image descriptor: the MUSt3R encoder tokens of each view, mean-pooled
  and L2-normalised (`image_descriptors`); distance = 1 − cosine similarity. The official FPS starts at a
  random view; here the start is view 0 for seed 0 (deterministic) and a `default_rng(seed)` draw otherwise.
  The chosen keyframes are then ordered greedily as the official code does: first the one with the largest
  summed similarity to the other keyframes, then repeatedly the unplaced keyframe most similar to any placed
  one (ties -> lowest view index).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

__all__ = ["select_keyframes", "image_descriptors", "farthest_point_sampling", "order_keyframes"]


def image_descriptors(tokens: torch.Tensor) -> np.ndarray:
    """Global descriptor per view: tokens [V, N, D] -> mean over N, L2-normalised -> [V, D] float64."""
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be [V, N, D], got {tuple(tokens.shape)}")
    d = tokens.detach().double().mean(1).cpu().numpy()
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)


def farthest_point_sampling(dist: np.ndarray, k: int, start: int = 0) -> list[int]:
    """Greedy FPS on a [V, V] distance matrix: each new point maximises its distance to the chosen set."""
    v = dist.shape[0]
    chosen = [int(start)]
    dmin = dist[start].astype(np.float64).copy()
    dmin[start] = -np.inf
    while len(chosen) < min(k, v):
        nxt = int(np.argmax(dmin))  # ties -> lowest index
        chosen.append(nxt)
        dmin = np.minimum(dmin, dist[nxt])
        dmin[chosen] = -np.inf
    return chosen


def order_keyframes(sim: np.ndarray, chosen: list[int]) -> list[int]:
    """Official ordering: max summed similarity first, then greedily the most similar to any placed one."""
    chosen = sorted(int(c) for c in chosen)
    if len(chosen) <= 1:
        return chosen
    sub = sim[np.ix_(chosen, chosen)].astype(np.float64)  # [K, K]
    off = sub - np.diag(np.diag(sub))
    first = int(np.argmax(off.sum(1)))
    placed = [first]
    best = off[first].copy()  # similarity of each keyframe to its most similar placed one
    best[first] = -np.inf
    while len(placed) < len(chosen):
        nxt = int(np.argmax(best))
        placed.append(nxt)
        best = np.maximum(best, off[nxt])
        best[placed] = -np.inf
    return [chosen[i] for i in placed]


def select_keyframes(num_views: int, num_keyframes: Optional[int], method: str = "linspace",
                     descriptors: Optional[np.ndarray] = None, seed: int = 0) -> list[int]:
    """Keyframe view indices, reference view first.

    num_keyframes None -> min(num_views, 50) (the demo's default); values are clamped to [min(2, V), V]
    as the demo does (`max(slider, 2)`). descriptors: [V, D] global image descriptors, needed for "fps"
    (use `image_descriptors` on the encoder tokens).
    """
    if num_views < 1:
        raise ValueError("select_keyframes needs at least one view")
    k = min(num_views, 50) if num_keyframes is None else int(num_keyframes)
    k = max(min(2, num_views), min(k, num_views))
    if method == "linspace":
        return [int(i) for i in np.linspace(0, num_views - 1, k, dtype=int)]
    if method != "fps":
        raise ValueError(f"unknown keyframe method {method!r}; use 'linspace' or 'fps'")
    if descriptors is None:
        raise ValueError("keyframe method 'fps' needs descriptors [V, D] (see panst3r.keyframes.image_descriptors)")
    desc = np.asarray(descriptors, dtype=np.float64)
    if desc.ndim != 2 or desc.shape[0] != num_views:
        raise ValueError(f"descriptors must be [{num_views}, D], got {desc.shape}")
    desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
    sim = desc @ desc.T  # [V, V] cosine similarity
    start = 0 if seed == 0 else int(np.random.default_rng(seed).integers(num_views))
    chosen = farthest_point_sampling(1.0 - sim, k, start)
    return order_keyframes(sim, chosen)
