"""Checkpoint loading: official layout round trip, and every bad file gives one clear line with no code run."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch

from panst3r import build_model, load
from panst3r.checkpoint import (CheckpointArgs, config_from_state_dict, constructor_strings, parse_constructor,
                                read_checkpoint, save)
from panst3r.model import full_config, tiny_config
from pipeline.common.io import InputError


def _one_line(e: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    for n in needles:
        assert n in msg, msg
    return msg


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    out = {}
    for v in ("v1", "v2"):
        m = build_model(v, "tiny")
        out[v] = (m, save(m, d / f"tiny_{v}.pth"))
    return out


class _Evil:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_round_trip_official_layout(tiny_files, variant):
    m, path = tiny_files[variant]
    raw = read_checkpoint(path)
    assert set(raw) == {"weights", "args", "epoch"}
    assert isinstance(raw["args"], CheckpointArgs)  # argparse.Namespace came back as the inert stand-in
    assert raw["args"].postprocess_default == "standard_v2"
    parsed = parse_constructor(raw["args"].panoptic_decoder)
    assert parsed["name"] == "PanopticDecoder"
    assert parsed["kwargs"]["upscaler"]["name"] == ("PixelShuffleUpscaler" if variant == "v1" else "LoftUpUpscaler")
    m2 = load(path)
    assert m2.variant == variant and m2.config == m.config and not m2.training
    sd1, sd2 = m.state_dict(), m2.state_dict()
    assert list(sd1) == list(sd2)
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    imgs = torch.linspace(-1, 1, 2 * 3 * 64 * 96).reshape(2, 3, 64, 96)
    text = torch.randn(3, m.text_dim, generator=torch.Generator().manual_seed(0))
    a, b = m.infer(imgs, [0, 1], text), m2.infer(imgs, [0, 1], text)
    assert torch.equal(a.pred_logits, b.pred_logits) and torch.equal(a.pts3d, b.pts3d)


def test_official_strings_and_defaults():
    """Full-size configs write the official constructor strings, and read back the official defaults."""
    s1, s2 = constructor_strings(full_config("v1")), constructor_strings(full_config("v2"))
    assert s1["must3r_encoder"] == "Dust3rEncoder(img_size=[512, 512], patch_embed='PatchEmbedDust3R')"
    assert s1["must3r_decoder"] == "MUSt3R(img_size=[512, 512], feedback_type='single_mlp', memory_mode='norm_y')"
    assert s1["panoptic_decoder"] == ("PanopticDecoder(input_mixer=None, upscaler=PixelShuffleUpscaler(input_dim=2816), "
                                      "label_mode='sigmoid', text_encoder='siglip')")
    p = parse_constructor(s2["panoptic_decoder"])
    assert p["kwargs"]["input_mixer"]["kwargs"]["num_heads"] == 12 and p["kwargs"]["mask_dim"] == 384
    old = parse_constructor("PanopticDecoder(upscaler=PixelShuffleUpscaler(2816), text_encoder='siglip', label_mode='sigmoid')")
    assert old["kwargs"]["upscaler"] == {"name": "PixelShuffleUpscaler", "args": [2816], "kwargs": {}}


def test_constructor_strings_are_never_evaluated(tmp_path, tiny_files):
    marker = tmp_path / "pwned"
    m, _ = tiny_files["v1"]
    args = argparse.Namespace(**constructor_strings(m.config))
    args.dino_encoder = f"__import__('os').system('touch {marker}')"
    args.must3r_encoder = f"Dust3rEncoder(enc_num_heads=2, x=__import__('os').system('touch {marker}'))"
    args.panoptic_decoder = f"PanopticDecoder(num_heads=__import__('os').system('touch {marker}'))"
    cfg = config_from_state_dict(m.state_dict(), args)
    assert not marker.exists()
    assert cfg.mt_heads == full_config("v1").mt_heads  # a non-literal keyword is ignored, default kept
    assert cfg.dino_heads == full_config("v1").dino_heads and cfg.enc_heads == 2


def test_truncated_file(tiny_files, tmp_path):
    _, path = tiny_files["v1"]
    data = path.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as e:
        load(bad)
    _one_line(e, str(bad), "truncated or corrupt")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(InputError) as e:
        load(empty)
    _one_line(e, str(empty))
    with pytest.raises(InputError) as e:
        load(tmp_path / "missing.pth")
    _one_line(e, "not found")


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_foreign_pickled_class_is_not_executed(tmp_path, writer):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    payload = {"weights": {}, "args": _Evil(marker)}
    if writer == "torch.save":
        torch.save(payload, evil)
    else:
        with open(evil, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(InputError) as e:
        load(evil)
    msg = _one_line(e, str(evil), "nothing was executed")
    assert "system" in msg
    assert not marker.exists()
    # control: the same kind of payload does run its command under a plain unpickler (a harmless `touch`)
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Evil(control)))
    assert control.exists()


def test_wrong_variant_and_missing_or_unexpected_keys(tiny_files, tmp_path):
    m, path = tiny_files["v1"]
    with pytest.raises(InputError) as e:
        load(path, variant="v2")
    _one_line(e, "v1 checkpoint", "v2 was requested")

    sd = dict(m.state_dict())
    args = argparse.Namespace(**constructor_strings(m.config))
    drop = [k for k in sd if k.startswith("must3r_decoder.blocks_dec.1.")][:4]
    bad = {k: v for k, v in sd.items() if k not in drop}
    bad["panoptic_decoder.extra.weight"] = torch.zeros(2)
    f = tmp_path / "missing.pth"
    torch.save({"weights": bad, "args": args, "epoch": 0}, f)
    with pytest.raises(InputError) as e:
        load(f)
    msg = _one_line(e, str(f), "missing keys 4 (", "unexpected keys 1 (panoptic_decoder.extra.weight)")
    assert drop[0] in msg

    # only the encoder depth of a mixed v1/v2 file: ambiguous variant
    mixed = dict(sd)
    mixed["panoptic_decoder.input_mixer.in_proj.weight"] = torch.zeros(2, 2)
    f2 = tmp_path / "mixed.pth"
    torch.save({"weights": mixed, "args": args}, f2)
    with pytest.raises(InputError) as e:
        load(f2)
    _one_line(e, "cannot tell PanSt3R v1 from v2")

    # wrong shape
    shp = dict(sd)
    shp["panoptic_decoder.mask_transformer.lang_embed.bias"] = torch.zeros(3)
    f3 = tmp_path / "shape.pth"
    torch.save({"weights": shp, "args": args}, f3)
    with pytest.raises(InputError) as e:
        load(f3)
    _one_line(e, "lang_embed.bias")


def test_not_a_panst3r_checkpoint(tmp_path):
    f = tmp_path / "must3r.pth"
    torch.save({"encoder": {"a": torch.zeros(1)}, "decoder": {}, "args": argparse.Namespace(x=1)}, f)
    with pytest.raises(InputError) as e:
        load(f)
    _one_line(e, "not a PanSt3R checkpoint")
    f2 = tmp_path / "nopan.pth"
    torch.save({"weights": {"must3r_encoder.norm_enc.weight": torch.zeros(4)}}, f2)
    with pytest.raises(InputError) as e:
        load(f2)
    _one_line(e, "panoptic_decoder")


def test_tiny_config_is_small_and_complete():
    for v in ("v1", "v2"):
        m = build_model(v, tiny_config(v))
        assert sum(p.numel() for p in m.parameters()) < 500_000
        assert not any(p.is_meta for p in m.parameters()) and not any(b.is_meta for b in m.buffers())
