"""splat: fit 3D Gaussians to the train views, with the panoptic-colour regulariser on the segment maps."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..cache import StageContext, maybe_kill, scene_geometry_digest, upstream
from ..common.io import read_png

__all__ = ["splat_inputs", "splat_run"]


def splat_inputs(ctx: StageContext) -> dict[str, str]:
    return {"scene": scene_geometry_digest(ctx.scene, ctx.hashes),
            "segment": upstream(ctx, "segment", ("instance", "segments.json"))}


def _train_instance_maps(ctx: StageContext) -> dict[str, np.ndarray]:
    seg = ctx.stage_dir("segment")
    return {s: read_png(seg / "instance" / f"{s}.png").astype(np.int64) for s in ctx.scene.train}


def splat_run(ctx: StageContext, out: Path) -> dict:
    from splat.train import train

    cfg = dataclasses.replace(ctx.cfg.splat.train)
    if hasattr(cfg, "device"):
        cfg = dataclasses.replace(cfg, device=ctx.device)
    maps = None if ctx.cfg.segment.kind == "none" else _train_instance_maps(ctx)  # none: RGB only
    result = train(ctx.scene, cfg, instance_maps=maps, out_dir=out, resume=None,
                   **({"kill_hook": lambda: maybe_kill("splat", "middle")} if _accepts(train, "kill_hook") else {}))
    maybe_kill("splat", "middle")
    return _splat_info(result, out)


def _accepts(fn, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _splat_info(result, out: Path) -> dict:
    info: dict = {}
    for key in ("num_gaussians", "psnr", "test_psnr", "steps"):
        v = getattr(result, key, None) if not isinstance(result, dict) else result.get(key)
        if v is not None:
            info[key] = float(v) if isinstance(v, float) else v
    if "test_psnr" in info and "psnr" not in info:
        info["psnr"] = info.pop("test_psnr")
    return info
