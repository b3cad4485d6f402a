"""uplift (LUDVIG over the train views) and render (argmax panoptic maps and RGB at the render poses)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..cache import StageContext, scene_geometry_digest, upstream
from ..common.classes import PANLIFT_CLASSES
from ..common.io import read_png
from ..common.labels import resize_nearest
from .shared import legend_classes, load_gaussians, progress, scene_cameras

__all__ = ["uplift_inputs", "uplift_run", "render_inputs", "render_run"]


def uplift_inputs(ctx: StageContext) -> dict[str, str]:
    """The trained Gaussians, the segment maps that vote, and the cameras they are seen through."""
    return {"splat": upstream(ctx, "splat", ("gaussians.ply",)),
            "segment": upstream(ctx, "segment", ("instance", "segments.json")),
            "scene": scene_geometry_digest(ctx.scene, ctx.hashes)}


def uplift_run(ctx: StageContext, out: Path) -> dict:
    """LUDVIG-average the train views' instance ids onto the Gaussians; uplift.npz, labelled.ply, legend.json."""
    from uplift.export import export_labelled
    from uplift.ludvig import instance_classes, uplift

    uc = ctx.cfg.uplift
    seg = ctx.stage_dir("segment")
    stems = list(ctx.scene.train)
    cams = scene_cameras(ctx, stems, uc.scale)
    H, W = int(cams.height), int(cams.width)
    maps, classes = [], []
    for s in stems:
        inst = read_png(seg / "instance" / f"{s}.png").astype(np.int64)
        sem = read_png(seg / "semantics" / f"{s}.png").astype(np.int64)
        maps.append(resize_nearest(inst, (H, W)))
        classes.append(resize_nearest(sem, (H, W)))
    gaussians = load_gaussians(ctx)
    result = uplift(gaussians, cams, maps, ignore_label=uc.ignore_label, chunk_channels=uc.chunk, topk=uc.top_k,
                    progress=not ctx.quiet)
    result.save(out / "uplift.npz")
    segments = json.loads((seg / "segments.json").read_text())
    id_to_class = instance_classes(maps, classes, segments=segments, ignore_label=uc.ignore_label)
    # labelled.ply + legend.json (id -> class, colour, count, 3D box); the render stage reads the legend
    export_labelled(out / "labelled.ply", gaussians, result, id_to_class, PANLIFT_CLASSES)
    return {"num_gaussians": result.num_gaussians, "num_labels": result.num_labels,
            "labelled_fraction": float(result.labelled.mean()) if result.num_gaussians else 0.0,
            "num_views": result.num_views}


def render_inputs(ctx: StageContext) -> dict[str, str]:
    """The Gaussians, their uplifted labels and legend, and the poses rendered at."""
    return {"splat": upstream(ctx, "splat", ("gaussians.ply",)),
            "uplift": upstream(ctx, "uplift", ("uplift.npz", "legend.json")),
            "scene": scene_geometry_digest(ctx.scene, ctx.hashes)}


def _render_stems(ctx: StageContext) -> list[str]:
    poses = ctx.cfg.render.poses
    if poses == "test":
        return list(ctx.scene.test)
    if poses == "train":
        return list(ctx.scene.train)
    return list(ctx.scene.frames)


def render_run(ctx: StageContext, out: Path) -> dict:
    """Prediction PNGs and RGB at the render poses, one view at a time, and the test-view PSNR."""
    from uplift.ludvig import UpliftResult
    from uplift.render import render_panoptic, write_predictions

    uc = ctx.cfg.uplift
    stems = _render_stems(ctx)
    if not stems:
        (out / "skipped.txt").write_text(f"no {ctx.cfg.render.poses} frames to render\n")
        return {"skipped": f"no {ctx.cfg.render.poses} frames", "num_views": 0}
    gaussians = load_gaussians(ctx)
    result = UpliftResult.load(ctx.stage_dir("uplift") / "uplift.npz")
    id_to_class = legend_classes(ctx.stage_dir("uplift"))
    info: dict = {"num_views": len(stems)}
    psnrs = []
    with progress(ctx, len(stems), "render") as bar:
        for s in stems:  # one view at a time: memory stays flat for long test splits
            cam = scene_cameras(ctx, [s], ctx.cfg.render.scale)
            inst, sem, _conf = render_panoptic(gaussians, result, cam, id_to_class, fallback=uc.fallback,
                                               min_weight=uc.min_weight, chunk_channels=uc.chunk)
            rgb = _render_rgb(gaussians, cam)  # [1, H, W, 3] float in [0, 1]
            write_predictions(out, [s], inst, sem, rgb=rgb)
            gt = ctx.scene.load_rgb(s)
            if gt.shape[:2] == rgb.shape[1:3]:
                mse = float(np.mean((np.clip(rgb[0], 0, 1) - gt) ** 2))
                psnrs.append(10 * np.log10(1.0 / max(mse, 1e-12)))
            bar.update(1)
    if psnrs:
        info["psnr"] = float(np.mean(psnrs))
    return info


def _render_rgb(gaussians, cam) -> np.ndarray:
    import torch

    from splat.render import render

    with torch.no_grad():
        img = render(gaussians, cam, None, render_depth=False).features  # [1, H, W, 3] RGB from SH
    return img.detach().float().clamp(0, 1).cpu().numpy()
