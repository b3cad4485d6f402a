"""Where the PanSt3R golden parity vectors are, and how to read a full or a vendored (sliced) set alike.

Two sets: the vendored subset in tests/data/panst3r_golden (always there; made by
tests/data/make_golden_subset.py) and the full set, used as well when present: $PANST3R_GOLDEN, else
shared/golden/panst3r next to the repository. `GoldenSet.ref(stem, key)` returns the stored array and the
index to apply to a full-size tensor of ours so that both cover the same entries (`()` for the full set).
"""

from __future__ import annotations

import gzip
import json
import os
from functools import cache
from pathlib import Path

import numpy as np

__all__ = ["GoldenSet", "golden_sets", "VENDORED", "full_set_path"]

REPO = Path(__file__).resolve().parents[2]
VENDORED = REPO / "tests" / "data" / "panst3r_golden"


def full_set_path() -> Path:
    return Path(os.environ.get("PANST3R_GOLDEN", REPO.parent / "shared" / "golden" / "panst3r"))


def _index(spec: list) -> tuple:
    return tuple(slice(*s) for s in spec)


class GoldenSet:
    def __init__(self, name: str, root: Path):
        self.name, self.root = name, root
        self.runs = sorted((p.stem.split("_")[1], p.stem.split("_")[2]) for p in root.glob("panst3r_v*_kf*.npz"))

    def __repr__(self) -> str:
        return f"GoldenSet({self.name}, {self.root})"

    @cache
    def _npz(self, stem: str) -> tuple[dict, dict]:
        d = np.load(self.root / f"{stem}.npz")
        meta = json.loads(str(d["__meta__"])) if "__meta__" in d.files else {}
        shuffled = set(meta.get("byte_shuffled", ()))
        arrays = {}
        for k in d.files:
            if k == "__meta__":
                continue
            a = d[k]
            if k in shuffled:  # [4, n] byte planes -> float32 of the recorded shape
                a = np.frombuffer(a.T.tobytes(), np.float32).reshape(meta["shapes"][k]).copy()
            arrays[k] = a
        return arrays, meta

    def has(self, stem: str, key: str) -> bool:
        return (self.root / f"{stem}.npz").is_file() and key in self._npz(stem)[0]

    def ref(self, stem: str, key: str) -> tuple[np.ndarray, tuple]:
        arrays, meta = self._npz(stem)
        return arrays[key], _index(meta.get("slices", {}).get(key, []))

    def whole(self, stem: str, key: str) -> np.ndarray:
        """An array the set stores unsliced (instance maps, logits, pp8 inputs); fails if it was sliced."""
        a, idx = self.ref(stem, key)
        assert idx == (), f"{self}: {stem}:{key} is stored sliced"
        return a

    def attr(self, stem: str, name: str, compute):
        """A whole-tensor value recorded by the subset maker, or `compute(arrays)` on a full set."""
        arrays, meta = self._npz(stem)
        return meta["attrs"][name] if name in meta.get("attrs", {}) else compute(arrays)

    def json(self, name: str):
        p = self.root / name
        if p.is_file():
            return json.loads(p.read_text())
        return json.loads(gzip.decompress((self.root / f"{name}.gz").read_bytes()))

    def pp8_runs(self) -> list[tuple[str, str]]:
        """Runs whose 8-query mask logits are stored whole (the post-processing-only inputs)."""
        return [r for r in self.runs if self.ref(f"panst3r_{r[0]}_{r[1]}", "pred_masks_q0_7")[1] == ()
                and self.has(f"panst3r_{r[0]}_{r[1]}", "pp8_identity_pan_standard_v2")]


@cache
def golden_sets() -> tuple[GoldenSet, ...]:
    """The vendored subset, then the full set when present."""
    sets = [GoldenSet("vendored", VENDORED)]
    full = full_set_path()
    if (full / "common.npz").is_file() and full.resolve() != VENDORED.resolve():
        sets.append(GoldenSet("full", full))
    return tuple(sets)
