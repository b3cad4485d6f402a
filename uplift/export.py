"""Labelled-Gaussian export: one PLY a standard splat viewer opens, plus per-instance PLYs and a legend.

The PLY keeps the standard 3DGS vertex fields first (x, y, z, normals, f_dc_*, f_rest_*, opacity, scale_*,
rot_*, written by `splat.ply.save_ply`) and appends `instance_id` (int32, −1 = unlabelled),
`class_id` (int32, −1 = unlabelled) and `label_confidence` (float32), optionally the top-k distribution
as `label_topk_id_j` / `label_topk_w_j`. Viewers that do not know the extra fields ignore them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from pipeline.common.io import InputError, write_json
from pipeline.common.labels import palette

from .ludvig import UpliftResult, gaussian_geometry

__all__ = ["LabelledGaussians", "export_labelled", "load_labelled", "legend_for", "BBOX_PERCENTILES"]

BBOX_PERCENTILES = (1.0, 99.0)  # robust 3D boxes: floaters do not stretch them


@dataclass
class LabelledGaussians:
    """Gaussians read back from a labelled PLY."""

    gaussians: dict  # what splat.ply.load_ply returns (means, quats, scales, opacities, sh0, shN, ...)
    instance_id: np.ndarray  # [N] int64, -1 = unlabelled
    class_id: np.ndarray  # [N] int64, -1 = unlabelled
    confidence: np.ndarray  # [N] float32
    topk_ids: np.ndarray | None = None  # [N, k] int64, -1 = empty
    topk_weights: np.ndarray | None = None  # [N, k] float32

    @property
    def means(self) -> np.ndarray:  # [N, 3]
        m = self.gaussians["means"]
        return m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)


def _topk_arrays(result: UpliftResult, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, k] ids (-1 empty) and normalised weights, best first, from a dense or top-k result."""
    n = result.num_gaussians
    if result.weights is not None:
        kk = min(k, result.num_labels)
        w = torch.from_numpy(result.weights)
        tw, tc = w.topk(kk, dim=1) if kk else (torch.zeros(n, 0), torch.zeros(n, 0, dtype=torch.long))
        ids = result.label_ids[tc.numpy()] if kk else np.zeros((n, 0), np.int64)
        tw = tw.numpy()
    else:
        kk = min(k, result.topk_ids.shape[1])
        ids, tw = result.topk_ids[:, :kk], result.topk_weights[:, :kk]
    ids = np.where(tw > 0, ids, -1)
    out_ids = np.full((n, k), -1, np.int64)
    out_w = np.zeros((n, k), np.float32)
    out_ids[:, :kk], out_w[:, :kk] = ids, tw
    return out_ids, out_w


def _class_array(result: UpliftResult, id_to_class: Mapping) -> np.ndarray:
    m = {int(k): int(v.get("class_id") if isinstance(v, Mapping) else v) for k, v in id_to_class.items()}
    used = np.unique(result.label[result.label >= 0])
    missing = [int(i) for i in used if int(i) not in m]
    if missing:
        raise ValueError(f"instances {missing[:5]} have no class in id_to_class; build it with uplift.instance_classes")
    return np.asarray([m[int(i)] if i >= 0 else -1 for i in result.label], dtype=np.int64)


def legend_for(means: np.ndarray, result: UpliftResult, id_to_class: Mapping, class_names: Sequence[str]) -> dict:
    """id -> class id / name, colour (pipeline.common.labels.palette), number of Gaussians, robust 3D box."""
    cls = _class_array(result, id_to_class)
    m = {int(k): int(v.get("class_id") if isinstance(v, Mapping) else v) for k, v in id_to_class.items()}
    instances = {}
    for i in result.label_ids.tolist():
        mask = result.label == i
        c = m.get(int(i), -1)
        entry = {"class_id": c, "class_name": class_names[c] if 0 <= c < len(class_names) else "unknown",
                 "color": [int(round(255 * x)) for x in palette([i])[0].tolist()],
                 "num_gaussians": int(mask.sum()), "bbox_min": None, "bbox_max": None}
        if mask.any():
            lo, hi = np.percentile(means[mask], BBOX_PERCENTILES, axis=0)
            entry["bbox_min"] = [float(x) for x in lo]
            entry["bbox_max"] = [float(x) for x in hi]
        instances[str(i)] = entry
    return {"num_gaussians": int(result.num_gaussians), "num_unlabelled": int((result.label < 0).sum()),
            "bbox_percentiles": list(BBOX_PERCENTILES), "class_of_gaussians": "argmax of the uplifted distribution",
            "num_labelled_per_class": {str(c): int(n) for c, n in zip(*np.unique(cls[cls >= 0], return_counts=True))},
            "instances": instances}


def _extra_fields(result: UpliftResult, cls: np.ndarray, topk: int, sel=slice(None)) -> dict[str, np.ndarray]:
    extra = {"instance_id": result.label[sel].astype(np.int32), "class_id": cls[sel].astype(np.int32),
             "label_confidence": result.confidence[sel].astype(np.float32)}
    if topk > 0:  # save_ply writes [N, k] as label_topk_id_0 .. label_topk_id_{k-1}
        ids, w = _topk_arrays(result, topk)
        extra["label_topk_id"] = ids[sel].astype(np.int32)
        extra["label_topk_w"] = w[sel].astype(np.float32)
    return extra


def export_labelled(out_path: str | os.PathLike, gaussians, result: UpliftResult, id_to_class: Mapping,
                    class_names: Sequence[str], *, per_instance_dir: str | os.PathLike | None = None,
                    topk: int = 0) -> dict:
    """Write the labelled PLY (+ legend.json next to it, + one PLY per instance when asked); returns the legend."""
    from splat.ply import save_ply

    out_path = Path(out_path)
    geom = gaussian_geometry(gaussians)
    n = int(geom["means"].shape[0])
    if n != result.num_gaussians:
        raise ValueError(f"the uplift result has {result.num_gaussians} Gaussians but the model has {n}; "
                         "re-run the uplift on these Gaussians")
    cls = _class_array(result, id_to_class)
    save_ply(out_path, geom, extra=_extra_fields(result, cls, topk))
    means = geom["means"].cpu().numpy()
    legend = legend_for(means, result, id_to_class, class_names)
    if per_instance_dir is not None:
        d = Path(per_instance_dir)
        d.mkdir(parents=True, exist_ok=True)
        for i in result.label_ids.tolist():
            mask = result.label == i
            if not mask.any():
                continue
            idx = torch.from_numpy(np.nonzero(mask)[0])
            sub = {k: (v[idx] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n else v) for k, v in geom.items()}
            save_ply(d / f"instance_{i}.ply", sub, extra=_extra_fields(result, cls, topk, sel=mask))
            legend["instances"][str(i)]["ply"] = os.path.relpath(d / f"instance_{i}.ply", out_path.parent)
    write_json(out_path.with_name("legend.json"), legend)
    return legend


def load_labelled(path: str | os.PathLike) -> LabelledGaussians:
    """Read a labelled PLY written by `export_labelled` (Gaussians and labels via splat.ply.load_ply)."""
    from splat.ply import load_ply

    path = Path(path)
    gaussians, extra = load_ply(path)
    missing = [k for k in ("instance_id", "class_id", "label_confidence") if k not in extra]
    if missing:
        raise InputError(f"{path}: carries no labels (missing {missing}); export it with uplift.export_labelled")
    tk_ids, tk_w = extra.get("label_topk_id"), extra.get("label_topk_w")
    return LabelledGaussians(gaussians=gaussians, instance_id=np.asarray(extra["instance_id"], np.int64),
                             class_id=np.asarray(extra["class_id"], np.int64),
                             confidence=np.asarray(extra["label_confidence"], np.float32),
                             topk_ids=None if tk_ids is None else np.asarray(tk_ids, np.int64).reshape(len(tk_ids), -1),
                             topk_weights=None if tk_w is None else np.asarray(tk_w, np.float32).reshape(len(tk_w), -1))
