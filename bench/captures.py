"""Posed vs pose-free runs on one synthetic scene, side by side: PQ, PSNR, pose errors and wall time per stage.

    python bench/captures.py [--scene DIR] [--out DIR] [--preset demo] [--variants file,pointmaps,colmap+pose_opt]

Runs of `python -m pipeline run configs/demo.yaml` on the same scene: the scene's own poses (`file`),
cameras from SIMULATED pointmaps (`pointmaps`) and structure from motion with pycolmap (`colmap`), each optionally
with per-view pose refinement (`+pose_opt`, `--variants`). Targets:
pointmaps PQ >= posed PQ - 0.03; colmap ate_rel <= 1 % and rotation error <= 1 degree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, default=Path("/tmp/bench_captures/scene"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_captures"))
    ap.add_argument("--preset", default="demo", help="synthetic scene preset when --scene does not exist")
    ap.add_argument("--splat-preset", default=None, help="splat preset override (default: the config's)")
    ap.add_argument("--variants", default="file,pointmaps,colmap",
                    help="comma-separated: file, pointmaps, colmap, each optionally +pose_opt (per-view pose refinement)")
    args = ap.parse_args()
    if not (args.scene / "splits.json").is_file():
        subprocess.run([sys.executable, "-m", "pipeline", "synth", str(args.scene), "--preset", args.preset],
                       cwd=REPO, check=True)
    rows = []
    for variant in args.variants.split(","):
        poses, _, extra = variant.partition("+")
        run_dir = args.out / f"run_{variant.replace('+', '_')}"
        cmd = [sys.executable, "-m", "pipeline", "run", "configs/demo.yaml", "--scene.path", str(args.scene),
               "--output.dir", str(run_dir), "--scene.poses", poses]
        if extra == "pose_opt":
            cmd += ["--splat.train.pose-opt"]
        if args.splat_preset:
            cmd += ["--splat.preset", args.splat_preset]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            print(f"{variant}: FAILED\n{p.stderr.strip().splitlines()[-1]}")
            continue
        m = json.loads((run_dir / "metrics.json").read_text())
        rows.append((variant, m, wall))
    print(f"\n{'poses':<18} {'PQ':>6} {'PSNR':>6} {'ate_rel':>8} {'rot°':>6} {'reg':>7} {'wall s':>7}  stages (s)")
    for poses, m, wall in rows:
        pe = m.get("pose_eval") or {}
        reg = f"{pe['num_registered']}/{pe['num_train']}" if pe else "-"
        stages = " ".join(f"{k}={v:.1f}" for k, v in m["timings_s"].items() if v and v >= 0.05)
        print(f"{poses:<18} {m['uplift']['pq']:6.3f} {m['psnr']:6.2f} {pe.get('ate_rel', float('nan')):8.4f} "
              f"{pe.get('rot_err_deg', float('nan')):6.2f} {reg:>7} {wall:7.1f}  {stages}")
    by = {p: m for p, m, _ in rows}
    if "file" in by and "pointmaps" in by:
        d = by["pointmaps"]["uplift"]["pq"] - by["file"]["uplift"]["pq"]
        print(f"pointmaps PQ - posed PQ = {d:+.3f} (target >= -0.03): {'met' if d >= -0.03 else 'NOT met'}")
    if "colmap" in by:
        pe = by["colmap"]["pose_eval"]
        ok = pe["ate_rel"] <= 0.01 and pe["rot_err_deg"] <= 1.0
        print(f"colmap ate_rel {100 * pe['ate_rel']:.2f} % (target <= 1 %), rotation {pe['rot_err_deg']:.2f}° "
              f"(target <= 1°): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
