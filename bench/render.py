"""Rasteriser speed: forward and forward+backward time per view, torch backend on CPU (1 and 2 threads) and,
with CUDA, both backends on the GPU.

The scene imitates a trained indoor splat: Gaussians on the walls/floor of a 4 m room and on a few boxes,
flattened along the surface normal, log-normal sizes (median ≈ 2.5 cm, a tail of 20-40 cm blobs), mixed
opacities; the camera stands inside the room. Times are medians over `--repeats` runs after a warm-up.

    .venv/bin/python bench/render.py [--sizes 128x96 256x192] [--counts 10000 50000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pipeline.common.threads import torch_threads
from splat.render import Cameras, render


def room_scene(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """n surface-like Gaussians in a 4×3×4 m room with four boxes (stored, pre-activation form)."""
    rng = np.random.default_rng(seed)
    # surfaces: 5 walls/floor/ceiling + 4 boxes' visible faces, sampled by area
    pts, normals = [], []
    n_box = n // 3
    n_room = n - n_box
    face = rng.integers(0, 5, n_room)
    u, v = rng.uniform(-1, 1, n_room), rng.uniform(-1, 1, n_room)
    room = {0: ([2 * u, 1.5, 2 * v + 2], [0, 1, 0]), 1: ([2 * u, -1.5, 2 * v + 2], [0, 1, 0]),
            2: ([2 * u, 1.5 * v, 4.0 + 0 * u], [0, 0, 1]), 3: ([-2 + 0 * u, 1.5 * v, 2 * u + 2], [1, 0, 0]),
            4: ([2 + 0 * u, 1.5 * v, 2 * u + 2], [1, 0, 0])}
    for f, (p, nrm) in room.items():
        sel = face == f
        pts.append(np.stack([np.broadcast_to(np.asarray(c, float), u.shape)[sel] for c in p], 1))
        normals.append(np.tile(nrm, (sel.sum(), 1)))
    centres = np.array([[-1.0, 1.1, 2.5], [0.8, 1.2, 3.0], [0.0, 1.25, 1.8], [1.2, 0.9, 2.2]])
    half = np.array([[0.3, 0.4, 0.3], [0.4, 0.3, 0.4], [0.2, 0.25, 0.2], [0.25, 0.6, 0.25]])
    b = rng.integers(0, 4, n_box)
    axis = rng.integers(0, 3, n_box)
    side = rng.choice([-1.0, 1.0], n_box)
    p = rng.uniform(-1, 1, (n_box, 3))
    p[np.arange(n_box), axis] = side
    pts.append(centres[b] + p * half[b])
    nb = np.zeros((n_box, 3))
    nb[np.arange(n_box), axis] = 1
    normals.append(nb)
    means = np.concatenate(pts)
    normal = np.concatenate(normals)
    scale = np.exp(rng.normal(np.log(0.025), 0.6, (n, 3)))
    big = rng.random(n) < 0.03
    scale[big] *= rng.uniform(6, 15, (big.sum(), 1))
    # flatten along the normal: rotate z to the normal and make the z-scale small
    scale[:, 2] *= 0.15
    z = np.array([0.0, 0.0, 1.0])
    axis_r = np.cross(z, normal)
    s = np.linalg.norm(axis_r, axis=1, keepdims=True)
    c = normal @ z
    ang = np.arctan2(s[:, 0], c)
    axis_r = np.where(s > 1e-8, axis_r / np.maximum(s, 1e-8), [1.0, 0, 0])
    quats = np.c_[np.cos(ang / 2), axis_r * np.sin(ang / 2)[:, None]]
    quats = quats + rng.normal(0, 0.1, quats.shape)  # some spin
    opac = np.clip(rng.beta(2, 1.2, n), 0.02, 0.995)
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return {"means": t(means), "quats": t(quats), "scales": t(np.log(scale)), "opacities": t(np.log(opac / (1 - opac))),
            "sh0": t(rng.uniform(-1.5, 1.5, (n, 1, 3))), "shN": torch.zeros(n, 0, 3)}


def camera(width: int, height: int) -> Cameras:
    """Inside the room, looking at the far wall and the boxes (f ≈ 60° horizontal field of view)."""
    f = 0.87 * width
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=torch.float32)
    vm = torch.eye(4)
    vm[:3, 3] = torch.tensor([0.0, -0.2, 0.3])
    return Cameras(vm[None], K[None], width, height)


def _time(fn, repeats: int, sync) -> tuple[float, float]:
    """Median wall time and median process CPU time (the CPU time is steadier on a shared machine)."""
    fn()
    sync()
    ts, cs = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    return statistics.median(ts), statistics.median(cs)


def bench_case(n: int, width: int, height: int, backend: str, device: str, repeats: int):
    g = {k: v.to(device) for k, v in room_scene(n).items()}
    cams = camera(width, height).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def fwd():
        with torch.no_grad():
            render(g, cams, backend=backend)

    params = {k: v.clone().requires_grad_(True) for k, v in g.items()}

    def fwd_bwd():
        out = render(params, cams, backend=backend)
        (out.features.square().mean() + out.depth.mean() * 0.1).backward()

    t_f = _time(fwd, repeats, sync)
    t_fb = _time(fwd_bwd, repeats, sync)
    with torch.no_grad():
        out = render(g, cams, backend=backend)
    info = {"visible": int((out.meta["radii"] > 0).all(-1).sum()), "coverage": float(out.alpha.mean())}
    return t_f, t_fb, info


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["128x96", "256x192"])
    ap.add_argument("--counts", nargs="+", type=int, default=[10000, 50000])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    load = _load()
    rows = []
    configs = [("torch", "cpu", t) for t in args.threads]
    if torch.cuda.is_available():
        configs += [("torch", "cuda", None), ("gsplat", "cuda", None)]
    for backend, device, threads in configs:
        for size in args.sizes:
            w, h = map(int, size.split("x"))
            for n in args.counts:
                with torch_threads(threads or 0):
                    (t_f, c_f), (t_fb, c_fb), info = bench_case(n, w, h, backend, device, args.repeats)
                dev = f"{device}×{threads}" if threads else device
                rows.append((backend, dev, size, n, info["visible"], info["coverage"], t_f, c_f, t_fb, c_fb))
                print(f"{backend:7s} {dev:6s} {size:8s} {n:6d}  fwd {t_f * 1e3:8.1f} ms  fwd+bwd {t_fb * 1e3:8.1f} ms",
                      flush=True)
    print(f"\nload average before the run: {load}; CPU ms = process CPU time (all threads)")
    print("| backend | device | size | N | visible | mean α | forward ms/view (CPU ms) | fwd+bwd ms/view (CPU ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for b, d, s, n, vis, cov, tf, cf, tfb, cfb in rows:
        print(f"| {b} | {d} | {s} | {n} | {vis} | {cov:.2f} | {tf * 1e3:.1f} ({cf * 1e3:.0f}) | {tfb * 1e3:.1f} ({cfb * 1e3:.0f}) |")


def _load() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
