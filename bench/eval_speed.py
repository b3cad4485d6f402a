"""Time `pipeline.metrics.evaluate_scene` on a generated 100-frame scene (target: < 3 s on 2 CPU cores).

GT is 640x480 (ScanNet label size) with 6 stuff classes as bands and 20 thing instances as rectangles that
drift across frames (scene-consistent ids); predictions are a perturbed copy (shifted boxes, class swaps,
a few per-frame ids) written at --pred-size, so every PNG goes through the 512x512 NEAREST resize.

    .venv/bin/python bench/eval_speed.py [--frames 100] [--repeat 3] [--pred-size 640x480]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.common.classes import THING_IDS  # noqa: E402
from pipeline.metrics import evaluate_scene  # noqa: E402

STUFF = [1, 2, 3, 7, 11, 13]  # wall, floor, cabinet, table, shelves, ceiling


def _frame(rng, k: int, h: int, w: int, boxes, noisy: bool):
    yy = np.arange(h)[:, None]
    sem = np.empty((h, w), np.uint8)
    band = (yy * len(STUFF)) // h
    sem[:] = np.asarray(STUFF, np.uint8)[np.broadcast_to(band, (h, w))]
    sem[: h // 20] = 0  # a void strip
    inst = np.zeros((h, w), np.uint16)
    for j, (cls, y0, x0, bh, bw, vy, vx) in enumerate(boxes):
        y = int(y0 + vy * k) % (h - bh)
        x = int(x0 + vx * k) % (w - bw)
        if noisy:
            y = max(0, y + int(rng.integers(-6, 7)))
            x = max(0, x + int(rng.integers(-6, 7)))
        c = cls
        iid = j + 1
        if noisy and rng.random() < 0.05:
            c = int(rng.choice(sorted(THING_IDS)))
        if noisy and rng.random() < 0.05:
            iid = 1000 + 50 * k + j  # an inconsistent per-frame id
        sem[y:y + bh, x:x + bw] = c
        inst[y:y + bh, x:x + bw] = iid
    if noisy:
        sem[rng.random((h, w)) < 0.01] = int(rng.choice(STUFF))
    return sem, inst


def make_scene(root: Path, frames: int, pred_size: tuple[int, int], seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    h, w = 480, 640
    things = sorted(THING_IDS)
    boxes = [(things[j % len(things)], rng.integers(0, h - 120), rng.integers(0, w - 160), int(rng.integers(30, 120)),
              int(rng.integers(40, 160)), rng.uniform(-3, 3), rng.uniform(-4, 4)) for j in range(20)]
    scene, pred = root / "scene", root / "pred"
    for d in (scene / "rs_semantics", scene / "rs_instance", pred / "pred_semantics", pred / "pred_surrogateid"):
        d.mkdir(parents=True)
    stems = [str(5 * k) for k in range(frames)]
    for k, s in enumerate(stems):
        sem, inst = _frame(rng, k, h, w, boxes, noisy=False)
        Image.fromarray(sem).save(scene / "rs_semantics" / f"{s}.png")
        Image.fromarray(inst).save(scene / "rs_instance" / f"{s}.png")
        psem, pinst = _frame(rng, k, h, w, boxes, noisy=True)
        if (w, h) != pred_size:
            psem = np.array(Image.fromarray(psem).resize(pred_size, Image.NEAREST))
            pinst = np.array(Image.fromarray(pinst).resize(pred_size, Image.NEAREST))
        Image.fromarray(psem).save(pred / "pred_semantics" / f"{s}.png")
        Image.fromarray(pinst).save(pred / "pred_surrogateid" / f"{s}.png")
    (scene / "splits.json").write_text(json.dumps({"train": [], "test": stems}))
    return scene, pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pred-size", default="640x480", help="WxH of the prediction PNGs (PanLift renders 384x256)")
    ap.add_argument("--target-s", type=float, default=3.0)
    args = ap.parse_args()
    pw, ph = (int(v) for v in args.pred_size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        scene, pred = make_scene(Path(tmp), args.frames, (pw, ph))
        print(f"generated {args.frames} frames (GT 640x480, pred {pw}x{ph}) in {time.perf_counter() - t0:.1f} s")
        times, cpu = [], []
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            r = evaluate_scene(scene, pred)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        best = min(times)
        print(f"evaluate_scene wall: first {times[0]:.2f} s, best {best:.2f} s, all "
              f"{', '.join(f'{t:.2f}' for t in times)} s ({r['num_pixels'] / 1e6:.1f} M valid pixels at 512x512)")
        print(f"evaluate_scene CPU (all threads): {', '.join(f'{t:.2f}' for t in cpu)} s "
              "(wall times are noisy on a shared 2-core machine)")
        print(f"PQ {100 * r['pq']:.1f}  SQ {100 * r['sq']:.1f}  RQ {100 * r['rq']:.1f}  mIoU {100 * r['miou']:.1f}")
        print(f"target {args.target_s:.1f} s -> ratio best/target = {best / args.target_s:.2f} "
              f"({'OK' if best < args.target_s else 'TOO SLOW'})")


if __name__ == "__main__":
    main()
