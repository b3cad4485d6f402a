"""Ray executor overhead: the same 4 tiny synthetic scenes through `pipeline table` with the local executor and
with Ray (a local Ray instance with the same number of CPUs as local workers), side by side in one process;
then the projected wall time of the full 25-scene PanLift table on N GPUs from per-stage times.

The scenes use the SIMULATED segmenter and the tiny splat preset, so a run is seconds of stage work plus the
fixed cost of starting a `pipeline run` process: the worst case for an executor's relative overhead. The
projection schedules 25 scene runs (longest first) onto N one-GPU slots, each run costing its summed stage times
plus the measured per-run launch cost; by default the stage times are those just measured on this machine, and
`--stage-times` takes metrics.json files of real runs (e.g. GPU runs of PanLift scenes) instead.

    .venv/bin/python bench/table_overhead.py [--workers 2] [--rounds 2] [--work DIR] [--stage-times RUN/metrics.json ...]
"""

from __future__ import annotations

import argparse
import heapq
import json
import tempfile
import time
from pathlib import Path

import yaml

from pipeline.executors import ExecutorArgs
from pipeline.synth import generate, make_config
from pipeline.table import table_command

REPO = Path(__file__).resolve().parents[1]
TINY = ["--splat.preset", "tiny"]


def makespan(durations: list[float], slots: int) -> float:
    """Longest-first list scheduling of independent runs onto `slots` identical workers (what a Ray queue does
    when every run asks for one slot)."""
    heap = [0.0] * slots
    for d in sorted(durations, reverse=True):
        heapq.heappush(heap, heapq.heappop(heap) + d)
    return max(heap)


def timed_table(bench: Path, data: Path, out: Path, run: ExecutorArgs) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    rows = table_command(bench, data, out=out, run=run, extra_args=TINY)["scenes"]
    wall = time.perf_counter() - t0
    failed = [r for r in rows if r["status"] != "done"]
    if failed:
        raise SystemExit(f"bench runs did not all run: {failed}")
    return wall, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="local workers = Ray CPUs (one CPU per run)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--stage-times", type=Path, nargs="*", default=None,
                    help="metrics.json of real runs whose per-stage times the 25-scene projection uses")
    ap.add_argument("--rounds", type=int, default=2, help="tables per executor, run in ABBA order")
    ap.add_argument("--gpus", type=int, nargs="*", default=[1, 2, 4, 8, 25])
    args = ap.parse_args()
    import ray

    work = args.work or Path(tempfile.mkdtemp(prefix="table_overhead_"))
    data = work / "data"
    scenes = [f"s{i}" for i in range(4)]
    for i, sid in enumerate(scenes):
        if not (data / "tiny" / sid / "splits.json").is_file():
            generate(data / "tiny" / sid, make_config("tiny", seed=10 + i))
    bench = work / "bench.yaml"
    bench.write_text(yaml.safe_dump({"datasets": {"tiny": {"config": str(REPO / "configs/demo.yaml"), "scenes": scenes}}}))
    stamp = time.strftime("%H%M%S")

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    rows_of: dict[str, list[dict]] = {"local": [], "ray": []}
    try:  # rounds in ABBA order, so that a drift in the machine's load hits both executors alike
        order = [kind for r in range(args.rounds) for kind in (("local", "ray") if r % 2 == 0 else ("ray", "local"))]
        for i, kind in enumerate(order):
            run = ExecutorArgs(workers=args.workers) if kind == "local" else ExecutorArgs(executor="ray")
            wall, rows = timed_table(bench, data, work / f"{kind}_{stamp}_{i}", run)
            walls[kind].append(wall)
            rows_of[kind] += rows
    finally:
        ray.shutdown()
    local_wall, ray_wall = (sum(walls[k]) / len(walls[k]) for k in ("local", "ray"))
    local_rows, ray_rows = rows_of["local"], rows_of["ray"]
    same = all(a[k] == b[k] for a, b in zip(local_rows, ray_rows) for k in ("pq", "miou", "psnr"))

    print(f"\n4 tiny scenes, {args.workers} at a time (SIMULATED segmenter, tiny splat preset), this machine, "
          f"mean of {args.rounds} round(s):")
    print(f"  local executor          {local_wall:7.1f} s  {[round(w, 1) for w in walls['local']]}")
    print(f"  ray executor            {ray_wall:7.1f} s  {[round(w, 1) for w in walls['ray']]}"
          f"  (+ {ray_start:.1f} s ray.init, once per command)")
    print(f"  overhead ratio ray/local {ray_wall / local_wall:6.2f}x  (with ray.init: "
          f"{(ray_wall + ray_start) / local_wall:.2f}x; target <= 1.2x)")
    print(f"  identical PQ/mIoU/PSNR per scene: {same}")

    rows = local_rows + ray_rows
    launch = sum(r["wall_s"] - r["time_s"] for r in rows) / len(rows)  # process start, imports, hashing, report
    if args.stage_times:
        timings = [json.loads(Path(p).read_text())["timings_s"] for p in args.stage_times]
        source = f"{len(timings)} metrics.json file(s) given"
    else:
        timings = [r["timings_s"] for r in rows]
        source = "the tiny CPU runs above (NOT representative of real scenes; pass --stage-times)"
    stages = list(dict.fromkeys(k for t in timings for k in t))
    mean = {k: sum(t.get(k) or 0.0 for t in timings) / len(timings) for k in stages}
    print(f"\nper-stage mean seconds from {source}:")
    print("  " + "  ".join(f"{k} {v:.1f}" for k, v in mean.items()) + f"  | launch {launch:.1f} per run")
    per_scene = [sum(v or 0.0 for v in t.values()) + launch for t in timings]
    durations = [per_scene[i % len(per_scene)] for i in range(25)]
    print("projected wall time of the 25-scene table (one run per GPU at a time, longest first):")
    for n in args.gpus:
        print(f"  {n:3d} GPU(s): {makespan(durations, n) + ray_start:8.1f} s")


if __name__ == "__main__":
    main()
