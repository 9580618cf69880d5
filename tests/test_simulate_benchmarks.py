"""Tests of the benchmark forward problems (Langevin, steady heat) and the noise model."""
import numpy as np
import pytest

from chromflow.errors import InputError
from chromflow.simulate import add_noise, langevin_sine_solution, langevin_solution, sine_rate, steady_heat


def test_langevin_closed_form_solves_the_ode():
    t = np.linspace(0, 2, 4001)
    a, b, w, u0 = 0.7, 1.3, 5.0, 0.4
    u = langevin_sine_solution(t, a, b, w, u0)
    assert u[0] == pytest.approx(u0, abs=1e-15)
    # central differences of the closed form satisfy u' = u + lambda to O(dt^2)
    du = (u[2:] - u[:-2]) / (t[2] - t[0])
    lam = sine_rate(a, b, w)(t[1:-1])
    np.testing.assert_allclose(du, u[1:-1] + lam, rtol=1e-5, atol=1e-5)


def test_langevin_numeric_matches_closed_form():
    t = np.linspace(0, 1.5, 301)
    exact = langevin_sine_solution(t, 1.0, 0.5, 2 * np.pi, 0.2)
    np.testing.assert_allclose(langevin_solution(t, sine_rate(1.0, 0.5, 2 * np.pi), 0.2), exact, rtol=1e-10)
    # from samples (piecewise linear rate): second order in the sampling step
    errs = []
    for n in (51, 101, 201):
        ts = np.linspace(0, 1.5, n)
        errs.append(np.abs(langevin_solution(ts, sine_rate(1.0, 0.5, 2 * np.pi)(ts), 0.2)
                           - langevin_sine_solution(ts, 1.0, 0.5, 2 * np.pi, 0.2)).max())
    assert 3.5 < errs[0] / errs[1] < 4.5 and 3.5 < errs[1] / errs[2] < 4.5
    # a linear rate is represented exactly by the sampled path
    ts = np.linspace(0, 1, 7)
    exact_linear = langevin_solution(ts, lambda s: 2 - s, 0.0)
    np.testing.assert_allclose(langevin_solution(ts, 2 - ts, 0.0), exact_linear, rtol=1e-10)
    with pytest.raises(InputError):
        langevin_solution(np.array([0, 1, 0.5]), 1.0 + np.zeros(3))


def manufactured(n):
    s = np.linspace(0, 1, n)
    y, x = np.meshgrid(s, s, indexing="ij")
    u = np.sin(np.pi * x) * np.sin(2 * np.pi * y) * np.exp(x)
    # lap u by hand: u = e^x sin(pi x) sin(2 pi y)
    u_xx = np.exp(x) * ((1 - np.pi ** 2) * np.sin(np.pi * x) + 2 * np.pi * np.cos(np.pi * x)) * np.sin(2 * np.pi * y)
    u_yy = -4 * np.pi ** 2 * u
    rate = 1 + 0.5 * np.cos(2 * x) * y ** 2
    source = -rate * (u_xx + u_yy)
    return rate, source, u, s[1] - s[0]


def test_steady_heat_manufactured_solution_second_order():
    errs = []
    for n in (17, 33, 65):
        rate, source, u, h = manufactured(n)
        sol = steady_heat(rate, source, h)
        assert np.all(sol[0] == 0) and np.all(sol[:, -1] == 0)
        errs.append(np.abs(sol - u).max())
    assert errs[-1] < 2e-3
    assert 3.5 < errs[0] / errs[1] < 4.5 and 3.5 < errs[1] / errs[2] < 4.5
    with pytest.raises(InputError):
        steady_heat(-np.ones((5, 5)), np.ones((5, 5)))


def test_add_noise_level_and_seed():
    field = np.random.default_rng(0).uniform(0, 3, (200, 200))
    noisy = add_noise(field, 0.05, seed=1)
    assert abs(np.std(noisy - field) / np.std(field) - 0.05) < 0.002
    assert abs(np.mean(noisy - field)) < 0.002
    np.testing.assert_array_equal(noisy, add_noise(field, 0.05, seed=1))
    assert not np.array_equal(noisy, add_noise(field, 0.05, seed=2))
    np.testing.assert_array_equal(add_noise(field, 0.0), field)
    with_nan = field.copy()
    with_nan[0, 0] = np.nan
    out = add_noise(with_nan, 0.1)
    assert np.isnan(out[0, 0]) and np.isfinite(out[1:]).all()
