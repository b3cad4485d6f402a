"""Panoptic label helpers shared by every stage: GT segment ids, the class of each id, PanLift prediction
files and instance colours.

A *panoptic id map* gives every pixel one segment id (0 = void) that is consistent across views, for
things and stuff alike (PanSt3R treats stuff regions as instances too). `id_to_class` maps each id to its
class. The evaluator collapses stuff ids itself; only the prediction files apply the thing/stuff split.
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .classes import THING_IDS
from .io import InputError, write_png

__all__ = ["STUFF_ID_OFFSET", "gt_panoptic_ids", "majority_class", "id_classes", "prediction_maps",
           "write_prediction", "palette", "colorize", "overlay", "resize_nearest"]

# GT stuff pixels have instance 0; give each stuff class its own segment id above any thing id.
STUFF_ID_OFFSET = 60000


def gt_panoptic_ids(semantics: np.ndarray, instance: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """GT (class, instance) maps -> one consistent segment id per pixel, and id -> class.

    semantics: [H, W] int  PanLift class ids (0 = void)
    instance:  [H, W] int  thing ids (0 = stuff / void)
    Thing pixels keep their instance id; stuff pixels (instance 0) get STUFF_ID_OFFSET + class; void -> 0.
    A thing id seen with several classes keeps the majority class (`majority_class`).
    """
    sem = np.asarray(semantics, dtype=np.int64)
    inst = np.asarray(instance, dtype=np.int64)
    if sem.shape != inst.shape:
        raise ValueError(f"semantics {sem.shape} and instance {inst.shape} maps differ in shape")
    if inst.max(initial=0) >= STUFF_ID_OFFSET:
        raise ValueError(f"instance ids must be < {STUFF_ID_OFFSET}")
    ids = np.where(inst > 0, inst, STUFF_ID_OFFSET + sem)
    ids[sem == 0] = 0
    return ids, majority_class([ids], [sem])


def majority_class(id_maps: Sequence[np.ndarray], class_maps: Sequence[np.ndarray],
                   weights: Sequence[np.ndarray] | None = None, *, ignore_id: int | None = 0) -> dict[int, int]:
    """Class of every id in `id_maps` (except `ignore_id`): the class covering most of its pixels over all
    views, so one segment id gets one class even where the per-pixel classes disagree.

    id_maps, class_maps: per view [H, W] int; weights: per view [H, W] float (e.g. confidence), default 1.
    Class 0 (void) only wins for an id that has no other class; ties go to the lowest class id.
    Returns {id: class} in ascending id order.
    """
    if len(class_maps) != len(id_maps) or (weights is not None and len(weights) != len(id_maps)):
        raise ValueError(f"{len(id_maps)} id maps, {len(class_maps)} class maps"
                         + ("" if weights is None else f" and {len(weights)} weight maps") + "; need one per view")
    votes: dict[tuple[int, int], float] = {}
    for v, (im, cm) in enumerate(zip(id_maps, class_maps)):
        im, cm = np.asarray(im).astype(np.int64), np.asarray(cm).astype(np.int64)
        if im.shape != cm.shape:
            raise ValueError(f"view {v}: id map {im.shape} and class map {cm.shape} differ in shape")
        sel = im != ignore_id if ignore_id is not None else np.ones(im.shape, bool)
        if not sel.any():
            continue
        w = None if weights is None else np.asarray(weights[v], dtype=np.float64)[sel]
        pairs, inv = np.unique(np.stack([im[sel], cm[sel]]), axis=1, return_inverse=True)
        tot = np.bincount(inv.reshape(-1), weights=w, minlength=pairs.shape[1])
        for (i, c), t in zip(pairs.T.tolist(), tot.tolist()):
            votes[(i, c)] = votes.get((i, c), 0.0) + t
    best: dict[int, tuple[tuple, int]] = {}
    for (i, c), t in votes.items():
        key = (c != 0, t, -c)  # non-void first, then weight, then the lowest class id
        if i not in best or key > best[i][0]:
            best[i] = (key, c)
    return {i: best[i][1] for i in sorted(best)}


def id_classes(ids: np.ndarray, id_to_class: Mapping[int, int]) -> np.ndarray:
    """[H, W] class of each pixel's id: what a segmenter's id map means per pixel (0 for void and unknown ids)."""
    ids = np.asarray(ids, dtype=np.int64)
    uniq, inv = np.unique(ids, return_inverse=True)
    cls = np.array([id_to_class.get(int(u), 0) if u > 0 else 0 for u in uniq], dtype=np.int64)
    return cls[inv].reshape(ids.shape)


def prediction_maps(instance: np.ndarray, semantics: np.ndarray,
                    thing_ids: Iterable[int] = THING_IDS) -> tuple[np.ndarray, np.ndarray]:
    """(instance ids, classes) -> the PanLift prediction pair: classes as uint8, and ids as uint16 on thing
    pixels with 0 on stuff and void (the evaluator merges stuff per class, so stuff ids would only mislead)."""
    instance, semantics = np.asarray(instance), np.asarray(semantics)
    if instance.shape != semantics.shape:
        raise InputError(f"instance {instance.shape} and semantics {semantics.shape} maps differ in shape")
    if semantics.size and (semantics.min() < 0 or semantics.max() > 255):
        raise InputError(f"class ids must fit uint8 (0..255), got {semantics.min()}..{semantics.max()}")
    things = np.fromiter((int(t) for t in thing_ids), np.int64)
    surrogate = np.where(np.isin(semantics, things), instance, 0)
    if surrogate.size and (surrogate.min() < 0 or surrogate.max() > 65535):
        raise InputError(f"instance ids must fit uint16 (0..65535), got {surrogate.min()}..{surrogate.max()}")
    return semantics.astype(np.uint8), surrogate.astype(np.uint16)


def write_prediction(out_dir: str | os.PathLike, stem: str, instance: np.ndarray, semantics: np.ndarray,
                     thing_ids: Iterable[int] = THING_IDS) -> None:
    """pred_semantics/<stem>.png and pred_surrogateid/<stem>.png (atomic): one view as the PanLift evaluator
    reads predictions (`prediction_maps`)."""
    sem, sur = prediction_maps(instance, semantics, thing_ids)
    write_png(Path(out_dir) / "pred_semantics" / f"{stem}.png", sem)
    write_png(Path(out_dir) / "pred_surrogateid" / f"{stem}.png", sur)


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
