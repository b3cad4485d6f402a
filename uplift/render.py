"""Render uplifted label distributions at any pose and write PanLift-style prediction folders.

Per pixel, F(u) = Σ_i f_i α_i T_i with f_i the Gaussian's normalised distribution (all-zero for
unlabelled Gaussians). argmax_k F(u) is the instance; the instance's class comes from `id_to_class`.
Σ_k F_k(u) is the accumulated weight of labelled Gaussians in [0, 1]; where it is below `min_weight`, or
below `min_labelled_share` of the pixel's rendered opacity (the pixel is mostly covered by Gaussians that no
mask labelled), the pixel has no evidence and takes the fallback:

* "nearest" (default): the instance of the nearest pixel that has evidence (Euclidean, via
  scipy.ndimage.distance_transform_edt indices), but only up to `fill_px` pixels away: the evaluator scores
  every GT-labelled pixel and a predicted class 0 costs PQ, so thin gaps are filled; a large region without
  labelled Gaussians (e.g. stuff the masks never labelled) stays void instead of taking the colours of
  whatever thing is nearest. A view with no evidence anywhere stays void (0).
* "void": instance 0 and class 0 (for visualisation or when holes must show).
Confidence is max_k F_k / Σ_k F_k (0 at fallback pixels).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from pipeline.common.classes import THING_IDS
from pipeline.common.io import atomic_path, write_png
from pipeline.common.labels import overlay, write_prediction

from .ludvig import UpliftResult, gaussian_geometry

__all__ = ["render_panoptic", "write_predictions", "FALLBACKS"]

FALLBACKS = ("nearest", "void")


def _class_lookup(id_to_class: Mapping, label_ids: np.ndarray) -> np.ndarray:
    """[K] class of each dense channel; every uplifted id must have a class."""
    m = {int(k): int(v.get("class_id") if isinstance(v, Mapping) else v) for k, v in id_to_class.items()}
    missing = [int(i) for i in label_ids if int(i) not in m]
    if missing:
        raise ValueError(f"instances {missing[:5]} ({len(missing)} in all) have no class in id_to_class; "
                         "build it with uplift.instance_classes from the same label maps")
    return np.asarray([m[int(i)] for i in label_ids], dtype=np.int64)


def render_panoptic(gaussians, result: UpliftResult, cameras, id_to_class: Mapping, *, fallback: str = "nearest",
                    min_weight: float = 1e-3, chunk_channels: int = 64, backend: str = "auto",
                    min_labelled_share: float = 0.0, fill_px: float = float("inf"), stats: dict | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render instance ids, classes and confidence at C camera poses.

    Returns instance [C, H, W] int64 (original label ids, 0 = void), semantics [C, H, W] int64,
    confidence [C, H, W] float32. A pixel has a label when its labelled weight is >= min_weight and >=
    min_labelled_share x its rendered opacity (else fallback). `stats` (a dict, updated in place) counts
    "pixels", "below_min_weight" (pixels without enough labelled weight), "filled" (of those, given the
    nearest label) and "void".
    """
    from scipy.ndimage import distance_transform_edt

    from splat.render import render as render_fn

    if fallback not in FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; use one of {FALLBACKS}")
    geom = gaussian_geometry(gaussians)
    n = int(geom["means"].shape[0])
    if n != result.num_gaussians:
        raise ValueError(f"the uplift result has {result.num_gaussians} Gaussians but the model has {n}; "
                         "re-run the uplift on these Gaussians")
    cls_of = _class_lookup(id_to_class, result.label_ids)  # [K]
    n_cam, H, W = int(cameras.viewmats.shape[0]), int(cameras.height), int(cameras.width)
    K = result.num_labels
    inst = np.zeros((n_cam, H, W), np.int64)
    sem = np.zeros((n_cam, H, W), np.int64)
    conf = np.zeros((n_cam, H, W), np.float32)
    if K == 0:
        if stats is not None:
            n_px = n_cam * H * W
            for key in ("pixels", "below_min_weight", "void"):
                stats[key] = stats.get(key, 0) + n_px
        return inst, sem, conf
    blocks = [(lo, min(lo + chunk_channels, K)) for lo in range(0, K, chunk_channels)]
    feats = [result.channel_block(lo, hi).to(geom["means"].device) for lo, hi in blocks]  # [N, B] each
    for c in range(n_cam):
        cam = cameras[c]
        best = torch.full((H, W), -1.0)
        arg = torch.zeros((H, W), dtype=torch.long)
        total = torch.zeros((H, W))
        alpha = torch.zeros((H, W))
        with torch.no_grad():
            for (lo, _), f in zip(blocks, feats):
                r = render_fn(geom, cam, f, backend=backend, render_depth=False)
                out = r.features[0].float().cpu()  # [H, W, B]
                alpha = r.alpha[0, ..., 0].float().cpu()
                v, a = out.max(-1)
                better = v > best
                best = torch.where(better, v, best)
                arg = torch.where(better, a + lo, arg)
                total += out.sum(-1)
        ok = ((total >= min_weight) & (total >= min_labelled_share * alpha)).numpy()
        ch = arg.numpy()
        inst_c = np.where(ok, result.label_ids[ch], 0)
        sem_c = np.where(ok, cls_of[ch], 0)
        conf_c = np.where(ok, (best / total.clamp_min(1e-12)).numpy(), 0.0).astype(np.float32)
        filled = np.zeros_like(ok)
        if fallback == "nearest" and ok.any() and not ok.all():
            dist, (iy, ix) = distance_transform_edt(~ok, return_indices=True)
            filled = ~ok & (dist <= fill_px)
            inst_c = np.where(filled, inst_c[iy, ix], inst_c)
            sem_c = np.where(filled, sem_c[iy, ix], sem_c)
        inst[c], sem[c], conf[c] = inst_c, sem_c, conf_c
        if stats is not None:
            for key, v in (("pixels", ok.size), ("below_min_weight", int((~ok).sum())), ("filled", int(filled.sum())),
                           ("void", int((sem_c == 0).sum()))):
                stats[key] = stats.get(key, 0) + int(v)
    return inst, sem, conf


def write_predictions(out_dir: str | os.PathLike, stems: Sequence[str], instance: np.ndarray, semantics: np.ndarray,
                      rgb: np.ndarray | Sequence[np.ndarray] | None = None, thing_ids: Iterable[int] = THING_IDS) -> None:
    """Write PanLift prediction files for each stem (every file written atomically; the prediction pair by
    `pipeline.common.labels.write_prediction`).

    pred_semantics/<stem>.png  uint8 class ids
    pred_surrogateid/<stem>.png  uint16 instance ids, the same id for the same object in every view; 0 on
        stuff-class pixels (the evaluator merges stuff per class anyway)
    rgb/<stem>.png, vis/<stem>.jpg  (only with `rgb` [C, H, W, 3] in [0, 1] or uint8): instance colours
        (all instances, stuff included) blended over the rendered image.
    """
    from PIL import Image

    out = Path(out_dir)
    instance = np.asarray(instance)
    semantics = np.asarray(semantics)
    if instance.shape != semantics.shape or instance.ndim != 3 or len(stems) != instance.shape[0]:
        raise ValueError(f"need instance and semantics [C, H, W] for {len(stems)} stems, got {instance.shape} and {semantics.shape}")
    for i, stem in enumerate(stems):
        write_prediction(out, stem, instance[i], semantics[i], thing_ids)
        if rgb is not None:
            img = np.asarray(rgb[i])
            if img.dtype != np.uint8:
                img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            if img.shape[:2] != instance.shape[1:]:
                raise ValueError(f"rgb of {stem} is {img.shape[:2]} but labels are {instance.shape[1:]}")
            write_png(out / "rgb" / f"{stem}.png", img[..., :3])
            vis = overlay(img[..., :3], instance[i])
            with atomic_path(out / "vis" / f"{stem}.jpg") as tmp:
                Image.fromarray(vis).save(tmp, format="JPEG", quality=90)
