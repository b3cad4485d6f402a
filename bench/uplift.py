"""Uplift cost vs forward rendering: time to uplift labels over all train views / time to render them.

    .venv/bin/python bench/uplift.py [--scene DIR] [--gaussians PLY] [--num-gaussians N] [--labels gt|grid:K]
                                     [--grad] [--topk k] [--only dense|topk] [--repeat R]

Without --scene, the synthetic `demo` scene is generated into a temporary folder. Without --gaussians,
N Gaussians are initialised at random around the scene's points3d.ply (realistic count, mixed opacities
and sizes; a trained model gives more realistic overlap, pass its PLY). Labels are the GT panoptic ids
of the train views (pipeline.common.labels.gt_panoptic_ids), or with --labels grid:K blocky random ids 1..K
(16-pixel cells; not multi-view consistent, only for timing/memory with many labels). Target: ratio <= 2.
Timings on a shared CPU are noisy: wall and process CPU seconds are both printed (CPU time is less
sensitive to other processes), best of --repeat runs.
Peak memory: the extra RSS of the first uplift run in this process (use --only to measure one mode per
process) and the analytic size of the dense and top-k buffers.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.common.labels import gt_panoptic_ids  # noqa: E402
from pipeline.scene import load_scene  # noqa: E402


def random_gaussians(points: np.ndarray, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """n Gaussians near the point cloud: jittered positions, log-normal sizes, mixed opacities."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(points), n)
    extent = np.ptp(points, axis=0).max()
    means = points[idx] + rng.normal(scale=0.005 * extent, size=(n, 3))
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    s = rng.normal(np.log(0.006 * extent), 0.5, (n, 3))  # log-scales
    o = rng.uniform(0.05, 0.95, n)
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return {"means": t(means), "quats": t(q), "scales": t(s), "opacities": t(np.log(o / (1 - o))),
            "sh0": t(rng.uniform(-1, 1, (n, 1, 3))), "shN": torch.zeros(n, 0, 3)}


def read_points(path: Path) -> np.ndarray:
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"]
    return np.stack([np.asarray(v[k], np.float64) for k in ("x", "y", "z")], 1)


def load_gaussians(path: Path):
    from splat.ply import load_ply

    g, _ = load_ply(path)
    return g


def grid_labels(shape: tuple[int, int], k: int, seed: int, cell: int = 16) -> np.ndarray:
    """[H, W] ids in 1..k, constant on cell x cell squares."""
    rng = np.random.default_rng(seed)
    h, w = shape
    ids = rng.integers(1, k + 1, size=((h + cell - 1) // cell, (w + cell - 1) // cell))
    return np.kron(ids, np.ones((cell, cell), np.int64))[:h, :w]


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory_table(n: int, k: int, chunk: int, topk: int) -> str:
    """Analytic size of the uplift's own buffers (the rasteriser's per-view temporaries come on top).

    direct, dense: the (N+1)·(K+1) float32 accumulator, normalised in place and returned as the weights,
    plus den/confidence/argmax [N]. direct, top-k: one block accumulator (N+1)·(B+1) f32, the running best
    (f32 weight + i64 channel) [N, k], the block's top-k and the 2k candidates. grad adds a zero-feature
    tensor, its gradient and one index temporary, each [N, B], per pass.
    """
    mib = lambda b: b / 2**20  # noqa: E731
    b = min(chunk, k)
    dense = (n + 1) * (k + 1) * 4 + n * 16
    tk = (n + 1) * (b + 1) * 4 + n * topk * 12 * 4 + n * 4
    grad = 3 * n * b * 4
    return (f"analytic, N={n:,} K={k}: dense {mib(dense):.0f} MiB | top-{topk} (blocks of {chunk}) {mib(tk):.0f} MiB | "
            f"grad method +{mib(grad):.0f} MiB per pass")


def _setup(args):
    """The scene (the demo scene generated in a temporary folder unless --scene), its labels and Gaussians."""
    from splat.render import Cameras

    tmp = None
    scene_dir = args.scene
    if scene_dir is None:
        from pipeline.synth import generate, make_config

        tmp = tempfile.TemporaryDirectory(prefix="bench_uplift_")
        scene_dir = Path(tmp.name) / "demo"
        generate(scene_dir, make_config("demo"))
    scene = load_scene(scene_dir)
    frames = scene.train_frames[: args.views or None]
    cams = Cameras.from_frames(frames)
    if args.labels == "gt":
        labels = [gt_panoptic_ids(scene.load_semantics(f.stem), scene.load_instance(f.stem))[0] for f in frames]
    elif args.labels.startswith("grid:"):
        labels = [grid_labels((cams.height, cams.width), int(args.labels[5:]), i) for i in range(len(frames))]
    else:
        raise SystemExit(f"--labels must be gt or grid:K, got {args.labels!r}")
    if args.gaussians is not None:
        g = load_gaussians(args.gaussians)
        src = str(args.gaussians)
    else:
        if scene.points is None:
            raise SystemExit(f"{scene_dir}: no points3d.ply to initialise Gaussians; pass --gaussians")
        g = random_gaussians(read_points(scene.points), args.num_gaussians)
        src = "random init around points3d.ply"
    return tmp, scene_dir, frames, cams, labels, g, src


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, default=None)
    ap.add_argument("--gaussians", type=Path, default=None, help="trained PLY (splat.ply format)")
    ap.add_argument("--num-gaussians", type=int, default=100_000)
    ap.add_argument("--views", type=int, default=0, help="use only the first V train views (0 = all)")
    ap.add_argument("--labels", default="gt", help="gt (GT panoptic ids) or grid:K (K random blocky ids)")
    ap.add_argument("--grad", action="store_true", help="also time the backward-pass method")
    ap.add_argument("--only", choices=["dense", "topk"], default=None, help="run only this uplift mode (memory)")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--topk", type=int, default=0, help="also time top-k mode with this k (0 = skip)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: 2 threads on a busy 2-core box are slower)")
    args = ap.parse_args()

    from splat.render import render
    from uplift import uplift

    torch.set_num_threads(args.threads)
    tmp, scene_dir, frames, cams, labels, g, src = _setup(args)
    g = {k: v.detach() for k, v in g.items()}
    n = int(g["means"].shape[0])
    all_ids = np.unique(np.concatenate([np.unique(l) for l in labels]))
    k_all = int((all_ids != 0).sum())  # label 0 does not vote (ignore_label)
    per_view = np.mean([len(np.unique(l)) - (0 in l) for l in labels])
    print(f"scene {scene_dir.name}: {len(frames)} train views at {cams.width}x{cams.height}, {n:,} Gaussians ({src}), "
          f"{k_all} labels ({per_view:.1f} per view on average), torch threads {torch.get_num_threads()}, backend {args.backend}")

    def timed(fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        return (time.perf_counter() - t0, time.process_time() - c0), out

    def best(fn):
        runs = [timed(fn) for _ in range(args.repeat)]
        return min(r[0][0] for r in runs), min(r[0][1] for r in runs), runs[0][1]

    def fwd():
        with torch.no_grad():
            for i in range(len(frames)):
                render(g, cams[i], None, backend=args.backend, render_depth=False)

    def up(topk=None, method="auto"):
        return uplift(g, cams, labels, chunk_channels=args.chunk, topk=topk, backend=args.backend, method=method,
                      progress=False)

    base_rss = _rss_mb()
    # forward and uplift runs are interleaved so that load from other processes hits both alike
    fw, dn, tk_runs = [], [], []
    res = rk = None
    peak = None
    for r in range(args.repeat):
        if args.only != "topk":
            t, res = timed(up)
            dn.append(t)
        if args.topk:
            t, rk = timed(lambda: up(args.topk))
            tk_runs.append(t)
        if peak is None:  # before the first forward render, so it is the uplift's own peak
            peak = _peak_mb() - base_rss
        fw.append(timed(fwd)[0])
    tr, cr = min(t[0] for t in fw), min(t[1] for t in fw)
    if dn:
        tu, cu = min(t[0] for t in dn), min(t[1] for t in dn)
    if tk_runs:
        tk, ck = min(t[0] for t in tk_runs), min(t[1] for t in tk_runs)
    print(f"forward render (RGB) of all train views : wall {tr:8.2f} s  cpu {cr:8.2f} s")
    if res is not None:
        print(f"uplift dense (auto method)              : wall {tu:8.2f} s  cpu {cu:8.2f} s   ratio wall {tu / tr:.2f}x, "
              f"cpu {cu / cr:.2f}x (target <= 2x)")
        print(f"  labelled Gaussians {int((res.label >= 0).sum()):,} / {n:,}")
    print(f"  peak extra RSS during the first round ({args.only or 'dense, then top-k' if args.topk else 'dense'}): ~{peak:.0f} MB "
          "(process max RSS minus RSS before; includes render temporaries)")
    if args.grad:
        tg, cg, rg = best(lambda: up(method="grad"))
        same = res is None or np.array_equal(rg.label, res.label)
        print(f"uplift dense (grad method, chunk {args.chunk:3d})    : wall {tg:8.2f} s  cpu {cg:8.2f} s   ratio wall "
              f"{tg / tr:.2f}x, cpu {cg / cr:.2f}x; argmax equal to auto: {same}")
    if args.topk:
        same = res is None or np.array_equal(rk.label, res.label)
        print(f"uplift top-{args.topk} (chunk {args.chunk})              : wall {tk:8.2f} s  cpu {ck:8.2f} s   ratio wall "
              f"{tk / tr:.2f}x, cpu {ck / cr:.2f}x; argmax equal to dense: {same}")
    print(memory_table(n, k_all, args.chunk, args.topk or 8))
    print(memory_table(300_000, 200, args.chunk, args.topk or 8))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
