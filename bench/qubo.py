"""QUBO annealer speed: `panst3r.qubo.solve` vs the official algorithm written straightforwardly.

Builds realistic 200-query QUBOs from synthetic multi-view soft masks (blobby objects that drift between
views, noisy duplicates of the same object, partial and merged masks, near-empty queries), then times
* the reference (`solve_reference`: full O(N²) energy per proposal, Python loop, restarts in sequence),
  replaying the same pre-drawn random streams as `solve`, so both must reach the same best energy (and,
  once, drawing its randoms step by step like the official code, to show that costs the same),
* `solve` with the numba backend (when installed) and with the numpy [R, N]-batch backend,
all with the official schedule (10000 proposals × 20 restarts, T 0.5 → 1e-4), and prints the times, the
speed-up and the best energies. Timings on a shared machine are noisy.

    .venv/bin/python bench/qubo.py [--views 4] [--height 96] [--width 128] [--sets 3] [--seeds 2] [--ref-restarts 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from panst3r import qubo


def synthetic_masks(num_queries: int, views: int, h: int, w: int, seed: int) -> list[torch.Tensor]:
    """V × [Q, H, W] soft masks: ~Q/5 objects, each seen by several noisy / partial / merged queries."""
    rng = np.random.default_rng(seed)
    n_obj = max(2, num_queries // 5)
    cy, cx = rng.uniform(0, h, n_obj), rng.uniform(0, w, n_obj)
    ry, rx = rng.uniform(0.05, 0.3, n_obj) * h, rng.uniform(0.05, 0.3, n_obj) * w
    drift = rng.normal(0, 0.05, (n_obj, 2)) * (h, w)
    kind = rng.choice(4, num_queries, p=[0.55, 0.15, 0.15, 0.15])  # dup, partial, merged, near-empty
    obj = rng.integers(0, n_obj, num_queries)
    obj2 = rng.integers(0, n_obj, num_queries)
    sharp = rng.uniform(3, 10, num_queries)
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    out = []
    for v in range(views):
        oy, ox = cy + v * drift[:, 0], cx + v * drift[:, 1]
        d = np.sqrt(((yy[None] - oy[:, None, None]) / ry[:, None, None]) ** 2
                    + ((xx[None] - ox[:, None, None]) / rx[:, None, None]) ** 2)  # [O, H, W]
        logit = sharp[:, None, None] * (1 - d[obj])  # [Q, H, W]
        part = kind == 1
        logit[part] -= sharp[part, None, None] * (xx[None] > ox[obj[part], None, None])  # half of the object
        merged = kind == 2
        logit[merged] = np.maximum(logit[merged], sharp[merged, None, None] * (1 - d[obj2[merged]]))
        logit[kind == 3] = -6.0
        logit += rng.normal(0, 0.8, logit.shape)
        out.append(torch.from_numpy(1 / (1 + np.exp(-logit))).float())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--sets", type=int, default=3, help="synthetic mask sets")
    ap.add_argument("--seeds", type=int, default=2, help="annealer seeds per mask set (each solver)")
    ap.add_argument("--ref-restarts", type=int, default=20,
                    help="restarts timed for the reference; < 20 scales its time linearly to 20")
    a = ap.parse_args()
    sch = dict(qubo.DEFAULT_SCHEDULE)
    print(f"QUBO annealer: {a.queries} queries, {a.views} views at {a.height}x{a.width}, "
          f"{sch['num_iters']} proposals x {sch['num_redo']} restarts, T {sch['t0']} -> {sch['t_end']}")
    print(f"torch threads {torch.get_num_threads()}; numba backend {'available' if qubo.has_numba() else 'MISSING'}; "
          "shared machine: timings are noisy")
    if qubo.has_numba():  # compile outside the timings
        t = time.perf_counter()
        qubo.solve(np.eye(3), num_iters=10, num_redo=1, backend="numba")
        print(f"numba compile / cache load: {time.perf_counter() - t:.2f} s (excluded below)")
    scale = sch["num_redo"] / a.ref_restarts
    if scale != 1:
        print(f"NOTE: reference timed on {a.ref_restarts} of {sch['num_redo']} restarts, time scaled x{scale:.2f}; "
              "its best energy is over those restarts only")
    rows = []
    for s in range(a.sets):
        masks = synthetic_masks(a.queries, a.views, a.height, a.width, seed=100 + s)
        t = time.perf_counter()
        Q = qubo.build_qubo(masks)
        t_build = time.perf_counter() - t
        res = {"build": t_build, "ref": [], "numba": [], "numpy": []}
        for seed in range(a.seeds):
            t = time.perf_counter()
            streams = qubo.anneal_streams(a.queries, seed, **{**sch, "num_redo": a.ref_restarts})
            _x, e = qubo.solve_reference(Q, seed=seed, streams=streams, return_energy=True, num_redo=a.ref_restarts)
            res["ref"].append(((time.perf_counter() - t) * scale, e))
            for backend in (["numba"] if qubo.has_numba() else []) + ["numpy"]:
                t = time.perf_counter()
                _x, e = qubo.solve(Q, seed=seed, backend=backend, return_energy=True)
                res[backend].append((time.perf_counter() - t, e))
        if s == 0:  # the reference drawing its randoms step by step, exactly like the official loop
            t = time.perf_counter()
            _x, e = qubo.solve_reference(Q, seed=0, return_energy=True, num_redo=a.ref_restarts)
            print(f"reference drawing step by step (official style), set 0: {(time.perf_counter() - t) * scale:.3f} s, "
                  f"E {e:+.5f} (another random stream, so another local minimum)")
        rows.append(res)
        line = f"set {s}: build_qubo {t_build:5.2f} s"
        for name in ("ref", "numba", "numpy"):
            if res[name]:
                ts, es = np.array(res[name]).T
                line += f" | {name} {np.median(ts):7.4f} s E " + " ".join(f"{v:+.5f}" for v in es)
        print(line)
    ref_t = float(np.median([t for r in rows for t, _ in r["ref"]]))
    ref_e = np.array([e for r in rows for _, e in r["ref"]])
    print(f"summary over {a.sets} mask sets x {a.seeds} seeds; the reference replays the same random streams "
          "(`anneal_streams`), so equal energies mean the same annealing trajectory:")
    for backend in ("numba", "numpy"):
        if not rows[0][backend]:
            continue
        bt = float(np.median([t for r in rows for t, _ in r[backend]]))
        be = np.array([e for r in rows for _, e in r[backend]])
        d = be - ref_e
        verdict = "equal or lower" if d.max() <= 1e-9 else "HIGHER"
        print(f"  {backend:5s}: median {bt:.4f} s vs reference {ref_t:.3f} s -> speed-up x{ref_t / bt:.0f}; "
              f"best energy minus reference's: max {d.max():+.1e} ({verdict})")


if __name__ == "__main__":
    main()
