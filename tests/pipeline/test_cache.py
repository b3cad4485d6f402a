"""The cache engine's keys: content hashes, config sections minus the fields that cannot change a result."""

from __future__ import annotations

import dataclasses
import hashlib
import typing

import pytest

from pipeline.cache import HashCache, config_hash, file_sha256
from pipeline.config import CONFIGS_DIR, config_to_dict, load_config
from pipeline.stages import CONTENT_HASHED_PATHS, STAGES, SPLAT_CACHE_EXCLUDE
from splat.train import TrainConfig


def _changed(value, typ):
    """A different value of the same type (for any TrainConfig field)."""
    if typing.get_origin(typ) is typing.Literal:
        return next(a for a in typing.get_args(typ) if a != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return tuple(v + 0.5 for v in value)
    if isinstance(value, str):
        return value + "x"
    raise AssertionError(f"no perturbation for {typ}")


def test_file_sha256_and_hash_cache_agree_with_hashlib(tmp_path):
    f = tmp_path / "a.bin"
    data = bytes(range(256)) * 5000  # > 1 MiB: several chunks
    f.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert file_sha256(f) == want
    cache = HashCache(tmp_path / "hashes.json")
    assert cache.file(f) == want
    cache.save()
    # moving the folder keeps the digest of a file set (names relative to the root)
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "a.bin").write_bytes(data)
    again = HashCache(tmp_path / "hashes.json")
    assert again.files([f], tmp_path) == again.files([moved / "a.bin"], moved)


def test_config_hash_tracks_only_named_sections():
    cfg = load_config(CONFIGS_DIR / "demo.yaml")
    changed = dataclasses.replace(cfg, uplift=dataclasses.replace(cfg.uplift, chunk=cfg.uplift.chunk + 1))
    assert config_hash(cfg, ("segment",)) == config_hash(changed, ("segment",))
    assert config_hash(cfg, ("uplift",)) != config_hash(changed, ("uplift",))


def test_every_excluded_field_exists_in_the_config():
    d = config_to_dict(load_config(CONFIGS_DIR / "demo.yaml"))
    for stage in STAGES.values():
        for dotted in stage.exclude:
            node = d
            for part in dotted.split("."):
                assert isinstance(node, dict) and part in node, f"stage {stage.name} excludes unknown {dotted}"
                node = node[part]
            assert dotted.split(".")[0] in stage.sections, f"{stage.name}: {dotted} is outside its sections"


def test_splat_key_ignores_exactly_the_declared_fields():
    cfg = load_config(CONFIGS_DIR / "demo.yaml")
    splat = STAGES["splat"]
    base = config_hash(cfg, splat.sections, splat.exclude)
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg.splat.train, f.name)
        other = dataclasses.replace(cfg, splat=dataclasses.replace(
            cfg.splat, train=dataclasses.replace(cfg.splat.train, **{f.name: _changed(value, hints[f.name])})))
        same = config_hash(other, splat.sections, splat.exclude) == base
        assert same == (f"splat.train.{f.name}" in SPLAT_CACHE_EXCLUDE), f.name
    renamed = dataclasses.replace(cfg, splat=dataclasses.replace(cfg.splat, preset="cpu"))
    assert config_hash(renamed, splat.sections, splat.exclude) == base  # the values, not the preset's name


@pytest.mark.parametrize("name", ["segment", "splat", "render_then_segment"])
def test_content_hashed_paths_are_not_in_the_key(name, tmp_path):
    cfg = load_config(CONFIGS_DIR / "demo.yaml")
    stage = STAGES[name]
    moved = dataclasses.replace(
        cfg, scene=dataclasses.replace(cfg.scene, path=tmp_path / "scene"),
        segment=dataclasses.replace(cfg.segment, path=tmp_path / "masks", checkpoint=tmp_path / "ck.pth"))
    assert config_hash(moved, stage.sections, stage.exclude) == config_hash(cfg, stage.sections, stage.exclude)
    assert set(CONTENT_HASHED_PATHS) & {f"{s}.path" for s in stage.sections} <= set(stage.exclude)
    # a field that matters still counts
    other = dataclasses.replace(cfg, segment=dataclasses.replace(cfg.segment, merge="standard"),
                                splat=dataclasses.replace(cfg.splat, train=dataclasses.replace(
                                    cfg.splat.train, iterations=cfg.splat.train.iterations + 1)))
    assert config_hash(other, stage.sections, stage.exclude) != config_hash(cfg, stage.sections, stage.exclude)
