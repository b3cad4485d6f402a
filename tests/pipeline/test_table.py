import json
from pathlib import Path

import pytest

from pipeline.common.io import InputError
from pipeline.executors import ExecutorArgs
from pipeline.common.io import claim_dir
from pipeline.table import aggregate, format_markdown, load_benchmark, plot_bars

REPO = Path(__file__).resolve().parents[2]


def test_load_benchmark_finds_and_skips(tmp_path):
    (tmp_path / "scannet" / "scene0050_02").mkdir(parents=True)
    (tmp_path / "replica" / "room_0").mkdir(parents=True)
    scenes, published, missing = load_benchmark(REPO / "configs/panlift.yaml", tmp_path)
    assert [(s.dataset, s.scene_id) for s in scenes] == [("replica", "room_0"), ("scannet", "scene0050_02")]
    # 25 benchmark scenes in all (12 ScanNet + 7 Replica + 6 Hypersim): 23 missing, one line each
    assert len(missing) == 23 and all(l.startswith("skipping ") for l in missing)
    assert published["PanSt3R + LUDVIG"] == {"hypersim": 66.3, "replica": 60.6, "scannet": 67.5}
    unconfirmed = [s for s in load_benchmark(REPO / "configs/panlift.yaml", tmp_path)[0] if s.unconfirmed]
    assert unconfirmed == []


def test_hypersim_unconfirmed_marked():
    import yaml

    spec = yaml.safe_load((REPO / "configs/panlift.yaml").read_text())
    hs = spec["datasets"]["hypersim"]["scenes"]
    assert len(hs) == 6 and sum(bool(s.get("unconfirmed")) for s in hs) == 3
    assert len(spec["datasets"]["scannet"]["scenes"]) == 12 and len(spec["datasets"]["replica"]["scenes"]) == 7


def test_load_benchmark_errors(tmp_path):
    with pytest.raises(InputError, match="data root does not exist"):
        load_benchmark(REPO / "configs/panlift.yaml", tmp_path / "nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("foo: 1\n")
    with pytest.raises(InputError, match="datasets"):
        load_benchmark(bad, tmp_path)


def test_aggregate_is_mean_of_scene_pq_and_excludes_failures():
    rows = [
        {"dataset": "a", "scene": "s1", "pq": 0.5, "sq": 0.8, "rq": 0.6, "miou": 0.7, "segmenter_pq": 0.4, "psnr": 25.0},
        {"dataset": "a", "scene": "s2", "pq": 0.7, "sq": 0.9, "rq": 0.8, "miou": float("nan"), "segmenter_pq": None, "psnr": 27.0},
        {"dataset": "a", "scene": "s3", "error": "exit 2: boom"},
        {"dataset": "b", "scene": "t1", "pq": 0.25, "sq": 1.0, "rq": 0.25, "miou": 0.5, "segmenter_pq": 0.2, "psnr": 20.0},
    ]
    agg = aggregate(rows)
    assert agg["a"]["pq"] == pytest.approx(0.6)
    assert agg["a"]["miou"] == pytest.approx(0.7)  # NaN ignored
    assert agg["a"]["segmenter_pq"] == pytest.approx(0.4)
    assert agg["a"]["num_scenes"] == 2 and agg["a"]["num_failed"] == 1
    assert agg["b"]["pq"] == pytest.approx(0.25)
    md = format_markdown(rows, agg, {"X": {"a": 50.0, "b": 40.0}}, ["a", "b"])
    assert "| X (published) | 50.0 | 40.0 |" in md
    assert "| **ours: uplift (LUDVIG)** | 60.0 | 25.0 |" in md
    assert "failed: exit 2: boom" in md


def test_plot_bars_writes_png(tmp_path):
    plot_bars(tmp_path / "t.png", {"a": {"pq": 0.6}}, {"X": {"a": 50.0}}, ["a"])
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_end_to_end_on_mini_benchmark(tmp_path):
    """Two "datasets" x two tiny synthetic scenes through real pipeline runs, one missing scene skipped."""
    import yaml

    from pipeline.synth import generate, make_config
    from pipeline.table import table_command

    data = tmp_path / "data"
    for ds, seeds in (("alpha", (1, 2)), ("beta", (3, 4))):
        for i, seed in enumerate(seeds):
            generate(data / ds / f"s{i}", make_config("tiny", seed=seed))
    spec = {
        "datasets": {
            ds: {"folder": ds, "config": str(REPO / "configs/demo.yaml"),
                 "scenes": [{"id": "s0"}, {"id": "s1"}] + ([{"id": "absent"}] if ds == "beta" else [])}
            for ds in ("alpha", "beta")
        },
        "published": {"Someone": {"alpha": 50.0, "beta": 60.0}},
    }
    cfg = tmp_path / "mini.yaml"
    cfg.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    res = table_command(cfg, data, out=out, run=ExecutorArgs(workers=2), extra_args=["--splat.preset", "tiny"])
    rows = res["scenes"]
    assert len(rows) == 4 and not [r for r in rows if "error" in r], rows
    assert [(r["status"], r["attempts"]) for r in rows] == [("done", 1)] * 4
    # each row is exactly what its own run directory's metrics.json says
    for r in rows:
        m = json.loads((out / r["dataset"] / r["scene"] / "metrics.json").read_text())
        assert r["pq"] == m["uplift"]["pq"] and r["segmenter_pq"] == m["segmenter_on_test"]["pq"]
    for ds in ("alpha", "beta"):
        pqs = [r["pq"] for r in rows if r["dataset"] == ds]
        assert res["datasets"][ds]["pq"] == pytest.approx(sum(pqs) / 2)
    md = (out / "table.md").read_text()
    assert "| Someone (published) | 50.0 | 60.0 |" in md and md.count("\n| alpha | s") == 2
    assert json.loads((out / "table.json").read_text())["datasets"]["beta"]["num_scenes"] == 2
    assert (out / "table.png").read_bytes()[:4] == b"\x89PNG"
    assert "4 runs: 4 ran, 0 complete (skipped), 0 failed" in md
    # the same command again: every run is complete, nothing is launched, the numbers are read back
    again = table_command(cfg, data, out=out, run=ExecutorArgs(workers=2), extra_args=["--splat.preset", "tiny"])
    assert [r["status"] for r in again["scenes"]] == ["cached"] * 4
    assert [r["pq"] for r in again["scenes"]] == [r["pq"] for r in rows]
    assert "4 runs: 0 ran, 4 complete (skipped), 0 failed" in (out / "table.md").read_text()


def test_out_folder_that_is_not_ours_is_refused(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("keep me")
    with pytest.raises(InputError, match="folder is not empty and is not a previous table output of this tool"):
        claim_dir(mine, "table")
    assert [p.name for p in mine.iterdir()] == ["todo.txt"]
    assert claim_dir(tmp_path / "new", "table") == (tmp_path / "new").resolve()
    (tmp_path / "new" / "table.md").write_text("x")
    claim_dir(tmp_path / "new", "table")  # an earlier table's folder is reused
    with pytest.raises(InputError, match="holds this tool's table output, not a sweep output"):
        claim_dir(tmp_path / "new", "sweep")


def test_table_cli_refuses_a_folder_it_did_not_write(tmp_path):
    """The exact interface (`table CONFIG --data-root DIR --out DIR --executor ray`): one line, exit 2, nothing
    touched, before Ray is started."""
    import subprocess
    import sys

    (tmp_path / "data" / "replica" / "room_0").mkdir(parents=True)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "table", str(REPO / "configs/panlift.yaml"), "--data-root",
                           str(tmp_path / "data"), "--out", str(out), "--executor", "ray"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {out}: folder is not empty and is not a previous table output of this tool; pass a new or empty "
        "folder (nothing was changed)")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
