"""Train the CPU preset on the synthetic `demo` scene with GT instance maps; print test PSNR, panoptic-colour
pixel agreement, wall time and the number of Gaussians.

Targets (CPU only): test-view PSNR >= 24 dB within 6 minutes of training wall time, and the rendered panoptic
colours on the test views nearest to the right palette colour on >= 90 % of the non-void GT pixels.

    .venv/bin/python bench/train_demo.py [--scene runs/bench/demo_scene] [--preset demo] [--threads 1]

The scene is generated with `pipeline.synth` (preset demo: 80 frames at 256x192, every 5th a test view) when
the folder does not exist yet. The machine's load (os.getloadavg) is printed with the numbers: on a shared
machine wall times are inflated.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.common.labels import gt_panoptic_ids, palette
from pipeline.common.threads import torch_threads
from pipeline.scene import load_scene
from splat.render import Cameras, render
from splat.train import PRESETS, train


def gt_ids(scene, stem: str) -> np.ndarray:
    return gt_panoptic_ids(scene.load_semantics(stem), scene.load_instance(stem))[0]


@torch.no_grad()
def pan_agreement(gaussians, scene, stems, candidates: np.ndarray) -> float:
    """Fraction of non-void GT pixels whose rendered panoptic colour is nearest (L2) to their id's palette colour
    among `candidates` (every id of the scene, and void = black)."""
    cols = torch.from_numpy(palette(candidates))  # [M, 3]
    hit = total = 0
    for s in stems:
        cam = Cameras.from_frames([scene.frame(s)])
        img = render(gaussians, cam, gaussians["pan"], background=torch.zeros(3), render_depth=False).features[0]
        ids = gt_ids(scene, s)
        if ids.shape != img.shape[:2]:
            raise SystemExit(f"{s}: GT labels are {ids.shape}, renders {tuple(img.shape[:2])}")
        nearest = candidates[torch.cdist(img.reshape(-1, 3), cols).argmin(1).numpy()].reshape(ids.shape)
        valid = ids > 0
        hit += int((nearest[valid] == ids[valid]).sum())
        total += int(valid.sum())
    return hit / max(total, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", type=Path, default=Path("runs/bench/demo_scene"))
    ap.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--iterations", type=int, default=None, help="override the preset's iterations")
    ap.add_argument("--out", type=Path, default=None, help="write ckpt.pt, gaussians.ply, history.json here")
    args = ap.parse_args()

    if not args.scene.exists():
        from pipeline.synth import generate, make_config

        t = time.perf_counter()
        generate(args.scene, make_config("demo"))
        print(f"generated the demo scene in {time.perf_counter() - t:.1f} s -> {args.scene}")
    scene = load_scene(args.scene)
    maps = {s: gt_ids(scene, s) for s in scene.train}
    cfg = PRESETS[args.preset]
    over = {"iterations": args.iterations} if args.iterations is not None else {}
    cfg = dataclasses.replace(cfg, **over)
    if args.threads > 0:  # for training and evaluation alike (2 OpenMP threads stall on a loaded machine)
        torch.set_num_threads(args.threads)
    W, H = scene.train_frames[0].width, scene.train_frames[0].height
    print(f"scene {args.scene}: {len(scene.train)} train / {len(scene.test)} test views at {W}x{H}; "
          f"preset {args.preset}: {cfg.iterations} iterations at scale {cfg.scale}, threads {args.threads or 'default'}")
    load0 = os.getloadavg()
    res = train(scene, cfg, instance_maps=maps, out_dir=args.out, resume=False, progress=True)
    load1 = os.getloadavg()
    t_eval = time.perf_counter()
    ids = sorted({int(i) for s in scene.frames for i in np.unique(gt_ids(scene, s))} | {0})
    with torch_threads(cfg.threads):  # the thread count training used
        agree = pan_agreement(res.gaussians, scene, scene.test, np.asarray(ids))
    t_eval = time.perf_counter() - t_eval
    per_it = res.history[-1]["time"] / max(res.steps, 1)
    print(f"test PSNR        {res.test_psnr:.2f} dB (target >= 24)")
    print(f"pan agreement    {100 * agree:.1f} % of non-void test pixels (target >= 90; {t_eval:.1f} s)")
    print(f"train wall time  {res.wall_time:.1f} s (target <= 360), {per_it:.3f} s/iteration on average")
    print(f"gaussians        {res.num_gaussians} (init from {res.init_source})")
    print(f"load average     {load0[0]:.2f} before, {load1[0]:.2f} after (1-min; 2 cores)")


if __name__ == "__main__":
    main()
