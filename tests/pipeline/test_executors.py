"""The Ray executor on a local Ray instance (2 CPUs) against the local executor, on tiny synthetic scenes."""

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipeline.common.io import InputError
from pipeline.executors import ATTEMPT_HEADER, ExecutorArgs, completed_metrics
from pipeline.table import load_benchmark, scene_specs, table_command

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
TINY = ["--splat.preset", "tiny"]
SCORES = ("pq", "sq", "rq", "pq_th", "pq_st", "miou", "segmenter_pq", "psnr")


@pytest.fixture(scope="session")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20)
    yield
    ray.shutdown()


def _bench(path: Path, scenes: list[str]) -> Path:
    path.write_text(yaml.safe_dump({"datasets": {"alpha": {"config": str(REPO / "configs/demo.yaml"), "scenes": scenes}}}))
    return path


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """alpha/s0, alpha/s1: tiny synthetic scenes; alpha/bad: a corrupt scene folder (unreadable splits.json)."""
    from pipeline.synth import generate, make_config

    root = tmp_path_factory.mktemp("mini")
    for i, seed in enumerate((1, 2)):
        generate(root / "data" / "alpha" / f"s{i}", make_config("tiny", seed=seed))
    (root / "data" / "alpha" / "bad").mkdir()
    (root / "data" / "alpha" / "bad" / "splits.json").write_text("{not json")
    local = table_command(_bench(root / "ok.yaml", ["s0", "s1"]), root / "data", out=root / "local",
                          run=ExecutorArgs(executor="local", workers=2), extra_args=TINY)
    return root, {r["scene"]: r for r in local["scenes"]}


def test_ray_matches_local_reports_failure_and_resumes(mini, local_ray):
    root, local = mini
    cfg = _bench(root / "with_bad.yaml", ["s0", "s1", "bad"])
    out = root / "ray"
    res = table_command(cfg, root / "data", out=out, run=ExecutorArgs(executor="ray"), extra_args=TINY)
    rows = {r["scene"]: r for r in res["scenes"]}
    for sid in ("s0", "s1"):  # the same numbers as the local executor, to the last bit
        assert rows[sid]["status"] == "done" and rows[sid]["attempts"] == 1
        assert {k: rows[sid][k] for k in SCORES} == {k: local[sid][k] for k in SCORES}
        assert yaml.safe_load((out / "alpha" / sid / "config.yaml").read_text())["threads"] == 1
    bad = rows["bad"]  # retried once, then reported, while the others finished
    assert bad["status"] == "failed" and bad["attempts"] == 2
    assert bad["error"].startswith("exit 2: error: ") and f"(log: {out / 'alpha' / 'bad.log'})" in bad["error"]
    assert (out / "alpha" / "bad.log").read_text().count(ATTEMPT_HEADER) == 2
    md = (out / "table.md").read_text()
    assert "| alpha | bad | – | – | – | – | – | failed: exit 2: error: " in md
    assert "3 runs: 2 ran, 0 complete (skipped), 1 failed" in md
    table = json.loads((out / "table.json").read_text())
    assert table["datasets"]["alpha"]["num_scenes"] == 2 and table["datasets"]["alpha"]["num_failed"] == 1
    assert table["datasets"]["alpha"]["pq"] == pytest.approx((local["s0"]["pq"] + local["s1"]["pq"]) / 2)

    # the same command again: complete runs are skipped (no new attempt in their logs), the failed one retried
    again = {r["scene"]: r for r in table_command(cfg, root / "data", out=out, run=ExecutorArgs(executor="ray"),
                                                  extra_args=TINY)["scenes"]}
    assert [again[s]["status"] for s in ("s0", "s1", "bad")] == ["cached", "cached", "failed"]
    assert (out / "alpha" / "s0.log").read_text().count(ATTEMPT_HEADER) == 1
    assert again["s0"]["pq"] == rows["s0"]["pq"]


def test_completed_metrics_follows_the_config(mini):
    root, local = mini
    scenes, _, _ = load_benchmark(_bench(root / "ok2.yaml", ["s0"]), root / "data")
    [same] = scene_specs(scenes, root / "local", TINY)
    assert completed_metrics(same)["uplift"]["pq"] == local["s0"]["pq"]
    [changed] = scene_specs(scenes, root / "local", TINY + ["--splat.train.lambda_pan", "0.5"])
    assert completed_metrics(changed) is None  # the splat manifest's config hash no longer matches
    manifest = root / "local" / "alpha" / "s0" / "uplift" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["wall_s"] += 1.0  # uplift re-ran after metrics.json was written (a run cut short before its summary)
    manifest.write_text(json.dumps(m))
    assert completed_metrics(same) is None


def test_worker_killed_mid_run_is_retried(mini, local_ray):
    """SIGKILL the Ray worker running the scene while it trains; Ray's retry resumes the run to the same result."""
    root, local = mini
    out = root / "killed"
    log, run_dir = out / "alpha" / "s0.log", out / "alpha" / "s0"
    killed = {}

    def killer():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and "pid" not in killed:
            text = log.read_text() if log.is_file() else ""
            m = re.search(re.escape(ATTEMPT_HEADER) + r" on host \S+ pid (\d+)", text)
            if m and (run_dir / "segment" / "manifest.json").is_file() and not (run_dir / "splat").exists():
                killed["pid"] = int(m.group(1))
                os.kill(killed["pid"], signal.SIGKILL)  # the worker process itself, not the run's child
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = table_command(_bench(root / "one.yaml", ["s0"]), root / "data", out=out, run=ExecutorArgs(executor="ray"),
                        extra_args=TINY)
    t.join(timeout=5)
    [row] = res["scenes"]
    assert "pid" in killed, "the run finished before the worker could be killed"
    assert row["status"] == "done" and row["attempts"] == 2
    pids = [int(p) for p in re.findall(re.escape(ATTEMPT_HEADER) + r" on host \S+ pid (\d+)", log.read_text())]
    assert pids[0] == killed["pid"] and pids[1] != killed["pid"]
    assert {k: row[k] for k in SCORES} == {k: local["s0"][k] for k in SCORES}


def test_executor_args_are_checked():
    with pytest.raises(InputError, match=r"--cpus-per-run 0: a run needs at least 1 CPU"):
        ExecutorArgs(cpus_per_run=0)
    with pytest.raises(InputError, match=r"--gpus-per-run -1: must be >= 0"):
        ExecutorArgs(gpus_per_run=-1)
