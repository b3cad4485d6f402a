"""The pipeline's stages, in order. Each is a `pipeline.cache.Stage`: what its result depends on (input digests,
config sections minus the fields that cannot change it) and how to compute it; `pipeline.cache.run_stage`
decides whether it runs. One module a stage (render lives with uplift, render-then-segment with evaluate)."""

from __future__ import annotations

from ..cache import Stage
from .evaluate import evaluate_inputs, evaluate_run, rts_inputs, rts_run, rts_skip_reason
from .segment import segment_inputs, segment_run, validate_segment_inputs
from .shared import legend_classes, resolve_device, segmenter_can_segment_images
from .splat import SPLAT_CACHE_EXCLUDE, splat_inputs, splat_run
from .uplift import render_inputs, render_run, uplift_inputs, uplift_run

__all__ = ["STAGE_ORDER", "STAGES", "CONTENT_HASHED_PATHS", "SPLAT_CACHE_EXCLUDE", "legend_classes", "resolve_device", "rts_skip_reason",
           "segmenter_can_segment_images", "validate_segment_inputs"]

# Config paths whose content the stages' `inputs` already hash (scene digests, mask digest, checkpoint digest):
# left out of every config hash, so a moved scene, mask or checkpoint folder keeps the stages cached.
CONTENT_HASHED_PATHS = ("scene.path", "segment.path", "segment.checkpoint")


def _stage(name, inputs, run, sections: tuple[str, ...], exclude: tuple[str, ...] = ()) -> Stage:
    paths = tuple(p for p in CONTENT_HASHED_PATHS if p.split(".")[0] in sections)
    return Stage(name, inputs, run, sections=sections, exclude=paths + exclude)


STAGES: dict[str, Stage] = {s.name: s for s in (
    _stage("segment", segment_inputs, segment_run, ("scene", "segment")),
    _stage("splat", splat_inputs, splat_run, ("scene", "splat", "device"), exclude=SPLAT_CACHE_EXCLUDE),
    _stage("uplift", uplift_inputs, uplift_run, ("uplift", "device")),
    # label rendering uses uplift.fallback / min_weight / chunk
    _stage("render", render_inputs, render_run, ("render", "uplift", "device")),
    _stage("evaluate", evaluate_inputs, evaluate_run, ("evaluate",)),
    _stage("render_then_segment", rts_inputs, rts_run, ("render_then_segment", "segment", "device")),
)}
STAGE_ORDER: tuple[str, ...] = tuple(STAGES)
"""Stage names in run order: the one list `--from`, metrics timings and the tests use."""
