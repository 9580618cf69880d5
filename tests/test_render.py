"""Tests of chromflow.render: counts, geometry, mass conservation, Gaussian accuracy, errors."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtr

from chromflow.errors import InputError
from chromflow.image import Image
from chromflow.render import DEFAULT_SIGMA_NM, _render_gaussian, render


def _locs(y, x, **cols):
    df = pd.DataFrame({"x": np.asarray(x, float), "y": np.asarray(y, float), **cols})
    df.attrs["source"] = "/data/cell_07.csv"
    return df


def _reference_gaussian(y, x, sig, fov, ps):
    """Brute force: each localization's Gaussian integrated over every pixel of the fov, no
    truncation, renormalised to the fov (the render mirrors outside mass back instead; compare
    only away from the borders)."""
    y_min, x_min, y_max, x_max = fov
    ey = y_min + ps * np.arange(round((y_max - y_min) / ps) + 1)
    ex = x_min + ps * np.arange(round((x_max - x_min) / ps) + 1)
    img = np.zeros((len(ey) - 1, len(ex) - 1))
    for yi, xi, si in zip(y, x, np.broadcast_to(sig, len(y))):
        wy = np.diff(ndtr((ey - yi) / si))
        wx = np.diff(ndtr((ex - xi) / si))
        img += np.outer(wy, wx)
    return img


def test_histogram_counts_and_geometry():
    # pixel (i, j) covers [y_min + i ps, y_min + (i+1) ps): points on a lower edge belong to it
    locs = _locs(y=[0.0, 19.999, 20.0, 45.0, 45.0], x=[0.0, 0.0, 0.0, 59.0, 60.0])
    img = render(locs, pixel_size=20.0, method="histogram", fov=(0, 0, 60, 80))
    expected = np.zeros((3, 4))
    expected[0, 0] = 2
    expected[1, 0] = 1
    expected[2, 2] = 1
    expected[2, 3] = 1
    np.testing.assert_array_equal(img.data, expected)
    assert isinstance(img, Image)
    assert img.pixel_size == 20.0
    assert img.origin == (10.0, 10.0)              # centre of pixel (0, 0)
    assert img.metadata["method"] == "histogram"
    assert img.metadata["n_localizations"] == 5
    assert img.metadata["units"] == "localizations per pixel"
    assert img.source == "/data/cell_07.csv"


def test_default_fov_snaps_outward_and_keeps_every_point():
    rng = np.random.default_rng(1)
    y = rng.uniform(-333.0, 977.0, 500)
    x = rng.uniform(1234.5, 2500.0, 500)
    y[0], x[0] = 960.0, 2480.0                      # exactly on a pixel edge at the maximum
    img = render(_locs(y, x), pixel_size=20.0, method="histogram")
    assert img.data.sum() == 500
    y_min, x_min = img.origin[0] - 10.0, img.origin[1] - 10.0
    assert y_min == math.floor(y.min() / 20.0) * 20.0 and x_min == math.floor(x.min() / 20.0) * 20.0
    assert y_min + img.shape[0] * 20.0 > y.max() and x_min + img.shape[1] * 20.0 > x.max()
    # each point lands in the pixel whose span holds it
    iy = ((y - y_min) // 20.0).astype(int)
    ix = ((x - x_min) // 20.0).astype(int)
    ref = np.zeros(img.shape)
    np.add.at(ref, (iy, ix), 1)
    np.testing.assert_array_equal(img.data, ref)


@pytest.mark.parametrize("method", ["histogram", "gaussian"])
def test_mass_equals_count_inside_fov(method):
    rng = np.random.default_rng(2)
    n = 20_000
    y = rng.uniform(0, 2000, n)
    x = rng.uniform(0, 3000, n)
    unc = rng.gamma(3.0, 6.0, n) + 2.0              # many sigma bins, both algorithms
    fov = (100.0, 200.0, 1500.0, 2600.0)
    img = render(_locs(y, x, uncertainty=unc), pixel_size=20.0, method=method, fov=fov)
    inside = (y >= 100) & (y < 1500) & (x >= 200) & (x < 2600)
    assert img.shape == (70, 120)
    assert img.metadata["n_localizations"] == inside.sum()
    assert img.data.sum() == pytest.approx(inside.sum(), rel=1e-12)
    assert img.data.min() >= -1e-12


def test_gaussian_mass_conserved_at_borders_and_tiny_images():
    # wide blur in a 3 x 2 image: the kernel is reflected several times, nothing is lost
    locs = _locs(y=[1.0, 59.0, 30.0], x=[1.0, 39.0, 20.0])
    img = render(locs, pixel_size=20.0, sigma=200.0, fov=(0, 0, 60, 40))
    assert img.data.sum() == pytest.approx(3.0, rel=1e-12)
    assert img.data.min() > 0


def test_gaussian_direct_path_matches_brute_force():
    rng = np.random.default_rng(3)
    ps = 10.0
    y = rng.uniform(300, 700, 30)
    x = rng.uniform(300, 700, 30)
    sig = rng.uniform(8.0, 30.0, 30)
    fov = (0.0, 0.0, 1000.0, 1000.0)
    py, px = y / ps, x / ps
    got = _render_gaussian(py, px, sig / ps, 100, 100, path="direct")
    ref = _reference_gaussian(y, x, sig, fov, ps)
    # exact up to the 4-sigma truncation (mass beyond it is < 1e-4 per localization)
    np.testing.assert_allclose(got, ref, atol=2e-4 * ref.max())
    assert got.sum() == pytest.approx(30.0, rel=1e-12)


@pytest.mark.parametrize("sigma", [2.0, 4.0, 15.0, 45.0])
def test_gaussian_convolve_path_is_exact_at_documented_phase_positions(sigma):
    rng = np.random.default_rng(4)
    ps = 20.0
    n = 400
    y = rng.uniform(400, 1600, n)
    x = rng.uniform(400, 1600, n)
    fov = (0.0, 0.0, 2000.0, 2000.0)
    py, px = y / ps, x / ps
    got = _render_gaussian(py, px, np.full(n, sigma / ps), 100, 100,
                           path="convolve")
    assert got.sum() == pytest.approx(n, rel=1e-12)
    # the documented rule: u = min(8, ceil(3 ps / sigma)) phases; each position moves to the
    # centre of its phase, by at most ps / (2u)
    u = min(8, math.ceil(3 * ps / sigma))
    qy = (np.floor(py) + (np.floor((py % 1) * u) + 0.5) / u) * ps
    qx = (np.floor(px) + (np.floor((px % 1) * u) + 0.5) / u) * ps
    assert np.abs(qy - y).max() <= ps / (2 * u) and ps / (2 * u) <= max(sigma / 6, ps / 16) + 1e-12
    ref_quantised = _reference_gaussian(qy, qx, sigma, fov, ps)
    np.testing.assert_allclose(got, ref_quantised, atol=3e-4)
    # against exact positions: on average less than 12 % of a localization's mass is misplaced
    # (the documented accuracy), and at most half the error of binning to pixel centres
    ref = _reference_gaussian(y, x, sigma, fov, ps)
    coarse = _reference_gaussian(ps * (np.floor(py) + 0.5), ps * (np.floor(px) + 0.5), sigma, fov, ps)
    err = np.abs(got - ref).sum()
    assert err / n < 0.12
    assert err < 0.5 * np.abs(coarse - ref).sum()


def test_gaussian_single_localization_moments():
    ps = 20.0
    locs = _locs(y=[497.3], x=[1203.9])
    for sigma in (10.0, 30.0):
        img = render(locs, pixel_size=ps, sigma=sigma, fov=(0, 0, 1000, 2400))
        yy, xx = np.indices(img.shape)
        cy = (img.data * yy).sum() * ps + img.origin[0]
        cx = (img.data * xx).sum() * ps + img.origin[1]
        assert abs(cy - 497.3) < sigma / 6 + 1e-9 and abs(cx - 1203.9) < sigma / 6 + 1e-9
        # pixel integration adds ps^2/12 to the variance of a point source's Gaussian
        var = (img.data * ((yy * ps + img.origin[0] - cy) ** 2)).sum()
        assert var == pytest.approx(sigma ** 2 + ps ** 2 / 12, rel=0.12)
        assert img.metadata["sigma"] == sigma


def test_gaussian_uses_uncertainty_column_and_fills_missing():
    ps = 10.0
    fov = (0, 0, 1000, 1000)
    narrow = render(_locs(y=[500.0], x=[500.0], uncertainty=[8.0]), pixel_size=ps, fov=fov)
    wide = render(_locs(y=[500.0], x=[500.0], uncertainty=[40.0]), pixel_size=ps, fov=fov)
    assert narrow.data.max() > 10 * wide.data.max()
    assert narrow.metadata["sigma"] == "uncertainty"
    # no uncertainty column -> the documented default
    plain = render(_locs(y=[500.0], x=[500.0]), pixel_size=ps, fov=fov)
    fixed = render(_locs(y=[500.0], x=[500.0]), pixel_size=ps, sigma=DEFAULT_SIGMA_NM, fov=fov)
    np.testing.assert_allclose(plain.data, fixed.data)
    # a NaN uncertainty gets the median of the valid ones
    mixed = render(_locs(y=[305.0, 695.0], x=[505.0, 505.0], uncertainty=[np.nan, 25.0]), pixel_size=ps, fov=fov)
    assert mixed.metadata["uncertainty_filled"] == 1
    np.testing.assert_allclose(mixed.data[:50].sum(), 1.0)
    # both then have sigma 25 nm: the image is mirror-symmetric about y = 500 nm
    np.testing.assert_allclose(mixed.data[:50], np.flipud(mixed.data[50:]), atol=1e-12)


def test_channel_selection_and_3d_projection():
    locs = _locs(y=[10.0, 10.0, 50.0], x=[10.0, 50.0, 50.0], channel=[1, 2, 2], z=[-300.0, 0.0, 500.0])
    fov = (0, 0, 60, 60)
    both = render(locs, pixel_size=20.0, method="histogram", fov=fov)
    two = render(locs, pixel_size=20.0, method="histogram", fov=fov, channel=2)
    assert both.data.sum() == 3 and two.data.sum() == 2
    assert two.data[0, 0] == 0 and two.data[0, 2] == 1 and two.data[2, 2] == 1
    flat = render(locs.drop(columns="z"), pixel_size=20.0, method="histogram", fov=fov)
    np.testing.assert_array_equal(both.data, flat.data)      # z ignored: 2D projection


def test_render_10k_is_deterministic():
    rng = np.random.default_rng(5)
    locs = _locs(rng.uniform(0, 1000, 10_000), rng.uniform(0, 1000, 10_000), uncertainty=rng.uniform(5, 30, 10_000))
    a = render(locs, pixel_size=10.0)
    b = render(locs, pixel_size=10.0)
    np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("bad, match", [
    (lambda: pd.DataFrame({"y": [1.0]}), "no x"),
    (lambda: pd.DataFrame({"x": [], "y": []}), "empty"),
    (lambda: pd.DataFrame({"x": [1.0, np.nan], "y": [1.0, 2.0]}), "NaN"),
])
def test_bad_tables_raise_with_source(bad, match):
    df = bad()
    df.attrs["source"] = "/data/bad.csv"
    with pytest.raises(InputError, match=match) as info:
        render(df)
    assert "/data/bad.csv" in str(info.value)


def test_bad_arguments_raise():
    locs = _locs(y=[10.0, 500.0], x=[10.0, 500.0])
    for ps in (0.0, -5.0, float("nan")):
        with pytest.raises(InputError, match="pixel_size"):
            render(locs, pixel_size=ps)
    with pytest.raises(InputError, match="no localization inside fov"):
        render(locs, fov=(2000, 2000, 3000, 3000))
    with pytest.raises(InputError, match="method"):
        render(locs, method="splat")
    with pytest.raises(InputError, match="channel"):
        render(locs, channel=1)
    with pytest.raises(InputError, match="sigma"):
        render(locs, sigma=-1.0)
    with pytest.raises(InputError, match="cell_07"):
        render(locs, pixel_size=float("inf"))


def test_too_large_image_suggests_pixel_size():
    locs = _locs(y=[0.0, 1e6], x=[0.0, 1e6])            # 1 mm square
    with pytest.raises(InputError, match="pixel size of at least") as info:
        render(locs, pixel_size=20.0, method="histogram")
    suggested = float(str(info.value).split("at least ")[1].split(" nm")[0])
    # the suggestion really fits
    n = math.ceil(1e6 / suggested + 1) ** 2
    assert n <= 2.0e8 * 1.01
    assert suggested < 80.0


@pytest.mark.parametrize("sigma_px, n", [(0.3, 500), (1.15, 3000), (2.6, 800)])
def test_convolve_bin_scatter_and_convolution_y_passes_agree(sigma_px, n):
    # the two y passes of one sigma bin (scatter per localization for sparse bins, convolution
    # of phase histograms for dense ones) compute the same image
    from chromflow.render import _convolve_bin

    rng = np.random.default_rng(7)
    py, px = rng.uniform(0, 40, n), rng.uniform(0, 50, n)
    u = min(8, math.ceil(3.0 / sigma_px))
    half = math.ceil(4 * sigma_px + 0.5)
    a = _convolve_bin(py, px, sigma_px, u, half, 40, 50, y_pass="scatter")
    b = _convolve_bin(py, px, sigma_px, u, half, 40, 50, y_pass="convolve")
    np.testing.assert_allclose(a, b, atol=1e-12)
    assert a.sum() == pytest.approx(n, rel=1e-12)


@pytest.mark.parametrize("sigma_px", [0.65, 1.3, 2.6])      # cloud-in-cell grids f = 2, 1, 1
def test_cic_path_keeps_each_localization_mean_and_variance(sigma_px):
    # one localization: cloud-in-cell keeps its mass and mean exactly, and the bin's variance
    # correction is then its own, so the image has the localization's centroid and variance
    # (sigma^2 + 1/12 pixel^2 from the pixel integration; a pixel image of a Gaussian narrower
    # than this would not have the moments of the Gaussian itself)
    from chromflow.render import _cic_factor

    rng = np.random.default_rng(11)
    assert _cic_factor(sigma_px) == {0.65: 2, 1.3: 1, 2.6: 1}[sigma_px]
    for _ in range(3):
        py, px = 20 + rng.random(1), 23 + rng.random(1)
        img = _render_gaussian(py, px, np.array([sigma_px]), 40, 50, path="cic")
        assert img.sum() == pytest.approx(1.0, rel=1e-12) and img.min() >= -1e-15
        yy, xx = np.indices(img.shape) + 0.5                   # pixel centres, pixel units
        cy, cx = (img * yy).sum(), (img * xx).sum()
        assert cy == pytest.approx(py[0], abs=1e-3) and cx == pytest.approx(px[0], abs=1e-3)
        var_y, var_x = (img * (yy - cy) ** 2).sum(), (img * (xx - cx) ** 2).sum()
        assert var_y == pytest.approx(sigma_px ** 2 + 1 / 12, rel=3e-3)
        assert var_x == pytest.approx(sigma_px ** 2 + 1 / 12, rel=3e-3)


@pytest.mark.parametrize("sigma", [6.0, 12.0, 18.0, 30.0])   # nm at 20 nm pixels: f = 4, 2, 2, 1
def test_cic_path_is_closer_to_exact_rendering_than_subpixel_phases(sigma):
    # isolated localizations (errors cannot cancel between neighbours): the error of the
    # cloud-in-cell path is below the documented 9 % of a localization's mass, and below that of
    # the sub-pixel phase quantisation on the same localizations
    rng = np.random.default_rng(12)
    ps, n = 20.0, 64
    spacing = 10 * sigma + 4 * ps
    g = spacing * (np.arange(8) + 1)
    y = np.repeat(g, 8) + ps * rng.random(n)
    x = np.tile(g, 8) + ps * rng.random(n)
    side = 9 * spacing + 2 * ps
    fov = (0.0, 0.0, side, side)
    ref = _reference_gaussian(y, x, sigma, fov, ps)
    py, px, sig = y / ps, x / ps, np.full(n, sigma / ps)
    ny = ref.shape[0]
    cic = _render_gaussian(py, px, sig, ny, ny, path="cic")
    phases = _render_gaussian(py, px, sig, ny, ny, path="convolve")
    assert cic.sum() == pytest.approx(n, rel=1e-12) and cic.min() >= -1e-12
    err_cic = np.abs(cic - ref).sum() / n
    err_phases = np.abs(phases - ref).sum() / n
    assert err_cic < 0.09
    assert err_cic < err_phases


def test_cic_dense_bin_matches_exact_rendering_moments():
    # many localizations per grid node: each is split between its 4 nodes on its own, so the
    # image's total mass, mean, second moments per axis and y-x moment equal the exact ones
    rng = np.random.default_rng(13)
    n, s = 20_000, 1.1
    py, px = rng.uniform(15, 45, n), rng.uniform(15, 55, n)
    img = _render_gaussian(py, px, np.full(n, s), 60, 70, path="cic")
    yy, xx = np.indices(img.shape) + 0.5
    assert img.sum() == pytest.approx(n, rel=1e-12)
    assert (img * yy).sum() == pytest.approx(py.sum(), rel=1e-9)
    assert (img * xx).sum() == pytest.approx(px.sum(), rel=1e-9)
    expected_yy = (py ** 2).sum() + n * (s * s + 1 / 12)
    assert (img * yy ** 2).sum() == pytest.approx(expected_yy, rel=1e-5)
    assert (img * yy * xx).sum() == pytest.approx((py * px).sum(), rel=1e-9)


def test_render_per_localization_sigma_auto_matches_exact_and_is_thread_independent(monkeypatch):
    # a dense field with own uncertainties (many sigma bins, every algorithm): close to the exact
    # rendering (measured: 0.7 % of the image misplaced), and bit-identical with 1 or 2 threads
    import sys

    render_module = sys.modules["chromflow.render"]

    rng = np.random.default_rng(14)
    side, n = 40, 16_000
    y, x = rng.uniform(0, side * 20.0, n), rng.uniform(0, side * 20.0, n)
    unc = rng.gamma(4.0, 5.0, n) + 3.0
    locs = _locs(y, x, uncertainty=unc)
    fov = (0.0, 0.0, side * 20.0, side * 20.0)
    two = render(locs, pixel_size=20.0, fov=fov)
    monkeypatch.setattr(render_module, "_render_threads", lambda: 1)
    one = render(locs, pixel_size=20.0, fov=fov)
    np.testing.assert_array_equal(one.data, two.data)
    # one bin (a fixed sigma): same bits again
    fixed_one = render(locs, pixel_size=20.0, sigma=20.0, fov=fov)
    monkeypatch.setattr(render_module, "_render_threads", lambda: 2)
    fixed_two = render(locs, pixel_size=20.0, sigma=20.0, fov=fov)
    np.testing.assert_array_equal(fixed_one.data, fixed_two.data)
    assert two.metadata["sigma_median"] == np.median(unc)
    ref = _reference_gaussian(y, x, unc, fov, 20.0)
    inner = (slice(6, -6), slice(6, -6))                     # the reference has no mirrored borders
    assert np.abs(two.data - ref)[inner].sum() / ref[inner].sum() < 0.015


def test_sigma_groups_is_a_stable_sort_by_bin_in_pixel_units(monkeypatch):
    # the grouping (a counting sort in parallel chunks) puts every localization in the bin of
    # its sigma, bins in increasing sigma, each bin in input order, positions in pixels; the
    # same result for 1 and several threads, and chunks that cut through bins
    import sys

    from chromflow.render import SIGMA_BIN_RATIO, _sigma_groups

    render_module = sys.modules["chromflow.render"]
    rng = np.random.default_rng(16)
    n, ps = 2_500_000, 20.0                 # > 2e6: three chunks
    y, x = rng.uniform(100.0, 900.0, n), rng.uniform(50.0, 700.0, n)
    sig = rng.gamma(4.0, 5.0, n) + 3.0
    groups = _sigma_groups(y, x, sig, scale=ps, origin=(100.0, 50.0))
    key = np.floor(np.log(sig / ps) / math.log(SIGMA_BIN_RATIO)).astype(int)
    order = np.argsort(key, kind="stable")
    np.testing.assert_array_equal(groups.sig, sig[order])
    np.testing.assert_array_equal(groups.y, (y[order] - 100.0) / ps)
    np.testing.assert_array_equal(groups.x, (x[order] - 50.0) / ps)
    for k in groups.bins:
        s = groups.sigmas(k)
        assert s.min() >= groups.upper[k] / 1.001 / SIGMA_BIN_RATIO * (1 - 1e-12)
        assert s.max() < groups.upper[k]
        assert groups.sum_sq[k] == pytest.approx((s * s).sum(), rel=1e-12)
    monkeypatch.setattr(render_module, "_render_threads", lambda: 1)
    again = _sigma_groups(y, x, sig, scale=ps, origin=(100.0, 50.0))
    np.testing.assert_array_equal(again.y, groups.y)
    np.testing.assert_array_equal(again.sum_sq, groups.sum_sq)


@pytest.mark.parametrize("pixel_size", [10.0, 20.0, 33.3])
def test_sigma_median_is_numpys_median_on_and_off_bin_edges(pixel_size):
    """The median of the uncertainties comes from the sigma bins (a partial sort of one bin, no
    rank check when the value lies clearly inside its bin): it must equal np.median, also when
    many values sit exactly on the bins' edges, where the rank check runs."""
    from chromflow.render import SIGMA_BIN_RATIO

    rng = np.random.default_rng(7)
    on_edges = pixel_size * np.exp(rng.integers(-8, 8, 4001) * math.log(SIGMA_BIN_RATIO))
    spread = rng.gamma(4.0, 5.0, 4000) + 3.0
    rounded = np.round(rng.gamma(4.0, 5.0, 4000) + 3.0, 1)
    for unc in (on_edges, spread, rounded, np.concatenate([on_edges[:1000], spread])):
        locs = pd.DataFrame({"y": rng.random(len(unc)) * 4000, "x": rng.random(len(unc)) * 4000,
                             "uncertainty": unc})
        assert render(locs, pixel_size=pixel_size).metadata["sigma_median"] == np.median(unc)


def test_render_kernels_compile_without_a_cache_folder(monkeypatch):
    # where numba finds no writable cache folder it refuses cache=True; the kernels are then
    # compiled in memory and still give the known answer (cloud-in-cell: a unit mass split
    # bilinearly between the 4 nodes around the point)
    import importlib

    import numba

    import chromflow._render_kernels as kernels

    real = numba.njit

    def no_cache_folder(*args, **kwargs):
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function '_bin_of': no locator available for file")
        return real(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", no_cache_folder)
    try:
        fresh = importlib.reload(kernels)
        grid = np.zeros((6, 6))
        # f = 1: node t at pixel coordinate t + 0.5, stored at t + shift; 2.75 -> nodes 2, 3
        added = fresh._cic_scatter(grid, np.array([2.75]), np.array([1.5]), 1, 1)
        assert grid.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(grid[3:5, 2], [0.75, 0.25])
        assert added == pytest.approx((0.1875, 0.0))
    finally:
        monkeypatch.undo()
        importlib.reload(kernels)


@pytest.mark.parametrize("tiny", [1e-9, 1e-200])
def test_render_absurdly_small_precisions_land_in_their_own_pixel(tiny):
    # a precision far below a pixel (1e-9 nm, or one that squares to 0) renders as a point: the
    # whole localization in its own pixel, the rest of the image as without those rows
    rng = np.random.default_rng(17)
    n = 4000
    y, x = rng.uniform(0, 800.0, n), rng.uniform(0, 800.0, n)
    unc = rng.gamma(4.0, 5.0, n) + 3.0
    y[:20] = 410.0 + 20.0 * np.arange(20) % 40        # centres of pixels away from the others' mass
    x[:20] = 10.0 + 40.0 * np.arange(20)
    unc[:20] = tiny
    fov = (0.0, 0.0, 800.0, 800.0)
    img = render(_locs(y, x, uncertainty=unc), pixel_size=20.0, fov=fov)
    rest = render(_locs(y[20:], x[20:], uncertainty=unc[20:]), pixel_size=20.0, fov=fov)
    assert np.isfinite(img.data).all() and img.data.sum() == pytest.approx(n, rel=1e-12)
    points = np.zeros_like(img.data)
    np.add.at(points, ((y[:20] // 20).astype(int), (x[:20] // 20).astype(int)), 1.0)
    np.testing.assert_allclose(img.data, rest.data + points, atol=1e-9)
