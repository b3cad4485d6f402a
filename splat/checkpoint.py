"""`ckpt.pt`: everything the next training step depends on, so a resumed run equals an uninterrupted one.

Parameters, Adam states, the strategy's running state, the step, the view-order generator and the rest of the
current epoch's order, torch's RNG, the history, and a run key (the config that shapes the maths, the train
stems, whether the panoptic term is on) that a checkpoint must match to be resumed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.common.io import InputError, atomic_path

from .config import TrainConfig

__all__ = ["CHECKPOINT_VERSION", "run_key", "config_dict", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_VERSION = 1

# fields that do not change what is computed: a checkpoint written under other values still resumes
_NOT_IN_KEY = ("eval_every", "checkpoint_every", "log_every")


def config_dict(cfg: TrainConfig) -> dict:
    """The config as plain JSON-able values."""
    d = dataclasses.asdict(cfg)
    d["background"] = list(d["background"])
    return d


def run_key(cfg: TrainConfig, stems: Sequence[str], with_pan: bool) -> dict:
    """What a checkpoint must match to be resumed (device and logging cadence do not change the maths)."""
    d = config_dict(cfg)
    for k in _NOT_IN_KEY:
        d.pop(k)
    return {"config": d, "train": list(stems), "pan": bool(with_pan)}


def save_checkpoint(path: Path, *, step: int, params: torch.nn.ParameterDict,
                    optimizers: dict[str, torch.optim.Optimizer], strategy_state: dict[str, Any],
                    rng: np.random.Generator, order: Sequence[int], history: list[dict], key: dict, sscale: float,
                    init_source: str, pose: dict | None = None) -> None:
    """Write the checkpoint atomically (tensors moved to CPU; a killed write leaves the previous one)."""
    state = {
        "version": CHECKPOINT_VERSION,
        "step": int(step),
        "params": {k: v.detach().cpu() for k, v in params.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "strategy_state": {k: (v.cpu() if isinstance(v, Tensor) else v) for k, v in strategy_state.items()},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "np_rng": rng.bit_generator.state,
        "order": list(order),  # the rest of the current epoch's view order
        "history": history,
        "key": key,
        "scene_scale": float(sscale),
        "init_source": init_source,
        "pose": pose,  # per-view pose corrections (splat.poses) or None
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Read ckpt.pt (tensors on CPU); a one-line InputError when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}); "
                         "delete it to retrain") from None
    if not isinstance(ck, dict) or ck.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"{path}: not a splat.train checkpoint of version {CHECKPOINT_VERSION}; delete it to retrain")
    return ck
