"""Tests of the chromatin forward solver against known answers."""
import numpy as np
import pytest

from chromflow.errors import InputError
from chromflow.physics.chromatin import ChromatinModel, bulk_potential
from chromflow.simulate import (chromatin_residual, chromatin_steady_state, masked_laplacian,
                                simulate_chromatin)


def disc_mask(n, radius):
    y, x = np.mgrid[:n, :n]
    c = (n - 1) / 2
    return (y - c) ** 2 + (x - c) ** 2 <= radius ** 2


def smooth_fields(n, spacing):
    c = (np.arange(n) + 0.5) * spacing
    y, x = np.meshgrid(c, c, indexing="ij")
    rate = 1.0 + 0.5 * np.sin(x / 0.3) * np.cos(y / 0.4)
    total = 0.5 + 0.1 * np.cos(x / 0.5)
    return rate, total


def independent_residual(phi_h, phi_e, rate, mask, h, model=ChromatinModel()):
    """Steady residual from face fluxes with np.pad, written apart from the solver's sparse matrix."""
    def lap(u):
        u = np.where(mask, u, 0.0)
        up, mp = np.pad(u, 1), np.pad(mask, 1)
        out = np.zeros_like(u)
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nb = up[1 + dy:1 + dy + u.shape[0], 1 + dx:1 + dx + u.shape[1]]
            open_face = mp[1 + dy:1 + dy + u.shape[0], 1 + dx:1 + dx + u.shape[1]] & mask
            out += np.where(open_face, nb - u, 0.0)
        return out / h ** 2
    d = phi_h - phi_e
    mu = -phi_e + bulk_potential(phi_h, model.phi_max) - model.length_um ** 2 * lap(d)
    return np.where(mask, lap(mu) + 2 * (rate * phi_e - phi_h), 0.0)


def test_laplacian_is_symmetric_and_conservative():
    mask = disc_mask(20, 8)
    L = masked_laplacian(mask, 0.1)
    assert abs(L - L.T).max() == 0
    np.testing.assert_allclose(np.asarray(L.sum(axis=0)).ravel(), 0, atol=1e-9)
    # exact on a quadratic in the interior: lap(x^2 + y^2) = 4 (h = 1)
    y, x = np.nonzero(mask)
    u = (x ** 2 + y ** 2).astype(float)
    Lu = masked_laplacian(mask) @ u
    interior = np.array([mask[a - 1, b] and mask[a + 1, b] and mask[a, b - 1] and mask[a, b + 1] for a, b in zip(y, x)])
    np.testing.assert_allclose(Lu[interior], 4.0)


def test_uniform_rate_gives_analytic_uniform_state():
    for lam, tot in ((1.5, 0.5), (0.4, 0.3), (3.0, 0.7)):
        mask = disc_mask(24, 10)
        h, e, info = chromatin_steady_state(np.full((24, 24), lam), total=tot, mask=mask, return_info=True)
        np.testing.assert_allclose(h[mask], tot * lam / (1 + lam), atol=1e-12)
        np.testing.assert_allclose(e[mask], tot / (1 + lam), atol=1e-12)
        assert np.all(h[~mask] == 0) and np.all(e[~mask] == 0)
        # the analytic state makes the reaction vanish
        np.testing.assert_allclose(2 * (lam * e[mask] - h[mask]), 0, atol=1e-12)


def test_uniform_state_is_reached_from_a_perturbed_start():
    rng = np.random.default_rng(1)
    d0 = 0.05 * rng.standard_normal((20, 20))
    h, e, info = chromatin_steady_state(np.full((20, 20), 2.0), total=0.45, phi_d0=d0, return_info=True)
    assert info["converged"] and info["steps"] > 0
    np.testing.assert_allclose(h, 0.3, atol=1e-10)
    np.testing.assert_allclose(e, 0.15, atol=1e-10)


def test_steady_state_has_small_independent_residual():
    n, h = 48, 0.05
    mask = disc_mask(n, 21)
    rate, total = smooth_fields(n, h)
    phi_h, phi_e, info = chromatin_steady_state(rate, total, mask, spacing_um=h, return_info=True)
    assert info["converged"]
    assert info["residual"] <= 1e-10
    r = independent_residual(phi_h, phi_e, rate, mask, h)
    assert np.abs(r).max() < 1e-9
    # the solver's own residual function agrees with the independent one
    np.testing.assert_allclose(chromatin_residual(phi_h, phi_e, rate, mask, h), r, atol=1e-9)
    # and the field is not trivially the local equilibrium: diffusion mattered
    local = total * (rate - 1) / (rate + 1)
    assert np.abs((phi_h - phi_e) - local)[mask].max() > 1e-3
    # residual check is sensitive: a wrong rate breaks it
    assert np.abs(independent_residual(phi_h, phi_e, rate * 1.01, mask, h)).max() > 1e-4


def test_second_order_convergence_under_grid_refinement():
    # a fixed continuous problem on a 0.4 um box; cells resolve l = 0.03 um from N = 24 on
    side = 0.4

    def solve(n):
        h = side / n
        c = (np.arange(n) + 0.5) * h
        y, x = np.meshgrid(c, c, indexing="ij")
        rate = 1 + 0.6 * np.cos(np.pi * x / side) * np.cos(np.pi * y / side) + 0.3 * np.sin(2 * np.pi * y / side)
        total = 0.5 + 0.1 * np.cos(np.pi * x / side) * np.sin(np.pi * y / side)
        return chromatin_steady_state(rate, total, spacing_um=h)[0]

    def coarsen(u):  # fine cell averages -> coarse cell centres, O(h^2)
        return 0.25 * (u[::2, ::2] + u[1::2, ::2] + u[::2, 1::2] + u[1::2, 1::2])

    u12, u24, u48 = solve(12), solve(24), solve(48)
    e1 = np.abs(u12 - coarsen(u24)).max()
    e2 = np.abs(u24 - coarsen(u48)).max()
    assert e2 < e1
    assert 3.3 < e1 / e2 < 4.7


def test_conservation_without_reaction():
    n, h = 40, 0.05
    mask = disc_mask(n, 17)
    rng = np.random.default_rng(3)
    d0 = 0.1 * rng.standard_normal((n, n))
    rate, total = smooth_fields(n, h)
    phi_h, phi_e, info = simulate_chromatin(rate, total, mask, spacing_um=h, phi_d0=d0, t_end=0.05,
                                            dt=0.001, reaction=False, return_info=True)
    integral = info["integral"]
    scale = np.abs(d0[mask]).sum() * h * h
    assert np.abs(integral - integral[0]).max() <= 1e-12 * scale
    # the field did evolve (so conservation is not trivial)
    assert np.abs((phi_h - phi_e) - np.where(mask, d0, 0)).max() > 1e-2
    # with the reaction on, the integral is not conserved
    _, _, info_r = simulate_chromatin(rate, total, mask, spacing_um=h, phi_d0=d0, t_end=0.05, dt=0.001,
                                      return_info=True)
    assert abs(info_r["integral"][-1] - info_r["integral"][0]) > 1e-4


def test_time_dependent_run_reaches_steady_state():
    n, h = 24, 0.05
    mask = disc_mask(n, 10)
    rate, total = smooth_fields(n, h)
    hs, es = chromatin_steady_state(rate, total, mask, spacing_um=h)
    ht, et = simulate_chromatin(rate, total, mask, spacing_um=h, phi_d0=0.0, t_end=40.0, dt=0.2)
    np.testing.assert_allclose(ht, hs, atol=1e-8)
    np.testing.assert_allclose(et, es, atol=1e-8)


def test_time_stepping_converges_first_order_in_dt():
    n, h = 16, 0.05
    rate, total = smooth_fields(n, h)
    d0 = 0.1 * np.random.default_rng(0).standard_normal((n, n))
    run = lambda dt: simulate_chromatin(rate, total, spacing_um=h, phi_d0=d0, t_end=0.1, dt=dt)[0]
    ref = run(0.0005)
    e1 = np.abs(run(0.004) - ref).max()
    e2 = np.abs(run(0.002) - ref).max()
    assert 1.6 < e1 / e2 < 2.6


def test_steady_state_ignores_values_outside_the_mask():
    n, h = 40, 0.05
    mask = disc_mask(n, 16)
    rate, total = smooth_fields(n, h)
    a = chromatin_steady_state(rate, total, mask, spacing_um=h)
    rate2, total2 = rate.copy(), total.copy()
    rate2[~mask] = np.nan
    total2[~mask] = 7.0
    b = chromatin_steady_state(rate2, total2, mask, spacing_um=h)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    # the same disc embedded in a larger box gives the same fields
    big_mask = np.pad(mask, 5)
    c = chromatin_steady_state(np.pad(rate, 5, constant_values=9.0), np.pad(total, 5, constant_values=0.1),
                               big_mask, spacing_um=h)
    np.testing.assert_allclose(c[0][5:-5, 5:-5], a[0], atol=1e-12)


def test_bad_input_raises_input_error():
    with pytest.raises(InputError, match="rate"):
        chromatin_steady_state(np.full((8, 8), -1.0))
    with pytest.raises(InputError, match="mask"):
        chromatin_steady_state(np.ones((8, 8)), mask=np.zeros((8, 8), bool))
    with pytest.raises(InputError, match="total"):
        chromatin_steady_state(np.ones((8, 8)), total=1.5)
    with pytest.raises(InputError, match="shape"):
        chromatin_steady_state(np.ones((8, 8)), mask=np.ones((4, 4), bool))


def test_model_shortcuts_progress_and_cancel():
    from chromflow.errors import CancelledError
    n, h = 24, 0.05
    rate, total = smooth_fields(n, h)
    a = chromatin_steady_state(rate, total, spacing_um=h, model=ChromatinModel(0.6, 0.05))
    b = chromatin_steady_state(rate, total, spacing_um=h, phi_max=0.6, length=0.05)
    np.testing.assert_array_equal(a[0], b[0])
    c = chromatin_steady_state(rate, total, spacing_um=h)
    assert np.abs(a[0] - c[0]).max() > 1e-4  # the parameters matter
    calls = []
    chromatin_steady_state(rate, total, spacing_um=h, progress=lambda d, t, m: calls.append(d))
    assert calls and calls == sorted(calls)
    with pytest.raises(CancelledError):
        chromatin_steady_state(rate, total, spacing_um=h, cancel=lambda: True)


def test_physics_residual_formula_recovers_the_rate_from_simulated_fields():
    """The inverse side's closed form (chain-rule expansion) applied with finite differences to the
    forward solution gives back lambda, to O(h^2), away from the no-flux boundary layer."""
    from chromflow.physics.chromatin import FieldDerivatives, rate_from_fields
    side = 0.4

    def recovered_error(n):
        h = side / n
        c = (np.arange(n) + 0.5) * h
        y, x = np.meshgrid(c, c, indexing="ij")
        rate = 1 + 0.6 * np.cos(np.pi * x / side) * np.cos(np.pi * y / side) + 0.3 * np.sin(2 * np.pi * y / side)
        total = 0.5 + 0.1 * np.cos(np.pi * x / side) * np.sin(np.pi * y / side)
        phi_h, phi_e = chromatin_steady_state(rate, total, spacing_um=h)

        def derivatives(u):
            dy, dx = np.gradient(u, h)
            lap = np.zeros_like(u)
            lap[1:-1, 1:-1] = (u[2:, 1:-1] + u[:-2, 1:-1] + u[1:-1, 2:] + u[1:-1, :-2] - 4 * u[1:-1, 1:-1]) / h ** 2
            bilap = np.zeros_like(u)
            bilap[2:-2, 2:-2] = (lap[3:-1, 2:-2] + lap[1:-3, 2:-2] + lap[2:-2, 3:-1] + lap[2:-2, 1:-3]
                                 - 4 * lap[2:-2, 2:-2]) / h ** 2
            return FieldDerivatives(u, dy, dx, lap, bilap)

        est = rate_from_fields(derivatives(phi_h), derivatives(phi_e))
        centre = (np.abs(y - side / 2) < side / 4) & (np.abs(x - side / 2) < side / 4)
        return np.abs(est - rate)[centre].max()

    e32, e64 = recovered_error(32), recovered_error(64)
    assert e64 < 3e-3  # lambda is O(1): 0.3 % error
    assert 3.0 < e32 / e64 < 5.0


def test_march_only_and_newton_only_agree():
    n, h = 32, 0.05
    mask = disc_mask(n, 14)
    rate, total = smooth_fields(n, h)
    march = chromatin_steady_state(rate, total, mask, spacing_um=h, newton=False, tol=1e-11, return_info=True)
    newton = chromatin_steady_state(rate, total, mask, spacing_um=h, max_steps=0, return_info=True)
    assert march[2]["newton_steps"] == 0 and march[2]["converged"] and march[2]["steps"] > 5
    assert newton[2]["steps"] == 0 and newton[2]["converged"]
    assert newton[2]["newton_steps"] <= 6  # quadratic convergence from the local equilibrium
    np.testing.assert_allclose(march[0], newton[0], atol=1e-11)
