"""uplift (LUDVIG over the train views) and render (argmax panoptic maps and RGB at the render poses)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..cache import StageContext, scene_geometry_digest, upstream
from ..common.classes import PANLIFT_CLASSES
from ..checks import render_warnings, self_check_scores, uplift_warnings
from ..common.io import read_png, write_png
from ..common.labels import resize_nearest
from .shared import legend_classes, load_gaussians, progress, scene_cameras

__all__ = ["uplift_inputs", "uplift_run", "render_inputs", "render_run", "image_scores", "GEOMETRY_ONLY"]

GEOMETRY_ONLY = "geometry-only run (segment.kind none): no labels"


def uplift_inputs(ctx: StageContext) -> dict[str, str]:
    """The trained Gaussians, the segment maps that vote, and the cameras they are seen through."""
    return {"splat": upstream(ctx, "splat", ("gaussians.ply", "cameras_refined.json")),
            "segment": upstream(ctx, "segment", ("instance", "segments.json")),
            "scene": scene_geometry_digest(ctx.scene, ctx.hashes),
            **({"per_frame": "associate"} if ctx.cfg.segment.kind == "per_frame" else {})}


def uplift_run(ctx: StageContext, out: Path) -> dict:
    """LUDVIG-average the train views' instance ids onto the Gaussians; uplift.npz, labelled.ply, legend.json."""
    from uplift.export import export_labelled
    from uplift.ludvig import instance_classes, uplift

    uc = ctx.cfg.uplift
    if ctx.cfg.segment.kind == "none":
        (out / "skipped.txt").write_text(GEOMETRY_ONLY + "\n")
        return {"skipped": GEOMETRY_ONLY}
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
    info: dict = {}
    show = not ctx.quiet
    if ctx.cfg.segment.kind == "per_frame":
        maps, classes, result, id_to_class, info["association"] = _associate(ctx, gaussians, cams, maps, classes, stems,
                                                                             out, show)
    else:
        result = uplift(gaussians, cams, maps, ignore_label=uc.ignore_label, chunk_channels=uc.chunk, topk=uc.top_k,
                        progress=show)
        segments = json.loads((seg / "segments.json").read_text())
        id_to_class = instance_classes(maps, classes, segments=segments, ignore_label=uc.ignore_label)
    result.save(out / "uplift.npz")
    # labelled.ply + legend.json (id -> class, colour, count, 3D box); the render stage reads the legend
    export_labelled(out / "labelled.ply", gaussians, result, id_to_class, PANLIFT_CLASSES)
    labelled = float(result.labelled.mean()) if result.num_gaussians else 0.0
    nonvoid = sum(int((c > 0).sum()) for c in classes)
    voting = sum(int(((m > 0) & (m != uc.ignore_label) & (c > 0)).sum()) for m, c in zip(maps, classes))
    share = voting / nonvoid if nonvoid else None
    check = _self_check(ctx, gaussians, result, id_to_class, cams, maps, classes)
    info.update({"num_gaussians": result.num_gaussians, "num_labels": result.num_labels,
                 "labelled_fraction": labelled, "labelled_nonvoid_pixels": share, "num_views": result.num_views,
                 "self_check": check, "warnings": uplift_warnings(labelled, share, check)})
    return info


def _associate(ctx: StageContext, gaussians, cams, maps, classes, stems, out: Path, show: bool):
    """per_frame: associate the per-view segments through the Gaussians (uplift.associate), write the now
    consistent train masks to uplift/associated/ (semantics = each instance's voted class)."""
    from uplift.associate import AssociateConfig, associate

    uc = ctx.cfg.uplift
    acfg = AssociateConfig(min_overlap=uc.associate_min_overlap, chunk_channels=uc.chunk)
    assoc = associate(gaussians, cams, maps, classes, cfg=acfg, topk=uc.top_k, progress=show)
    cmaps = assoc.consistent_maps(maps)
    lut = np.zeros(max(assoc.id_to_class, default=0) + 1, np.int64)
    for i, c in assoc.id_to_class.items():
        lut[i] = c
    cclasses = [np.where(m > 0, lut[m], 0) for m in cmaps]
    for s, m, c in zip(stems, cmaps, cclasses):
        write_png(out / "associated" / "instance" / f"{s}.png", m.astype(np.uint16))
        write_png(out / "associated" / "semantics" / f"{s}.png", c.astype(np.uint8))
    return cmaps, cclasses, assoc.result, assoc.id_to_class, assoc.stats


def _self_check(ctx: StageContext, gaussians, result, id_to_class, cams, maps, classes) -> dict | None:
    """Re-render a few train views from the uplifted Gaussians; score them against their own masks."""
    from uplift.render import render_panoptic

    uc = ctx.cfg.uplift
    n = min(int(uc.self_check_views), len(maps))
    if n <= 0 or result.num_labels == 0:
        return None
    idx = sorted({int(i) for i in np.linspace(0, len(maps) - 1, n)})
    inst, sem, _ = render_panoptic(gaussians, result, cams[idx], id_to_class, fallback=uc.fallback,
                                   min_weight=uc.min_weight, chunk_channels=uc.chunk, fill_px=uc.fill_px,
                                   min_labelled_share=uc.min_labelled_share)
    scores = self_check_scores(inst, sem, np.stack([maps[i] for i in idx]), np.stack([classes[i] for i in idx]))
    return {"views": [ctx.scene.train[i] for i in idx], **scores}


def render_inputs(ctx: StageContext) -> dict[str, str]:
    """The Gaussians, their uplifted labels and legend, and the poses rendered at."""
    return {"splat": upstream(ctx, "splat", ("gaussians.ply", "cameras_refined.json")),
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
    labels = ctx.cfg.segment.kind != "none"  # a geometry-only run renders RGB alone
    if labels:
        result = UpliftResult.load(ctx.stage_dir("uplift") / "uplift.npz")
        id_to_class = legend_classes(ctx.stage_dir("uplift"))
    info: dict = {"num_views": len(stems)}
    pix: dict = {}  # render_panoptic's pixel counts: below min_weight, filled, void
    psnrs, ssims = [], []
    with progress(ctx, len(stems), "render") as bar:
        for s in stems:  # one view at a time: memory stays flat for long test splits
            cam = scene_cameras(ctx, [s], ctx.cfg.render.scale)
            rgb = _render_rgb(gaussians, cam)  # [1, H, W, 3] float in [0, 1]
            if labels:
                inst, sem, _conf = render_panoptic(gaussians, result, cam, id_to_class, fallback=uc.fallback,
                                                   min_weight=uc.min_weight, chunk_channels=uc.chunk,
                                                   fill_px=uc.fill_px, min_labelled_share=uc.min_labelled_share,
                                                   stats=pix)
                write_predictions(out, [s], inst, sem, rgb=rgb)
            else:
                write_png(out / "rgb" / f"{s}.png", (np.clip(rgb[0], 0, 1) * 255 + 0.5).astype(np.uint8))
            gt = ctx.scene.load_rgb(s)
            if gt.shape[:2] == rgb.shape[1:3]:
                psnr, ssim = image_scores(rgb[0], gt)
                psnrs.append(psnr)
                ssims.append(ssim)
            bar.update(1)
    if psnrs:
        info["psnr"] = float(np.mean(psnrs))
        info["ssim"] = float(np.mean(ssims))
    if pix.get("pixels"):
        info["void_share"] = pix["void"] / pix["pixels"]
        info["filled_share"] = pix["filled"] / pix["pixels"]
        info["warnings"] = render_warnings(info["void_share"])
    return info


def image_scores(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(PSNR in dB, SSIM) of a rendered [H, W, 3] image in [0, 1] against the captured one."""
    import torch
    from pytorch_msssim import ssim

    pred = np.clip(pred, 0, 1)
    mse = float(np.mean((pred - gt) ** 2))
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)[None]  # noqa: E731
    s = float(ssim(to_t(pred), to_t(gt), data_range=1.0, size_average=True))
    return 10 * np.log10(1.0 / max(mse, 1e-12)), s


def _render_rgb(gaussians, cam) -> np.ndarray:
    import torch

    from splat.render import render

    with torch.no_grad():
        img = render(gaussians, cam, None, render_depth=False).features  # [1, H, W, 3] RGB from SH
    return img.detach().float().clamp(0, 1).cpu().numpy()
