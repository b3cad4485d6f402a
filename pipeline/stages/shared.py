"""Helpers that more than one stage uses: device, progress, class names, cameras, Gaussians, legend, test GT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..cache import StageContext
from ..common.classes import PANLIFT_CLASSES
from ..common.io import InputError, read_json_if_present
from ..common.progress import progress_bar
from ..scene import Scene

__all__ = ["resolve_device", "segmenter_can_segment_images", "progress", "class_names", "scene_cameras",
           "load_gaussians", "legend_classes", "scene_has_test_gt"]


def resolve_device(device: str) -> str:
    """"auto" -> cuda when torch sees one, else cpu; an explicit cuda without a GPU is a one-line error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but torch sees no CUDA device; use --device cpu or auto")
    return device


def segmenter_can_segment_images(kind: str) -> bool:
    """Only a real image segmenter can segment renders (render-then-segment); masks on disk cannot."""
    return kind == "panst3r"


def progress(ctx: StageContext, total: int, desc: str):
    """The one progress bar over a stage's views, silent when the run is quiet."""
    return progress_bar(total, desc, unit="view", enabled=not ctx.quiet)


def class_names() -> dict[int, str]:
    """{class id: name} of the PanLift vocabulary, for the names written next to ids in segments.json."""
    return {i: n for i, n in enumerate(PANLIFT_CLASSES)}


def scene_cameras(ctx: StageContext, stems: list[str], scale: float = 1.0):
    """splat.render.Cameras for the given frames (all frames of a scene share one image size); train views whose
    pose the splat stage refined (TrainConfig.pose_opt) come at their refined pose."""
    import dataclasses

    from splat.render import Cameras

    refined = read_json_if_present(ctx.stage_dir("splat") / "cameras_refined.json") or {}
    frames = [ctx.scene.frame(s) for s in stems]
    frames = [dataclasses.replace(f, c2w=np.asarray(refined[f.stem], np.float64)) if f.stem in refined else f
              for f in frames]
    cams = Cameras.from_frames(frames, scale=scale)
    return cams if ctx.device == "cpu" else cams.to(ctx.device)


def load_gaussians(ctx: StageContext):
    """The splat stage's Gaussians on the run's device, as uplift and render read them."""
    from splat.ply import load_ply

    g, _extra = load_ply(ctx.stage_dir("splat") / "gaussians.ply")
    return {k: v.to(ctx.device) for k, v in g.items()} if ctx.device != "cpu" else g


def legend_classes(uplift_dir: Path) -> dict[int, int]:
    """uplift/legend.json -> {instance id: class id}: the classes the uplift settled on, for render and export."""
    legend = json.loads((Path(uplift_dir) / "legend.json").read_text())
    return {int(k): int(v["class_id"]) for k, v in legend["instances"].items()}


def scene_has_test_gt(scene: Scene) -> bool:
    """Evaluation needs GT labels for every test frame; without them it is skipped with a reason."""
    return bool(scene.test) and all(scene.frames[s].semantics is not None and scene.frames[s].instance is not None
                                    for s in scene.test)
