"""The parts of bench/gpu_check.py that need torch, each run in its own child process so that a timeout can kill
it: `python bench/gpu_parts.py NAME --result FILE --ctx JSON` writes the part's result (JSON) to FILE, and
rewrites it as the part goes (status "incomplete") so a part killed at its timeout still reports what it did.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)  # bench/uplift.py would otherwise shadow the `uplift` package
else:
    sys.path.insert(0, str(ROOT))

CHANNELS = (1, 3, 32, 200)

__all__ = ["PARTS", "CHANNELS", "cell_labels", "trained_gaussians"]


def _settings(dry_run: bool):
    """(test, reference) rasteriser settings: torch vs gsplat on CUDA; float32 vs float64 torch in a dry run."""
    import torch

    from splat.agreement import Setting

    if dry_run:
        return Setting("torch", "cpu", torch.float32), Setting("torch", "cpu", torch.float64)
    return Setting("torch", "cuda", torch.float32), Setting("gsplat", "cuda", torch.float32)


def _threads(ctx: dict) -> None:
    """One torch thread on the (shared, small) CPU machines of a dry run; torch's default on the GPU machine."""
    import torch

    if ctx["dry_run"]:
        torch.set_num_threads(1)


def _partial(ctx: dict, result: dict) -> None:
    """Write what a part has so far: a part killed at its timeout still reports it."""
    from pipeline.common.io import write_json

    write_json(ctx["result_path"], dict(result, status="incomplete"))


def _name(setting) -> str:
    return f"{setting.backend} {setting.device} {str(setting.dtype).replace('torch.', '')}"


def part_environment(ctx: dict) -> dict:
    import importlib.metadata as md
    import platform
    import shutil

    import torch

    info: dict = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                  "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count()}
    for pkg in ("gsplat", "numpy", "tyro", "plyfile", "pytorch-msssim", "jaxtyping", "typeguard"):
        try:
            info[f"{pkg}_version"] = md.version(pkg)
        except md.PackageNotFoundError:
            info[f"{pkg}_version"] = None
    nvcc = shutil.which("nvcc")
    if nvcc:
        ver = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
        info["nvcc"] = ([ln for ln in ver.splitlines() if "release" in ln] or [ver.strip()[-80:]])[0].strip()
    from splat.train import PRESETS

    info["paper_preset_iterations"] = PRESETS["paper"].iterations
    if not torch.cuda.is_available():
        info["gsplat_build"] = {"status": "skipped", "reason": "no CUDA device: gsplat compiles and runs on CUDA only"}
        return info
    props = torch.cuda.get_device_properties(0)
    major, minor = torch.cuda.get_device_capability(0)
    info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), capability=f"{major}.{minor}")
    info["max_jobs"], info["arch_list"] = os.environ.get("MAX_JOBS"), os.environ.get("TORCH_CUDA_ARCH_LIST")
    t0 = time.perf_counter()
    from gsplat.cuda._backend import _C  # the JIT compile happens on this import

    build_s = round(time.perf_counter() - t0, 1)
    info["gsplat_build"] = {"status": "ok" if _C is not None else "failed", "build_s": build_s}
    if _C is None:
        return {"status": "failed", "error": "gsplat found no CUDA toolkit (nvcc): its CUDA backend is off", **info}
    return info


def part_agreement(ctx: dict) -> dict:
    import torch

    from splat.agreement import TOLERANCE, compare_settings, random_scene, row_cameras

    _threads(ctx)
    sz = ctx["sizes"]
    test, ref = _settings(ctx["dry_run"])
    # scenes: mid-size Gaussians, big overlapping ones (long per-pixel lists), small faint ones (threshold edges)
    kinds = [dict(size=(0.01, 0.08), opac=(0.05, 0.99)), dict(size=(0.05, 0.3), opac=(0.2, 0.99)),
             dict(size=(0.005, 0.03), opac=(0.01, 0.5))]
    w, h = sz["agree_size"]
    cams = row_cameras(w, h, 0.85 * w, 3)
    cases = []
    for i, (n, kind) in enumerate(zip(sz["agree_n"], kinds)):
        g = random_scene(n, seed=100 + i, **kind)
        for c in (*CHANNELS, None):
            gen = torch.Generator().manual_seed(1000 * i + (c or 0))
            feats = None if c is None else torch.rand(n, c, generator=gen, dtype=torch.float64)
            bg = torch.rand(3 if c is None else c, generator=gen, dtype=torch.float64)
            errs = compare_settings(g, cams, feats, bg, test, ref)
            worst = max(errs, key=errs.get)
            cases.append({"scene": i, "gaussians": n, "channels": c if c else "SH RGB", "max_error": errs[worst],
                          "worst": worst, "errors": errs})
    bad = [c for c in cases if not c["max_error"] <= TOLERANCE]
    out = {"test": _name(test), "reference": _name(ref), "tolerance": TOLERANCE, "image": [w, h], "cameras": 3,
           "max_error": max(c["max_error"] for c in cases), "passed": not bad, "cases": cases}
    if bad:
        out.update(status="failed", error=f"{len(bad)} of {len(cases)} cases above {TOLERANCE:g} (worst "
                                         f"{max(c['max_error'] for c in bad):.2e} in {bad[0]['worst']})")
    return out


def _bench_module(name: str):
    """A bench/ script as a module (bench/ is no package; its file names clash with the project's packages)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def part_backend_speed(ctx: dict) -> dict:
    bench_render = _bench_module("render")
    _threads(ctx)
    sz = ctx["sizes"]
    test, ref = _settings(ctx["dry_run"])
    if ctx["dry_run"]:  # bench_case renders float32: the dry run times the torch backend against itself
        ref = test
    w, h = sz["speed_size"]
    times = {}
    for role, s in (("reference", ref), ("test", test)):  # gsplat first: a slow torch backend cannot hide it
        (tf, _), (tfb, _), info = bench_render.bench_case(sz["speed_n"], w, h, s.backend, s.device, sz["speed_repeats"])
        times[role] = {"setting": _name(s), "forward_s": tf, "forward_backward_s": tfb, **info}
        _partial(ctx, {"times": times})
    ta, tb = times["test"], times["reference"]
    return {"gaussians": sz["speed_n"], "image": [w, h], "repeats": sz["speed_repeats"], "times": times,
            "ratio_forward": ta["forward_s"] / tb["forward_s"],
            "ratio_forward_backward": ta["forward_backward_s"] / tb["forward_backward_s"],
            **({"note": "dry run: no gsplat, the torch backend timed against itself"} if ctx["dry_run"] else {})}


def cell_labels(scene, frames, cells: tuple[int, int, int], lo, hi) -> list:
    """Multi-view-consistent instance ids from geometry: each pixel's back-projected depth point -> 1 + the index
    of its cell in a grid of `cells` over the box [lo, hi]; 0 where there is no depth. Hundreds of ids that agree
    across views, which is what uplifting needs (a segmenter's few instances would not load it)."""
    import numpy as np

    n = np.asarray(cells)
    out = []
    for f in frames:
        z = scene.load_depth(f.stem).astype(np.float64)  # [H, W]
        h, w = z.shape
        u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)  # pixel centres (+0.5 convention)
        K, c2w = np.asarray(f.K, np.float64), np.asarray(f.c2w, np.float64)
        cam = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1)  # [H, W, 3]
        p = cam @ c2w[:3, :3].T + c2w[:3, 3]
        idx = np.clip(np.floor((p - lo) / np.maximum(hi - lo, 1e-9) * n), 0, n - 1).astype(np.int64)
        lab = 1 + (idx[..., 0] * n[1] + idx[..., 1]) * n[2] + idx[..., 2]
        out.append(np.where(np.isfinite(z) & (z > 0), lab, 0))
    return out


def _uplift_inputs(ctx: dict):
    """Scene, train cameras, 3D-cell labels and Gaussians (the pipeline's trained PLY, else a random init)."""
    import numpy as np
    import torch

    from pipeline.scene import load_scene
    from splat.render import Cameras

    bench_uplift = _bench_module("uplift")
    scene = load_scene(Path(ctx["scene"]))
    frames = scene.train_frames
    pts = bench_uplift.read_points(scene.points)
    labels = cell_labels(scene, frames, tuple(ctx["sizes"]["cells"]), pts.min(0), pts.max(0))
    g, src, ckpt = trained_gaussians(Path(ctx["run_dir"]), pts, 5000 if ctx["dry_run"] else 500_000)
    dev = "cpu" if ctx["dry_run"] else "cuda"
    g = {k: v.detach().to(dev, torch.float32) for k, v in g.items()}
    k_all = len(np.setdiff1d(np.unique(np.concatenate([np.unique(lb) for lb in labels])), [0]))
    return Cameras.from_frames(frames), labels, g, src, k_all, ckpt


def trained_gaussians(run_dir: Path, pts, n_random: int):
    """(Gaussians, where from, splat checkpoint info): the run's gaussians.ply; else the newest ckpt.pt a killed
    splat left in its stage's temporary folder (with the step and time it had reached); else n_random Gaussians
    around the scene's points."""
    bench_uplift = _bench_module("uplift")
    ply = run_dir / "splat" / "gaussians.ply"
    if ply.is_file():
        return bench_uplift.load_gaussians(ply), str(ply), None
    ckpts = sorted(run_dir.glob(".*/ckpt.pt"), key=lambda p: p.stat().st_mtime)
    if ckpts:
        from splat.train import load_checkpoint

        ck = load_checkpoint(ckpts[-1])
        last = (ck.get("history") or [{}])[-1]
        info = {"step": ck["step"], "time_s": last.get("time"), "num_gaussians": last.get("num_gaussians")}
        return dict(ck["params"]), f"{ckpts[-1]} (checkpoint of a killed splat, step {ck['step']})", info
    return bench_uplift.random_gaussians(pts, n_random), f"random init around points3d.ply ({n_random:,})", None


def part_uplift(ctx: dict) -> dict:
    import numpy as np
    import torch

    from splat.render import render
    from uplift.ludvig import uplift

    _threads(ctx)
    cams, labels, g, src, k_all, ckpt = _uplift_inputs(ctx)
    cuda = not ctx["dry_run"]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    n_all, n_sub = len(labels), ctx["sizes"]["uplift_torch_views"] or len(labels)
    # (backend, method, views): the pipeline's choice first (gsplat + grad on CUDA, torch + direct on CPU)
    plan = ([("gsplat", "grad", n_all), ("torch", "direct", min(n_sub, n_all)), ("gsplat", "grad", min(n_sub, n_all))]
            if cuda else [("torch", "direct", min(n_sub, n_all)), ("torch", "grad", min(n_sub, n_all))])
    forward: dict = {}
    runs, labels_by = [], {}
    with torch.no_grad():
        render(g, cams[0], None, backend=plan[0][0], render_depth=False)  # warm-up (CUDA context, kernels)
    for backend, method, nv in plan:
        if (backend, nv) not in forward:
            sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                for i in range(nv):
                    render(g, cams[i], None, backend=backend, render_depth=False)
            sync()
            forward[(backend, nv)] = time.perf_counter() - t0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        res = uplift(g, cams[:nv], labels[:nv], backend=backend, method=method, progress=False)
        sync()
        dt = time.perf_counter() - t0
        labels_by[(backend, method, nv)] = res.label
        runs.append({"backend": backend, "method": method, "views": nv, "labels": int(res.num_labels),
                     "forward_s": forward[(backend, nv)], "uplift_s": dt, "ratio": dt / forward[(backend, nv)],
                     "labelled_fraction": float(res.labelled.mean()),
                     "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None})
        _partial(ctx, {"runs": runs})
    (a, b) = [k for k in labels_by if k[2] == plan[1][2]][-2:]
    same = float(np.mean(labels_by[a] == labels_by[b]))
    return {"gaussians": int(g["means"].shape[0]), "gaussians_from": src, "splat_checkpoint": ckpt,
            "train_views": n_all,
            "image": [cams.width, cams.height], "instances": k_all, "labels": "3D cells of the depth maps "
            f"{tuple(ctx['sizes']['cells'])} (multi-view consistent; not the segmenter's)", "runs": runs,
            "ratio": runs[0]["ratio"], "argmax_agreement": {"between": [" ".join(map(str, a)), " ".join(map(str, b))],
                                                            "fraction_equal": same}}


PARTS = {"environment": part_environment, "agreement": part_agreement, "backend_speed": part_backend_speed,
         "uplift": part_uplift}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=sorted(PARTS))
    ap.add_argument("--result", required=True, help="JSON file for the part's result")
    ap.add_argument("--ctx", required=True, help="JSON: dry_run, sizes, scene, run_dir")
    args = ap.parse_args(argv)
    from pipeline.common.io import write_json

    write_json(args.result, PARTS[args.part](dict(json.loads(args.ctx), result_path=args.result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
