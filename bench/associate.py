"""Per-frame masks associated in 3D vs the same masks with consistent ids, side by side, on synthetic scenes.

For each scene (the demo scene and the `hard` preset: more objects, same-class neighbours), one pipeline run with
`--segment.kind per_frame` on the scene's SIMULATED per-frame masks (m2f_*: over-/under-segmentation, shuffled
ids, stuff with instance 0) gives:
  * per-frame direct PQ: the per-frame predictions scored as they are on the test views (segmenter_on_test);
  * associated + uplifted PQ: the run's uplift PQ;
  * association wall time (clustering + merging, after the shared LUDVIG pass) vs the uplift stage's wall time.
Then, on the SAME Gaussians, the same SIMULATED masks with consistent ids (simulated_m2f_consistent/) are uplifted
with plain LUDVIG, rendered and scored: the upper reference. Optionally (--with-pan) the consistent masks are also
uplifted onto Gaussians trained WITH the panoptic-colour regulariser on those consistent masks (what a per_frame run
cannot do without association first), to measure what λ_pan = 0 costs.

    python bench/associate.py --out /tmp/bench_assoc [--scenes demo hard] [--with-pan] [--reuse-gaussians]
    python bench/associate.py --scale 300000 300 30      # clustering + merge at PanLift size, synthetic sums

--scale N V S: the association after the LUDVIG pass (affinities, clustering, merged uplift) on SYNTHETIC sparse
sums shaped like a PanLift scene (N Gaussians, V views, S thing segments a view, 100 objects, each view sees
S of them and 70 % of their Gaussians; 10 % of the entries are boundary Gaussians shared by two segments). The
LUDVIG pass itself holds one view's dense [N, labels of that view] at a time; its per-view cost is the uplift's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).absolute().parents[1]
sys.path.insert(0, str(REPO))


def _run(scene: Path, out: Path, *extra: str):
    import subprocess

    cmd = [sys.executable, "-m", "pipeline", "run", str(REPO / "configs" / "demo.yaml"), "--scene.path", str(scene),
           "--output.dir", str(out), *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stdout[-3000:] + p.stderr[-3000:])
    return time.perf_counter() - t0


def consistent_reference(scene_dir: Path, run: Path, out: Path) -> dict:
    """Plain LUDVIG uplift of the consistent-id version of the same SIMULATED masks, on the run's Gaussians."""
    import torch

    from pipeline.common.io import read_png
    from pipeline.common.labels import resize_nearest
    from pipeline.masks import segment_ids
    from pipeline.metrics import evaluate_scene, json_safe
    from pipeline.scene import load_scene
    from splat.ply import load_ply
    from splat.render import Cameras
    from uplift.ludvig import instance_classes, uplift
    from uplift.render import render_panoptic, write_predictions

    torch.set_num_threads(1)
    scene = load_scene(scene_dir)
    src = scene_dir / "simulated_m2f_consistent"
    g, _ = load_ply(run / "splat" / "gaussians.ply")
    cams = Cameras.from_frames([scene.frame(s) for s in scene.train])
    H, W = cams.height, cams.width
    maps, classes = [], []
    for s in scene.train:
        sem = read_png(src / "semantics" / f"{s}.png").astype(np.int64)
        inst = read_png(src / "instance" / f"{s}.png").astype(np.int64)
        maps.append(resize_nearest(segment_ids(sem, inst, src), (H, W)))
        classes.append(resize_nearest(sem, (H, W)))
    t0 = time.perf_counter()
    res = uplift(g, cams, maps, progress=False)
    t_uplift = time.perf_counter() - t0
    id_to_class = instance_classes(maps, classes)
    for s in scene.test:
        cam = Cameras.from_frames([scene.frame(s)])
        inst, sem, _ = render_panoptic(g, res, cam, id_to_class, min_labelled_share=0.5, fill_px=8.0)
        write_predictions(out, [s], inst, sem)
    m = json_safe(evaluate_scene(scene_dir, out))
    return {"pq": m["pq"], "pq_th": m["pq_th"], "pq_st": m["pq_st"], "miou": m["miou"], "uplift_s": t_uplift}


def associated_in_process(scene_dir: Path, run: Path, out: Path) -> dict:
    """The per_frame uplift again on a finished run's Gaussians and segment maps, in this process (code changed
    since the run; its Gaussians are kept): association + uplift, render, score. The wall time of `associate`
    (LUDVIG pass + association) stands in for the uplift stage."""
    import torch

    from pipeline.common.io import read_png
    from pipeline.metrics import evaluate_scene, json_safe
    from pipeline.scene import load_scene
    from splat.ply import load_ply
    from splat.render import Cameras
    from uplift.associate import associate
    from uplift.render import render_panoptic, write_predictions

    torch.set_num_threads(1)
    scene = load_scene(scene_dir)
    g, _ = load_ply(run / "splat" / "gaussians.ply")
    cams = Cameras.from_frames([scene.frame(s) for s in scene.train])
    maps = [read_png(run / "segment" / "instance" / f"{s}.png").astype(np.int64) for s in scene.train]
    cls = [read_png(run / "segment" / "semantics" / f"{s}.png").astype(np.int64) for s in scene.train]
    t0 = time.perf_counter()
    a = associate(g, cams, maps, cls)
    wall = time.perf_counter() - t0
    for s in scene.test:
        inst, sem, _ = render_panoptic(g, a.result, Cameras.from_frames([scene.frame(s)]), a.id_to_class,
                                       min_labelled_share=0.5, fill_px=8.0)
        write_predictions(out, [s], inst, sem)
    m = json_safe(evaluate_scene(scene_dir, out))
    return {"associated_pq": m["pq"], "associated_pq_th": m["pq_th"], "uplift_stage_s": wall, **a.stats}


def bench_scene(name: str, scene: Path, out: Path, with_pan: bool, reuse: bool = False) -> dict:
    run = out / f"run_{name}_per_frame"
    wall = None if reuse else _run(scene, run, "--segment.kind", "per_frame")
    m = json.loads((run / "metrics.json").read_text())
    man = json.loads((run / "uplift" / "manifest.json").read_text())
    assoc = man["info"]["association"]
    row = {"scene": name, "per_frame_direct_pq": m["segmenter_on_test"]["pq"], "associated_pq": m["uplift"]["pq"],
           "associated_pq_th": m["uplift"]["pq_th"], "uplift_stage_s": man["wall_s"],
           "association_s": assoc["association_s"], "ludvig_pass_s": assoc["ludvig_pass_s"],
           "uplift_stage_peak_rss_mb": man["peak_rss_mb"], "sparse_mb": assoc["sparse_mb"],
           "sparse_entries": assoc["sparse_entries"], "num_segments": assoc["num_segments"],
           "num_instances": assoc["num_instances"], "num_gaussians": m.get("num_gaussians"),
           "self_check": m.get("self_check"), "warnings": m.get("warnings"), "run_wall_s": wall}
    if reuse:
        row.update(associated_in_process(scene, run, out / f"assoc_{name}"))
        row["self_check"] = row["warnings"] = None  # not re-run in process
    ref = consistent_reference(scene, run, out / f"ref_{name}")
    row["consistent_pq"] = ref["pq"]
    row["consistent_uplift_s"] = ref["uplift_s"]
    if with_pan:
        run_pan = out / f"run_{name}_consistent_pan"
        _run(scene, run_pan, "--segment.kind", "precomputed", "--segment.path", str(scene / "simulated_m2f_consistent"))
        row["consistent_with_pan_pq"] = json.loads((run_pan / "metrics.json").read_text())["uplift"]["pq"]
    return row


def scale(n: int, views: int, segs: int, objects: int = 100, seed: int = 0) -> dict:
    """Time and peak traced memory of the post-pass association on synthetic sums (see the module docstring)."""
    import tracemalloc

    from uplift.associate import AssociateConfig, cluster_from_shares, result_from_sums

    rng = np.random.default_rng(seed)
    obj = rng.integers(0, objects, n)  # Gaussian -> object
    members = [np.nonzero(obj == o)[0] for o in range(objects)]
    g_l, s_l, view_l = [], [], []
    T = 0
    for v in range(views):
        start = int(v * objects / views)
        seen = [(start + k) % objects for k in range(segs)]  # a camera loop: neighbouring views see similar objects
        for o in seen:
            g = members[o][rng.random(len(members[o])) < 0.7].astype(np.int32)
            g_l.append(g)
            s_l.append(np.full(len(g), T, np.int32))
            view_l.append(v)
            T += 1
    q_g, q_s = np.concatenate(g_l), np.concatenate(s_l)
    del g_l, s_l
    q_w = np.ones(len(q_g), np.float32)
    edge = rng.random(len(q_g)) < 0.1  # boundary Gaussians: a share with the next segment of the view
    q_w[edge] = 0.6
    q_g = np.concatenate([q_g, q_g[edge]])
    q_s = np.concatenate([q_s, np.minimum(q_s[edge] + 1, T - 1).astype(np.int32)])
    q_w = np.concatenate([q_w, np.full(int(edge.sum()), 0.4, np.float32)])
    raw_w = (q_w * rng.uniform(0.01, 1.0, len(q_w))).astype(np.float32)
    seg_view = np.asarray(view_l, np.int64)
    seg_class = np.full(T, 5, np.int64)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    cluster, st = cluster_from_shares(n, seg_view, seg_class, q_g, q_s, q_w, AssociateConfig())
    t1 = time.perf_counter()
    res = result_from_sums(q_g, cluster[q_s], raw_w, n, np.arange(1, int(cluster.max()) + 2), None, views)
    t2 = time.perf_counter()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    inputs_mb = (q_g.nbytes + q_s.nbytes + q_w.nbytes + raw_w.nbytes + q_g.nbytes + q_s.nbytes) / 2**20
    purity = np.mean([np.bincount(obj[q_g[q_s == t]]).max() / max((q_s == t).sum(), 1) for t in range(0, T, 97)])
    return {"gaussians": n, "views": views, "segments": T, "entries": int(len(q_w)), "sums_mb": round(inputs_mb, 1),
            "instances": int(cluster.max()) + 1, "objects": objects, "cluster_s": round(t1 - t0, 2),
            "merge_s": round(t2 - t1, 2), "peak_extra_mb": round(peak / 2**20, 1),
            "dense_equivalent_mb": round(n * T * 4 / 2**20, 1), "segment_purity_sample": round(float(purity), 3),
            "labelled": float(res.labelled.mean()), **st}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--scale", type=int, nargs=3, metavar=("N", "V", "S"))
    ap.add_argument("--scenes", nargs="+", default=["demo", "hard"])
    ap.add_argument("--with-pan", action="store_true")
    ap.add_argument("--reuse-gaussians", action="store_true", help="keep finished per_frame runs' Gaussians and "
                    "segment maps; redo association, render and scoring in this process")
    args = ap.parse_args()
    if args.scale:
        print(json.dumps(scale(*args.scale)))
        return
    if args.out is None:
        ap.error("--out is required (or --scale)")
    from pipeline.synth import generate, make_config

    rows = []
    for name in args.scenes:
        scene = args.out / f"scene_{name}"
        if not (scene / "scene_meta.json").is_file():
            generate(scene, make_config(name))
        rows.append(bench_scene(name, scene, args.out, args.with_pan, args.reuse_gaussians))
        r = rows[-1]
        print(json.dumps(r), flush=True)
    print("\nscene | per-frame direct PQ | associated+uplift PQ | consistent-mask uplift PQ (reference) | "
          "assoc/ref | assoc - direct | association s | uplift stage s | ratio | sparse MB | peak RSS MB")
    for r in rows:
        print(f"{r['scene']} | {r['per_frame_direct_pq']:.3f} | {r['associated_pq']:.3f} | {r['consistent_pq']:.3f} | "
              f"{r['associated_pq'] / r['consistent_pq']:.3f} (target >= 0.95) | "
              f"{r['associated_pq'] - r['per_frame_direct_pq']:+.3f} (target >= +0.30) | {r['association_s']:.2f} | "
              f"{r['uplift_stage_s']:.2f} | {r['association_s'] / r['uplift_stage_s']:.3f} (target <= 0.2) | "
              f"{r['sparse_mb']:.1f} | {r['uplift_stage_peak_rss_mb']:.0f}"
              + (f" | consistent+λ_pan PQ {r['consistent_with_pan_pq']:.3f}" if "consistent_with_pan_pq" in r else ""))


if __name__ == "__main__":
    main()
