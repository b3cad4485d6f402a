"""bench/gpu_check.py (+ bench/gpu_parts.py): its --dry-run (CPU, tiny scene) end to end, so the GPU check cannot rot between GPU runs,
plus its timeout path and the pieces it computes itself."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
PARTS = {"environment", "agreement", "backend_speed", "synth", "pipeline", "uplift"}


def _module(name: str = "gpu_check"):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(out: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(SCRIPT), str(out / "report"), "--dry-run", "--work", str(out / "work"), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = _run(out, "--budget-s", "200")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "report").iterdir()) == ["gpu_check.json", "gpu_check.log"]
    return out / "work", json.loads((out / "report" / "gpu_check.json").read_text()), proc.stdout


def test_dry_run_records_every_part_with_real_numbers(dry_run):
    out, data, stdout = dry_run
    parts = data["parts"]
    assert set(parts) == PARTS
    assert {k: v["status"] for k, v in parts.items()} == {k: "ok" for k in PARTS}
    assert data["dry_run"] is True and _finite(data["wall_s"])

    env = parts["environment"]["result"]
    assert env["torch"] and env["cuda_available"] is False
    assert env["gsplat_build"] == {"status": "skipped",
                                   "reason": "no CUDA device: gsplat compiles and runs on CUDA only"}

    agree = parts["agreement"]["result"]
    assert (agree["test"], agree["reference"]) == ("torch cpu float32", "torch cpu float64")
    assert len(agree["cases"]) == 3 * 5  # 3 scenes x channels 1, 3, 32, 200 and SH RGB
    assert sorted({c["channels"] for c in agree["cases"]}, key=str) == [1, 200, 3, 32, "SH RGB"]
    assert agree["passed"] is True and 0.0 < agree["max_error"] < agree["tolerance"] == 1e-4
    assert all("grad_means" in c["errors"] and "grad_opacities" in c["errors"] for c in agree["cases"])

    speed = parts["backend_speed"]["result"]
    assert all(_finite(speed["times"][r][k]) and speed["times"][r][k] > 0 for r in ("test", "reference")
               for k in ("forward_s", "forward_backward_s"))
    assert speed["ratio_forward"] == pytest.approx(speed["times"]["test"]["forward_s"]
                                                   / speed["times"]["reference"]["forward_s"])


def test_dry_run_pipeline_and_uplift_figures(dry_run):
    out, data, stdout = dry_run
    meta = json.loads((out / "scene_24x96x72" / "scene_meta.json").read_text())["config"]
    assert (meta["num_frames"], meta["width"], meta["height"], meta["num_points"]) == (24, 96, 72, 2000)  # CLI flags
    pipe = data["parts"]["pipeline"]["result"]
    metrics = json.loads((out / "run_24x96x72" / "metrics.json").read_text())
    assert {k: v["wall_s"] for k, v in pipe["stages"].items()} == metrics["timings_s"]
    assert set(pipe["stages"]) >= {"segment", "splat", "uplift", "render", "evaluate"}
    assert pipe["splat_s"] == metrics["timings_s"]["splat"] > 0
    assert pipe["segment_splat_uplift_render_s"] == pytest.approx(
        sum(metrics["timings_s"][k] for k in ("segment", "splat", "uplift", "render")))
    assert pipe["num_gaussians"] > 0 and _finite(pipe["psnr"])
    assert pipe["pq"]["pq"] == pytest.approx(metrics["uplift"]["pq"])  # the figure reported is the run's own
    assert all(_finite(s["peak_rss_mb"]) for s in pipe["stages"].values())
    assert pipe["peak_gpu_mb"] is None  # no nvidia-smi in a dry run
    history = json.loads((out / "run_24x96x72" / "splat" / "history.json").read_text())
    assert history[-1]["step"] == 30  # the dry run's iteration override reached the trainer

    up = data["parts"]["uplift"]["result"]
    assert up["gaussians_from"].endswith("gaussians.ply") and up["instances"] > 50
    assert [(r["backend"], r["method"]) for r in up["runs"]] == [("torch", "direct"), ("torch", "grad")]
    assert all(r["forward_s"] > 0 and r["uplift_s"] > 0 and r["labels"] > 0 for r in up["runs"])
    assert up["ratio"] == pytest.approx(up["runs"][0]["uplift_s"] / up["runs"][0]["forward_s"])
    assert up["argmax_agreement"]["fraction_equal"] > 0.99  # both methods sum the same weights

    checks = data["summary"]["checks"]
    assert checks["splat_s"]["value"] == pipe["splat_s"] and checks["uplift_over_forward"]["value"] == up["ratio"]
    assert pipe["splat_steps"] == 30 and data["parts"]["environment"]["result"]["paper_preset_iterations"] == 30000
    assert pipe["splat_loop_s"] == history[-1]["time"] < pipe["splat_s"]
    assert checks["splat_s"]["projected"] == pytest.approx(pipe["splat_s"] + 999 * pipe["splat_loop_s"])
    assert data["summary"]["applies"] is False and "DRY RUN" in stdout
    log = (out.parent / "report" / "gpu_check.log").read_text()
    assert all(f"== {p}:" in log for p in PARTS) and "pipeline run" in log


def test_spent_budget_is_recorded_and_nothing_hangs(tmp_path):
    proc = _run(tmp_path, "--budget-s", "0.3", timeout=60)  # less than a Python start with numpy: never met
    assert proc.returncode == 1  # the scene generator was killed at the budget
    parts = json.loads((tmp_path / "report" / "gpu_check.json").read_text())["parts"]
    assert set(parts) == PARTS
    assert parts["synth"]["status"] == "timeout"
    assert parts["environment"]["status"] == "skipped" and "budget spent" in parts["environment"]["reason"]
    assert parts["uplift"] == {"status": "skipped", "reason": "no scene: the synth part did not finish"}


def test_cell_labels_hand_computed():
    # camera at the origin looking down +z at a wall 2 m away; grid 2x2x2 over [-10, 10] x [-10, 10] x [0, 4]:
    # z = 2 -> iz = 1; x < 0 left of the principal point -> ix = 0, else 1; likewise y -> iy
    gp = _module("gpu_parts")
    K = np.array([[10.0, 0, 2.0], [0, 10.0, 1.0], [0, 0, 1]])
    frame = SimpleNamespace(stem="0", K=K, c2w=np.eye(4))
    depth = np.full((2, 4), 2.0, np.float32)
    depth[0, 0] = 0.0  # no depth -> void
    scene = SimpleNamespace(load_depth=lambda stem: depth)
    (lab,) = gp.cell_labels(scene, [frame], (2, 2, 2), np.array([-10.0, -10, 0]), np.array([10.0, 10, 4]))
    # label = 1 + (ix*2 + iy)*2 + iz; row 0 (y centre 0.5 < cy 1) -> iy 0, row 1 -> iy 1; cols 0,1 -> ix 0, 2,3 -> 1
    assert lab.tolist() == [[0, 2, 6, 6], [4, 4, 8, 8]]


def test_uplift_takes_a_killed_splats_checkpoint(dry_run, tmp_path):
    # no gaussians.ply, only the ckpt.pt a killed splat leaves in its stage's temporary folder
    work, data, _ = dry_run
    (tmp_path / ".splat.tmp-1").mkdir()
    shutil.copy(work / "run_24x96x72" / "splat" / "ckpt.pt", tmp_path / ".splat.tmp-1" / "ckpt.pt")
    gp = _module("gpu_parts")
    g, src, info = gp.trained_gaussians(tmp_path, np.zeros((1, 3)), 10)
    assert "checkpoint of a killed splat, step 30" in src and info["step"] == 30
    assert info["num_gaussians"] == g["means"].shape[0] == data["parts"]["pipeline"]["result"]["num_gaussians"]
    g, src, info = gp.trained_gaussians(tmp_path / "nothing", np.random.default_rng(0).normal(size=(50, 3)), 10)
    assert (g["means"].shape, info) == ((10, 3), None) and src.startswith("random init")


def test_summary_projects_a_cut_splat_schedule_to_the_paper_preset():
    gc = _module()
    parts = {"environment": {"status": "ok", "result": {"paper_preset_iterations": 30000}},
             "pipeline": {"status": "ok", "result": {"splat_s": 60.0, "segment_splat_uplift_render_s": 100.0,
                                                     "splat_steps": 5000, "splat_loop_s": 50.0}},
             "uplift": {"status": "ok", "result": {"ratio": 1.5}}}
    checks = gc.summarise({"dry_run": False, "parts": parts})["checks"]
    assert (checks["splat_s"]["met"], checks["splat_s"]["projected"], checks["splat_s"]["projected_met"]) == \
        (True, 310.0, False)  # 10 s outside the loop + 6 x 50 s of loop for 30000 steps, over the 180 s target
    assert checks["segment_splat_uplift_render_s"]["projected"] == 100.0 + 5 * 50.0
    assert checks["uplift_over_forward"] == {"value": 1.5, "target": 2.0, "met": True}  # nothing to project
    parts["pipeline"]["result"]["splat_steps"] = 30000  # the full preset ran: no projection
    assert "projected" not in gc.summarise({"dry_run": False, "parts": parts})["checks"]["splat_s"]


def test_last_progress_parses_tqdm_lines():
    gc = _module()
    text = "splat:  10%|#  | 3000/30000 [00:30<04:30, 100it/s]\nsplat:  20%|## | 6000/30000 [01:00<04:00, 100it/s]\n"
    assert gc._last_progress(text) == {"step": 6000, "of": 30000, "elapsed_s": 60, "projected_s": 300.0}
    assert gc._last_progress("no bar here") is None
