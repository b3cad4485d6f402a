"""evaluate (scene PQ of the renders and of the segmenter on the test views) and render-then-segment."""

from __future__ import annotations

import json
from pathlib import Path

from ..cache import StageContext, scene_gt_digest, upstream
from ..common.io import read_png, write_json
from ..common.labels import id_classes, write_prediction
from ..config import RunConfig
from .segment import load_panst3r, panst3r_inputs, panst3r_pass
from .uplift import GEOMETRY_ONLY
from .shared import scene_has_test_gt, segmenter_can_segment_images

__all__ = ["evaluate_inputs", "evaluate_run", "rts_inputs", "rts_run", "rts_skip_reason"]


def gt_root(scene) -> Path:
    """Where the evaluator reads GT: the scene, or its prepared (undistorted/downscaled) copy."""
    return Path(scene.meta.get("gt_root", scene.root))


def evaluate_inputs(ctx: StageContext) -> dict[str, str]:
    """The rendered predictions, the segmenter's own maps (segmenter_on_test) and the scene's GT."""
    return {"render": upstream(ctx, "render", ("pred_semantics", "pred_surrogateid")),
            "segment": upstream(ctx, "segment"),
            "scene_gt": scene_gt_digest(ctx.scene, ctx.hashes)}


def evaluate_run(ctx: StageContext, out: Path) -> dict:
    """Scene PQ of the uplift's renders and of the segmenter directly on the test views (the 2D baseline)."""
    from ..metrics import evaluate_scene, headline, json_safe

    if not ctx.cfg.evaluate.enabled:
        (out / "skipped.txt").write_text("evaluation off (evaluate.enabled = false)\n")
        return {"skipped": "evaluation off (evaluate.enabled = false)"}
    if ctx.cfg.segment.kind == "none":
        (out / "skipped.txt").write_text(GEOMETRY_ONLY + "\n")
        return {"skipped": GEOMETRY_ONLY}
    if not scene_has_test_gt(ctx.scene) or ctx.scene.format != "panlift":
        why = "the scene has no GT labels for its test frames (needs rs_semantics/ + rs_instance/ in the PanLift layout)"
        (out / "skipped.txt").write_text(why + "\n")
        return {"skipped": why}
    info: dict = {}
    uplift = json_safe(evaluate_scene(gt_root(ctx.scene), ctx.stage_dir("render")))
    write_json(out / "uplift.json", uplift)
    info["uplift"] = headline(uplift)
    seg = ctx.stage_dir("segment")
    seg_info = json.loads((seg / "info.json").read_text())
    if seg_info.get("test") and set(ctx.scene.test) <= set(seg_info["test"]):
        # the segmenter's own per-pixel classes, its ids on thing pixels: what it predicts without any 3D
        pred = out / "segmenter_on_test"
        for s in ctx.scene.test:
            write_prediction(pred, s, read_png(seg / "instance" / f"{s}.png"), read_png(seg / "semantics" / f"{s}.png"))
        direct = json_safe(evaluate_scene(gt_root(ctx.scene), pred))
        direct["segmenter_kind"] = seg_info.get("kind")
        write_json(out / "segmenter_on_test.json", direct)
        info["segmenter_on_test"] = headline(direct)
    return info


def rts_skip_reason(cfg: RunConfig) -> str | None:
    """Why render-then-segment does not run for this config, or None when it does."""
    if cfg.render_then_segment == "off":
        return "render_then_segment is off"
    if cfg.segment.kind == "none":
        return GEOMETRY_ONLY
    if not segmenter_can_segment_images(cfg.segment.kind):
        return (f"the {cfg.segment.kind} segmenter cannot segment rendered images "
                "(render-then-segment needs segment.kind panst3r)")
    return None


def rts_inputs(ctx: StageContext) -> dict[str, str]:
    """The RGB renders, the scene's GT and the PanSt3R checkpoint (nothing when the stage is skipped)."""
    if rts_skip_reason(ctx.cfg) is not None:
        return {}
    return {"render": upstream(ctx, "render", ("rgb",)), "scene_gt": scene_gt_digest(ctx.scene, ctx.hashes),
            **panst3r_inputs(ctx)}


def rts_run(ctx: StageContext, out: Path) -> dict:
    """PanSt3R on the RGB renders of the test views, all in one multi-view pass, scored like the uplift."""
    why = rts_skip_reason(ctx.cfg)
    rgb = ctx.stage_dir("render") / "rgb"
    stems = [s for s in ctx.scene.test if (rgb / f"{s}.png").is_file()]
    if why is None and not stems:
        why = f"no rendered test views in {rgb} (render.poses is {ctx.cfg.render.poses}; use test or all)"
    if why is not None:
        (out / "skipped.txt").write_text(why + "\n")
        return {"skipped": why}
    from ..metrics import evaluate_scene, headline, json_safe

    net = load_panst3r(ctx)
    segs = panst3r_pass(ctx, net, [rgb / f"{s}.png" for s in stems], out / "panst3r")
    id_to_class = {int(k): int(v["class_id"]) for k, v in segs.items()}
    for s in stems:
        inst = read_png(out / "panst3r" / "instance" / f"{s}.png")
        write_prediction(out, s, inst, id_classes(inst, id_to_class))
    info: dict = {"num_views": len(stems), "num_segments": len(segs), "network_size": net.size}
    if ctx.cfg.evaluate.enabled and scene_has_test_gt(ctx.scene) and ctx.scene.format == "panlift":
        m = json_safe(evaluate_scene(gt_root(ctx.scene), out))
        write_json(out / "eval.json", m)
        info.update(headline(m))
    return info
