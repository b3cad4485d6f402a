"""QUBO merge solver vs the official annealer, re-implemented independently, over many kinds of mask sets.

The reference (`official_anneal`) is a straightforward numpy transcription of the official algorithm:
20 restarts × 10000 single-flip proposals, uniform random initial bits, full xᵀQx recomputed for
every proposal, Metropolis acceptance with a uniform drawn only when Δ >= 0, geometric temperature
0.5 → 1e-4, best state seen wins. It draws from numpy's legacy MT19937 `RandomState`, a generator family
that `panst3r.qubo.solve` (PCG64 streams from a `SeedSequence`) never uses, so the two searches share no
random numbers.

Mask-set kinds (200 queries each): `random` (synthetic multi-view blobs: duplicates, halves, merged pairs,
near-empty queries), `realistic` (the network's mask logits on the golden inputs, all 200 queries, under the
golden `identity` / `sharpened` transforms; skipped with a note when the golden files are absent),
`near-dup` (a few objects, each predicted by many nearly identical queries) and `empty` (most queries
empty). Our solver runs in a fresh Python process: its import (which warms the numba kernels up) is timed
on its own, then every set is solved once in order — the first of those calls is the first call of the
process and is included in the speed-ups — then once more for the steady-state time. Both solutions are
scored with the same `qubo.energy`. Timings on a shared machine are noisy.

    .venv/bin/python bench/qubo.py [--random 6] [--near-dup 4] [--empty 4] [--realistic 12] [--official-seeds 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from panst3r import qubo  # noqa: E402
from panst3r.postprocess import upsample_probs  # noqa: E402

GOLDEN = Path(os.environ.get("PANST3R_GOLDEN", ROOT.parent / "shared/golden/panst3r"))
if not GOLDEN.is_dir():
    GOLDEN = Path("/work/shared/golden/panst3r")
HW = (96, 128)  # the resolution the masks are upsampled to before the weights are summed
TOL = 1e-9


# ------------------------------------------------------------------------------------------------
# the official algorithm, written out plainly
# ------------------------------------------------------------------------------------------------


def official_anneal(Q: np.ndarray, lambda_reg: float = 1e-3, seed: int = 0, num_iters: int = 10000,
                    num_redo: int = 20, t0: float = 0.5, t_end: float = 1e-4) -> tuple[np.ndarray, float]:
    """Simulated annealing as the official merge runs it: full energy per proposal, restarts in sequence."""
    rs = np.random.RandomState(seed)
    n = Q.shape[0]
    r = (t_end / t0) ** (1.0 / num_iters)

    def en(x):
        return x @ Q @ x + lambda_reg * np.mean(x)

    best_x, best_e = None, math.inf
    for _ in range(num_redo):
        x = rs.randint(0, 2, n).astype(np.float64)
        e = en(x)
        run_x, run_e = x.copy(), e
        temp = t0
        for _t in range(num_iters):
            k = rs.randint(n)
            y = x.copy()
            y[k] = 1.0 - y[k]
            ey = en(y)
            d = ey - e
            if d < 0 or rs.rand() < math.exp(-d / temp):
                x, e = y, ey
                if e < run_e:
                    run_x, run_e = x.copy(), e
            temp *= r
        if run_e < best_e:
            best_x, best_e = run_x, run_e
    return best_x.astype(bool), best_e


# ------------------------------------------------------------------------------------------------
# mask sets: V × [200, H, W] probabilities
# ------------------------------------------------------------------------------------------------


def _ellipses(rng, n_obj, h, w, views):
    """Per view [O, H, W] normalised distance to n_obj drifting ellipses (1 on the rim)."""
    cy, cx = rng.uniform(0, h, n_obj), rng.uniform(0, w, n_obj)
    ry, rx = rng.uniform(0.05, 0.3, n_obj) * h, rng.uniform(0.05, 0.3, n_obj) * w
    drift = rng.normal(0, 0.05, (n_obj, 2)) * (h, w)
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    out = []
    for v in range(views):
        oy, ox = cy + v * drift[:, 0], cx + v * drift[:, 1]
        out.append((np.sqrt(((yy[None] - oy[:, None, None]) / ry[:, None, None]) ** 2
                            + ((xx[None] - ox[:, None, None]) / rx[:, None, None]) ** 2), xx, ox))
    return out


def _probs(logit: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(1.0 / (1.0 + np.exp(-logit))).float()


def random_masks(seed: int, nq: int = 200, views: int = 4) -> list[torch.Tensor]:
    """~nq/5 objects; each query is a noisy duplicate, a half, a merged pair or near-empty."""
    rng = np.random.default_rng(seed)
    n_obj = nq // 5
    geo = _ellipses(rng, n_obj, *HW, views)
    kind = rng.choice(4, nq, p=[0.55, 0.15, 0.15, 0.15])
    obj, obj2 = rng.integers(0, n_obj, nq), rng.integers(0, n_obj, nq)
    sharp = rng.uniform(3, 10, nq)
    out = []
    for d, xx, ox in geo:
        logit = sharp[:, None, None] * (1 - d[obj])
        part = kind == 1
        logit[part] -= sharp[part, None, None] * (xx[None] > ox[obj[part], None, None])
        merged = kind == 2
        logit[merged] = np.maximum(logit[merged], sharp[merged, None, None] * (1 - d[obj2[merged]]))
        logit[kind == 3] = -6.0
        out.append(_probs(logit + rng.normal(0, 0.8, logit.shape)))
    return out


def near_dup_masks(seed: int, nq: int = 200, views: int = 3) -> list[torch.Tensor]:
    """A few objects, each predicted by many queries that differ by small logit noise and sharpness."""
    rng = np.random.default_rng(seed)
    n_obj = int(rng.integers(5, 13))
    geo = _ellipses(rng, n_obj, *HW, views)
    obj = rng.integers(0, n_obj, nq)
    sharp = rng.uniform(6, 8, nq)
    bias = rng.normal(0, 0.2, nq)
    return [_probs(sharp[:, None, None] * (1 - d[obj]) + bias[:, None, None] + rng.normal(0, 0.1, (nq, *HW)))
            for d, _xx, _ox in geo]


def empty_masks(seed: int, nq: int = 200, views: int = 3) -> list[torch.Tensor]:
    """Most queries predict (almost) nothing; 5-30 queries see real objects."""
    rng = np.random.default_rng(seed)
    n_real = int(rng.integers(5, 31))
    n_obj = max(2, n_real // 2)
    geo = _ellipses(rng, n_obj, *HW, views)
    obj = rng.integers(0, n_obj, n_real)
    sharp = rng.uniform(3, 10, n_real)
    floor = rng.uniform(-12, -5, nq - n_real)
    out = []
    for d, _xx, _ox in geo:
        real = sharp[:, None, None] * (1 - d[obj]) + rng.normal(0, 0.8, (n_real, *HW))
        empty = floor[:, None, None] + rng.normal(0, 0.5, (nq - n_real, *HW))
        out.append(_probs(np.concatenate([real, empty])[rng.permutation(nq)]))
    return out


def realistic_sets(limit: int) -> list[tuple[str, list[torch.Tensor]]]:
    """All-query mask logits from the golden runs ([V, 200, 12, 16], every 16th pixel), golden transforms."""
    files = sorted(GOLDEN.glob("panst3r_v*_kf*.npz"))
    sets = []
    for f in files:
        spec = json.loads((GOLDEN / f.name.replace("panst3r_", "segments_").replace(".npz", ".json")).read_text())
        logits = np.load(f)["pred_masks_allq_sub16"]  # [V, 200, 12, 16]
        sharp = spec["postproc_only_8queries"]["sharpened"]
        for name, b, c in (("identity", 1.0, 0.0), ("sharpened", sharp["mask_logits_times_B"],
                                                    sharp["mask_logits_plus_C"]), ("x4-4", 4.0, -4.0)):
            masks = [upsample_probs(torch.from_numpy(logits[v]) * b + c, HW) for v in range(logits.shape[0])]
            sets.append((f"{f.stem.replace('panst3r_', '')}/{name}", masks))
    return sets[:limit]


def mask_sets(a) -> list[tuple[str, str, np.ndarray]]:
    out = []
    for kind, n, fn, base in (("random", a.random, random_masks, 100), ("near-dup", a.near_dup, near_dup_masks, 200),
                              ("empty", a.empty, empty_masks, 300)):
        for s in range(n):
            out.append((kind, f"seed{base + s}", qubo.build_qubo(fn(base + s))))
    if a.realistic:
        real = realistic_sets(a.realistic)
        if not real:
            print(f"NOTE: golden files not found under {GOLDEN} (set PANST3R_GOLDEN): realistic sets skipped")
        out += [("realistic", name, qubo.build_qubo(m)) for name, m in real]
    return out


# ------------------------------------------------------------------------------------------------
# our solver, timed in a fresh process
# ------------------------------------------------------------------------------------------------

_CHILD = r"""
import json, sys, time
import numpy as np, torch
try:
    import numba
except ImportError:
    pass
t1 = time.perf_counter()
from panst3r import qubo  # compiles or loads the cached kernels and warms them up
t2 = time.perf_counter()
d = np.load(sys.argv[1])
Qs = [d[f"q{i}"] for i in range(len(d.files))]
first, steady, energies = [], [], []
for Q in Qs:
    t = time.perf_counter(); x, e = qubo.solve(Q, 1e-3, seed=0, return_energy=True); first.append(time.perf_counter() - t)
    energies.append(e)
for Q in Qs:
    t = time.perf_counter(); qubo.solve(Q, 1e-3, seed=0); steady.append(time.perf_counter() - t)
print(json.dumps({"import_s": t2 - t1, "numba": qubo.has_numba(), "first": first, "steady": steady, "E": energies}))
"""


def run_ours(Qs: list[np.ndarray]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qs.npz"
        np.savez(path, **{f"q{i}": Q for i, Q in enumerate(Qs)})
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        res = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, env=env,
                             cwd=ROOT, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--random", type=int, default=6, help="random (synthetic blob) mask sets")
    ap.add_argument("--near-dup", type=int, default=4, help="near-duplicate mask sets")
    ap.add_argument("--empty", type=int, default=4, help="mostly-empty mask sets")
    ap.add_argument("--realistic", type=int, default=12, help="golden mask sets (at most 12)")
    ap.add_argument("--official-seeds", type=int, default=1, help="official runs per set (each ~7 s)")
    a = ap.parse_args()
    sets = mask_sets(a)
    print(f"QUBO merge: {len(sets)} mask sets of 200 queries; official annealer (independent numpy re-implementation, "
          f"RandomState streams) {qubo.OFFICIAL_SCHEDULE} vs panst3r.qubo.solve {qubo.SOLVER_DEFAULTS}")
    ours = run_ours([Q for _k, _n, Q in sets])
    print(f"ours: numba {'yes' if ours['numba'] else 'NO (numpy mirror)'}; import of panst3r.qubo (numpy, torch, "
          f"numba already imported) incl. kernel warm-up {ours['import_s']:.2f} s, once per process, not in the speed-ups")
    rows = []
    for i, (kind, name, Q) in enumerate(sets):
        for s in range(a.official_seeds):
            t = time.perf_counter()
            x, _ = official_anneal(Q, 1e-3, seed=1000 + s)
            t_off = time.perf_counter() - t
            e_off = qubo.energy(Q, x, 1e-3)
            gap = ours["E"][i] - e_off
            verdict = "worse" if gap > TOL else ("better" if gap < -TOL else "equal")
            rows.append((kind, t_off, ours["first"][i], ours["steady"][i], gap, verdict))
            print(f"{kind:9s} {name:22s} official {t_off:6.2f} s E {e_off:+.9f} | ours {ours['first'][i] * 1e3:7.1f} ms "
                  f"(steady {ours['steady'][i] * 1e3:6.1f} ms) E {ours['E'][i]:+.9f} | gap {gap:+.2e} {verdict}",
                  flush=True)
    t_off = np.array([r[1] for r in rows])
    first = np.array([r[2] for r in rows])
    steady = np.array([r[3] for r in rows])
    gaps = np.array([r[4] for r in rows])
    speed = t_off / first
    kinds = sorted({r[0] for r in rows})
    print("summary:")
    print(f"  comparisons: {len(rows)} ({', '.join(f'{k} {sum(r[0] == k for r in rows)}' for k in kinds)})")
    print(f"  ours worse / equal / better (tolerance {TOL:g}): {sum(r[5] == 'worse' for r in rows)} / "
          f"{sum(r[5] == 'equal' for r in rows)} / {sum(r[5] == 'better' for r in rows)}")
    print(f"  largest energy gap ours - official: {gaps.max():+.3e} (target <= {TOL:g}); most negative {gaps.min():+.3e}")
    print(f"  speed-up, first call included: median x{np.median(speed):.0f}, min x{speed.min():.0f} "
          f"(target median >= x100)")
    print(f"  official median {np.median(t_off):.2f} s; ours first call {ours['first'][0] * 1e3:.1f} ms, "
          f"steady-state median {np.median(steady) * 1e3:.1f} ms (max {steady.max() * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
