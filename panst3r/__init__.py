"""PanSt3R: multi-view panoptic segmentation network (clean-room, inference only) and its post-processing.

`load(path)` reads an official checkpoint safely; `build_model(variant, config)` makes a pseudo-random one.
Names are resolved lazily (PEP 562) so `import panst3r` stays cheap and free of import cycles.
"""

from __future__ import annotations

import importlib

__all__ = ["load", "build_model", "PanSt3R", "PanSt3ROutput", "PanSt3RConfig", "tiny_config", "full_config"]

_LAZY = {
    "load": ("panst3r.checkpoint", "load"),
    "build_model": ("panst3r.checkpoint", "build_model"),
    "PanSt3R": ("panst3r.model", "PanSt3R"),
    "PanSt3ROutput": ("panst3r.model", "PanSt3ROutput"),
    "PanSt3RConfig": ("panst3r.model", "PanSt3RConfig"),
    "tiny_config": ("panst3r.model", "tiny_config"),
    "full_config": ("panst3r.model", "full_config"),
}


def __getattr__(name: str):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'panst3r' has no attribute {name!r}")
