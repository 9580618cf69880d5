"""The held-out simulator of benchmarks/_heldout.py: right answers, independent of chromflow.simulate."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import _heldout as H  # noqa: E402


def _cosine_case(n, box_um=1.6):
    """Rate and total chromatin made of cosines that satisfy the no-flux walls of the box."""
    h = box_um / n
    c = (np.arange(n) + 0.5) * h
    y, x = np.meshgrid(c, c, indexing="ij")
    rate = 1.2 + 0.4 * np.cos(np.pi * x / box_um) * np.cos(2 * np.pi * y / box_um)
    total = 0.5 + 0.05 * np.cos(np.pi * y / box_um)
    return rate, total, h


def test_agrees_with_chromflow_finite_volumes_to_discretisation_error():
    """Same continuum problem, two methods: the gap is chromflow's O(h^2) error, shrinking 4x per halving."""
    from chromflow.simulate import chromatin_steady_state

    gaps = []
    for n in (16, 32):
        rate, total, h = _cosine_case(n)
        phi_h, phi_e, info = H.solve_steady(rate, total, h, "noflux")
        assert info["converged"] and info["residual"] < 1e-8
        fv_h, fv_e = chromatin_steady_state(rate, total=total, spacing_um=h)
        np.testing.assert_allclose(phi_h + phi_e, total, atol=1e-14)
        gaps.append(max(np.abs(phi_h - fv_h).max(), np.abs(phi_e - fv_e).max()))
    # the fields vary by ~0.1 across the box; the gap is small and second order
    assert gaps[0] < 5e-4
    assert 3.0 < gaps[0] / gaps[1] < 5.0, gaps


def test_residual_by_its_own_discretisation_and_uniform_state():
    rate, total, h = _cosine_case(32)
    phi_h, phi_e, info = H.solve_steady(rate, total, h, "noflux", tol=1e-10)
    op = H.Spectral(rate.shape, h, "noflux")
    assert np.abs(H.steady_residual(phi_h - phi_e, total, rate, op)).max() < 1e-10
    assert info["history"][0] > 1e3 * info["residual"]     # it really iterated from far away
    # uniform rate and total: the local balance phi_h / phi_e = lambda, exactly
    h2, e2, _ = H.solve_steady(np.full((16, 16), 1.5), np.full((16, 16), 0.5), 0.05, "periodic")
    np.testing.assert_allclose(h2, 0.3, atol=1e-13)
    np.testing.assert_allclose(e2, 0.2, atol=1e-13)


def test_periodic_solver_is_translation_equivariant():
    rng = np.random.default_rng(0)
    n, h = 48, 0.05
    rate = 1.2 * np.exp(0.4 * H.gaussian_field((n, n), h, 0.3, rng))
    total = 0.5 * (1 + 0.1 * H.gaussian_field((n, n), h, 0.5, rng))
    phi_h, _, info = H.solve_steady(rate, total, h, "periodic")
    assert info["converged"]
    shifted, _, _ = H.solve_steady(np.roll(rate, (7, -11), (0, 1)), np.roll(total, (7, -11), (0, 1)), h, "periodic")
    np.testing.assert_allclose(shifted, np.roll(phi_h, (7, -11), (0, 1)), atol=1e-9)
    # transport matters on this domain-scale map: phi_h / phi_e is not lambda
    ratio = phi_h / (total - phi_h)
    assert np.abs(ratio / rate - 1).max() > 0.05


def test_variable_mobility_transport_identity():
    """div(M grad mu) through Laplacians only equals the same with spectral gradients (periodic)."""
    n, L = 64, 3.2
    h = L / n
    c = np.arange(n) * h
    y, x = np.meshgrid(c, c, indexing="ij")
    k = 2 * np.pi / L
    mob = 1 + 0.5 * np.sin(k * x) * np.cos(2 * k * y)
    mu = np.cos(3 * k * x) + 0.3 * np.sin(k * y)
    op = H.Spectral((n, n), h, "periodic")
    via_laplacians = 0.5 * (op.laplacian(mob * mu) + mob * op.laplacian(mu) - mu * op.laplacian(mob))
    # analytic: d/dx(M dmu/dx) + d/dy(M dmu/dy)
    mx, my = 0.5 * k * np.cos(k * x) * np.cos(2 * k * y), -k * np.sin(k * x) * np.sin(2 * k * y)
    ux, uy = -3 * k * np.sin(3 * k * x), 0.3 * k * np.cos(k * y)
    lap_mu = -9 * k * k * np.cos(3 * k * x) - 0.3 * k * k * np.sin(k * y)
    exact = mx * ux + my * uy + mob * lap_mu
    np.testing.assert_allclose(via_laplacians, exact, atol=1e-9 * np.abs(exact).max())


@pytest.fixture(scope="module")
def small_nucleus():
    return H.simulate("nucleus", "domain", seed=3, box_um=2.0, semi_axes_um=(0.6, 0.75), spacing_nm=10.0)


def test_small_diffuse_nucleus_converges_and_block_averages(small_nucleus):
    sim = small_nucleus
    assert sim.info["converged"] and sim.info["residual"] < 1e-8
    inside = sim.inside
    assert (sim.phi_h[inside] > 0).all() and (sim.phi_e[inside] > 0).all()
    # phi_t falls to the floor outside, over ~2.2 w of the edge
    assert sim.total[~inside].min() == pytest.approx(0.005, abs=1e-4)
    phi_h, phi_e, rate, mask, spacing, origin = sim.cell_fields(50.0)
    assert phi_h.shape == (40, 40) and spacing == 50.0 and origin == (25.0, 25.0)
    np.testing.assert_allclose(phi_h[3, 4], sim.phi_h[15:20, 20:25].mean())
    assert abs(mask.sum() * 25 - inside.sum()) < 0.1 * inside.sum()    # area kept to a few %
    with pytest.raises(ValueError, match="multiple"):
        sim.cell_fields(45.0)


def test_labelling_writes_a_thunderstorm_file_chromflow_reads(small_nucleus, tmp_path):
    import chromflow as cf

    sim = small_nucleus
    table = H.label(sim, 150_000, seed=1, background=0.05)
    assert abs(len(table) - 150_000) < 0.05 * 150_000
    path = H.write_thunderstorm(table, tmp_path / "cell.csv")
    assert path.read_text().splitlines()[0].startswith('"id","frame","x [nm]","y [nm]"')
    locs = cf.read_localizations(path)
    assert locs.attrs["format"] == "thunderstorm"
    assert {"x", "y", "frame", "uncertainty", "photons", "channel"} <= set(locs.columns)
    assert sorted(locs["channel"].unique().tolist()) == [0, 1]
    # channels split like the integrals of phi_h and phi_e (background splits evenly)
    share_h = (locs["channel"] == 0).mean()
    expected = 0.95 * np.clip(sim.phi_h, 0, None).sum() / (np.clip(sim.phi_h, 0, None).sum()
                                                         + np.clip(sim.phi_e, 0, None).sum()) + 0.05 * 0.5
    assert abs(share_h - expected) < 0.02
    # the heterochromatin channel's density follows phi_h (100 nm bins, inside the nucleus)
    h0 = locs[locs["channel"] == 0]
    edges = np.arange(0, 2001, 100)
    counts, _, _ = np.histogram2d(h0["y"], h0["x"], bins=[edges, edges])
    coarse = sim.phi_h.reshape(20, 10, 20, 10).mean(axis=(1, 3))
    core = sim.inside.reshape(20, 10, 20, 10).all(axis=(1, 3))
    assert np.corrcoef(counts[core], coarse[core])[0, 1] > 0.7
    # precision: sigma_loc = psf * sqrt(2 / N)
    np.testing.assert_allclose(table["uncertainty [nm]"], 130 * np.sqrt(2 / table["intensity [photon]"]),
                               rtol=2e-3, atol=2e-3)
    # blinking: molecules give runs of localizations, so there are fewer frames' worth of distinct emitters
    assert table["frame"].between(1, 20000).all()


def test_edge_profile_finite_difference_rate_is_second_order_and_bands_add_up():
    """benchmarks/edge_profile.py: its closed form recovers the rate of a no-flux steady state
    (error O(h^2): 4x smaller per halving), and its bands report a known offset per band."""
    from edge_profile import BANDS, finite_difference_rate, profile

    errors = []
    for n in (16, 32):
        rate, total, h = _cosine_case(n)
        phi_h, phi_e, info = H.solve_steady(rate, total, h, "noflux")
        lam = finite_difference_rate(phi_h, phi_e, h)
        assert np.isfinite(lam[2:-2, 2:-2]).all()            # the two 5-point passes reach 2 cells
        errors.append(np.nanmax(np.abs(lam - rate)))
    assert errors[1] < 1e-3                                   # the rate varies by 0.8 over the box
    assert 3.0 < errors[0] / errors[1] < 5.0, errors

    # a disk; the "map" is truth + (index of the band the cell falls in)
    yy, xx = np.mgrid[:61, :61]
    mask = (yy - 30) ** 2 + (xx - 30) ** 2 <= 28 ** 2
    truth = np.where(mask, 1.0, np.nan)
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(mask)
    offset = np.zeros(mask.shape)
    for k, (lo, hi) in enumerate(BANDS):
        offset[(depth > lo) & ((depth <= hi) if hi is not None else True)] = k
    truth = truth + 0.01 * np.sin(xx)                          # some variance for the correlations
    corr, deep, bias = profile(truth + offset, truth, mask, 10.0)
    np.testing.assert_allclose(bias, np.arange(len(BANDS)), atol=1e-12)
    assert deep < 1.0 and np.isfinite(corr)


def test_edge_profile_misfit_by_band_is_chi2_of_the_noise_and_sees_an_offset():
    """The truth of data with known Gaussian noise misfits by ~1 per channel and cell; fields off
    by 2 sd in one band misfit by 1 + 4 more per channel there, and nowhere else."""
    from edge_profile import BANDS, misfit_by_band
    from scipy import ndimage

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:121, :121]
    mask = (yy - 60) ** 2 + (xx - 60) ** 2 <= 58 ** 2
    truth = [0.3 + 0.05 * np.sin(xx / 9.0), 0.2 + 0.03 * np.cos(yy / 7.0)]
    sd = [0.004, 0.002]
    data = [t + s * rng.standard_normal(t.shape) for t, s in zip(truth, sd)]
    chi2 = misfit_by_band(truth, data, sd, mask)
    np.testing.assert_allclose(chi2, 2.0, atol=0.25)
    depth = ndimage.distance_transform_edt(mask)
    band = (depth > BANDS[1][0]) & (depth <= BANDS[1][1])
    shifted = [t + 2 * s * band for t, s in zip(truth, sd)]
    moved = misfit_by_band(shifted, data, sd, mask)
    assert 9.0 < moved[1] < 11.0                                  # 2 * (1 + 2^2)
    np.testing.assert_allclose(np.delete(moved, 1), np.delete(chi2, 1), atol=1e-12)


def test_labelling_with_returning_dyes_spreads_each_molecule_over_the_acquisition(small_nucleus):
    """``bursts``: the same expected number of localizations from fewer molecules, each seen in
    runs at independent times; ``bursts=1`` is the default model, draw for draw."""
    sim = small_nucleus
    plain = H.label(sim, 150_000, seed=1)
    pd.testing.assert_frame_equal(plain, H.label(sim, 150_000, seed=1, bursts=1.0))
    returning = H.label(sim, 150_000, seed=1, bursts=5.0)
    assert abs(len(returning) - 150_000) < 0.06 * 150_000
    # the localizations of one molecule sit at one place (within their precision): at a density
    # low enough for such pairs to outnumber chance neighbours, close pairs of the default model
    # mostly come from one run of frames, those of returning dyes from frames far apart
    from scipy.spatial import cKDTree

    def far_apart_share(table):
        xy = table[["x [nm]", "y [nm]"]].to_numpy()
        frames = table["frame"].to_numpy()
        pairs = cKDTree(xy).query_pairs(10.0, output_type="ndarray")
        return float(np.mean(np.abs(frames[pairs[:, 0]] - frames[pairs[:, 1]]) > 1000))

    sparse_plain = H.label(sim, 5_000, seed=1)
    sparse_returning = H.label(sim, 5_000, seed=1, bursts=5.0)
    # measured 0.42 and 0.79 (chance neighbours alone: ~0.9)
    assert far_apart_share(sparse_plain) < 0.6 < far_apart_share(sparse_returning)


def test_accuracy_runs_the_large_count_cases_only_when_named():
    # a 1e7-localization file is ~1 GB of CSV: never part of a default or prefix run
    import accuracy

    assert not any(c.endswith("-1e7") for c in accuracy.select_cases())
    assert not any(c.endswith("-1e7") for c in accuracy.select_cases(["e2e-domain"]))
    assert accuracy.select_cases(["e2e-domain-1e7"]) == ["e2e-domain-1e7"]
    assert accuracy.select_cases(["e2e-domain-2e6", "e2e-smooth-1e7"]) == ["e2e-domain-2e6", "e2e-smooth-1e7"]
    assert accuracy.select_cases(quick=True) == accuracy.QUICK_CASES
    # the returning-dye labelling: only when a name says so
    assert not any("returning" in c for c in accuracy.select_cases(["e2e-smooth-1e6"]))
    assert accuracy.select_cases(["e2e-smooth-1e6-returning"]) == ["e2e-smooth-1e6-returning"]
    # the rendered-image inputs too
    assert not any("tiff" in c for c in accuracy.select_cases(["e2e-domain"]))
    assert accuracy.select_cases(["e2e-domain-2e6-tiff"]) == ["e2e-domain-2e6-tiff"]


def test_ash_render_keeps_counts_and_tiff_reads_back_with_its_pixel_size(tmp_path):
    """benchmarks/_heldout.py render_ash + write_imagej_tiff: the image input of the TIFF cases."""
    import chromflow as cf

    table = pd.DataFrame({"y [nm]": [0.0, 9.9, 10.1, 55.0, 500.0], "x [nm]": [0.0, 0.0, 0.0, 31.0, 0.0],
                          "channel": [0, 0, 0, 0, 1]})
    image = H.render_ash(table, 0, (4, 4), pixel_nm=20.0, shifts=2)
    # pixel (i, j) is centred at (i, j) * 20 nm: 0 and 9.9 nm land in row 0, 10.1 in row 1
    counts = np.zeros((4, 4))
    counts[0, 0], counts[1, 0], counts[3, 2] = 2, 1, 1
    tri = np.array([0.25, 0.5, 0.25])
    expected = np.zeros((4, 4))
    for (i, j), c in np.ndenumerate(counts):
        for di, wi in zip((-1, 0, 1), tri):
            for dj, wj in zip((-1, 0, 1), tri):
                if 0 <= i + di < 4 and 0 <= j + dj < 4:
                    expected[i + di, j + dj] += c * wi * wj
    np.testing.assert_allclose(image, expected, rtol=1e-6)
    assert image.dtype == np.float32 and H.render_ash(table, 1, (4, 4)).sum() == 0  # 500 nm is off the image
    path = H.write_imagej_tiff(image, tmp_path / "ash.tif", 20.0)
    read = cf.read_image(path)
    assert read.pixel_size == pytest.approx(20.0) and read.origin == (0.0, 0.0)
    np.testing.assert_array_equal(read.data, image)
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_edge_band_sweep_table_and_sizes():
    """benchmarks/edge_band.py: every nucleus size fits its box with room for the outline's
    roughness, and the table has one row per nucleus, one column per band, the three oracles last."""
    import pandas as pd
    from edge_band import SIZES, table

    for semi, box in SIZES.values():
        assert 2 * max(semi) * 1.1 < box                        # roughness 0.06 and a margin
    areas = [np.pi * a * b for (a, b), _ in SIZES.values()]
    assert areas == sorted(areas) and areas[0] > 10.0        # the pipeline's plausible range starts at 10 um^2
    rows = [{"size": s, "seed": 1, "area_um2": 20.0, "auto_band_nm": 120.0, "band": b, "corr_all": c,
             "ratio_all": 0.9, "direct_all": 0.7, "potential_all": 0.85}
            for s in ("small", "large") for b, c in (("auto", 0.95), ("0", 0.8))]
    text = table(pd.DataFrame(rows), "corr_all").splitlines()
    assert text[0].startswith("| nucleus | seed")
    assert text[0].endswith("| auto | 0 nm | oracle ratio | oracle direct | oracle potential |")
    assert text[1].count("---") == 9
    assert len(text) == 4 and text[2] == "| small | 1 | 20.0 | 120 | 0.950 | 0.800 | 0.900 | 0.700 | 0.850 |"


def test_noise_limit_bands_are_a_partition_and_the_linear_oracle_undoes_a_known_blur():
    """benchmarks/noise_limit.py: the hat functions in |k| add up to 1 (so the regressors add up
    to the continued data), and the cross-fitted linear filter recovers a rate seen through a
    known blur plus noise better than the best plain Gaussian does, while scoring only cells
    its fit did not see (a filter of pure noise scores ~0 there, ~0.2 in-sample)."""
    from scipy import ndimage
    from noise_limit import (PAD, best_gaussian, cross_fitted_linear, filtered, in_sample_linear, radial_bands,
                             wavenumbers)

    k = wavenumbers((48, 64), 0.05)
    assert k.shape == (48 + 2 * PAD, 64 + 2 * PAD)
    np.testing.assert_allclose(sum(radial_bands(k)), 1.0, atol=1e-12)

    rng = np.random.default_rng(3)
    n = 96
    region = np.ones((n, n), bool)
    truth = ndimage.gaussian_filter(rng.standard_normal((n, n)), 2.0, mode="wrap")
    truth /= truth.std()
    # what transport does to the ratio, in caricature: a blur, then counting noise
    data = ndimage.gaussian_filter(truth, 3.0, mode="wrap") + 0.01 * rng.standard_normal((n, n))
    np.testing.assert_allclose(sum(filtered(data, region, radial_bands(wavenumbers((n, n), 0.05)))), data,
                               atol=1e-9)
    regressors = filtered(data, region, radial_bands(wavenumbers((n, n), 0.05)))
    gauss, _ = best_gaussian(data, region, truth, region)
    linear = cross_fitted_linear(regressors, truth, region)
    assert linear > gauss + 0.05, (linear, gauss)             # measured 0.944 against 0.844
    assert linear > 0.9
    # 400 regressors of pure noise: in-sample they "explain" ~0.20 of a white truth (expected
    # sqrt(400 / 9216)); scored on the cells the fit did not see, nothing
    white = rng.standard_normal((n, n))
    noise = [rng.standard_normal((n, n)) for _ in range(400)]
    assert in_sample_linear(noise, white, region) > 0.15
    assert abs(cross_fitted_linear(noise, white, region)) < 0.05


def test_ratio_weight_benchmark_scores_mixes_and_rules_against_known_answers():
    """benchmarks/ratio_weight.py: the ramps it scores are the package's rule with other
    constants; two readings with independent errors of the same size mix best half and half, and
    the grid of rules ranks first a rule whose weight at the data's share is near that half."""
    from ratio_weight import mixed_correlations, rule_table

    import chromflow.inverse as inv

    for share in (0.0, 0.1, 0.3, 0.45, 0.6, 0.95, float("nan")):
        assert inv.ratio_weight(share, inv.RATIO_WEIGHT, inv.RATIO_WEIGHT_SHARES) == inv.ratio_weight(share)
    assert inv.ratio_weight(0.5, 0.6, (0.3, 0.7)) == pytest.approx(0.3)
    rng = np.random.default_rng(7)
    # rates around 1.5 with errors of 0.2: plausible rates, which the mix takes in everywhere
    truth = 1.5 + 0.2 * rng.standard_normal((80, 80))
    cells = np.ones(truth.shape, bool)
    rate = truth + 0.2 * rng.standard_normal(truth.shape)
    ratio = truth + 0.2 * rng.standard_normal(truth.shape)
    ratio[0, :5] = np.nan                                   # not finite: the cell keeps the rate
    corrs = mixed_correlations(rate, ratio, truth, cells, (0.0, 0.25, 0.5, 0.75, 1.0))
    assert int(np.argmax(corrs)) == 2
    # averaging two readings with independent unit errors: corr 1/sqrt(2) -> 1/sqrt(1.5)
    assert corrs[0] == pytest.approx(1 / np.sqrt(2), abs=0.02)
    assert corrs[2] == pytest.approx(1 / np.sqrt(1.5), abs=0.02)
    top = rule_table([{"rate": rate, "ratio": ratio, "truth": truth, "cells": cells, "share": 0.9}])[0]
    assert top[0] > 0.05 and abs(inv.ratio_weight(0.9, top[2], top[3:]) - 0.5) <= 0.1
