"""Uplift oracle on the synthetic demo scene: how much PQ does LUDVIG uplifting keep, and does it denoise?

    .venv/bin/python bench/uplift_oracle.py [--work DIR] [--scene DIR] [--gaussians PLY] [--preset demo]

1. Gaussians: trained with splat.train (CPU preset; saved to WORK/gaussians.ply and reused next time), or
   the PLY given with --gaussians.
2. GT oracle: uplift the GT train-view panoptic ids (pipeline.common.labels.gt_panoptic_ids), render at the test
   poses, score with pipeline.metrics.evaluate_scene (target PQ >= 0.85).
3. SIMULATED consistent segmenter (panoptic_consistent/, default noise): uplift its train-view ids, render,
   score; compare with its own per-view predictions on the test frames scored directly. Uplifting should
   beat them (multi-view voting removes per-view noise).
Also scores the GT written as a prediction (must be 1.0: checks the writing path, not the uplift).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.common.io import read_png  # noqa: E402
from pipeline.common.labels import gt_panoptic_ids  # noqa: E402
from pipeline.metrics import evaluate_scene  # noqa: E402
from pipeline.scene import load_scene  # noqa: E402


def _fmt(m: dict) -> str:
    return " ".join(f"{k}={m[k]:.4f}" for k in ("pq", "sq", "rq", "pq_th", "pq_st", "miou") if k in m)


def _train(scene, out_ply: Path, preset: str, work: Path) -> None:
    """Train Gaussians with splat.train (panoptic-colour regulariser on the SIMULATED consistent instance maps,
    as the pipeline does with its segmenter) and save them as a PLY (reused by later runs)."""
    import shutil

    from splat.train import PRESETS, train

    sim = Path(scene.root) / "panoptic_consistent" / "instance"
    maps = {s: read_png(sim / f"{s}.png").astype(np.int64) for s in scene.train}
    t0 = time.perf_counter()
    torch.set_num_threads(1)  # as the pipeline's runs (threads: 1)
    res = train(scene, PRESETS[preset], instance_maps=maps, out_dir=work / "train", progress=False)
    shutil.copyfile(work / "train" / "gaussians.ply", out_ply)
    print(f"trained {res.num_gaussians:,} Gaussians ({res.steps} steps, preset {preset}) in "
          f"{time.perf_counter() - t0:.0f} s, test PSNR {res.test_psnr} -> {out_ply}")


def _load_gaussians(path: Path) -> dict:
    from splat.ply import load_ply

    g, _ = load_ply(path)
    return {k: v.detach() for k, v in g.items()}


def _predict(tag: str, g, scene, work: Path, train_maps, train_classes, segments=None, rgb=None, **kw) -> dict:
    from splat.render import Cameras
    from uplift import instance_classes, render_panoptic, uplift, write_predictions

    cams_tr = Cameras.from_frames(scene.train_frames)
    cams_te = Cameras.from_frames(scene.test_frames)
    t0 = time.perf_counter()
    res = uplift(g, cams_tr, train_maps, progress=False, **kw)
    t_up = time.perf_counter() - t0
    id_to_class = instance_classes(train_maps, train_classes, segments=segments)
    t0 = time.perf_counter()
    inst, sem, conf = render_panoptic(g, res, cams_te, id_to_class)
    t_r = time.perf_counter() - t0
    pred = work / f"pred_{tag}"
    write_predictions(pred, scene.test, inst, sem, rgb=rgb)
    m = evaluate_scene(scene.root, pred)
    print(f"[{tag}] uplift {res.num_labels} labels over {len(scene.train)} views: {t_up:.1f} s, "
          f"labelled {res.labelled.mean():.1%} of Gaussians; render {len(scene.test)} test views {t_r:.1f} s")
    print(f"[{tag}] {_fmt(m)}")
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/uplift_oracle"))
    ap.add_argument("--scene", type=Path, default=None, help="default: WORK/demo (generated if missing)")
    ap.add_argument("--gaussians", type=Path, default=None, help="trained PLY; default WORK/gaussians.ply (trained if missing)")
    ap.add_argument("--preset", default="demo", help="splat.train preset when training")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    scene_dir = args.scene or work / "demo"
    if not (scene_dir / "splits.json").is_file():
        from pipeline.synth import generate, make_config

        generate(scene_dir, make_config("demo"))
    scene = load_scene(scene_dir)
    ply = args.gaussians or work / "gaussians.ply"
    if not ply.is_file():
        _train(scene, ply, args.preset, work)
    g = _load_gaussians(ply)
    print(f"scene {scene_dir} ({len(scene.train)} train / {len(scene.test)} test views at "
          f"{scene.train_frames[0].width}x{scene.train_frames[0].height}), {int(g['means'].shape[0]):,} Gaussians from {ply}")

    from splat.render import Cameras, render
    from uplift import write_predictions

    with torch.no_grad():
        rgb = render(g, Cameras.from_frames(scene.test_frames), None, render_depth=False).features.clamp(0, 1).numpy()
    gt_rgb = np.stack([scene.load_rgb(s) for s in scene.test])
    psnr = float(np.mean([10 * np.log10(1 / max(np.mean((a - b) ** 2), 1e-12)) for a, b in zip(rgb, gt_rgb)]))
    print(f"test PSNR of the Gaussians: {psnr:.2f} dB")

    # sanity: GT written through write_predictions must score 1.0
    gt_te = [gt_panoptic_ids(scene.load_semantics(s), scene.load_instance(s)) for s in scene.test]
    write_predictions(work / "pred_gt_direct", scene.test, np.stack([i for i, _ in gt_te]),
                      np.stack([scene.load_semantics(s) for s in scene.test]))
    print(f"[gt written directly] {_fmt(evaluate_scene(scene.root, work / 'pred_gt_direct'))}")

    results = {}
    gt_tr = [gt_panoptic_ids(scene.load_semantics(s), scene.load_instance(s))[0] for s in scene.train]
    cls_tr = [scene.load_semantics(s) for s in scene.train]
    results["gt_uplift"] = _predict("gt_uplift", g, scene, work, gt_tr, cls_tr, rgb=rgb)

    sim = scene_dir / "panoptic_consistent"
    sim_inst = [read_png(sim / "instance" / f"{s}.png").astype(np.int64) for s in scene.train]
    sim_cls = [read_png(sim / "semantics" / f"{s}.png").astype(np.int64) for s in scene.train]
    segments = json.loads((sim / "segments.json").read_text())
    results["simulated_uplift"] = _predict("simulated_uplift", g, scene, work, sim_inst, sim_cls, segments=segments)

    # the SIMULATED segmenter's own per-view test predictions, scored directly
    te_inst = np.stack([read_png(sim / "instance" / f"{s}.png").astype(np.int64) for s in scene.test])
    te_sem = np.stack([read_png(sim / "semantics" / f"{s}.png").astype(np.int64) for s in scene.test])
    write_predictions(work / "pred_simulated_direct", scene.test, te_inst, te_sem)
    results["simulated_direct"] = evaluate_scene(scene.root, work / "pred_simulated_direct")
    print(f"[simulated segmenter on test views, per-view] {_fmt(results['simulated_direct'])}")
    d = results["simulated_uplift"]["pq"] - results["simulated_direct"]["pq"]
    print(f"GT-uplift PQ {results['gt_uplift']['pq']:.4f} (target >= 0.85); simulated: uplift "
          f"{results['simulated_uplift']['pq']:.4f} vs per-view {results['simulated_direct']['pq']:.4f} ({d:+.4f})")


if __name__ == "__main__":
    main()
