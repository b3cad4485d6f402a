"""End to end on the tiny synthetic scene: outputs, cache skips, invalidation, --from, kill-and-resume.

One uninterrupted run is the reference; killed-and-restarted runs must reproduce its predictions and metrics
exactly (timings aside). Runs are killed from outside (SIGKILL once the stage's temporary folder appears), so
production code carries no test hook. Uses the `tiny` synthetic preset and the `tiny` splat preset so the
whole file stays within a couple of minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.stages import STAGE_ORDER as STAGES

REPO = Path(__file__).absolute().parents[2]
DEMO = REPO / "configs" / "demo.yaml"
FAST = ["--splat.preset", "tiny"]


def cli_args(scene: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", str(DEMO), "--scene.path", str(scene), "--output.dir",
            str(run_dir), *FAST, *extra]


def run_cli(scene: Path, run_dir: Path, *extra: str, timeout: float = 600):
    return subprocess.run(cli_args(scene, run_dir, *extra), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PIPELINE_DEBUG": ""})


def run_and_kill_in(scene: Path, run_dir: Path, stage: str, attempts: int = 3) -> int:
    """Start a run and SIGKILL it as soon as `stage`'s temporary folder `.<stage>.tmp-*` appears; return the
    exit status. A stage that finishes between the look and the kill (a fraction of a second on the tiny
    scene) makes the attempt start over in an empty run directory."""
    for _ in range(attempts):
        shutil.rmtree(run_dir, ignore_errors=True)
        proc = subprocess.Popen(cli_args(scene, run_dir), cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        try:
            while time.time() < deadline:
                names = os.listdir(run_dir) if run_dir.is_dir() else []
                if any(n.startswith(f".{stage}.tmp-") for n in names):
                    break
                if proc.poll() is not None:
                    pytest.fail(f"the run finished before the {stage} stage could be killed")
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        if not (run_dir / stage).exists():
            return proc.returncode
    pytest.fail(f"the {stage} stage finished before the kill landed, {attempts} times")


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> Path:
    from pipeline.synth import make_config, generate

    return generate(tmp_path_factory.mktemp("scene") / "tiny", make_config("tiny", seed=0))


@pytest.fixture(scope="module")
def reference(tiny_scene, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    p = run_cli(tiny_scene, run_dir)
    assert p.returncode == 0, p.stdout + p.stderr
    return run_dir


def final_outputs(run_dir: Path) -> dict:
    """Everything a user consumes, minus timings: prediction PNGs and metrics."""
    out = {}
    for sub in ("render/pred_semantics", "render/pred_surrogateid", "evaluate/segmenter_on_test/pred_semantics",
                "evaluate/segmenter_on_test/pred_surrogateid"):
        for p in sorted((run_dir / sub).glob("*.png")):
            out[f"{sub}/{p.name}"] = p.read_bytes()
    m = json.loads((run_dir / "metrics.json").read_text())
    m.pop("timings_s")
    m.pop("peak_rss_mb")
    out["metrics"] = m
    return out


def stage_files(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns
            for s in STAGES for p in sorted((run_dir / s).rglob("*")) if p.is_file()}


def changed_stages(before: dict[str, int], after: dict[str, int]) -> set[str]:
    """Stages whose folder changed (any file added, removed or rewritten)."""
    def part(files, s):
        return {k: v for k, v in files.items() if k.startswith(s + "/")}

    return {s for s in STAGES if part(before, s) != part(after, s)}


def test_layout_and_metrics(reference, tiny_scene):
    r = reference
    for f in ("config.yaml", "metrics.json", "report.html", "segment/manifest.json", "segment/segments.json",
              "splat/gaussians.ply", "uplift/uplift.npz", "uplift/legend.json", "render/manifest.json",
              "evaluate/uplift.json", "evaluate/segmenter_on_test.json", "render_then_segment/skipped.txt"):
        assert (r / f).is_file(), f
    test = json.loads((tiny_scene / "splits.json").read_text())["test"]
    assert sorted(p.stem for p in (r / "render" / "pred_semantics").glob("*.png")) == sorted(test)
    m = json.loads((r / "metrics.json").read_text())
    for key in ("uplift", "segmenter_on_test", "render_then_segment", "psnr", "timings_s", "num_gaussians", "peak_rss_mb"):
        assert key in m, key
    for k in ("pq", "sq", "rq", "pq_th", "pq_st", "miou"):
        assert k in m["uplift"]
    # the segmenter's score is what the evaluator says of the maps the stage wrote (the uplift's is checked below)
    from pipeline.metrics import evaluate_scene

    assert m["segmenter_on_test"]["pq"] == pytest.approx(
        float(evaluate_scene(tiny_scene, r / "evaluate" / "segmenter_on_test")["pq"]), rel=1e-6)
    assert "cannot segment rendered images" in m["render_then_segment"]["skipped"]
    assert set(m["timings_s"]) == set(STAGES)
    man = json.loads((r / "splat" / "manifest.json").read_text())
    for k in ("stage", "inputs", "config_hash", "started", "finished", "wall_s", "peak_rss_mb", "outputs"):
        assert k in man
    assert "gaussians.ply" in man["outputs"]
    # the metrics agree with an independent evaluation of the written prediction folder
    from pipeline.metrics import evaluate_scene, json_safe

    again = json_safe(evaluate_scene(tiny_scene, r / "render"))
    assert again["pq"] == m["uplift"]["pq"] and again["miou"] == m["uplift"]["miou"]


def test_cache_skip_invalidation_and_from(reference, tiny_scene, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)  # manifests hold content hashes, not paths: a copied run dir is valid
    before_files = stage_files(run_dir)
    # config.yaml differs only in output.dir, which no stage depends on
    p = run_cli(tiny_scene, run_dir)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("cached") >= len(STAGES), p.stdout
    assert stage_files(run_dir) == before_files  # nothing rewritten: same files, same mtimes

    # an uplift field: uplift/render/evaluate rerun, segment/splat stay
    p = run_cli(tiny_scene, run_dir, "--uplift.fallback", "void")
    assert p.returncode == 0, p.stdout + p.stderr
    changed = changed_stages(before_files, stage_files(run_dir))
    assert {"segment", "splat"}.isdisjoint(changed), changed
    assert {"uplift", "render", "evaluate"} <= changed, changed

    # --from splat forces splat and everything after it; segment stays
    files_before_from = stage_files(run_dir)
    p = run_cli(tiny_scene, run_dir, "--uplift.fallback", "void", "--from", "splat")
    assert p.returncode == 0, p.stdout + p.stderr
    changed = changed_stages(files_before_from, stage_files(run_dir))
    assert "segment" not in changed and {"splat", "uplift", "render", "evaluate"} <= changed, changed


@pytest.mark.parametrize("stage", ["splat", "uplift", "render"])
def test_kill_in_stage_then_resume_is_identical(reference, tiny_scene, tmp_path, stage):
    run_dir = tmp_path / "run"
    assert run_and_kill_in(tiny_scene, run_dir, stage) == -signal.SIGKILL
    assert not (run_dir / stage).exists()  # the half-done stage never appears under its final name
    assert not (run_dir / stage / "manifest.json").exists()
    assert any(x.name.startswith(f".{stage}.tmp-") for x in run_dir.iterdir())
    p = run_cli(tiny_scene, run_dir)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "interrupted run" in p.stdout
    assert not any(".tmp-" in x.name for x in run_dir.iterdir())
    assert final_outputs(run_dir) == final_outputs(reference)


def test_moved_scene_and_cosmetic_splat_fields_stay_cached(reference, tiny_scene, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    before = stage_files(run_dir)
    # the same scene in another folder: every stage key holds content hashes, not the scene's path
    moved = shutil.copytree(tiny_scene, tmp_path / "elsewhere" / "scene")
    p = run_cli(moved, run_dir)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("cached") >= len(STAGES), p.stdout
    assert stage_files(run_dir) == before
    assert final_outputs(run_dir) == final_outputs(reference)

    # logging and checkpoint cadence cannot change the Gaussians: no retraining
    p = run_cli(tiny_scene, run_dir, "--splat.train.log_every", "7", "--splat.train.checkpoint_every", "0")
    assert p.returncode == 0, p.stdout + p.stderr
    assert stage_files(run_dir) == before, p.stdout

    # a field that changes the optimisation does retrain, and everything downstream reruns
    p = run_cli(tiny_scene, run_dir, "--splat.train.lambda_pan", "0.5")
    assert p.returncode == 0, p.stdout + p.stderr
    changed = changed_stages(before, stage_files(run_dir))
    assert "segment" not in changed and {"splat", "uplift", "render", "evaluate"} <= changed, changed


def test_labelled_percent_rounds_down():
    from pipeline.run import _floor_percent
    assert _floor_percent(19187 / 19230) == "99.7%"  # 99.776...: never shown as 100% while any are unlabelled
    assert _floor_percent(1.0) == "100.0%"
    assert _floor_percent(0.0) == "0.0%"


def test_export_command_round_trips_the_uplift(reference, tmp_path):
    import numpy as np

    from pipeline.run import export_run
    from uplift import load_labelled
    from uplift.ludvig import UpliftResult

    result = UpliftResult.load(reference / "uplift" / "uplift.npz")
    plain = export_run(reference, tmp_path / "plain")
    assert not (plain / "instances").exists()
    out = export_run(reference, tmp_path / "exp", per_instance=True)
    back = load_labelled(out / "labelled.ply")
    np.testing.assert_array_equal(back.instance_id, result.label)
    legend = json.loads((out / "legend.json").read_text())
    assert sorted(int(k) for k in legend["instances"]) == sorted(result.label_ids.tolist())
    with_ply = {k: e for k, e in legend["instances"].items() if "ply" in e}
    assert sorted(int(k) for k in with_ply) == [i for i in sorted(result.label_ids.tolist()) if (result.label == i).any()]
    for k, entry in with_ply.items():
        one = load_labelled(out / entry["ply"])  # the legend's path is relative to legend.json
        assert (one.instance_id == int(k)).all() and len(one.instance_id) == entry["num_gaussians"]
    with pytest.raises(Exception, match=r"gaussians\.ply: missing; run .* through the uplift stage first"):
        export_run(tmp_path / "no_run")
