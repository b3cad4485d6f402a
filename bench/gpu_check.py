"""GPU readiness in one command: gsplat build, torch-vs-gsplat agreement and speed, and a PanLift-size scene
through the whole pipeline, each part in its own subprocess under its own timeout.

    python bench/gpu_check.py OUTDIR [--dry-run] [--budget-s 540] [--splat-iterations N]

Writes OUTDIR/gpu_check.json (rewritten as each part ends) and OUTDIR/gpu_check.log (every part's output) and
nothing else there; the scene (thousands of files) and the run go to --work (default: TMPDIR/gpu_check_work).
Parts, in order (the scene is generated in the background from the start, while gsplat compiles):
  environment    python/torch/CUDA versions, GPU, nvcc; gsplat's JIT build (MAX_JOBS=16), timed
  agreement      splat.agreement: torch backend vs gsplat on CUDA, 3 scenes x channels 1/3/32/200 and SH RGB,
                 every output and gradient within splat.agreement.TOLERANCE (relative)
  backend_speed  bench/render.py's room scene: torch backend vs gsplat, forward and forward+backward (ratio)
  synth          python -m pipeline synth: 375 frames (300 train, 75 test) at 512x384
  pipeline       python -m pipeline run configs/gpu_paper.yaml with the SIMULATED segmenter: per-stage wall
                 time, peak GPU memory (nvidia-smi samples), Gaussians, PSNR, PQ
  uplift         both LUDVIG methods on multi-view-consistent 3D-cell labels (>= 200 ids) against one forward
                 render pass over the same train views
--dry-run: the same on CPU with the tiny scene and the tiny splat preset; gsplat's build is skipped (reason
recorded) and gsplat is replaced by the float64 torch backend (agreement) or the torch backend (speed).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"splat_s": 180.0, "segment_splat_uplift_render_s": 240.0, "uplift_over_forward": 2.0}
GPU = dict(frames=375, width=512, height=384, points=100_000, agree_n=(3000, 8000, 20000), agree_size=(128, 96),
           speed_n=100_000, speed_size=(512, 384), speed_repeats=3, uplift_torch_views=8, cells=(12, 12, 6),
           splat_iterations=5000, caps=dict(environment=330, agreement=90, backend_speed=90, synth=330, uplift=120))
# splat_iterations: the paper preset's 30k steps cannot fit after a scene generation of several minutes, so the
# GPU run cuts the schedule (all stages then run) and projects the full preset's time linearly (summarise)
DRY = dict(frames=24, width=96, height=72, points=2000, agree_n=(200, 300, 400), agree_size=(32, 24),
           speed_n=2000, speed_size=(64, 48), speed_repeats=2, uplift_torch_views=5, cells=(6, 6, 4),
           splat_iterations=30, caps=dict(environment=60, agreement=60, backend_speed=60, synth=60, uplift=60))

__all__ = ["main", "TARGETS"]


# ---- orchestration (no torch in this process: every part runs in a child that a timeout can kill)


class Report:
    """gpu_check.json rewritten after every part, gpu_check.log appended with every child's output."""

    def __init__(self, out: Path, work: Path, meta: dict):
        self.out, self.work = out, work
        self.path = out / "gpu_check.json"
        self.log_path = out / "gpu_check.log"
        self.log_fh = open(self.log_path, "a", buffering=1)
        self.data = {**meta, "parts": {}}
        self.flush()

    def log(self, text: str) -> None:
        print(text, flush=True)
        self.log_fh.write(text + "\n")

    def record(self, name: str, entry: dict) -> None:
        self.data["parts"][name] = entry
        self.flush()
        brief = {k: v for k, v in entry.items() if k in ("status", "wall_s", "error", "reason")}
        self.log(f"== {name}: {json.dumps(brief)}")

    def flush(self) -> None:
        from pipeline.common.io import write_json

        write_json(self.path, self.data)


@functools.lru_cache(maxsize=1)
def _compute_capability() -> str | None:
    """The GPU's compute capability ("9.0") from nvidia-smi, without importing torch; None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    cap = out.stdout.split()[0] if out.returncode == 0 and out.stdout.strip() else ""
    return cap if re.fullmatch(r"\d+\.\d+", cap) else None


def _child_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("MAX_JOBS", str(min(16, os.cpu_count() or 1)))
    # Every child must compile gsplat with the same flags, or the next one to import it rebuilds it: this GPU's
    # architecture only (torch's default adds PTX), fixed here once for all of them.
    cap = _compute_capability()
    if cap and "TORCH_CUDA_ARCH_LIST" not in env:
        env["TORCH_CUDA_ARCH_LIST"] = cap
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


_LIVE: set = set()  # children running now; killed (with their process groups) when the check ends early


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: nothing else is in this group
    except ProcessLookupError:
        pass
    proc.wait()


def run_child(report: Report, cmd: list[str], timeout: float) -> tuple[int | None, float, str]:
    """Run cmd in its own process group, output appended to the log; kill the group at the timeout.
    Returns (exit code or None on timeout, wall seconds, the output it wrote)."""
    start = report.log_fh.tell()
    report.log(f"$ {' '.join(cmd)}   (timeout {timeout:.0f} s)")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_child_env(), stdout=report.log_fh, stderr=subprocess.STDOUT,
                            start_new_session=True)
    _LIVE.add(proc)
    try:
        rc = proc.wait(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        _kill(proc)
        rc = None
    finally:
        _LIVE.discard(proc)
    wall = time.perf_counter() - t0
    report.log_fh.flush()
    with open(report.log_path) as fh:
        fh.seek(start)
        text = fh.read()
    return rc, wall, text


def _skipped(report: Report, name: str, skip: str | None, timeout: float) -> dict | None:
    """Record `name` as skipped (for `skip`, or a spent budget) and return its entry; None: run it."""
    reason = skip or (f"budget spent ({timeout:.0f} s left for this part)" if timeout < 5 else None)
    if reason is None:
        return None
    entry = {"status": "skipped", "reason": reason}
    report.record(name, entry)
    return entry


def run_part(report: Report, name: str, ctx: dict, timeout: float, skip: str | None = None) -> dict:
    """One part of bench/gpu_parts.py in a child; its result JSON becomes the part's entry."""
    skipped = _skipped(report, name, skip, timeout)
    if skipped:
        return skipped
    res = report.work / "parts" / f"{name}.json"
    res.parent.mkdir(exist_ok=True)
    res.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_parts.py"), name, "--result", str(res), "--ctx", json.dumps(ctx)]
    rc, wall, text = run_child(report, cmd, timeout)
    entry: dict = {"wall_s": round(wall, 2), "timeout_s": round(timeout, 1)}
    if rc is None:
        entry.update(status="timeout", error=f"killed after {timeout:.0f} s")
        if res.is_file():  # what the part had finished when it was killed
            entry["partial_result"] = json.loads(res.read_text())
    elif rc != 0 or not res.is_file():
        tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        entry.update(status="failed", error=f"exit code {rc}: {tail[0][:300]}")
    else:
        result = json.loads(res.read_text())
        entry.update(status=result.pop("status", "ok"), result=result)
        if "error" in result:
            entry["error"] = result.pop("error")
    report.record(name, entry)
    return entry


class GpuSampler:
    """Total used GPU memory (MiB, nvidia-smi) sampled every `period` s in a thread; None without nvidia-smi."""

    def __init__(self, period: float = 0.5):
        self.samples: list[tuple[float, float]] = []
        self.period, self._stop = period, threading.Event()
        self.baseline = self._read()
        self.available = self.baseline is not None
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _read() -> float | None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10)
            return float(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError, ValueError):
            return None

    def _loop(self):
        while not self._stop.wait(self.period):
            v = self._read()
            if v is not None:
                self.samples.append((time.time(), v))

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def peak_between(self, t0: float, t1: float) -> float | None:
        vals = [v for t, v in self.samples if t0 - 1.0 <= t <= t1 + 1.0]
        return round(max(vals) - (self.baseline or 0.0), 1) if vals else None


def _iso(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def pipeline_figures(run_dir: Path, sampler: GpuSampler) -> dict:
    """Per-stage wall time, peak RSS and peak GPU memory, Gaussians, PSNR and PQ from the run's own files."""
    m = json.loads((run_dir / "metrics.json").read_text())
    stages = {}
    for name, wall in (m.get("timings_s") or {}).items():
        man = json.loads((run_dir / name / "manifest.json").read_text())
        stages[name] = {"wall_s": wall, "peak_rss_mb": (m.get("peak_rss_mb") or {}).get(name),
                        "peak_gpu_mb": sampler.peak_between(_iso(man["started"]), _iso(man["finished"]))}
    up = m.get("uplift") or {}
    t = m.get("timings_s") or {}
    core = ("segment", "splat", "uplift", "render")
    return {"stages": stages, "num_gaussians": m.get("num_gaussians"), "psnr": m.get("psnr"),
            "pq": {k: up.get(k) for k in ("pq", "sq", "rq", "pq_th", "pq_st", "miou")},
            "pq_segmenter_on_test": (m.get("segmenter_on_test") or {}).get("pq"),
            "splat_s": t.get("splat"), **_splat_loop(run_dir),
            "segment_splat_uplift_render_s": sum(t[k] for k in core) if all(k in t for k in core) else None,
            "peak_gpu_mb": sampler.peak_between(0, float("inf")) if sampler.available else None}


def _splat_loop(run_dir: Path) -> dict:
    """Steps run and the optimisation loop's own seconds (splat's history), apart from loading and writing."""
    try:
        last = json.loads((run_dir / "splat" / "history.json").read_text())[-1]
        return {"splat_steps": int(last["step"]), "splat_loop_s": float(last["time"])}
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return {"splat_steps": None, "splat_loop_s": None}


def _last_progress(text: str) -> dict | None:
    """The last tqdm line `N/M [mm:ss<...` of a killed run: how far splat got and the time it would need."""
    hits = re.findall(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)", text)
    if not hits:
        return None
    n, total, h, mnt, s = hits[-1]
    el = int(h or 0) * 3600 + int(mnt) * 60 + int(s)
    return {"step": int(n), "of": int(total), "elapsed_s": el,
            "projected_s": round(el * int(total) / int(n), 1) if int(n) else None}


def run_pipeline_part(report: Report, args, sizes: dict, scene: Path, run_dir: Path, timeout: float,
                      skip: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "pipeline", "run", str(ROOT / "configs" / "gpu_paper.yaml"), "--scene.path",
           str(scene), "--segment.kind", "simulated", "--output.dir", str(run_dir)]
    if args.dry_run:
        cmd += ["--splat.preset", "tiny", "--device", "cpu", "--threads", "1"]
    iterations = sizes.get("splat_iterations") if args.splat_iterations is None else args.splat_iterations
    if iterations:
        cmd += ["--splat.train.iterations", str(iterations)]
    skipped = _skipped(report, "pipeline", skip, timeout)
    if skipped:
        return skipped
    with GpuSampler() as sampler:
        rc, wall, text = run_child(report, cmd, timeout)
    entry: dict = {"wall_s": round(wall, 2), "timeout_s": round(timeout, 1), "command": " ".join(cmd[1:])}
    if rc == 0 and (run_dir / "metrics.json").is_file():
        entry.update(status="ok", result=pipeline_figures(run_dir, sampler))
        if not sampler.available:
            entry["result"]["peak_gpu_mb_reason"] = "no nvidia-smi here: peak RSS only"
    else:
        entry.update(status="timeout" if rc is None else "failed",
                     error=f"killed after {timeout:.0f} s" if rc is None else f"exit code {rc}",
                     result={"splat_progress": _last_progress(text),
                             "finished_stages": sorted(p.parent.name for p in run_dir.glob("*/manifest.json")),
                             "peak_gpu_mb": sampler.peak_between(0, float("inf")) if sampler.available else None})
    report.record("pipeline", entry)
    return entry


def run_check(args) -> dict:
    sizes = DRY if args.dry_run else GPU
    out, work = Path(args.outdir).resolve(), Path(args.work).resolve()
    for d in (out, work):
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    left = lambda reserve=0.0: t0 + args.budget_s - time.perf_counter() - reserve  # noqa: E731
    tag = f"{sizes['frames']}x{sizes['width']}x{sizes['height']}"
    scene, run_dir = work / f"scene_{tag}", work / f"run_{tag}"  # a scene of the same size is reused
    shutil.rmtree(run_dir, ignore_errors=True)  # a cached run would report its old stage times
    meta = {"dry_run": bool(args.dry_run), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "budget_s": args.budget_s, "work": str(work), "targets": TARGETS,
            "sizes": {k: v for k, v in sizes.items() if k != "caps"}}
    report = Report(out, work, meta)
    caps = sizes["caps"]
    ctx = {"dry_run": bool(args.dry_run), "sizes": sizes, "scene": str(scene), "run_dir": str(run_dir)}
    # the scene generator (one CPU core) runs beside the gsplat build and the two GPU micro-checks
    synth_cmd = [sys.executable, "-m", "pipeline", "synth", str(scene), "--preset", "tiny" if args.dry_run else "demo",
                 "--num-frames", str(sizes["frames"]), "--width", str(sizes["width"]), "--height",
                 str(sizes["height"]), "--num-points", str(sizes["points"])]
    synth: dict = {}
    thread = threading.Thread(target=lambda: synth.update(zip(("rc", "wall", "text"), run_child(
        report, synth_cmd, min(caps["synth"], left())))), daemon=True)
    generate = not (scene / "splits.json").is_file()
    try:
        if generate:
            thread.start()
        env = run_part(report, "environment", ctx, min(caps["environment"], left(60)))
        # a failed or killed build would be restarted from scratch by every later import of gsplat
        no_gsplat = None if args.dry_run or env["status"] == "ok" else "gsplat did not build (environment part)"
        for name in ("agreement", "backend_speed"):
            run_part(report, name, ctx, min(caps[name], left(60)), skip=no_gsplat)
        if generate:
            thread.join()
            rc = synth.get("rc", "not started")
            report.record("synth", {"status": "ok" if rc == 0 else ("timeout" if rc is None else "failed"),
                                    "wall_s": round(synth.get("wall", 0.0), 2), "command": " ".join(synth_cmd[1:]),
                                    **({} if rc == 0 else {"error": f"exit code {rc}"})})
        else:
            report.record("synth", {"status": "skipped", "reason": f"{scene} already holds a scene (reused)"})
        no_scene = None if (scene / "splits.json").is_file() else "no scene: the synth part did not finish"
        run_pipeline_part(report, args, sizes, scene, run_dir, left(caps["uplift"]), skip=no_scene or no_gsplat)
        run_part(report, "uplift", ctx, min(caps["uplift"], left()), skip=no_scene or no_gsplat)
    finally:
        for proc in list(_LIVE):
            _kill(proc)
    report.data.update(finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       wall_s=round(time.perf_counter() - t0, 1), summary=summarise(report.data))
    report.flush()
    for line in summary_lines(report.data):
        report.log(line)
    return report.data


# ---- summary


def summarise(data: dict) -> dict:
    """The figures next to their targets (they apply to a GPU run only). When splat ran fewer steps than the
    paper preset, its time (and the stage sum) is also projected to the preset's step count: the loop's time
    scaled linearly, loading and writing counted once."""
    p = {k: v.get("result") or {} for k, v in data["parts"].items()}
    pipe, env = p.get("pipeline", {}), p.get("environment", {})
    splat, core, steps, full = (pipe.get("splat_s"), pipe.get("segment_splat_uplift_render_s"), pipe.get("splat_steps"),
                                env.get("paper_preset_iterations"))
    loop = pipe.get("splat_loop_s")
    extra = loop * (full / steps - 1) if None not in (splat, loop) and steps and full and steps < full else None
    figures = {"splat_s": splat, "segment_splat_uplift_render_s": core,
               "uplift_over_forward": p.get("uplift", {}).get("ratio")}
    checks = {k: {"value": v, "target": TARGETS[k], "met": None if v is None else bool(v <= TARGETS[k])}
              for k, v in figures.items()}
    if extra is not None:
        proj = {"splat_s": splat + extra, "segment_splat_uplift_render_s": None if core is None else core + extra}
        for k, v in proj.items():
            checks[k].update(projected=v, projected_met=None if v is None else bool(v <= TARGETS[k]),
                             basis=f"{steps} splat steps measured, the loop projected to the paper preset's {full}")
    return {"checks": checks, "applies": not data["dry_run"],
            "gsplat_build_s": (env.get("gsplat_build") or {}).get("build_s"),
            "agreement_max_error": p.get("agreement", {}).get("max_error"),
            "agreement_passed": p.get("agreement", {}).get("passed"),
            "torch_over_gsplat_forward": p.get("backend_speed", {}).get("ratio_forward"),
            "torch_over_gsplat_forward_backward": p.get("backend_speed", {}).get("ratio_forward_backward"),
            "statuses": {k: v["status"] for k, v in data["parts"].items()}}


def summary_lines(data: dict) -> list[str]:
    s = data["summary"]
    fmt = lambda v, f="{:.1f}": "n/a" if v is None else f.format(v)  # noqa: E731
    lines = [f"GPU check{' (DRY RUN: CPU, tiny scene; targets do not apply)' if data['dry_run'] else ''}: "
             f"{data['wall_s']:.0f} s wall; parts " + ", ".join(f"{k} {v}" for k, v in s["statuses"].items())]
    lines.append(f"  gsplat build {fmt(s['gsplat_build_s'])} s; agreement max relative error "
                 f"{fmt(s['agreement_max_error'], '{:.2e}')} (passed: {s['agreement_passed']}); torch/gsplat time "
                 f"forward {fmt(s['torch_over_gsplat_forward'], '{:.2f}')}x, forward+backward "
                 f"{fmt(s['torch_over_gsplat_forward_backward'], '{:.2f}')}x")
    pipe = (data["parts"].get("pipeline") or {}).get("result") or {}
    if pipe.get("stages"):
        lines.append("  stages: " + ", ".join(f"{k} {v['wall_s']:.1f} s (GPU {fmt(v['peak_gpu_mb'], '{:.0f}')} MB)"
                                              for k, v in pipe["stages"].items()))
        lines.append(f"  {pipe.get('num_gaussians')} Gaussians, test PSNR {fmt(pipe.get('psnr'), '{:.2f}')} dB, "
                     f"PQ {fmt((pipe.get('pq') or {}).get('pq'), '{:.3f}')}")
    verdict = lambda m: "met" if m else "NOT met" if m is not None else "not measured"  # noqa: E731
    for k, c in s["checks"].items():
        unit = "x" if k == "uplift_over_forward" else " s"
        line = f"  {k:32s} {fmt(c['value'], '{:.2f}')}{unit}  target <= {c['target']:g}{unit}  {verdict(c['met'])}"
        if "projected" in c:
            line += f"; projected {fmt(c['projected'], '{:.0f}')}{unit}: {verdict(c['projected_met'])} ({c['basis']})"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", help="folder for gpu_check.json and gpu_check.log (nothing else)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "gpu_check_work"),
                    help="folder for the scene (reused when it has the same size), the run and the parts' results")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny scene, torch backend (what the test suite runs)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of the whole check")
    ap.add_argument("--splat-iterations", type=int, default=None,
                    help="splat steps (default: 5000 on a GPU, 30 in a dry run; 0: the paper preset's own)")
    args = ap.parse_args(argv)
    data = run_check(args)
    return 0 if all(v["status"] in ("ok", "skipped") for v in data["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
