"""Tests of shapes, random fields, localization sampling and the simulated nucleus."""
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from chromflow.errors import InputError
from chromflow.simulate import (chromatin_residual, nucleus_mask, random_rate_map, random_total,
                                sample_localizations, simulate_nucleus, smooth_random_field)


def histogram(df, shape, pixel_size, origin=(0.0, 0.0)):
    edges_y = origin[0] - pixel_size / 2 + pixel_size * np.arange(shape[0] + 1)
    edges_x = origin[1] - pixel_size / 2 + pixel_size * np.arange(shape[1] + 1)
    return np.histogram2d(df["y"], df["x"], bins=(edges_y, edges_x))[0]


# ---- shapes -------------------------------------------------------------------------------------

def test_ellipse_area_orientation_and_roughness():
    m = nucleus_mask((101, 101), 20, 35, roughness=0.0)
    assert abs(m.sum() / (np.pi * 20 * 35) - 1) < 0.02
    ys, xs = np.nonzero(m)
    assert np.ptp(xs) > np.ptp(ys)  # radius_x is along x
    turned = nucleus_mask((101, 101), 20, 35, angle=np.pi / 2, roughness=0.0)
    assert (turned != m.T).sum() <= 4  # a quarter turn swaps the axes (up to pixels on the outline)
    rough = nucleus_mask((101, 101), 20, 35, roughness=0.1, seed=4)
    assert rough.sum() != m.sum()
    assert abs(rough.sum() / m.sum() - 1) < 0.2
    assert ndimage.label(rough)[1] == 1
    np.testing.assert_array_equal(rough, nucleus_mask((101, 101), 20, 35, roughness=0.1, seed=4))
    assert not np.array_equal(rough, nucleus_mask((101, 101), 20, 35, roughness=0.1, seed=5))


def test_smooth_random_field_statistics_and_correlation_length():
    length = 4.0
    g = smooth_random_field((256, 256), length, seed=0)
    assert abs(g.mean()) < 1e-12 and abs(g.std() - 1) < 1e-12
    # Gaussian filter of width L on white noise: correlation exp(-r^2 / (4 L^2))
    for lag in (2, 4, 8):
        c = np.mean(g[:, lag:] * g[:, :-lag]) / np.mean(g * g)
        assert abs(c - np.exp(-lag ** 2 / (4 * length ** 2))) < 0.06
    np.testing.assert_array_equal(g, smooth_random_field((256, 256), length, seed=0))


def test_random_rate_and_total_maps():
    lam = random_rate_map((256, 256), mean=2.0, amplitude=0.4, length_cells=3.0, seed=1)
    assert lam.min() > 0
    assert abs(np.std(np.log(lam)) - 0.4) < 1e-9
    assert abs(lam.mean() / 2.0 - 1) < 0.05
    tot = random_total((128, 128), mean=0.5, amplitude=0.5, seed=2, low=0.1, high=0.8)
    assert tot.min() >= 0.1 and tot.max() <= 0.8 and (tot == 0.1).any()
    with pytest.raises(InputError):
        random_rate_map((16, 16), mean=-1)


# ---- localizations ------------------------------------------------------------------------------

def test_counts_frames_columns_and_seed():
    density = np.ones((40, 40))
    df = sample_localizations(density, 50.0, 5000, blinks=4.0, background=0.1, frames=300, seed=7)
    assert len(df) == 5000
    assert list(df.columns[:7]) == ["id", "frame", "x", "y", "sigma", "photons", "uncertainty"]
    assert df["id"].tolist() == list(range(1, 5001))
    assert df["frame"].between(1, 300).all() and df["frame"].is_monotonic_increasing
    assert (df["emitter"] == -1).sum() == 500
    per_emitter = df[df["emitter"] >= 0].groupby("emitter").size()
    assert abs(per_emitter.mean() - 4.0) < 0.3
    again = sample_localizations(density, 50.0, 5000, blinks=4.0, background=0.1, frames=300, seed=7)
    pd.testing.assert_frame_equal(df, again)
    other = sample_localizations(density, 50.0, 5000, blinks=4.0, background=0.1, frames=300, seed=8)
    assert not np.allclose(df["x"], other["x"])


def test_precision_distribution_and_displacement_noise():
    # all emitters in one 1 nm pixel at (1000, 2000): displacements are the localization noise
    density = np.zeros((3, 3))
    density[1, 1] = 1.0
    df = sample_localizations(density, 1.0, 20000, precision=(12.0, 4.0), background=0.0,
                              psf_sigma=120.0, seed=3, origin=(999.0, 1999.0))
    assert abs(df["uncertainty"].mean() - 12.0) < 0.2
    assert abs(df["uncertainty"].std() - 4.0) < 0.2
    np.testing.assert_allclose(df["uncertainty"], df["sigma"] / np.sqrt(df["photons"]))
    assert abs(df["sigma"].mean() - 120.0) < 1.0
    zx = (df["x"] - 2000.0) / df["uncertainty"]
    zy = (df["y"] - 1000.0) / df["uncertainty"]
    for z in (zx, zy):  # pixel jitter (< 0.5 nm) is small against 12 nm
        assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03


def test_rendered_density_follows_the_input_density():
    y, x = np.mgrid[:48, :48]
    density = np.exp(-((x - 30) ** 2 + (y - 20) ** 2) / 80.0) + 0.3 * (x < 10)
    df = sample_localizations(density, 100.0, 120000, precision=(10.0, 2.0), background=0.0, seed=1)
    hist = histogram(df, density.shape, 100.0)
    assert np.corrcoef(hist.ravel(), density.ravel())[0, 1] > 0.95
    # counts per pixel: unbiased, and over-dispersed by blinking (compound Poisson: the variance is
    # E[K^2]/E[K] = 5 times the mean for geometric K with mean 3; less where blinks straddle pixels)
    expected = density / density.sum() * len(df)
    big = expected > 50
    z = (hist[big] - expected[big]) / np.sqrt(expected[big])
    assert abs(z.mean()) < 0.3
    assert 1.7 < z.std() < 2.5
    no_blink = sample_localizations(density, 100.0, 120000, precision=(10.0, 2.0), blinks=1.0,
                                    background=0.0, seed=1)
    z1 = (histogram(no_blink, density.shape, 100.0)[big] - expected[big]) / np.sqrt(expected[big])
    assert 0.85 < z1.std() < 1.15
    # zero density and no background: (almost) nothing lands far from the support
    far = (density < 1e-6) & (np.abs(x - 30) > 20)
    assert hist[far].sum() == 0


def test_background_is_uniform_over_the_field():
    density = np.zeros((50, 50))
    density[20:30, 20:30] = 1.0
    df = sample_localizations(density, 20.0, 20000, background=0.5, precision=(1.0, 0.1), seed=2)
    bg = df[df["emitter"] == -1]
    assert len(bg) == 10000
    assert bg["x"].between(-20, 1000).all() and bg["y"].between(-20, 1000).all()
    assert bg["x"].min() < 0 and bg["x"].max() > 980  # the whole field, edge to edge
    outside = histogram(df, density.shape, 20.0)[density == 0]
    # everything outside the square is background, spread evenly: 10000 * 2400 / 2500 expected
    assert abs(outside.sum() / (10000 * 2400 / 2500) - 1) < 0.03


def test_two_channels():
    y, x = np.mgrid[:32, :32]
    a = (x < 16).astype(float) + 0.05
    b = (x >= 16).astype(float) + 0.05
    df = sample_localizations([a, b], 50.0, (30000, 10000), seed=0, background=0.0)
    assert df.groupby("channel").size().tolist() == [30000, 10000]
    for ch, dens in ((0, a), (1, b)):
        hist = histogram(df[df["channel"] == ch], a.shape, 50.0)
        assert np.corrcoef(hist.ravel(), dens.ravel())[0, 1] > 0.75
        left = hist[:, :16].sum() / hist.sum()
        assert abs(left - dens[:, :16].sum() / dens.sum()) < 0.02


def test_bad_localization_input():
    with pytest.raises(InputError, match="density"):
        sample_localizations(-np.ones((4, 4)), 10.0, 10)
    with pytest.raises(InputError, match="positive pixel"):
        sample_localizations(np.zeros((4, 4)), 10.0, 10)
    with pytest.raises(InputError, match="channels"):
        sample_localizations([np.ones((4, 4))] * 2, 10.0, (1, 2, 3))
    with pytest.raises(InputError, match="blinks"):
        sample_localizations(np.ones((4, 4)), 10.0, 10, blinks=0.5)


# ---- simulated nucleus --------------------------------------------------------------------------

def test_simulate_nucleus_ground_truth_is_consistent():
    sim = simulate_nucleus(grid=48, nucleus_um=8.0, n_localizations=(20000, 10000), seed=3)
    m = sim.mask
    assert sim.spacing_nm == pytest.approx(1.25 * 8000 / 48)
    assert np.isnan(sim.rate[~m]).all() and np.all(sim.rate[m] > 0)
    np.testing.assert_allclose(sim.phi_h + sim.phi_e, sim.total, atol=1e-14)
    assert sim.info["converged"]
    r = chromatin_residual(sim.phi_h, sim.phi_e, np.where(m, sim.rate, 1.0), m, sim.spacing_um, sim.model)
    assert np.abs(r).max() < 1e-9
    # heterochromatin follows the rate: phi_h / phi_e increases with lambda
    ratio = (sim.phi_h / np.where(m, sim.phi_e, 1.0))[m]
    assert np.corrcoef(ratio, sim.rate[m])[0, 1] > 0.8
    locs = sim.localizations
    assert locs.groupby("channel").size().tolist() == [20000, 10000]
    hist = histogram(locs[locs["channel"] == 0], m.shape, sim.spacing_nm, sim.origin)
    assert np.corrcoef(hist.ravel(), sim.phi_h.ravel())[0, 1] > 0.8
    assert locs["x"].min() > -200 and locs["y"].max() < 48 * sim.spacing_nm + 200
    again = simulate_nucleus(grid=48, nucleus_um=8.0, n_localizations=(20000, 10000), seed=3)
    np.testing.assert_array_equal(sim.phi_h, again.phi_h)
    pd.testing.assert_frame_equal(sim.localizations, again.localizations)
    assert not np.array_equal(simulate_nucleus(grid=48, n_localizations=10, seed=4).mask, sim.mask)


def test_simulate_nucleus_total_count_samples_total_chromatin():
    sim = simulate_nucleus(grid=40, nucleus_um=6.0, n_localizations=40000, seed=5, background=0.0)
    locs = sim.localizations
    assert len(locs) == 40000
    share_h = (locs["channel"] == 0).mean()
    assert share_h == pytest.approx(sim.phi_h.sum() / sim.total.sum(), abs=1e-4)
    hist = histogram(locs, sim.mask.shape, sim.spacing_nm, sim.origin)
    m = sim.mask
    assert np.corrcoef(hist[m], sim.total[m])[0, 1] > 0.3  # total varies little: weak but real
    assert hist[~ndimage.binary_dilation(m, iterations=2)].sum() == 0


def test_simulate_nucleus_with_given_rate_and_mask():
    n = 40
    y, x = np.mgrid[:n, :n]
    mask = (y - 19.5) ** 2 + (x - 19.5) ** 2 < 15 ** 2
    rate = np.where(x < 20, 0.5, 2.0)
    sim = simulate_nucleus(grid=n, n_localizations=1000, seed=0, rate=rate, mask=mask, total=0.4 + 0 * rate)
    np.testing.assert_array_equal(sim.mask, mask)
    np.testing.assert_array_equal(sim.rate[mask], rate[mask])
    np.testing.assert_allclose(sim.total[mask], 0.4)
    # far from the step in lambda, the local equilibrium phi_h / phi_e = lambda holds
    far_left, far_right = mask & (x < 8), mask & (x > 31)
    np.testing.assert_allclose((sim.phi_h / np.where(mask, sim.phi_e, 1))[far_left], 0.5, rtol=5e-3)
    np.testing.assert_allclose((sim.phi_h / np.where(mask, sim.phi_e, 1))[far_right], 2.0, rtol=5e-3)
    assert sim.settings["given"] == ["mask", "rate", "total"]
    with pytest.raises(InputError, match="shape"):
        simulate_nucleus(grid=n, rate=np.ones((8, 8)))
