"""Panoptic label helpers shared by every stage: GT segment ids and instance colours.

A *panoptic id map* gives every pixel one segment id (0 = void) that is consistent across views, for
things and stuff alike (PanSt3R treats stuff regions as instances too). `id_to_class` maps each id to its
class. The evaluator later collapses stuff ids itself, so nothing here needs the thing/stuff split.
"""

from __future__ import annotations

import colorsys

import numpy as np

__all__ = ["STUFF_ID_OFFSET", "gt_panoptic_ids", "palette", "colorize", "overlay", "resize_nearest"]

# GT stuff pixels have instance 0; give each stuff class its own segment id above any thing id.
STUFF_ID_OFFSET = 60000


def gt_panoptic_ids(semantics: np.ndarray, instance: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """GT (class, instance) maps -> one consistent segment id per pixel, and id -> class.

    semantics: [H, W] int  PanLift class ids (0 = void)
    instance:  [H, W] int  thing ids (0 = stuff / void)
    Thing pixels keep their instance id; stuff pixels (instance 0) get STUFF_ID_OFFSET + class; void -> 0.
    A thing id seen with several classes keeps the majority class.
    """
    sem = np.asarray(semantics, dtype=np.int64)
    inst = np.asarray(instance, dtype=np.int64)
    if sem.shape != inst.shape:
        raise ValueError(f"semantics {sem.shape} and instance {inst.shape} maps differ in shape")
    if inst.max(initial=0) >= STUFF_ID_OFFSET:
        raise ValueError(f"instance ids must be < {STUFF_ID_OFFSET}")
    ids = np.where(inst > 0, inst, STUFF_ID_OFFSET + sem)
    ids[sem == 0] = 0
    id_to_class: dict[int, int] = {}
    valid = ids > 0
    if valid.any():
        pairs, counts = np.unique(np.stack([ids[valid], sem[valid]]), axis=1, return_counts=True)
        best: dict[int, int] = {}
        for (i, c), n in zip(pairs.T.tolist(), counts.tolist()):
            if n > best.get(i, -1):
                best[i] = n
                id_to_class[i] = c
    return ids, id_to_class


def palette(ids: np.ndarray | list[int]) -> np.ndarray:
    """Deterministic, well-separated RGB colours in [0, 1] for integer ids; id 0 (void) is black.

    Returns [len(ids), 3] float32. Colours depend only on the id, so the same instance has the same
    colour in every view, run and picture.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    out = np.zeros((ids.size, 3), dtype=np.float32)
    for k, i in enumerate(ids.tolist()):
        if i == 0:
            continue
        h = (i * 0.6180339887498949) % 1.0  # golden-ratio hue walk
        s = 0.55 + 0.45 * ((i * 0.37) % 1.0)
        v = 0.65 + 0.35 * ((i * 0.71) % 1.0)
        out[k] = colorsys.hsv_to_rgb(h, s, v)
    return out


def colorize(id_map: np.ndarray) -> np.ndarray:
    """[H, W] ids -> [H, W, 3] uint8 colours (palette of each id)."""
    uniq, inv = np.unique(np.asarray(id_map, dtype=np.int64), return_inverse=True)
    cols = (palette(uniq) * 255.0 + 0.5).astype(np.uint8)
    return cols[inv.reshape(np.shape(id_map))]


def overlay(rgb: np.ndarray, id_map: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend instance colours over an image; rgb [H, W, 3] float in [0,1] or uint8 -> uint8."""
    img = np.asarray(rgb)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    col = colorize(id_map).astype(np.float32)
    mask = (np.asarray(id_map) > 0)[..., None]
    out = np.where(mask, (1 - alpha) * img.astype(np.float32) + alpha * col, img.astype(np.float32))
    return (out + 0.5).astype(np.uint8)


def resize_nearest(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A 2D label map at (H, W) by PIL nearest-neighbour, as int64 (unchanged when already that size)."""
    if a.shape[:2] == tuple(hw):
        return a
    from PIL import Image

    return np.array(Image.fromarray(a.astype(np.int32)).resize((hw[1], hw[0]), Image.NEAREST)).astype(np.int64)
