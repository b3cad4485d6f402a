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
from splat.train import PRESETS, TrainConfig


def _int_field() -> str:
    """Some integer field of TrainConfig to override (keeps the test independent of the trainer's names)."""
    import typing

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if hints[f.name] is int:
            return f.name
    pytest.skip("TrainConfig has no int field")


def _preset(name):
    p = PRESETS[name]
    return p if dataclasses.is_dataclass(p) else TrainConfig(**p)


def test_shipped_configs_load():
    names = sorted(p.name for p in CONFIGS_DIR.glob("*.yaml") if p.name != "panlift.yaml")
    assert {"demo.yaml", "gpu_paper.yaml", "panlift_scannet.yaml", "panlift_replica.yaml", "panlift_hypersim.yaml"} <= set(names)
    for n in names:
        cfg = load_config(CONFIGS_DIR / n)
        assert isinstance(cfg, RunConfig)
    demo = load_config(CONFIGS_DIR / "demo.yaml")
    assert demo.segment.kind == "simulated" and demo.device == "cpu"
    for n in ("panlift_scannet.yaml", "panlift_replica.yaml", "panlift_hypersim.yaml"):
        assert load_config(CONFIGS_DIR / n).segment.kind == "panst3r"


def test_round_trip_with_overrides(tmp_path):
    field = _int_field()
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
    field = _int_field()
    names = sorted(PRESETS)
    a, b = names[0], names[-1]
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"splat": {"preset": a, "train": {field: 123}}}))
    cfg = load_config(p)
    assert cfg.splat.preset == a
    assert cfg.splat.train == dataclasses.replace(_preset(a), **{field: 123})
    # a preset given on the command line is resolved first; the YAML's field overrides still apply on top
    cfg = parse_run_args(p, ["--splat.preset", b])
    assert cfg.splat.preset == b
    assert cfg.splat.train == dataclasses.replace(_preset(b), **{field: 123})
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
    with pytest.raises(InputError, match=r"--segment.kind 'bogus' is not valid; use one of simulated, precomputed, panst3r"):
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
