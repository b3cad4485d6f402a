"""Load official PanSt3R checkpoints without executing pickled code; build models from a config.

An official `.pth` is a torch pickle `{'weights': state_dict, 'args': argparse.Namespace, 'epoch', ...}`.
`load` reads it through `torch.load(pickle_module=<restricted>)`: the unpickler resolves only
tensor-rebuild helpers, plain containers, torch dtypes, and inert stand-ins for `argparse.Namespace` and
a few data-only types; any other global (e.g. `os.system`) aborts the load before it can be called.
The architecture is read from the weights' shapes (depths, widths, queries, mask_dim, v1/v2) plus the head
counts from the `args` constructor strings, which are parsed with `ast` and never evaluated.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import pickle
import re
import types
import zlib
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from pipeline.common.io import InputError, atomic_path

from .model import PanSt3R, PanSt3RConfig, full_config, tiny_config
from .model.config import replace as _replace_config

__all__ = ["load", "save", "build_model", "pseudo_random_state_dict", "recipe_tensor", "config_from_state_dict",
           "constructor_strings", "parse_constructor", "CheckpointArgs", "read_checkpoint", "PREFIXES"]

PREFIXES = ("must3r_encoder.", "must3r_decoder.", "dino_encoder.", "panoptic_decoder.")


# ------------------------------------------------------------------------------------------------
# restricted unpickling
class CheckpointArgs:
    """Inert stand-in for `argparse.Namespace`: attribute bag filled from the pickled state, no code."""

    def __init__(self, *args, **kwargs):
        self.__dict__.update(kwargs)

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update({str(k): v for k, v in state.items()})

    def get(self, name: str, default=None):
        return self.__dict__.get(name, default)

    def __repr__(self) -> str:
        return f"CheckpointArgs({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


class _Inert:
    """Placeholder for data-only foreign types (numpy arrays, OmegaConf, paths) we never use."""

    _global = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self._global}>"


_INERT_MODULES = ("numpy", "omegaconf", "pathlib")
_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "complex": complex, "slice": slice, "bytearray": bytearray,
                  "range": range}


class _Disallowed(pickle.UnpicklingError):
    pass


def _safe_reconstructor(cls, base, state):
    if not (isinstance(cls, type) and issubclass(cls, (CheckpointArgs, _Inert))):
        raise _Disallowed(f"copyreg._reconstructor of {cls!r}")
    obj = cls.__new__(cls)
    if state is not None:
        obj.__setstate__(state)
    return obj


def _resolve(module: str, name: str):
    import codecs
    import collections

    import torch._utils as tu

    if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
                                               "_rebuild_parameter", "_rebuild_parameter_with_state"):
        return getattr(tu, name)
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        import torch._tensor as tt

        return tt._rebuild_from_type_v2
    if (module, name) == ("torch", "Tensor"):
        return torch.Tensor
    if (module, name) == ("torch.nn.parameter", "Parameter"):
        return torch.nn.Parameter
    if module == "torch" and name in ("Size", "device"):
        return getattr(torch, name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
        return _SAFE_BUILTINS[name]
    if (module, name) == ("_codecs", "encode"):
        return codecs.encode
    if (module, name) == ("argparse", "Namespace"):
        return CheckpointArgs
    if (module, name) == ("copyreg", "_reconstructor"):
        return _safe_reconstructor
    if module.split(".")[0] in _INERT_MODULES:
        return type(f"Inert_{name}", (_Inert,), {"_global": f"{module}.{name}"})
    raise _Disallowed(f"{module}.{name}")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return _resolve(module, name)


def _restricted_load(f, **kw):
    return _RestrictedUnpickler(f, **kw).load()


_restricted_pickle = types.ModuleType("panst3r_restricted_pickle")
_restricted_pickle.Unpickler = _RestrictedUnpickler
_restricted_pickle.load = _restricted_load


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, read with the restricted unpickler (tensors memory-mapped when possible)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found; pass the path of panst3r_v1_512_5ds.pth or panst3r_v2_512_5ds.pth")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", pickle_module=_restricted_pickle, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            ckpt = torch.load(path, map_location="cpu", pickle_module=_restricted_pickle)
    except _Disallowed as e:
        raise InputError(f"{path}: refused to load: it references the Python object '{e}', which is not plain "
                         f"data (nothing was executed); use an official PanSt3R checkpoint") from None
    except Exception as e:  # truncated zip, garbage bytes, EOF, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {msg}); the file is "
                         f"truncated or corrupt, download it again") from None
    if not isinstance(ckpt, dict) or "weights" not in ckpt:
        keys = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise InputError(f"{path}: not a PanSt3R checkpoint (expected a dict with 'weights' and 'args', got {keys}); "
                         f"MUSt3R/DUSt3R checkpoints cannot be used here")
    return ckpt


# ------------------------------------------------------------------------------------------------
# constructor strings
def parse_constructor(s: str) -> dict:
    """"Name(a, k=v, k2=Other(...))" -> {"name", "args", "kwargs"} with literals only (ast, never eval)."""

    def conv(node):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else ast.unparse(fn)
            return {"name": name, "args": [conv(a) for a in node.args],
                    "kwargs": {k.arg: conv(k.value) for k in node.keywords if k.arg}}
        try:
            return ast.literal_eval(node)
        except ValueError:
            return ast.unparse(node)  # e.g. a bare name: kept as text, never resolved

    tree = ast.parse(s.strip(), mode="eval").body
    out = conv(tree)
    if not isinstance(out, dict):
        raise ValueError(f"not a constructor call: {s!r}")
    return out


def _kw(call: Any, *names, default=None):
    if isinstance(call, dict):
        for n in names:
            if n in call.get("kwargs", {}):
                return call["kwargs"][n]
    return default


def _fmt(name: str, base: str, extra: Mapping[str, Any]) -> str:
    parts = [base] if base else []
    parts += [f"{k}={v!r}" for k, v in extra.items()]
    return f"{name}({', '.join(parts)})"


def constructor_strings(cfg: PanSt3RConfig) -> dict[str, str]:
    """`args` strings in the official form; non-default head counts are added as extra keywords."""
    d = full_config(cfg.variant)
    enc = {"enc_num_heads": cfg.enc_heads} if cfg.enc_heads != d.enc_heads else {}
    dec = {"num_heads": cfg.dec_heads} if cfg.dec_heads != d.dec_heads else {}
    dino = {"num_heads": cfg.dino_heads} if cfg.dino_heads != d.dino_heads else {}
    pan = {"num_heads": cfg.mt_heads} if cfg.mt_heads != d.mt_heads else {}
    out = {
        "must3r_encoder": _fmt("Dust3rEncoder", "img_size=[512, 512], patch_embed='PatchEmbedDust3R'", enc),
        "must3r_decoder": _fmt("MUSt3R", "img_size=[512, 512], feedback_type='single_mlp', memory_mode='norm_y'", dec),
        "dino_encoder": _fmt("DinoV2Encoder", "", dino),
    }
    if cfg.variant == "v1":
        out["panoptic_decoder"] = _fmt(
            "PanopticDecoder", f"input_mixer=None, upscaler=PixelShuffleUpscaler(input_dim={cfg.fused_dim}), "
            "label_mode='sigmoid', text_encoder='siglip'", pan)
    else:
        mix = (f"InputMixer(img_size=[512, 512], patch_size=16, in_dim={cfg.fused_dim}, hidden_dim={cfg.hidden_dim}, "
               f"num_heads={cfg.mixer_heads}, num_layers={cfg.mixer_layers}, ff_dim_mult={cfg.mixer_ff_mult})")
        loft = _fmt("LoftUpUpscaler", f"input_dim={cfg.hidden_dim}, dim={cfg.mask_dim}, output_stride=2, patch_size=16",
                    {"num_heads": cfg.loftup_heads} if cfg.loftup_heads != d.loftup_heads else {})
        out["panoptic_decoder"] = _fmt(
            "PanopticDecoder", f"input_mixer={mix}, upscaler={loft}, label_mode='sigmoid', text_encoder='siglip', "
            f"mask_dim={cfg.mask_dim}", pan)
    return out


# ------------------------------------------------------------------------------------------------
# architecture from weights
def _count(sd: Mapping[str, Any], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in sd for m in [pat.match(k)] if m}
    return max(idx) + 1 if idx else 0


def detect_variant(sd: Mapping[str, Any]) -> Optional[str]:
    v1 = any(k.startswith("panoptic_decoder.upscaler.proj_8.") for k in sd)
    v2 = any(k.startswith(("panoptic_decoder.input_mixer.", "panoptic_decoder.upscaler.ca_transformer_blocks."))
             for k in sd)
    if v1 == v2:
        return None
    return "v1" if v1 else "v2"


def config_from_state_dict(sd: Mapping[str, Tensor], args: Any = None, variant: Optional[str] = None) -> PanSt3RConfig:
    """Read widths/depths from shapes; head counts from the args strings (official defaults otherwise)."""
    variant = variant or detect_variant(sd)
    if variant is None:
        raise ValueError("cannot tell v1 from v2")
    cfg = full_config(variant)
    kw: dict[str, Any] = {}

    def shape(key):
        t = sd.get(key)
        return tuple(t.shape) if t is not None else None

    if (s := shape("must3r_encoder.patch_embed.proj.weight")) and len(s) == 4:
        kw.update(enc_dim=s[0], patch_size=s[-1])
    if n := _count(sd, "must3r_encoder.blocks_enc."):
        kw["enc_depth"] = n
    if s := shape("must3r_decoder.feat_embed_enc_to_dec.weight"):
        kw["dec_dim"] = s[0]
    if n := _count(sd, "must3r_decoder.blocks_dec."):
        kw["dec_depth"] = n
    p = "dino_encoder.dinov2."
    if s := shape(p + "embeddings.cls_token"):
        kw["dino_dim"] = s[-1]
    if n := _count(sd, p + "encoder.layer."):
        kw["dino_depth"] = n
    if (s := shape(p + "embeddings.patch_embeddings.projection.weight")) and len(s) == 4:
        kw["dino_patch"] = s[-1]
    if s := shape(p + "embeddings.position_embeddings"):
        g = math.isqrt(max(s[1] - 1, 1))
        kw["dino_image_size"] = g * kw.get("dino_patch", cfg.dino_patch)
    m = "panoptic_decoder.mask_transformer."
    if s := shape(m + "query_feat.weight"):
        kw.update(num_queries=s[0], hidden_dim=s[1])
    if n := _count(sd, m + "ffn_layers."):
        kw["mt_layers"] = n
    if s := shape(m + "ffn_layers.0.linear1.weight"):
        kw["ff_dim"] = s[0]
    if s := shape(m + "mask_embed.layers.2.weight"):
        kw["mask_dim"] = s[0]
    if s := shape(m + "lang_embed.weight"):
        kw["text_dim"] = s[0]
    u = "panoptic_decoder.upscaler."
    if variant == "v1":
        outs = [shape(u + f"proj_{r}.fc2.weight") for r in (16, 8, 4, 2)]
        if all(outs):
            kw["fp_dims"] = (outs[0][0], outs[1][0] // 4, outs[2][0] // 4, outs[3][0] // 4)
        if (a := shape(u + "proj_16.fc1.weight")) and a[1]:
            kw["upscale_hidden_factor"] = a[0] // a[1]
    else:
        i = "panoptic_decoder.input_mixer."
        if n := _count(sd, i + "mixer_blk."):
            kw["mixer_layers"] = n
        if (a := shape(i + "mixer_blk.0.mlp.fc1.weight")) and a[1]:
            kw["mixer_ff_mult"] = a[0] // a[1]
        if n := _count(sd, u + "ca_transformer_blocks."):
            kw["loftup_layers"] = n
        if s := shape(u + "fourier_feat.1.biases"):
            kw["loftup_freqs"] = s[-1]
        if s := shape(u + "lr_pe.biases"):
            kw["loftup_lr_freqs"] = s[-1]
    # head counts are not visible in shapes: take them from the constructor strings when given
    strings = {}
    for name in ("must3r_encoder", "must3r_decoder", "dino_encoder", "panoptic_decoder"):
        s = getattr(args, name, None) if args is not None else None
        if isinstance(s, str):
            try:
                strings[name] = parse_constructor(s)
            except (SyntaxError, ValueError):
                pass
    heads = {
        "enc_heads": _kw(strings.get("must3r_encoder"), "enc_num_heads", "num_heads"),
        "dec_heads": _kw(strings.get("must3r_decoder"), "num_heads", "dec_num_heads"),
        "dino_heads": _kw(strings.get("dino_encoder"), "num_heads"),
        "mt_heads": _kw(strings.get("panoptic_decoder"), "num_heads", "nheads"),
        "mixer_heads": _kw(_kw(strings.get("panoptic_decoder"), "input_mixer"), "num_heads"),
        "loftup_heads": _kw(_kw(strings.get("panoptic_decoder"), "upscaler"), "num_heads"),
    }
    kw.update({k: int(v) for k, v in heads.items() if isinstance(v, int)})
    return _replace_config(cfg, **kw)


# ------------------------------------------------------------------------------------------------
# pseudo-random weights (the golden-vector recipe: deterministic per key name)
_N01_KEYS = ("mask_transformer.query_feat.weight", "mask_transformer.query_embed.weight")


def recipe_tensor(key: str, shape) -> Tensor:
    """One tensor of the golden parity vectors' weight recipe, seeded by crc32(key)."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    shape = tuple(int(s) for s in shape)
    fan_in = math.prod(shape[1:])
    w = torch.randn(shape, generator=g)  # scaled in place: same values as `w * s`, no second allocation
    if key.endswith(_N01_KEYS) and key.startswith("panoptic_decoder."):
        return w
    if len(shape) >= 2 and key.endswith("out_proj.weight"):
        return w.mul_(0.1 / math.sqrt(fan_in))
    if len(shape) >= 2 and key.endswith("weight"):
        return w.mul_(1.0 / math.sqrt(fan_in))
    if len(shape) == 1 and key.endswith(".weight"):
        return w.mul_(0.02).add_(1)
    return w.mul_(0.02)


def pseudo_random_state_dict(model: torch.nn.Module, skip: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Recipe weights for every state-dict key of `model` (works on a `meta` model); keys in `skip` reused."""
    skip = skip or {}
    return {k: (skip[k] if k in skip else recipe_tensor(k, t.shape)) for k, t in model.state_dict().items()}


def _meta_model(cfg: PanSt3RConfig) -> PanSt3R:
    with torch.device("meta"):
        return PanSt3R(cfg)


def build_model(variant: str = "v1", config: PanSt3RConfig | str | None = None, *, device="cpu",
                weights: Mapping[str, Tensor] | None = None) -> PanSt3R:
    """A PanSt3R with deterministic pseudo-random weights (golden recipe), in eval mode.

    config: a `PanSt3RConfig`, "full" (default: the released architecture) or "tiny" (seconds end to end;
    text embeddings are then `model.text_dim` = 16 wide). `weights` (e.g. a shared backbone) are used as
    given for the keys they contain, the rest follows the recipe. Built on `meta` and filled, so no time is
    spent on random initialisation.
    """
    if config is None or config == "full":
        cfg = full_config(variant)
    elif config == "tiny":
        cfg = tiny_config(variant)
    elif isinstance(config, PanSt3RConfig):
        cfg = config
        if cfg.variant != variant:
            cfg = _replace_config(cfg, variant=variant)
    else:
        raise ValueError(f"config must be a PanSt3RConfig, 'full' or 'tiny', got {config!r}")
    model = _meta_model(cfg)
    sd = pseudo_random_state_dict(model, skip=weights)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------------
def _few(keys: list[str], n: int = 3) -> str:
    head = ", ".join(keys[:n])
    return f"{len(keys)} ({head}{', ...' if len(keys) > n else ''})"


def load(path: str | os.PathLike, device="cpu", *, variant: Optional[str] = None) -> PanSt3R:
    """Official checkpoint -> PanSt3R in eval mode. Raises InputError (one line) on any bad file.

    variant: if given ("v1"/"v2"), the file must be of that variant.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    sd = ckpt["weights"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise InputError(f"{path}: 'weights' is not a state dict of tensors; not a PanSt3R checkpoint")
    sd = {str(k): v for k, v in sd.items()}
    if not any(k.startswith("panoptic_decoder.") for k in sd):
        raise InputError(f"{path}: no 'panoptic_decoder.*' weights ({len(sd)} keys, e.g. {list(sd)[:2]}); "
                         f"not a PanSt3R checkpoint (MUSt3R checkpoints cannot be used here)")
    found = detect_variant(sd)
    if found is None:
        raise InputError(f"{path}: cannot tell PanSt3R v1 from v2: expected either 'panoptic_decoder.upscaler.proj_8.*' "
                         f"(v1) or 'panoptic_decoder.input_mixer.*' + LoftUp keys (v2); the file is damaged or foreign")
    if variant is not None and found != variant:
        raise InputError(f"{path}: this is a PanSt3R {found} checkpoint but {variant} was requested; "
                         f"use the {variant} file or set the variant to {found}")
    try:
        cfg = config_from_state_dict(sd, ckpt.get("args"), found)
    except (ValueError, TypeError) as e:
        raise InputError(f"{path}: inconsistent architecture in the weights ({e}); the file is damaged") from None
    model = _meta_model(cfg)
    expected = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise InputError(f"{path}: does not match the PanSt3R {found} architecture: {'; '.join(parts)}; "
                         f"the file is damaged or from another model")
    bad = [f"{k} {tuple(sd[k].shape)} vs {expected[k]}" for k in expected if tuple(sd[k].shape) != expected[k]]
    if bad:
        raise InputError(f"{path}: wrong tensor shapes for PanSt3R {found}: {_few(bad, 2)}; the file is damaged")
    sd = {k: (v if v.dtype == torch.float32 else v.float()) for k, v in sd.items()}
    for prefix in PREFIXES:  # strict per part, as the spec recommends
        part = getattr(model, prefix[:-1])
        part.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, strict=True,
                             assign=True)
    return model.to(device).eval()


def save(model: PanSt3R, path: str | os.PathLike, **extra_args) -> Path:
    """Write `model` in the official layout {'weights', 'args' (argparse.Namespace), 'epoch'} (atomically)."""
    path = Path(path)
    args = argparse.Namespace(**constructor_strings(model.config), postprocess_default="standard_v2",
                              qubo_enabled=True, **extra_args)
    with atomic_path(path) as tmp:
        torch.save({"weights": model.state_dict(), "args": args, "epoch": 0}, tmp)
    return path
