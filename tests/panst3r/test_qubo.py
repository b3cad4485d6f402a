"""Seeded QUBO annealer and QUBO weights: optimum vs brute force, determinism, backends vs reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from panst3r import qubo


def _random_qubo(n, seed):
    """Mask-selection-like QUBO: negative diagonal (areas), non-negative overlaps off the diagonal."""
    rng = np.random.default_rng(seed)
    a = rng.random(n) * 0.3
    o = rng.random((n, n)) * 0.05 * (rng.random((n, n)) < 0.4)
    o = np.triu(o, 1)
    Q = o + o.T
    np.fill_diagonal(Q, -a)
    return Q


def _brute_force(Q, lam):
    n = Q.shape[0]
    xs = np.array(list(itertools.product((0, 1), repeat=n)), dtype=np.int8)
    e = qubo.energy(Q, xs, lam)
    return xs[int(np.argmin(e))].astype(bool), float(e.min())


@pytest.mark.parametrize("seed", range(4))
def test_solve_finds_brute_force_optimum(seed):
    Q = _random_qubo(10, seed)
    x_bf, e_bf = _brute_force(Q, 1e-3)
    x, e = qubo.solve(Q, 1e-3, seed=seed, return_energy=True)
    assert x.dtype == bool and x.shape == (10,)
    assert e == pytest.approx(e_bf, abs=1e-12)
    np.testing.assert_array_equal(x, x_bf)
    assert qubo.energy(Q, x, 1e-3) == pytest.approx(e, abs=1e-12)


def test_energy_formula_by_hand():
    Q = np.array([[-1.0, 0.5], [0.5, -2.0]])
    assert qubo.energy(Q, np.array([1, 1]), 0.1) == pytest.approx(-1 - 2 + 1.0 + 0.1)
    assert qubo.energy(Q, np.array([0, 1]), 0.1) == pytest.approx(-2 + 0.05)
    np.testing.assert_allclose(qubo.energy(Q, np.array([[0, 0], [1, 0]]), 0.1), [0.0, -1 + 0.05])


def test_lambda_breaks_ties_toward_fewer_masks():
    """Two identical masks: selecting both gains nothing over one, λ makes one strictly better."""
    a, o = 0.4, 0.4
    Q = np.array([[-a, o], [o, -a]])
    x = qubo.solve(Q, 1e-3, seed=0, num_iters=500, num_redo=4)
    assert x.sum() == 1


def test_deterministic_for_a_seed_and_seed_matters():
    Q = _random_qubo(60, 11)
    a = qubo.solve(Q, seed=5, num_iters=3000, num_redo=6)
    b = qubo.solve(Q, seed=5, num_iters=3000, num_redo=6)
    np.testing.assert_array_equal(a, b)
    s5, s6 = qubo.anneal_streams(60, 5, num_iters=50, num_redo=3), qubo.anneal_streams(60, 6, num_iters=50, num_redo=3)
    assert not np.array_equal(s5[1], s6[1])
    # the global numpy RNG is neither used nor disturbed
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    qubo.solve(Q, seed=5, num_iters=200, num_redo=2)
    assert np.random.random() == before


def test_streams_follow_the_official_schedule():
    init, flips, thr = qubo.anneal_streams(7, 0, num_iters=10000, num_redo=20)
    assert init.shape == (20, 7) and set(np.unique(init)) <= {0, 1}
    assert flips.shape == (10000, 20) and flips.min() >= 0 and flips.max() == 6
    temps = qubo._schedule(10000, 0.5, 1e-4)
    assert temps[0] == 0.5 and temps[-1] == pytest.approx(1e-4 / 0.999148, rel=1e-4)
    assert temps[1] / temps[0] == pytest.approx(0.999148, abs=1e-6)
    assert np.all(thr >= 0)


def _backend_runs(Q, lam, seed, **sch):
    n = Q.shape[0]
    S = np.ascontiguousarray((Q + Q.T) / 2)
    diag = np.ascontiguousarray(np.diag(Q).copy())
    init, flips, thr = qubo.anneal_streams(n, seed, **sch)
    e0 = qubo.energy(Q, init, lam)
    return S, diag, lam / n, init, flips, thr, e0


def test_numba_and_numpy_backends_agree_restart_by_restart():
    if not qubo.has_numba():
        pytest.skip("numba not installed: only the numpy backend is available")
    Q = _random_qubo(80, 3)
    args = _backend_runs(Q, 1e-3, 9, num_iters=4000, num_redo=7)
    bx_np, be_np = qubo._anneal_numpy(*args)
    bx_nb, be_nb = qubo._numba_kernel()(*args)
    np.testing.assert_array_equal(bx_np, bx_nb)
    np.testing.assert_array_equal(be_np, be_nb)
    np.testing.assert_allclose(be_np, qubo.energy(Q, bx_np, 1e-3), atol=1e-10)  # tracked = exact energy


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_fast_solver_equals_official_style_reference_on_same_streams(backend):
    if backend == "numba" and not qubo.has_numba():
        pytest.skip("numba not installed")
    Q = _random_qubo(25, 4)
    # a non-symmetric Q with the same quadratic form must give the same answer
    Qa = np.triu(Q) * 2 - np.diag(np.diag(Q))
    sch = dict(num_iters=1500, num_redo=4)
    streams = qubo.anneal_streams(25, 2, **sch)
    x_ref, e_ref = qubo.solve_reference(Q, 1e-3, streams=streams, return_energy=True, **sch)
    x, e = qubo.solve(Qa, 1e-3, seed=2, backend=backend, return_energy=True, **sch)
    np.testing.assert_array_equal(x, x_ref)
    assert e == pytest.approx(e_ref, abs=1e-12)


def test_solve_rejects_bad_arguments():
    with pytest.raises(TypeError, match="unknown schedule"):
        qubo.solve(np.eye(3), num_itres=5)
    with pytest.raises(ValueError, match="square"):
        qubo.solve(np.ones((2, 3)))
    assert qubo.solve(np.zeros((0, 0))).shape == (0,)


def test_build_qubo_by_hand_and_streamed_blocks():
    # two views of 2x2 pixels, three masks
    v0 = torch.tensor([[[1.0, 0.5], [0.0, 0.0]], [[0.5, 0.5], [0.0, 0.25]], [[0.0, 0.0], [0.0, 0.0]]])
    v1 = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.5, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    Q = qubo.build_qubo([v0, v1], penalty=1.0)
    norm = 4 * 2  # H·W · V
    area = np.array([3.5, 1.75, 1.0]) / norm
    o01 = (0.5 + 0.5 + 0.5) / norm
    o02 = 1.0 / norm
    o12 = 0.0
    want = np.array([[-area[0], o01, o02], [o01, -area[1], o12], [o02, o12, -area[2]]])
    np.testing.assert_allclose(Q, want, atol=1e-15)
    # penalty scales the overlap by (1+penalty)/2; cutoff zeroes small overlaps; padded size normalises
    Qp = qubo.build_qubo([v0, v1], penalty=3.0, cutoff=0.08, pad_hw=(2, 4))
    np.testing.assert_allclose(np.diag(Qp), -area / 2)
    assert Qp[0, 1] == pytest.approx(2 * o01 / 2) and Qp[0, 2] == 0.0  # normalised o02 = 1/16 <= cutoff < o01 = 1.5/16
    # bounded-memory blocks give the same sums as one big minimum
    g = torch.Generator().manual_seed(0)
    m = torch.rand(37, 300, generator=g)
    out = torch.zeros(37, 37, dtype=torch.float64)
    qubo._pairwise_min_sum(m, out, rows=8, pix=64)  # several row and pixel blocks
    want = torch.minimum(m[:, None].double(), m[None].double()).sum(-1)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-5)
