import json
from pathlib import Path

import pytest
import yaml

from pipeline.common.io import InputError
from pipeline.executors import ExecutorArgs
from pipeline.sweep import expand_settings, load_sweep, resolve_settings, setting_args, sweep_command

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs/demo.yaml"


def test_expand_settings_grid_union_and_list():
    grid = {"a.x": [1, 2], "b.y": ["p", "q"]}
    assert expand_settings(grid, None, "f") == [{"a.x": 1, "b.y": "p"}, {"a.x": 1, "b.y": "q"},
                                                {"a.x": 2, "b.y": "p"}, {"a.x": 2, "b.y": "q"}]
    # a list of grids is their union; explicit settings follow; exact duplicates run once
    assert expand_settings([{"a.x": [1, 2]}, {"b.y": ["p"]}], [{"a.x": 1}, {"c.z": True}], "f") == [
        {"a.x": 1}, {"a.x": 2}, {"b.y": "p"}, {"c.z": True}]
    with pytest.raises(InputError, match=r"^f: grid field 'a.x' needs a non-empty list of values, got 3$"):
        expand_settings({"a.x": 3}, None, "f")
    with pytest.raises(InputError, match=r"^f: nothing to sweep"):
        expand_settings(None, [], "f")
    assert setting_args({"splat.train.lambda_pan": 0.5, "segment.merge": "qubo", "splat.train.background": [0, 0, 1]}) == [
        "--splat.train.lambda_pan", "0.5", "--segment.merge", "qubo", "--splat.train.background", "0", "0", "1"]


def test_shipped_ablation_resolves_to_five_runs_per_scene():
    """lambda_pan {0, 0.5, 1} at the tiny preset's 60 iterations, and iterations {30, 60, 120} at lambda_pan 1:
    the shared base setting (1, 60) is one run."""
    sweep = load_sweep(REPO / "configs/sweep_ablation.yaml")
    assert sweep.fields == ["splat.train.lambda_pan", "splat.train.iterations"]
    resolved = resolve_settings(sweep, {"synthetic": DEMO})
    keys = list(dict.fromkeys(k for k, *_ in resolved))
    assert keys == ["lambda_pan=0,iterations=60", "lambda_pan=0.5,iterations=60", "lambda_pan=1,iterations=60",
                    "lambda_pan=1,iterations=30", "lambda_pan=1,iterations=120"]
    assert resolved[0][2] == {"splat.train.lambda_pan": 0.0, "splat.train.iterations": 60}


def _write(tmp_path, doc) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_sweep_file_errors_are_one_line(tmp_path):
    bench = {"datasets": {"d": {"config": str(DEMO), "scenes": ["s"]}}}
    with pytest.raises(InputError, match=r"unknown key\(s\) grids; use benchmark"):
        load_sweep(_write(tmp_path, {"benchmark": bench, "grids": {}}))
    bad_field = load_sweep(_write(tmp_path, {"benchmark": bench, "grid": {"splat.train.lamda_pan": [0]}}))
    with pytest.raises(InputError, match=r"'splat.train.lamda_pan' is not a config field"):
        resolve_settings(bad_field, {"d": DEMO})
    section = load_sweep(_write(tmp_path, {"benchmark": bench, "grid": {"splat.train": [0]}}))
    with pytest.raises(InputError, match=r"sweep.yaml: 'splat.train' is a config section, not a field"):
        resolve_settings(section, {"d": DEMO})
    bad_value = load_sweep(_write(tmp_path, {"benchmark": bench, "grid": {"splat.train.iterations": ["many"]}}))
    with pytest.raises(InputError, match=r"sweep.yaml: setting \{'splat.train.iterations': 'many'\} is not a valid "
                                         r"`pipeline run` override \(--splat.train.iterations many\)$"):
        resolve_settings(bad_value, {"d": DEMO})
    bad_choice = load_sweep(_write(tmp_path, {"benchmark": bench, "grid": {"render.poses": ["sideways"]}}))
    with pytest.raises(InputError, match=r"setting \{'render.poses': 'sideways'\}: --render.poses 'sideways' is not valid"):
        resolve_settings(bad_choice, {"d": DEMO})


def test_sweep_end_to_end_on_a_synthetic_scene(tmp_path):
    """Two settings x one generated tiny scene through real runs; each table cell is its run's metrics.json."""
    spec = _write(tmp_path, {
        "benchmark": {"datasets": {"synthetic": {"config": str(DEMO), "scenes": [{"id": "seed4", "seed": 4}]}}},
        "synthesize": "tiny", "args": ["--splat.preset", "tiny"],
        "grid": {"splat.train.iterations": [20, 40]}})
    out = tmp_path / "out"
    res = sweep_command(spec, out=out, run=ExecutorArgs(workers=2))
    assert (out / "data" / "synthetic" / "seed4" / "splits.json").is_file()
    assert [e["setting"] for e in res["settings"]] == ["iterations=20", "iterations=40"]
    md = (out / "sweep.md").read_text()
    assert "| dataset | splat.train.iterations | PQ | PQ_th | PQ_st | mIoU | PSNR | time (s) | scenes |" in md
    for e in res["settings"]:
        m = json.loads((out / e["setting"] / "synthetic" / "seed4" / "metrics.json").read_text())
        cfg = yaml.safe_load((out / e["setting"] / "synthetic" / "seed4" / "config.yaml").read_text())
        assert cfg["splat"]["train"]["iterations"] == e["values"]["splat.train.iterations"]
        assert e["pq"] == m["uplift"]["pq"] and e["pq_st"] == m["uplift"]["pq_st"] and e["psnr"] == m["psnr"]
        assert e["time_s"] == pytest.approx(sum(m["timings_s"].values()), abs=1e-3)
        row = f"| synthetic | {e['values']['splat.train.iterations']} | {100 * m['uplift']['pq']:.1f} | "
        assert row in md
    assert "2 runs: 2 ran, 0 complete (skipped), 0 failed" in md
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "sweep.json").read_text())["fields"] == ["splat.train.iterations"]
