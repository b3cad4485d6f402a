"""Regenerate tests/data/panst3r_golden/: a few-MB subset of the PanSt3R golden parity vectors.

The full set (~46 MB, outputs of the official PanSt3R code with pseudo-random weights, documented in its own
folder) is not in the repository. This subset is, so that a fresh clone and CI check PanSt3R parity too;
tests/panst3r/test_golden_*.py use the full set as well when it is present.

    python tests/data/make_golden_subset.py [FULL_SET_DIR]
    # default FULL_SET_DIR: $PANST3R_GOLDEN, else shared/golden/panst3r beside the checkout

What is kept (every value is copied bit for bit from the full set; nothing is recomputed or re-rounded):
  * the three input views, the state-dict manifests and the weight checksums, whole (gzip for the JSON);
  * tokens and pointmaps as strided slices (the test applies the same slice to its own full-size output);
  * the network outputs of RUNS (both variants; kf02 holds the keyframe and the non-keyframe paths,
    kf012 the two-batch keyframe memory): all 200 queries, with strided channels / pixels;
  * the instance maps and segment lists of those runs, whole (the pp8_* maps only for PP8_RUN);
  * the float32 8-query mask logits of PP8_RUN whole (the post-processing-only merges need them exactly),
    stored byte-shuffled (a lossless reordering that zlib compresses ~12 % better).

Each .npz carries `__meta__`, a JSON string: `slices` (key -> per-axis [start, stop, step]), `byte_shuffled`
(keys stored as [4, n] uint8 planes) and `attrs` (values the tests need from the whole tensor, e.g. the
mask-logit magnitude that sets the mask tolerance).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "panst3r_golden"
RUNS = [("v1", "kf02"), ("v2", "kf012")]
PP8_RUN = ("v1", "kf02")
TOKENS = (slice(None, None, 8), slice(None, None, 8))  # every 8th token (of 768), every 8th channel
PIXELS = (slice(None), slice(None, None, 16), slice(None, None, 16))  # pointmaps: every 16th pixel of each view
SLICES = {
    "common": {"enc_tokens_view0": TOKENS, "dino_tokens_view0": TOKENS},
    "must3r": {"dec_tokens_view0": TOKENS, "pts3d": PIXELS, "pts3d_local": PIXELS, "conf": PIXELS},
    "panst3r": {
        "out_queries": (slice(None), slice(None, None, 8)),  # all queries, every 8th channel
        "pred_masks_q0_7": (slice(None), slice(None), slice(None, None, 8), slice(None, None, 8)),
        "pred_masks_allq_sub16": (slice(None), slice(None), slice(None, None, 3), slice(None, None, 3)),
    },
}
DROP = {"qubo_solution_seed0"}  # not used by any test


def default_full_set() -> Path:
    return Path(os.environ.get("PANST3R_GOLDEN", HERE.parents[2] / "shared/golden/panst3r"))


def _spec(s: tuple) -> list:
    return [[x.start, x.stop, x.step] for x in s]


def byte_shuffle(a: np.ndarray) -> np.ndarray:
    """float32 [...] -> uint8 [4, n]: byte plane k holds byte k of every value (lossless)."""
    return np.frombuffer(np.ascontiguousarray(a, dtype=np.float32).tobytes(), np.uint8).reshape(-1, 4).T.copy()


def _write_npz(dst: Path, src: Path, slices: dict, shuffled: set[str] = frozenset(), attrs: dict | None = None,
               drop: set[str] = frozenset()):
    d = np.load(src)
    arrays, meta = {}, {"slices": {}, "byte_shuffled": sorted(shuffled), "attrs": attrs or {},
                        "shapes": {}, "source": src.name}
    for k in d.files:
        if k in DROP or k in drop:
            continue
        a = d[k]
        meta["shapes"][k] = list(a.shape)
        if k in slices and k not in shuffled:
            a = a[slices[k]]
            meta["slices"][k] = _spec(slices[k])
        arrays[k] = byte_shuffle(a) if k in shuffled else a
    np.savez_compressed(dst, __meta__=np.array(json.dumps(meta)), **arrays)


def make(full: Path, out: Path = OUT) -> None:
    if not (full / "common.npz").is_file():
        sys.exit(f"{full}: no common.npz; pass the full golden set folder (or set PANST3R_GOLDEN)")
    if out.exists():
        shutil.rmtree(out)
    (out / "inputs").mkdir(parents=True)
    for i in range(3):
        shutil.copyfile(full / "inputs" / f"view{i}.png", out / "inputs" / f"view{i}.png")
    for v in ("v1", "v2"):
        for name in (f"manifest_{v}.json", f"weights_checksums_{v}.json"):
            (out / f"{name}.gz").write_bytes(gzip.compress((full / name).read_bytes(), 9, mtime=0))
    _write_npz(out / "common.npz", full / "common.npz", SLICES["common"])
    for tag in sorted({t for _, t in RUNS}):
        _write_npz(out / f"must3r_{tag}.npz", full / f"must3r_{tag}.npz", SLICES["must3r"])
    for v, tag in RUNS:
        src = full / f"panst3r_{v}_{tag}.npz"
        d = np.load(src)
        mask_max = max(float(np.abs(d["pred_masks_q0_7"]).max()), float(np.abs(d["pred_masks_allq_sub16"]).max()))
        pp8 = (v, tag) == PP8_RUN  # elsewhere the 8-query masks are sliced, so the pp8 maps cannot be checked
        _write_npz(out / src.name, src, SLICES["panst3r"], {"pred_masks_q0_7"} if pp8 else set(),
                   {"pred_masks_abs_max": mask_max}, set() if pp8 else {k for k in d.files if k.startswith("pp8_")})
        shutil.copyfile(full / f"segments_{v}_{tag}.json", out / f"segments_{v}_{tag}.json")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    make(Path(sys.argv[1]) if len(sys.argv) > 1 else default_full_set())
