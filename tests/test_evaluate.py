"""chromflow.evaluate: metrics and oracle-tuned baselines against known answers."""
from __future__ import annotations

import types

import numpy as np
import pytest
from scipy import ndimage, special

from chromflow import Image
from chromflow.errors import InputError
from chromflow.evaluate import (HALF_TO_FULL_WIDTH, best_direct, best_smoothed_ratio, compare, coverage,
                                cross_validated_ratio, rate_correlation, rmse, smoothed_ratio, truth_on_grid)


def _ellipse(shape=(48, 48), ry=18, rx=21):
    yy, xx = np.indices(shape)
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1


def _fields(phi_h, phi_e, mask, spacing=50.0):
    return types.SimpleNamespace(phi_h=phi_h, phi_e=phi_e, mask=mask, spacing=spacing, origin=(0.0, 0.0),
                                 source=None)


# -- correlation, rmse ----------------------------------------------------------------------------
def test_correlation_of_affine_maps_is_one_and_ignores_nan_and_masked_cells():
    rng = np.random.default_rng(0)
    truth = rng.random((30, 30))
    assert rate_correlation(2.5 * truth - 7, truth) == pytest.approx(1.0, abs=1e-12)
    assert rate_correlation(-0.3 * truth, truth) == pytest.approx(-1.0, abs=1e-12)
    spoiled = 2 * truth + 1
    spoiled[:5] = np.nan                       # NaN cells are left out
    bad = np.zeros((30, 30), bool)
    bad[10:12] = True
    spoiled[bad] = 100.0                       # wrong cells, but masked out
    assert rate_correlation(spoiled, truth, mask=~bad) == pytest.approx(1.0, abs=1e-12)
    assert rate_correlation(spoiled, truth) < 0.5
    # independent noise: correlation near 0 (known answer up to sampling, n = 900)
    assert abs(rate_correlation(rng.random((30, 30)), truth)) < 4 / np.sqrt(900)
    # constant map or < 3 cells: undefined
    assert np.isnan(rate_correlation(np.ones((30, 30)), truth))
    assert np.isnan(rate_correlation(truth, truth, mask=np.eye(30, dtype=bool) & (np.arange(30) < 2)))


def test_correlation_result_object_keeps_the_cli_contract():
    # the former chromflow.cli.rate_correlation(result, truth) -> (corr, n), truth on its own grid
    from chromflow.cli import rate_correlation as cli_rate_correlation

    assert cli_rate_correlation is rate_correlation
    yy, xx = np.mgrid[:20, :20]
    truth = Image(1 + 0.1 * yy + 0.05 * xx, pixel_size=10.0)       # linear: interpolation is exact
    ry, rx = np.mgrid[:8, :8]
    mask = np.ones((8, 8), bool)
    mask[0, 0] = False
    result = types.SimpleNamespace(rate=1 + 0.1 * (0.5 + 2 * ry) + 0.05 * (0.5 + 2 * rx), mask=mask,
                                   spacing=20.0, origin=(5.0, 5.0))
    corr, n = rate_correlation(result, truth)
    assert corr == pytest.approx(1.0, abs=1e-12) and n == 63


def test_rmse_known_value():
    truth = np.zeros((4, 5))
    est = np.full((4, 5), 0.2)
    est[0, 0] = np.nan
    assert rmse(est, truth) == pytest.approx(0.2)
    est[1, 1] = 1.2
    assert rmse(est, truth) == pytest.approx(np.sqrt((18 * 0.04 + 1.44) / 19))
    assert np.isnan(rmse(est, truth, mask=np.zeros((4, 5), bool)))


def test_truth_on_grid_linear_interpolation_exact():
    yy, xx = np.mgrid[:40, :40]
    truth = Image(3.0 * yy - 2.0 * xx, pixel_size=25.0, origin=(100.0, -50.0))
    out = truth_on_grid(truth, (20, 20), spacing=60.0, origin=(200.0, 0.0))
    gy, gx = np.mgrid[:20, :20]
    y_px = (200.0 + 60 * gy - 100.0) / 25.0
    x_px = (0.0 + 60 * gx + 50.0) / 25.0
    inside = (y_px <= 39) & (x_px <= 39)
    np.testing.assert_allclose(out[inside], (3 * y_px - 2 * x_px)[inside], atol=1e-9)
    assert np.isnan(out[~inside]).all() and (~inside).any()
    with pytest.raises(InputError, match="not on the"):
        truth_on_grid(np.zeros((5, 5)), (10, 10), 60.0)


# -- coverage ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
def test_coverage_of_exact_gaussian_errors_is_nominal(level):
    rng = np.random.default_rng(int(level * 100))
    truth = 1 + rng.random((300, 300))
    sd = 0.05 + 0.2 * rng.random((300, 300))          # heteroscedastic, but exactly known
    est = truth + sd * rng.standard_normal(truth.shape)
    got = coverage(est, sd, truth, level=level)
    n = truth.size
    assert abs(got - level) < 4 * np.sqrt(level * (1 - level) / n)
    # the interval really is z = Phi^-1((1 + level)/2) wide: half the sd covers P(|Z| < z/2)
    half = coverage(est, sd / 2, truth, level=level)
    expected = special.erf(special.ndtri(0.5 * (1 + level)) / 2 / np.sqrt(2))
    assert abs(half - expected) < 4 * np.sqrt(expected * (1 - expected) / n)


def test_coverage_nan_uncertainty_counts_as_not_covered():
    truth = np.ones((10, 10))
    est = truth.copy()                                # perfect estimate
    sd = np.full((10, 10), 0.1)
    sd[:3] = np.nan
    sd[3, :5] = -1.0                                  # negative sd: not an error bar either
    d = coverage(est, sd, truth, details=True)
    assert d["n_cells"] == 100 and d["n_missing"] == 35 and d["n_covered"] == 65
    assert d["coverage"] == pytest.approx(0.65)
    assert d["z"] == pytest.approx(1.6448536, abs=1e-6)
    # cells without truth or estimate are not cells at all
    est[0] = np.nan
    assert coverage(est, sd, truth, details=True)["n_cells"] == 90
    with pytest.raises(InputError, match="level"):
        coverage(est, sd, truth, level=1.0)


# -- smoothed ratio ----------------------------------------------------------------------------------------
def test_smoothed_ratio_of_uniform_fields_is_exact_up_to_the_edge():
    mask = _ellipse()
    # garbage outside the mask must not leak in (mask-normalised smoothing)
    rng = np.random.default_rng(3)
    h = np.where(mask, 0.3, rng.random(mask.shape))
    e = np.where(mask, 0.2, rng.random(mask.shape))
    for sigma in (0.0, 1.0, 4.0, 10.0):
        r = smoothed_ratio(h, e, mask, sigma)
        np.testing.assert_allclose(r[mask], 1.5, rtol=1e-12)
        assert np.isnan(r[~mask]).all()


def test_smoothed_ratio_definition_and_plain_ratio():
    rng = np.random.default_rng(4)
    mask = _ellipse()
    h = 0.2 + 0.1 * rng.random(mask.shape)
    e = 0.2 + 0.1 * rng.random(mask.shape)
    np.testing.assert_allclose(smoothed_ratio(h, e, mask, 0.0)[mask], (h / e)[mask])
    # the documented definition: G*(m f) / G*(m), ratio of the two
    from scipy import ndimage
    m = mask.astype(float)
    g = lambda f: ndimage.gaussian_filter(f * m, 2.0, mode="constant") / ndimage.gaussian_filter(m, 2.0, mode="constant")
    np.testing.assert_allclose(smoothed_ratio(h, e, mask, 2.0)[mask], (g(h) / g(e))[mask], rtol=1e-12)
    # a linear phi_h over a uniform phi_e: Gaussian smoothing is exact on linear fields away from the edge
    x = np.arange(48.0)[None, :] * np.ones((48, 1))
    full = np.ones((48, 48), bool)
    r = smoothed_ratio(0.2 + 0.002 * x, np.full((48, 48), 0.2), full, 3.0)
    np.testing.assert_allclose(r[15:33, 15:33], (1 + 0.01 * x)[15:33, 15:33], rtol=1e-10)


def test_best_smoothed_ratio_tunes_on_the_truth():
    rng = np.random.default_rng(5)
    mask = _ellipse((64, 64), 28, 30)
    yy, xx = np.indices(mask.shape)
    truth = 1.2 + 0.4 * np.sin(xx / 6.0) * np.cos(yy / 7.0)
    e = np.full(mask.shape, 0.2)
    clean = best_smoothed_ratio(0.2 * truth, e, mask, truth)
    assert clean.value == 0.0 and clean.corr == pytest.approx(1.0, abs=1e-12)
    rate, value, corr = clean                  # unpacks as map, chosen value, correlation
    np.testing.assert_allclose(rate[mask], truth[mask])
    assert np.isnan(rate[~mask]).all()
    noisy = best_smoothed_ratio(0.2 * truth * (1 + 0.2 * rng.standard_normal(mask.shape)), e, mask, truth)
    assert noisy.value > 0 and noisy.corr == max(v for v in noisy.scores.values() if np.isfinite(v))
    assert noisy.corr > noisy.scores[0.0] + 0.05


# -- the smoothed ratio without the truth ------------------------------------------------------------
def _noisy_halves(truth, mask, rel, seed):
    """Two independent halves of ratio data ``h / e = truth`` with relative noise ``rel`` each."""
    rng = np.random.default_rng(seed)
    e = np.full(mask.shape, 0.2)
    draw = (lambda: (0.2 * truth * (1 + rel * rng.standard_normal(mask.shape)),
                     e * (1 + rel * rng.standard_normal(mask.shape))))
    return draw(), draw()


def test_cross_validated_ratio_of_noise_free_halves_does_not_smooth():
    mask = _ellipse((64, 64), 28, 30)
    yy, xx = np.indices(mask.shape)
    truth = 1.2 + 0.4 * np.sin(xx / 6.0) * np.cos(yy / 7.0)
    h, e = 0.2 * truth, np.full(mask.shape, 0.2)
    cv = cross_validated_ratio(h, e, mask, h, e)           # both halves equal the whole
    assert cv.sigma_half_cells == 0.0 and cv.sigma_cells == 0.0
    np.testing.assert_allclose(cv.rate[mask], truth[mask])
    assert np.isnan(cv.rate[~mask]).all()


@pytest.mark.parametrize("rel", [0.15, 0.4])
def test_cross_validated_ratio_finds_the_oracle_width_without_the_truth(rel):
    # the halves' choice is the width that best predicts the other half; on the whole data it is
    # within one step of the width tuned on the truth for one half, and the map within 0.02 of
    # the oracle-tuned smoothed ratio of the whole data
    mask = _ellipse((96, 96), 42, 45)
    yy, xx = np.indices(mask.shape)
    truth = 1.2 + 0.4 * np.sin(xx / 6.0) * np.cos(yy / 7.0)
    (ha, ea), (hb, eb) = _noisy_halves(truth, mask, rel, seed=7)
    h, e = (ha + hb) / 2, (ea + eb) / 2
    cv = cross_validated_ratio(h, e, mask, ha, ea)
    sigmas = sorted(cv.scores)
    oracle_half = best_smoothed_ratio(ha, ea, mask, truth).value
    assert abs(sigmas.index(cv.sigma_half_cells) - sigmas.index(oracle_half)) <= 1
    assert cv.sigma_cells == pytest.approx(cv.sigma_half_cells * HALF_TO_FULL_WIDTH)
    oracle = best_smoothed_ratio(h, e, mask, truth)
    got = rate_correlation(cv.rate, truth, mask)
    assert got > oracle.corr - 0.02
    assert got > oracle.scores[0.0] + 0.05                  # it does smooth the noise away


def test_cross_validated_ratio_on_counts_too_sparse_for_a_plain_ratio():
    # ~1.5 counts per cell and channel in each half, minus a background, and 10 % of the counts
    # shared by both halves (a dye that switches on again in the other half of the frames): many
    # cells of a half are empty or negative, where a plain ratio is undefined. The halves' target
    # is then their least smoothing that is positive on 99 % of the nucleus. Without that rule
    # the score, on the cells that happened to be positive, chose 0.75 cells and a map of noise
    # (r = 0.34 against the oracle's 0.95)
    rng = np.random.default_rng(4)
    mask = _ellipse((96, 96), 42, 45)
    yy, xx = np.indices(mask.shape)
    truth = 1.0 + 0.3 * np.sin(xx / 12.0) * np.cos(yy / 14.0)
    lam_h, lam_e = 1.5 * truth / truth.mean(), np.full(mask.shape, 1.5)
    shared_h, shared_e = rng.poisson(0.1 * lam_h), rng.poisson(0.1 * lam_e)
    ha, hb = (shared_h + rng.poisson(0.9 * lam_h) - 0.1 for _ in range(2))
    ea, eb = (shared_e + rng.poisson(0.9 * lam_e) - 0.1 for _ in range(2))
    h, e = (ha + hb) / 2.0, (ea + eb) / 2.0
    assert np.mean((hb / eb > 0)[mask]) < 0.9                  # the plain ratio is no target here
    cv = cross_validated_ratio(h, e, mask, ha, ea)
    assert cv.sigma_half_cells >= 1.0 and min(cv.scores) >= 0.5
    assert np.isfinite(cv.rate[mask]).all() and (cv.rate[mask] > 0).all()
    oracle = best_smoothed_ratio(h, e, mask, truth)
    assert rate_correlation(cv.rate, truth, mask) > oracle.corr - 0.05


def test_cross_validated_ratio_refuses_mismatched_halves():
    mask = np.ones((8, 8), bool)
    with pytest.raises(InputError, match="one shape"):
        cross_validated_ratio(np.ones((8, 8)), np.ones((8, 8)), mask, np.ones((8, 9)), np.ones((8, 8)))


# -- direct baseline, compare --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def steady():
    """A steady state of the chromatin model (chromflow's own forward solver) with a known rate."""
    from chromflow.simulate import chromatin_steady_state

    mask = _ellipse((48, 48), 19, 21)
    yy, xx = np.indices(mask.shape)
    rate = 1.2 + 0.4 * np.sin(xx / 5.0) * np.cos(yy / 6.0)
    h, e = chromatin_steady_state(rate, total=0.5, mask=mask, spacing_um=0.05)
    return _fields(h, e, mask), np.where(mask, rate, np.nan)


def test_best_direct_on_exact_steady_state(steady):
    fields, truth = steady
    b = best_direct(fields, truth, radii=(2.0, 3.0, 30.0))
    assert np.isnan(b.scores[30.0])                    # the kernel does not fit: not a candidate
    assert b.value in (2.0, 3.0) and b.corr > 0.9
    from chromflow import infer_rates
    ref = infer_rates(fields, method="direct", radius=b.value).rate
    np.testing.assert_array_equal(b.rate, ref)


def test_best_potential_on_exact_steady_state(steady):
    from chromflow.evaluate import best_potential
    from chromflow.inverse.direct import smooth_potential_rates

    fields, truth = steady
    b = best_potential(fields, truth, widths_nm=(100.0, 200.0, 2000.0), edge=0)
    # noise-free: the narrowest potential loses least of the rate's structure
    assert b.value == 100.0 and b.corr > 0.95 and b.scores[2000.0] < b.corr
    ref = smooth_potential_rates(fields.phi_h, fields.phi_e, fields.mask, fields.spacing / 1000, 0.1)
    np.testing.assert_array_equal(b.rate, ref)
    # the edge band is left out of the data, the map still covers the whole mask
    banded = best_potential(fields, truth, widths_nm=(100.0,), edge=150.0)
    assert np.isfinite(banded.rate[fields.mask]).all() and not np.array_equal(banded.rate, b.rate)


def test_compare_one_row_on_the_same_cells(steady):
    fields, truth = steady
    mask = fields.mask
    inner = mask.copy()
    inner[:, :24] = False
    rng = np.random.default_rng(6)
    sd = np.where(mask, 0.05, np.nan)
    est = np.where(mask, truth + sd * rng.standard_normal(mask.shape), np.nan)
    result = types.SimpleNamespace(rate=est, uncertainty=sd, mask=mask, spacing=50.0, origin=(0.0, 0.0))
    row = compare(result, truth, fields, radii=(2.0, 3.0), sigmas=(0.0, 1.0))
    assert row["n_cells"] == int(mask.sum())
    assert row["corr"] == pytest.approx(rate_correlation(est, truth, mask))
    assert row["rmse"] == pytest.approx(0.05, rel=0.1)
    assert abs(row["coverage"] - 0.9) < 0.05 and row["coverage_missing"] == 0
    for key in ("ratio_corr", "ratio_sigma", "ratio_rmse", "direct_corr", "direct_radius", "direct_rmse",
                "potential_corr", "potential_width_nm", "potential_rmse"):
        assert np.isfinite(row[key]), key
    assert row["beats_potential"] == (row["corr"] > row["potential_corr"])
    assert row["beats_ratio"] == (row["corr"] > row["ratio_corr"])
    # a restricting mask changes the cells of the method and of both baselines alike
    sub = compare(est, truth, fields, mask=inner, radii=(2.0, 3.0), sigmas=(0.0, 1.0))
    assert sub["n_cells"] == int(inner.sum())
    ratio_inner = smoothed_ratio(fields.phi_h, fields.phi_e, mask, sub["ratio_sigma"])
    assert sub["ratio_corr"] == pytest.approx(rate_correlation(ratio_inner, truth, inner))
    assert np.isnan(sub["coverage"]) and sub["coverage_missing"] == sub["n_cells"]   # a bare array has no sd
    # a result whose uncertainty is all NaN (a single fit) covers nothing, and says so
    no_sd = types.SimpleNamespace(**{**vars(result), "uncertainty": np.full(mask.shape, np.nan)})
    row0 = compare(no_sd, truth, fields, radii=(2.0,), sigmas=(0.0,))
    assert row0["coverage"] == 0.0 and row0["coverage_missing"] == row0["n_cells"]
    # the truth itself scores perfectly
    perfect = compare(truth, truth, fields, radii=(2.0,), sigmas=(0.0,))
    assert perfect["corr"] == pytest.approx(1.0) and perfect["rmse"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InputError, match="grid"):
        compare(truth[:10], truth, fields)


def test_domain_scale_reproducibility_refuses_mismatched_halves_and_needs_deep_cells():
    from chromflow.evaluate import domain_scale_reproducibility

    m = np.ones((40, 40), bool)
    f = np.full((40, 40), 0.3)
    with pytest.raises(InputError, match="one shape"):
        domain_scale_reproducibility(f, f, m, f[:-1], f, 0.05)
    with pytest.raises(ValueError, match="spacing_um"):
        domain_scale_reproducibility(f, f, m, f, f, 0.0)
    tiny = np.zeros((40, 40), bool)
    tiny[18:22, 18:22] = True            # no cell deeper than 200 nm (4 cells of 50 nm)
    assert np.isnan(domain_scale_reproducibility(f, f, tiny, f, f, 0.05))


def test_domain_scale_reproducibility_reads_the_same_nucleus_alike_on_25_and_50_nm_cells():
    """The band is in nm: one nucleus on two grids reads alike; cells wider than the band (150 nm)
    give no reading. Until 0.6 the band was in cells, and the coarser grid read larger structure."""
    from chromflow.evaluate import DOMAIN_BAND_MAX_CELL_UM, domain_scale_reproducibility

    rng = np.random.default_rng(4)
    n = 240                              # 25 nm cells: a 6 um square
    m = np.ones((n, n), bool)
    # ~200 nm domains of heterochromatin over a uniform euchromatin, and two independent halves
    # of the counts (Poisson-like noise, the same per nm^2 on any grid)
    domains = ndimage.gaussian_filter(rng.standard_normal(m.shape), 4.0)
    h = 0.3 * (1 + 3 * domains / domains.std() * 0.2)
    e = np.full(m.shape, 0.2)
    noisy = (lambda f: f * (1 + 0.8 * rng.standard_normal(m.shape)))
    ha, ea, hb, eb = noisy(h), noisy(e), noisy(h), noisy(e)
    block = (lambda f, k: f.reshape(n // k, k, n // k, k).mean(axis=(1, 3)))

    def reading(k):
        halves = [block(a, k) for a in (ha, ea, hb, eb)]
        whole_h, whole_e = (halves[0] + halves[2]) / 2, (halves[1] + halves[3]) / 2
        return domain_scale_reproducibility(whole_h, whole_e, m[::k, ::k], halves[0], halves[1], 0.025 * k)

    fine, coarse = reading(1), reading(2)
    assert 0.2 < fine < 0.95 and abs(fine - coarse) < 0.1, (fine, coarse)
    wide = next(k for k in (4, 6, 8) if 0.025 * k > DOMAIN_BAND_MAX_CELL_UM)
    assert np.isnan(reading(wide))
