"""scene.yaml <-> dataclasses <-> config.yaml, command-line overrides, and one-line config errors."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from pipeline.config import (
    CONFIGS_DIR,
    RunConfig,
    config_to_dict,
    load_config,
    parse_run_args,
    write_config,
)
from pipeline.common.io import InputError
from splat.config import PRESETS, TrainConfig


def test_shipped_configs_resolve_their_presets():
    """Every shipped run config loads, and what it asks for takes effect over the defaults."""
    # panlift.yaml is the table config, sweep_ablation.yaml a sweep: neither is a run config
    names = sorted(p.name for p in CONFIGS_DIR.glob("*.yaml") if p.name not in ("panlift.yaml", "sweep_ablation.yaml"))
    assert names == ["demo.yaml", "gpu_paper.yaml", "panlift_scene.yaml"]
    defaults = RunConfig()
    demo = load_config(CONFIGS_DIR / "demo.yaml")
    # the demo preset is the CPU schedule: far fewer steps than TrainConfig's 3DGS default, lower SH degree
    assert demo.splat.preset == "demo" and demo.splat.train == PRESETS["demo"]
    assert demo.splat.train.iterations == 800 < TrainConfig().iterations and demo.splat.train.sh_degree == 1
    assert demo.device == "cpu" != defaults.device
    scene = load_config(CONFIGS_DIR / "panlift_scene.yaml")
    assert scene.segment.kind == "panst3r" != defaults.segment.kind
    assert scene.segment.merge == "qubo" != defaults.segment.merge  # the paper's merge, not upstream's default
    assert scene.splat.train == TrainConfig() and scene.splat.train != demo.splat.train
    paper = load_config(CONFIGS_DIR / "gpu_paper.yaml")
    assert paper.device == "cuda" and paper.splat.train.iterations == 30_000


def test_benchmark_table_runs_one_scene_config_for_every_dataset():
    """configs/panlift.yaml (the table) points every dataset at the one PanLift scene config, which loads."""
    spec = yaml.safe_load((CONFIGS_DIR / "panlift.yaml").read_text())
    paths = {name: ds["config"] for name, ds in spec["datasets"].items()}
    assert set(paths) == {"hypersim", "replica", "scannet"} and set(paths.values()) == {"configs/panlift_scene.yaml"}
    cfg = load_config(CONFIGS_DIR.parent / "configs/panlift_scene.yaml")
    assert cfg.segment.kind == "panst3r" and cfg.splat.preset == "paper"


def test_presets_are_distinct_and_device_threads_are_run_settings():
    """One name per preset (no aliases), and device/threads exist once: in the run config, not in TrainConfig."""
    assert sorted(PRESETS) == ["demo", "demo_fast", "paper", "tiny"]
    configs = list(PRESETS.values())
    assert all(a != b for i, a in enumerate(configs) for b in configs[i + 1:])
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not {"device", "threads"} & train_fields
    assert {"device", "threads"} <= {f.name for f in dataclasses.fields(RunConfig)}


def test_segment_stage_and_command_share_one_config():
    """The segment stage's section extends the segment command's PanSt3R config: same fields, same defaults."""
    from panst3r.config import SegmentArgs, SegmenterConfig
    from pipeline.config import SegmentSection

    shared = [f.name for f in dataclasses.fields(SegmenterConfig)]
    assert {"checkpoint", "vocabulary", "text_embeddings", "keyframes", "merge", "seed", "size"} <= set(shared)
    section, args = SegmentSection(), SegmentArgs(images="i", out="o")
    for name in shared:
        assert getattr(section, name) == getattr(args, name) == getattr(SegmenterConfig(), name), name
    assert section.merge == "standard_v2" and section.keyframes is None
    # the paper config asks for the QUBO merge; a panst3r run on it keeps that unless overridden
    cfg = parse_run_args(CONFIGS_DIR / "gpu_paper.yaml", ["--segment.kind", "panst3r"])
    assert cfg.segment.merge == "qubo"
    assert parse_run_args(CONFIGS_DIR / "gpu_paper.yaml", ["--segment.merge", "standard_v1"]).segment.merge == "standard_v1"


def test_round_trip_with_overrides(tmp_path):
    field = "iterations"
    cfg = parse_run_args(CONFIGS_DIR / "demo.yaml", [
        "--scene.path", str(tmp_path / "scene"), "--segment.kind", "precomputed", "--segment.path", str(tmp_path / "m"),
        "--uplift.top-k", "17", "--render.scale", "0.5", "--render-then-segment", "off",
        "--output.dir", str(tmp_path / "run"), f"--splat.train.{field}", "3"])
    assert cfg.scene.path == tmp_path / "scene"
    assert cfg.segment.kind == "precomputed" and cfg.segment.path == tmp_path / "m"
    assert cfg.uplift.top_k == 17 and cfg.render.scale == 0.5 and cfg.render_then_segment == "off"
    assert getattr(cfg.splat.train, field) == 3
    out = write_config(cfg, tmp_path / "config.yaml")
    raw = yaml.safe_load(out.read_text())
    assert raw["version"] and "git_commit" in raw
    assert raw["uplift"]["top_k"] == 17 and raw["splat"]["train"][field] == 3
    again = load_config(out)
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)
    # writing the same config again leaves the file alone (run dirs stay untouched on cached runs)
    mtime = out.stat().st_mtime_ns
    write_config(again, out)
    assert out.stat().st_mtime_ns == mtime


def test_splat_preset_then_yaml_then_cli(tmp_path):
    field = "refine_every"
    a, b = "demo", "tiny"
    assert PRESETS[a].refine_every != PRESETS[b].refine_every  # so the override below is visible
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"splat": {"preset": a, "train": {field: 123}}}))
    cfg = load_config(p)
    assert cfg.splat.preset == a
    assert cfg.splat.train == dataclasses.replace(PRESETS[a], **{field: 123})
    assert cfg.splat.train.iterations == 800  # everything else from the preset
    # a preset given on the command line is resolved first; the YAML's field overrides still apply on top
    cfg = parse_run_args(p, ["--splat.preset", b])
    assert cfg.splat.preset == b
    assert cfg.splat.train == dataclasses.replace(PRESETS[b], **{field: 123})
    assert cfg.splat.train.iterations == 60
    cfg = parse_run_args(p, [f"--splat.train.{field}", "7"])
    assert getattr(cfg.splat.train, field) == 7


@pytest.mark.parametrize("doc, needle", [
    ({"uplift": {"top_kk": 3}}, "uplift.top_kk"),
    ({"segmnet": {"kind": "simulated"}}, "'segmnet'"),
    ({"splat": {"train": {"no_such_field": 1}}}, "splat.train.no_such_field"),
    ({"splat": {"preset": "nope"}}, "unknown splat preset 'nope'"),
    ({"segment": {"kind": "bogus"}}, "segment.kind is 'bogus'"),
    ({"uplift": {"top_k": "many"}}, "uplift.top_k must be an integer"),
    ({"evaluate": {"enabled": "yes"}}, "evaluate.enabled must be true or false"),
])
def test_config_errors_name_key_and_file(tmp_path, doc, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError) as e:
        load_config(p)
    msg = str(e.value)
    assert needle in msg and str(p) in msg and "\n" not in msg


def test_cli_choice_error_is_one_line():
    with pytest.raises(InputError, match=r"--segment.kind 'bogus' is not valid; use one of simulated, precomputed, per_frame, panst3r"):
        parse_run_args(CONFIGS_DIR / "demo.yaml", ["--segment.kind", "bogus"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("scene: [unclosed\n")
    with pytest.raises(InputError, match="invalid YAML"):
        load_config(bad)


@pytest.mark.parametrize("name,content,needle", [
    ("missing.json", None, r"missing\.json: splits gone; write one"),
    ("folder.yaml", "dir", r"folder\.yaml: is a directory; expected a YAML file"),
    ("latin.yaml", b"a: \xe9\xff\n", r"latin\.yaml: cannot read it .*UTF-8"),
    ("broken.json", "{\"train\": [1,", r"broken\.json: invalid JSON \(Expecting"),
    ("broken.yaml", "a: [1,\n  b: {\n", r"broken\.yaml: invalid YAML \("),
])
def test_read_document_errors_are_one_line(tmp_path, name, content, needle):
    from pipeline.common.io import read_document

    p = tmp_path / name
    if content == "dir":
        p.mkdir()
    elif isinstance(content, bytes):
        p.write_bytes(content)
    elif content is not None:
        p.write_text(content)
    with pytest.raises(InputError, match=needle) as e:
        read_document(p, "splits gone; write one")
    assert "\n" not in str(e.value)


def test_read_document_parses_by_suffix(tmp_path):
    from pipeline.common.io import read_document

    (tmp_path / "a.json").write_text('{"x": [1, 2]}')
    (tmp_path / "a.yml").write_text("x: [1, 2]\ny: yes\n")
    assert read_document(tmp_path / "a.json", "") == {"x": [1, 2]}
    assert read_document(tmp_path / "a.yml", "") == {"x": [1, 2], "y": True}
