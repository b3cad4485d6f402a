"""splat: fit 3D Gaussians to the train views, with the panoptic-colour regulariser on the segment maps."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..cache import StageContext, scene_geometry_digest, upstream
from ..common.io import read_png

__all__ = ["SPLAT_CACHE_EXCLUDE", "splat_inputs", "splat_run"]

# Fields of the splat config that cannot change the trained Gaussians, so changing them must not retrain:
# the preset's name (its values are resolved into splat.train), logging / evaluation / checkpoint cadence
# (history.json, test PSNR entries, intermediate ckpt.pt writes; none touches the optimisation or its random
# state). Device and threads are run settings, not TrainConfig fields: the stage trains on the run's resolved
# device, which the "device" section keys.
SPLAT_CACHE_EXCLUDE: tuple[str, ...] = (
    "splat.preset",
    "splat.train.log_every",
    "splat.train.eval_every",
    "splat.train.checkpoint_every",
)


def splat_inputs(ctx: StageContext) -> dict[str, str]:
    """Cameras and images of the scene, and the segment maps the panoptic-colour loss fits."""
    return {"scene": scene_geometry_digest(ctx.scene, ctx.hashes),
            "segment": upstream(ctx, "segment", ("instance", "segments.json"))}


def _train_instance_maps(ctx: StageContext) -> dict[str, np.ndarray] | None:
    kind = ctx.cfg.segment.kind
    if kind in ("per_frame", "none"):  # per-frame ids are not consistent, none has no labels: RGB only (λ_pan = 0)
        return None
    seg = ctx.stage_dir("segment")
    return {s: read_png(seg / "instance" / f"{s}.png").astype(np.int64) for s in ctx.scene.train}


def splat_run(ctx: StageContext, out: Path) -> dict:
    """Train on the run's device; gaussians.ply, ckpt.pt, history.json land in `out`."""
    from splat.train import train

    cfg = dataclasses.replace(ctx.cfg.splat.train)
    result = train(ctx.scene, cfg, instance_maps=_train_instance_maps(ctx), out_dir=out, resume=None, device=ctx.device)
    return _splat_info(result)


def _splat_info(result) -> dict:
    info: dict = {"num_gaussians": int(result.num_gaussians), "steps": int(result.steps)}
    if result.test_psnr is not None:
        info["psnr"] = float(result.test_psnr)
    return info
