"""Noise model, data fission, edge band, edge-safe direct inversion, uncertainty and flags."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from chromflow import Image, chromatin_fields, infer_rates
from chromflow.errors import GridError, InputError
from chromflow.fields import partial_volume_width
from chromflow.inverse import RATIO_WEIGHT, RATIO_WEIGHT_SHARES, edge_band_cells, ratio_weight
from chromflow.inverse.direct import direct_rates, local_linear_smooth
from chromflow.inverse.noise import estimate_noise, fission
from chromflow.simulate import chromatin_steady_state
from chromflow.simulate.shapes import nucleus_mask, random_rate_map


@pytest.fixture(scope="module")
def steady():
    """A 64x64 nucleus at 50 nm cells with a rate varying on ~0.5 um, and its steady fields."""
    shape = (64, 64)
    mask = nucleus_mask(shape, 26, 28, seed=3)
    rate = random_rate_map(shape, mean=1.2, amplitude=0.4, length_cells=10, seed=4)
    total = np.full(shape, 0.5)
    h, e = chromatin_steady_state(rate, total, mask, spacing_um=0.05)
    return SimpleNamespace(rate=np.where(mask, rate, np.nan), phi_h=h, phi_e=e, mask=mask)


def _noisy(steady, level, seed):
    rng = np.random.default_rng(seed)
    m = steady.mask
    h = np.where(m, steady.phi_h * (1 + level * rng.standard_normal(m.shape)), 0.0)
    e = np.where(m, steady.phi_e * (1 + level * rng.standard_normal(m.shape)), 0.0)
    return SimpleNamespace(phi_h=h, phi_e=e, mask=m, spacing=50.0, origin=(0.0, 0.0), source=None)


def _corr(a, b, m):
    ok = m & np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


# ------------------------------------------------------------------------------------------ noise
@pytest.mark.parametrize("kind", ["poisson", "relative"])
def test_noise_model_recovers_known_variance(kind):
    rng = np.random.default_rng(1)
    yy, xx = np.indices((96, 96))
    truth = 0.3 + 0.1 * np.sin(xx / 9.0) * np.cos(yy / 11.0)      # smooth on ~10 cells
    var = 0.002 * truth if kind == "poisson" else (0.04 * truth) ** 2
    noisy = truth + np.sqrt(var) * rng.standard_normal(truth.shape)
    nm = estimate_noise(noisy, np.ones(truth.shape, bool))
    ratio = nm.variance(truth) / var
    assert 0.85 < float(np.median(ratio)) < 1.15


def test_noise_model_needs_cells():
    with pytest.raises(ValueError, match="too few"):
        estimate_noise(np.ones((4, 4)), np.ones((4, 4), bool))


def test_fission_halves_are_independent_with_twice_the_variance():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(200_000) * 0.1            # the data noise, variance 0.01
    plus, minus = fission([x], [np.full(x.shape, 0.01)], seed=5)
    a, b = plus[0], minus[0]
    assert np.allclose((a + b) / 2, x)
    assert abs(np.var(a) / 0.02 - 1) < 0.02 and abs(np.var(b) / 0.02 - 1) < 0.02
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01


def _filtered_noise(rng, shape, rho):
    """Unit-variance noise whose neighbouring cells (along y and x) correlate ``rho`` and cells
    further apart not at all: white noise filtered by a 2-tap ``[a, b]`` along both axes, with
    ``a^2 + b^2 = 1`` and ``a b = rho`` (solved here, independently of the library's taps)."""
    a = (np.sqrt(1 + 2 * rho) + np.sqrt(1 - 2 * rho)) / 2
    b = rho / a
    w = rng.standard_normal(shape)
    for axis in (0, 1):
        w = ndimage.correlate1d(w, [a, b], axis=axis, mode="reflect")
    return w


@pytest.mark.parametrize("kernel", [[1.0], [1.0, 0.35], [1.0, 1.0], [1.0, 0.8, 0.3], [1.0, 1.0, 1.0]])
def test_noise_correlation_recovers_the_correlations_and_the_variance_the_high_pass_misses(kernel):
    """Known answer: unit noise made by filtering white noise with ``kernel`` along both axes,
    on smooth structure. Its correlations at lags 1 and 2 are the kernel's normalised
    autocorrelation (exactly the model when the kernel has at most 3 taps); the high-pass reads
    ``((6 - 8 rho + 2 rho2) / 6)^2`` of its variance, and the factor puts the rest back. The box
    of 3 cells is noise correlated as much as 40 nm pixels on 52 nm cells (factor ~20)."""
    from chromflow.inverse.noise import noise_correlation

    k = np.asarray(kernel, dtype=float)
    auto = np.correlate(k, k, mode="full")[k.size - 1:] / np.dot(k, k)
    rho, rho2 = (auto.tolist() + [0.0, 0.0])[1:3]
    rng = np.random.default_rng(11)
    yy, xx = np.indices((200, 200))
    truth = 0.3 + 0.1 * np.sin(xx / 9.0) * np.cos(yy / 11.0)
    w = rng.standard_normal(truth.shape)
    for axis in (0, 1):
        w = ndimage.correlate1d(w, k / np.linalg.norm(k), axis=axis, mode="wrap")
    noisy = truth + 0.02 * w
    region = np.ones(truth.shape, bool)
    nc = noise_correlation(noisy, region)
    assert abs(nc.rho - rho) < 0.03 and abs(nc.rho2 - rho2) < 0.03, (nc.rho, nc.rho2, rho, rho2)
    assert not nc.saturated
    read = float(np.median(estimate_noise(noisy, region).variance(truth)))
    assert abs(read * nc.variance_factor / 0.02 ** 2 - 1) < 0.12, (read * nc.variance_factor / 0.02 ** 2)
    if rho >= 0.15:
        assert read < 0.75 * 0.02 ** 2              # what the white-noise reading alone would miss
    with pytest.raises(ValueError, match="too few"):
        noise_correlation(np.ones((4, 4)), np.ones((4, 4), bool))


def test_fission_with_the_datas_correlation_gives_independent_halves_at_every_scale():
    """White fission of noise that neighbours share leaves the shared part in both halves (they
    agree when smoothed); drawing Z with the measured correlation makes them independent."""
    from chromflow.inverse.noise import noise_correlation

    rng = np.random.default_rng(12)
    x = 0.3 + 0.02 * _filtered_noise(rng, (240, 240), 0.3)
    region = np.ones(x.shape, bool)
    var = [estimate_noise(x, region).variance(np.full(x.shape, 0.3))]
    smooth = (lambda a: ndimage.gaussian_filter(a - 0.3, 3.0).ravel())
    (wa,), (wb,) = fission([x], var, seed=1)
    (ca,), (cb,) = fission([x], var, seed=1, correlations=[noise_correlation(x, region)])
    assert np.corrcoef(smooth(wa), smooth(wb))[0, 1] > 0.5     # white: the halves share noise
    assert abs(np.corrcoef(smooth(ca), smooth(cb))[0, 1]) < 0.1
    assert abs(np.corrcoef((ca - 0.3).ravel(), (cb - 0.3).ravel())[0, 1]) < 0.05
    assert np.allclose((ca + cb) / 2, x)


# ------------------------------------------------------------------------------------------ edges
def _count_halves(rng, mu, runs):
    """Counts of molecules (Poisson, mean ``mu`` per cell), each seen ``runs`` times, every time
    in a random half of the frames: the whole ``X`` and one half ``A`` scaled to it."""
    n = rng.poisson(mu)
    a = rng.binomial(runs * n, 0.5)
    return (runs * n).astype(float), 2.0 * a


@pytest.mark.parametrize("runs", [1, 4])
def test_half_independence_reads_the_share_of_noise_the_halves_do_not_share(runs):
    """Known answer: molecules seen ``K`` times, each time in either half, make the whole's
    variance ``K`` times the halves' difference's: independence ``1 / K`` (1 for ``K = 1``)."""
    from chromflow.inverse.noise import half_independence

    rng = np.random.default_rng(runs)
    x, a = _count_halves(rng, np.full((160, 160), 30.0), runs)
    s = half_independence(x, a, np.ones(x.shape, bool))
    assert abs(s - 1.0 / runs) < 0.12, s


def test_half_independence_tells_resolved_structure_from_shared_noise():
    """Structure the grid resolves (both halves hold it, like shared noise) lowers the plain
    high-pass ratio at the grid far below 0.6, but not on 2 x 2 binned cells in the same way:
    independence stays ~1 and the halves are not scaled."""
    from chromflow.inverse.noise import MIN_HALF_INDEPENDENCE, _high_pass_ratio, half_independence

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:160, :160]
    mu = 2000.0 * (1 + 0.5 * np.sin(2 * np.pi * yy / 6) * np.sin(2 * np.pi * xx / 6))
    x, a = _count_halves(rng, mu, 1)
    region = np.ones(x.shape, bool)
    assert _high_pass_ratio(a - x, x, region) < 0.5           # the plain ratio would read shared noise
    assert half_independence(x, a, region) > 0.85
    assert half_independence(x, a, region) > MIN_HALF_INDEPENDENCE


def test_local_linear_matches_kernel_average_inside_and_planes_at_edges():
    rng = np.random.default_rng(0)
    values = rng.random((40, 40))
    w = np.array([0.05, 0.25, 0.4, 0.25, 0.05])
    full = np.ones((40, 40), bool)
    out = local_linear_smooth(values, full, w)
    plain = ndimage.correlate1d(ndimage.correlate1d(values, w, axis=0), w, axis=1)
    assert np.allclose(out[2:-2, 2:-2], plain[2:-2, 2:-2])
    yy, xx = np.indices((40, 40)).astype(float)
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 < 15 ** 2
    plane = 1.0 + 0.05 * yy - 0.03 * xx
    band = disc & ~ndimage.binary_erosion(disc, iterations=1)
    cont = local_linear_smooth(plane, disc & ~band, w, out_mask=disc)
    assert np.allclose(cont[disc], plane[disc])       # continued exactly into the band


def test_partial_volume_width_follows_blur_and_mask_offset():
    yy, xx = np.indices((240, 240))
    r = np.hypot(yy - 120, xx - 120)
    widths = []
    for offset in (0, 4, 8):
        density = ndimage.gaussian_filter((r < 90).astype(float), 3.0)
        widths.append(partial_volume_width(density, r < 90 + offset, pixel_size=10.0))
    # about offset + 0.84 * blur: 25, 65, 105 nm
    assert widths == sorted(widths)
    for offset, w in zip((0, 4, 8), widths):
        assert abs(w - (10 * offset + 25)) <= 20
    # denser chromatin at the lamina makes no band
    lads = np.where(r > 80, 1.5, 1.0) * (r < 90)
    assert partial_volume_width(lads, r < 90, pixel_size=10.0) == 0.0


def test_chromatin_fields_marks_the_blurred_edge():
    yy, xx = np.indices((300, 300))
    r = np.hypot(yy - 150, xx - 150)
    density = ndimage.gaussian_filter(np.where(r < 110, 1.0 + 0.2 * np.sin(xx / 15.0), 0.0), 4.0)
    mask = r < 118                                    # drawn 8 px (160 nm) too wide, as Otsu does
    f = chromatin_fields(Image(density, pixel_size=20.0), mask, grid=64)
    assert f.edge is not None and (f.edge <= f.mask).all()
    assert 150 <= f.settings["edge_band_nm"] <= 300
    inner = f.mask & ~f.edge
    assert inner.sum() > 0.6 * f.mask.sum()
    # the band is a ring: every band cell touches the outside within the band width
    dist_cells = ndimage.distance_transform_edt(f.mask)
    assert dist_cells[f.edge].max() <= f.settings["edge_band_nm"] / f.spacing + 1.5
    fixed = chromatin_fields(Image(density, pixel_size=20.0), mask, grid=64, edge_band=0.0)
    assert fixed.edge.sum() < f.edge.sum()


def test_edge_band_cells_and_all_edge_error(steady):
    f = _noisy(steady, 0.0, 0)
    band = edge_band_cells(f.mask, 100.0, 50.0)
    assert band.any() and (band <= f.mask).all()
    with pytest.raises(GridError, match="edge band"):
        infer_rates(f, method="direct", edge=5000.0)


def test_direct_edge_safe_values_do_not_collapse_at_large_radius(steady):
    """The old mask continuation pulled phi_h away at large radii (corr 0.99 -> 0.63)."""
    f = _noisy(steady, 0.0, 0)
    lam, (h, e), _ = direct_rates(f.phi_h, f.phi_e, f.mask, 0.05, radius=12)
    assert _corr(h.value, steady.phi_h, f.mask) > 0.97
    assert _corr(lam, steady.rate, f.mask) > 0.9


# ------------------------------------------------------------------------------------- inference
def test_direct_uncertainty_matches_the_spread_over_noise_draws(steady):
    """The fission uncertainty is the noise part: compare with repeated noise realisations."""
    maps, sds = [], []
    for k in range(8):
        r = infer_rates(_noisy(steady, 0.03, 100 + k), method="direct", radius=8, seed=k, uncertainty="noise")
        maps.append(r.rate)
        sds.append(r.uncertainty)
    m = steady.mask & ~ndimage.binary_erosion(steady.mask, iterations=0)  # the whole mask
    spread = np.nanstd(np.stack(maps), axis=0, ddof=1)
    predicted = np.nanmean(np.stack(sds), axis=0)
    ratio = np.nanmedian(predicted[m]) / np.nanmedian(spread[m])
    assert 0.7 < ratio < 1.4


def test_default_inference_has_uncertainty_quality_and_noise(steady):
    r = infer_rates(_noisy(steady, 0.03, 1), method="direct")
    m = r.mask
    assert np.isfinite(r.uncertainty[m]).all() and (r.uncertainty[m] > 0).all()
    assert np.isnan(r.uncertainty[~m]).all()
    s = r.summary()
    assert 0.5 < s["split_half_r"] <= 1.0
    assert r.settings["radius"] == 8.0                # "auto": 400 nm at 50 nm cells
    b = r.diagnostics["noise"]["phi_h"]["b"]
    assert 0.02 < np.sqrt(b) < 0.04                   # 3 % relative noise, estimated from the data
    # fields without an edge band of their own get the minimum band (no partial volume here)
    assert r.settings["edge"].startswith("100 nm") and r.edge.sum() > 0
    exact = infer_rates(_noisy(steady, 0.03, 1), method="direct", edge=0)   # an exact mask: no band
    assert exact.edge.sum() == 0 and _corr(exact.rate, steady.rate, m) > 0.8
    off = infer_rates(_noisy(steady, 0.03, 1), method="direct", uncertainty=False)
    assert np.isnan(off.uncertainty).all() and np.isnan(off.summary()["split_half_r"])


def test_noise_only_map_is_flagged(steady):
    rng = np.random.default_rng(3)
    m = steady.mask
    f = SimpleNamespace(phi_h=np.where(m, 0.3 * (1 + 0.3 * rng.standard_normal(m.shape)), 0.0),
                        phi_e=np.where(m, 0.2 * (1 + 0.3 * rng.standard_normal(m.shape)), 0.0),
                        mask=m, spacing=50.0, origin=(0.0, 0.0), source=None)
    r = infer_rates(f, method="direct", radius=3)
    flags = " ".join(r.diagnostics["flags"])
    assert "low reproducibility" in flags
    assert "negative" in flags                        # the closed form goes negative in noise
    assert "low reproducibility" in r.summary()["flags"]
    # summary() joins the flags with "; ", so no flag may hold the separator itself
    from chromflow.inverse.result import split_flags

    assert split_flags(r.summary()["flags"]) == r.diagnostics["flags"]


@pytest.mark.parametrize("level, sparse", [(0.01, False), (0.3, True)])
def test_sparse_data_are_flagged_from_the_noise_share(steady, level, sparse):
    from chromflow.inverse import SPARSE_NOISE_SHARE, SPARSE_NOISE_SHARE_READ

    r = infer_rates(_noisy(steady, level, 7), method="direct", radius=3, uncertainty=False)
    shares = [r.diagnostics["noise"][c]["share"] for c in ("phi_h", "phi_e")]
    read = [r.diagnostics["noise"][c]["share_read"] for c in ("phi_h", "phi_e")]
    flagged = any(f.startswith("sparse data") for f in r.diagnostics["flags"])
    by_rule = np.mean(shares) >= SPARSE_NOISE_SHARE or np.mean(read) >= SPARSE_NOISE_SHARE_READ
    assert flagged == sparse == by_rule, (shares, read, r.diagnostics["flags"])
    assert ("sparse data" in r.summary()["flags"]) == sparse


def test_the_sparse_flag_keeps_the_reading_line_where_cells_share_no_noise():
    """Independent noise between cells (coarse grids): the whole share is the high-pass reading,
    and a share between the two lines (0.7-0.84) is flagged by the reading's line; the message
    says which line fired. Noise that neighbours share raises the whole share only."""
    from chromflow.inverse import _flags

    mask = np.ones((8, 8), bool)
    rate = np.ones((8, 8))
    edge = np.zeros((8, 8), bool)

    def sparse(shares, read):
        flags = _flags(rate, mask, mask, 0.9, edge, shares, float("nan"), read)
        return [f for f in flags if f.startswith("sparse data")]

    assert not sparse([0.6, 0.7], [0.6, 0.7])
    (between,) = sparse([0.76, 0.8], [0.76, 0.8])
    assert "high-pass reading alone" in between and ">= 0.7" in between
    (whole,) = sparse([0.85, 0.87], [0.6, 0.62])   # an image: the reading misses the shared part
    assert ">= 0.84" in whole and "reading alone" not in whole
    assert not sparse([0.8, 0.82], [0.6, 0.62])


def test_a_map_that_runs_against_the_ratio_is_flagged():
    """To leading order lambda is phi_h / phi_e; a map anti-correlated with the smoothed ratio
    is set by the transport term alone (seen on a real E. coli file, not chromatin)."""
    from chromflow.inverse import MIN_RATIO_AGREEMENT, _flags

    mask = np.ones((20, 20), bool)
    edge = np.zeros_like(mask)
    rate = np.full(mask.shape, 1.2)
    against = _flags(rate, mask, mask, 0.9, edge, (0.3, 0.3), ratio_r=MIN_RATIO_AGREEMENT - 0.4)
    assert any("runs against phi_h/phi_e" in f for f in against)
    assert not any("; " in f for f in against)              # summary() joins flags with "; "
    for agreeing in (0.6, float("nan")):
        assert not _flags(rate, mask, mask, 0.9, edge, (0.3, 0.3), ratio_r=agreeing)


def test_every_result_carries_the_truth_free_smoothed_ratio(steady, tmp_path):
    from chromflow import RateMapResult

    data = _noisy(steady, 0.2, 11)
    r = infer_rates(data, method="direct", radius=3, uncertainty=False, seed=2)
    m = r.mask
    assert np.isfinite(r.ratio[m]).all() and np.isnan(r.ratio[~m]).all()
    info = r.diagnostics["ratio"]
    assert info["halves"].startswith("data fission") and info["sigma_cells"] > 0   # 20 % noise: smoothed
    s = r.summary()
    assert s["ratio_sigma_cells"] == info["sigma_cells"]
    assert s["ratio_map_r"] == pytest.approx(_corr(r.rate, r.ratio, m))
    assert _corr(r.ratio, steady.rate, m) > 0.5
    # real halves of the localizations are used when the fields carry one
    half = (np.where(m, steady.phi_h, 0.0), np.where(m, steady.phi_e, 0.0))
    with_half = infer_rates(SimpleNamespace(**vars(data), half=half), method="direct", radius=3, uncertainty=False)
    assert with_half.diagnostics["ratio"]["halves"] == "localization halves"
    # saved and read back; a file without the array (an earlier release) reads as NaN
    r.save(tmp_path / "r.npz")
    back = RateMapResult.load(tmp_path / "r.npz")
    np.testing.assert_array_equal(back.ratio, r.ratio)
    with np.load(tmp_path / "r.npz") as z:
        old = {k: z[k] for k in z.files if k != "ratio"}
    np.savez(tmp_path / "old.npz", **old)
    assert np.isnan(RateMapResult.load(tmp_path / "old.npz").ratio).all()
    assert np.isnan(RateMapResult.load(tmp_path / "old.npz").summary()["ratio_map_r"])


def test_an_ensemble_keeps_the_quality_score_and_weight_of_its_first_fit(steady):
    """The split-half refit shares its start with the ensemble's first member; the other members
    differ by their own start, which is not noise of the data. So the score and the mixing weight
    are the single fit's, while the map is the members' mean."""
    f = _noisy(steady, 0.05, 8)
    one = infer_rates(f, iterations=120, uncertainty="noise", device="cpu", seed=0)
    two = infer_rates(f, iterations=120, uncertainty="noise", device="cpu", seed=0, ensemble=2)
    assert two.diagnostics["split_half_r"] == one.diagnostics["split_half_r"] > 0.5
    k1, k2 = (r.diagnostics["training"]["closed_form_weight"] for r in (one, two))
    assert k1 == k2
    m = steady.mask
    assert not np.allclose(one.rate[m], two.rate[m])                 # the map is the mean of two fits
    assert np.allclose(one.uncertainty[m], two.uncertainty[m])      # one fit's noise: an upper bound


def test_no_euchromatin_is_refused(steady):
    f = _noisy(steady, 0.0, 0)
    f.phi_e = np.where(f.mask, 1e-5, 0.0)
    with pytest.raises(InputError, match="euchromatin"):
        infer_rates(f, method="pinn", iterations=5)


def test_pinn_stops_on_held_out_cells_and_reports_it(steady):
    f = _noisy(steady, 0.05, 2)
    r = infer_rates(f, method="pinn", iterations=60, check_every=5, patience=0, seed=0, device="cpu",
                    uncertainty=False)
    tr = r.diagnostics["training"]
    assert tr["held_out_cells"] > 0 and 0 <= tr["best_iteration"] < 60
    held = r.loss_history["held_out"]
    assert np.isclose(min(held), tr["held_out_misfit"])
    # the data term ran on the fit cells only: the held-out misfit is measured, not fitted
    assert r.settings["held_out"] == 0.1


def test_network_is_needed_only_within_the_kernel_halo_of_the_nucleus():
    """The mollified fit evaluates its network on the nucleus widened by the kernel halo only:
    the layer's values on the nucleus must not depend on the field anywhere else."""
    import torch

    from chromflow.inverse.direct import mollifier_layer
    from chromflow.inverse.fit import _within_halo

    mask = nucleus_mask((40, 40), 12, 15, seed=2)
    layer = mollifier_layer(3.0)
    pad = layer.halo[0]
    needed = torch.as_tensor(_within_halo(mask, pad))
    rng = np.random.default_rng(0)
    g = torch.as_tensor(rng.standard_normal((1, 40 + 2 * pad, 40 + 2 * pad)))
    other = torch.where(needed, g, torch.as_tensor(rng.standard_normal(g.shape)) * 100)
    a, b = layer(g), layer(other)
    inside = torch.as_tensor(mask)
    for key in a:
        assert torch.equal(a[key][0][inside], b[key][0][inside]), key
        assert not torch.equal(a[key][0], b[key][0]), key  # the outside did change the rest
    assert needed.sum() < needed.numel()
    # so the fit convolves the bounding box of the needed cells only: its valid outputs are the
    # whole grid's on the cells of the box
    (y0, y1), (x0, x1) = [(int(i.min()), int(i.max()) + 1) for i in np.nonzero(needed.numpy())]
    assert (y1 - y0, x1 - x0) < tuple(needed.shape)
    c = layer(g[:, y0:y1, x0:x1])
    for key in a:
        # equal up to the summation order of a convolution on another array size (float64)
        torch.testing.assert_close(c[key][0], a[key][0][y0:y1 - 2 * pad, x0:x1 - 2 * pad], rtol=0, atol=1e-12,
                                   msg=key)


@pytest.mark.parametrize("method,backbone", [("pinn", "mlp"), ("pinn", "grid"), ("autodiff", "mlp")])
def test_fits_on_nucleus_cells_give_finite_maps_inside_nan_outside(steady, method, backbone):
    r = infer_rates(_noisy(steady, 0.03, 1), method=method, backbone=backbone, iterations=6, uncertainty=False,
                    device="cpu")
    for name in ("rate", "phi_h", "phi_e", "residual"):
        value = getattr(r, name)
        assert np.isfinite(value[r.mask]).all(), name
        assert np.isnan(value[~r.mask]).all(), name
    # the fitted fields start at the data's level (centre + scale * network), not at zero
    assert abs(np.nanmean(r.phi_h) / steady.phi_h[steady.mask].mean() - 1) < 0.5


def test_noise_share_is_known_noise_over_spread_and_reported(steady):
    from chromflow.inverse import noise_share

    rng = np.random.default_rng(0)
    m = np.ones((50, 50), bool)
    phi = np.sin(np.arange(2500) / 30.0).reshape(50, 50) + 0.1 * rng.standard_normal(m.shape)
    assert noise_share(phi, np.full(m.shape, 0.01), m) == pytest.approx(0.1 / np.std(phi), rel=1e-9)
    quiet = infer_rates(_noisy(steady, 0.002, 1), method="direct", radius=3, uncertainty=False)
    noisy = infer_rates(_noisy(steady, 0.2, 1), method="direct", radius=3, uncertainty=False)
    shares = [[r.diagnostics["noise"][c]["share"] for c in ("phi_h", "phi_e")] for r in (quiet, noisy)]
    assert max(shares[0]) < 0.05 < 0.3 < min(shares[1]), shares


def test_noise_share_and_fission_count_the_noise_neighbouring_cells_share(steady):
    """The same noise per cell, once independent between cells and once shared with neighbours
    (as rendering and resampling make it): the high-pass reads the second far lower, but the
    noise share (which sizes the network and fires the sparse-data flag) reads both alike, and
    fission draws its noise with the data's correlation."""
    rng = np.random.default_rng(21)
    m, rho, level = steady.mask, 0.3, 0.2

    def fields(shared):
        out = []
        for clean in (steady.phi_h, steady.phi_e):
            w = _filtered_noise(rng, m.shape, rho) if shared else rng.standard_normal(m.shape)
            out.append(np.where(m, clean * (1 + level * w), 0.0))
        return SimpleNamespace(phi_h=out[0], phi_e=out[1], mask=m, spacing=50.0, origin=(0.0, 0.0), source=None)

    white, shared = (infer_rates(fields(s), method="direct", radius=3) for s in (False, True))
    for c in ("phi_h", "phi_e"):
        a, b = white.diagnostics["noise"][c], shared.diagnostics["noise"][c]
        assert a["correlation"] < 0.08 and abs(b["correlation"] - rho) < 0.1, (a, b)
        assert b["variance_factor"] > 2.0 > 1.2 > a["variance_factor"]
        assert abs(b["share"] / a["share"] - 1) < 0.15, (a["share"], b["share"])
    assert "correlated" in shared.diagnostics["split_half"] and "halves" not in shared.diagnostics


def test_total_uncertainty_adds_the_inflated_bias_and_the_model_error_floor():
    from chromflow.inverse import _total_uncertainty

    mask = np.zeros((30, 30), bool)
    mask[3:27, 3:27] = True
    truth = np.where(mask, 1.0, np.nan)
    noise_var = np.where(mask, 0.04, 0.0)
    # a bootstrap refit that is off by exactly 0.3 everywhere: excess = 0.09 - 0.04
    boot = truth + 0.3
    sd, slope, share = _total_uncertainty(truth, noise_var, boot, truth, mask, mask, 3.0, inflation=2.0,
                                          floor=1.5)
    expected = np.sqrt(0.04 + 2.0 ** 2 * 0.05 + 1.5 ** 2 * 0.04)
    assert np.allclose(sd[mask], expected)
    assert share == pytest.approx(1 - 0.04 / expected ** 2)
    no_floor, _, _ = _total_uncertainty(truth, noise_var, boot, truth, mask, mask, 3.0, inflation=2.0)
    assert np.allclose(no_floor[mask], np.sqrt(0.04 + 4 * 0.05))


def test_network_uncertainty_carries_the_model_error_floor_of_each_zone(steady):
    from chromflow.inverse import EDGE_MODEL_ERROR_FLOOR, MODEL_ERROR_FLOOR
    from chromflow.inverse.result import edge_bias_zone

    f = _noisy(steady, 0.05, 3)
    noise_only = infer_rates(f, iterations=6, uncertainty="noise", device="cpu")
    full = infer_rates(f, iterations=6, uncertainty=True, device="cpu")
    m = full.mask
    deep_floor, edge_floor = MODEL_ERROR_FLOOR["pinn"], EDGE_MODEL_ERROR_FLOOR["pinn"]
    info = full.diagnostics["uncertainty"]
    assert info["model_error_floor"] == deep_floor > 0 and info["edge_model_error_floor"] == edge_floor > deep_floor
    zone = edge_bias_zone(m, f.spacing)
    assert info["edge_zone_cells"] == zone.sum() and zone.any() and (m & ~zone).any()
    # same seed, same fits: the full map is at least sqrt(1 + floor^2) times the noise part,
    # with the floor of the cell's zone
    ratio = full.uncertainty / noise_only.uncertainty
    assert ratio[m & ~zone].min() >= np.sqrt(1 + deep_floor ** 2) * (1 - 1e-6)
    assert ratio[zone].min() >= np.sqrt(1 + edge_floor ** 2) * (1 - 1e-6)
    assert np.allclose(full.rate[m], noise_only.rate[m])


def test_total_uncertainty_takes_per_cell_factors():
    """Per-cell inflation and floor (the two zones) give each cell its own error model."""
    from chromflow.inverse import _total_uncertainty

    mask = np.zeros((30, 30), bool)
    mask[3:27, 3:27] = True
    truth = np.where(mask, 1.0, np.nan)
    noise_var = np.where(mask, 0.04, 0.0)
    boot = truth + 0.3                                   # excess 0.05 everywhere
    left = np.zeros(mask.shape, bool)
    left[:, :15] = True
    sd, _, _ = _total_uncertainty(truth, noise_var, boot, truth, mask, mask, 3.0,
                                  inflation=np.where(left, 4.0, 1.0), floor=np.where(left, 2.0, 0.0))
    assert np.allclose(sd[mask & left], np.sqrt(0.04 * (1 + 4.0) + 16.0 * 0.05))
    assert np.allclose(sd[mask & ~left], np.sqrt(0.04 + 0.05))


# ------------------------------------------------------------------ rate channel and closed form
def test_closed_form_weight_known_answers():
    from chromflow.inverse import closed_form_weight

    rng = np.random.default_rng(5)
    shape = (80, 80)
    cells = np.ones(shape, bool)
    truth = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
    truth /= truth.std()
    draw = (lambda sd: sd * rng.standard_normal(shape))
    # a biased, noise-free rate channel against a nearly exact closed form: take the closed form
    smooth = ndimage.gaussian_filter(truth, 4)
    closed = truth + draw(0.01)
    assert closed_form_weight(smooth, closed, smooth, closed + draw(0.01), cells) > 0.99
    # an unbiased rate channel against a closed form that only adds noise: keep the channel
    rate = truth + draw(0.05)
    noisy = truth + draw(1.0)
    assert closed_form_weight(rate, noisy, rate + draw(0.05), noisy + draw(1.0), cells) < 0.02
    # two unbiased readings with independent noise of equal variance: their mean (k = 1/2)
    a, b = truth + draw(0.3), truth + draw(0.3)
    assert closed_form_weight(a, b, a + draw(0.3), b + draw(0.3), cells) == pytest.approx(0.5, abs=0.05)
    # too few cells: no mixing
    few = np.zeros(shape, bool)
    few[0, :5] = True
    assert closed_form_weight(a, b, a, b, few) == 0.0


def test_network_map_mixes_in_the_closed_form_where_it_is_the_better_reading(steady):
    """Low noise: the fitted fields resolve more of the rate than the rate channel, so the
    reported map takes the closed form in and tracks the truth better; the residual reported is
    the reported map's."""
    f = _noisy(steady, 0.01, 4)
    channel = infer_rates(f, iterations=300, uncertainty=False, device="cpu", seed=0)
    mixed = infer_rates(f, iterations=300, uncertainty="noise", device="cpu", seed=0)
    m = steady.mask
    k = mixed.diagnostics["training"]["closed_form_weight"]
    assert channel.diagnostics["training"]["closed_form_weight"] == 0.0     # no fission refit, no mixing
    assert 0.3 < k <= 1.0
    assert mixed.summary()["closed_form_weight"] == k and mixed.summary()["network"] == "48x4"
    # measured 0.981 against 0.976
    assert _corr(mixed.rate, steady.rate, m) > _corr(channel.rate, steady.rate, m) + 0.003
    # the reported residual belongs to the reported rate: R changes by 2 (rate' - rate) phi_e
    shift = 2 * (mixed.rate - channel.rate) * channel.phi_e
    expected = channel.residual + shift
    # the two terms nearly cancel (the mixed map is close to the closed form, whose residual is
    # ~0), so the tolerance is set by the terms, not by their tiny sum: float32 fields that
    # differ by 3e-8 between the runs give residuals that differ by ~1e-5 through lap^2
    assert np.allclose(mixed.residual[m], expected[m], rtol=1e-3, atol=1e-3 * np.abs(shift[m]).max())
    # the channel's own residual would be wrong by the whole shift
    assert np.abs(channel.residual - expected)[m].max() > 100 * 1e-3 * np.abs(shift[m]).max()


def test_ratio_weight_follows_the_noise_share():
    assert [ratio_weight(x) for x in (0.0, 0.03, RATIO_WEIGHT_SHARES[0])] == [0.0, 0.0, 0.0]
    assert ratio_weight(np.mean(RATIO_WEIGHT_SHARES)) == pytest.approx(RATIO_WEIGHT / 2)
    assert ratio_weight(RATIO_WEIGHT_SHARES[1]) == ratio_weight(1.0) == ratio_weight(np.nan) == RATIO_WEIGHT


def test_low_noise_fields_keep_the_network_map(steady):
    """Fields with 1 % noise: no ratio in the map (it would only add the transport error)."""
    r = infer_rates(_noisy(steady, 0.01, 4), iterations=2, uncertainty=False, device="cpu", seed=0)
    assert r.diagnostics["training"]["ratio_weight"] == 0.0


def _blurred_noisy_fields(steady, relative_noise=0.3, seed=5):
    """The steady state with relative noise, then blurred by a cell within the mask (as a render
    blurs counts): noisy data the model does not describe."""
    rng = np.random.default_rng(seed)
    m = steady.mask

    def blurred(a):
        num = ndimage.gaussian_filter(np.where(m, a * (1 + relative_noise * rng.standard_normal(m.shape)), 0.0), 1.0)
        return np.where(m, num / np.maximum(ndimage.gaussian_filter(m * 1.0, 1.0), 1e-9), 0.0)

    return SimpleNamespace(phi_h=blurred(steady.phi_h), phi_e=blurred(steady.phi_e), mask=m, spacing=50.0,
                           origin=(0.0, 0.0), source=None)


def test_uncertainty_adds_the_shift_the_ratio_mix_made(steady, monkeypatch):
    """The error model is the network map's; the mix moves each cell by ``w (ratio - map)``,
    which the uncertainty adds in quadrature: exactly the mixed map minus the network's own
    (the same fit with ``ratio_weight=0``), and nothing when nothing is mixed in."""
    import chromflow.inverse as inv

    seen = []
    total = inv._total_uncertainty

    def spy(*args, **kwargs):
        out = total(*args, **kwargs)
        without = total(*args[:9])             # the same parts without the shift
        seen.append((np.broadcast_to(args[9], args[4].shape), out[0], without[0]))
        return out

    monkeypatch.setattr(inv, "_total_uncertainty", spy)
    f, m = _blurred_noisy_fields(steady), steady.mask
    plain = infer_rates(f, iterations=40, device="cpu", seed=0, ratio_weight=0)
    mixed = infer_rates(f, iterations=40, device="cpu", seed=0)
    (shift0, _, _), (shift, unc, unc_without) = seen
    assert not shift0.any()
    assert np.allclose(shift[m], (mixed.rate - plain.rate)[m], rtol=0, atol=1e-12) and np.abs(shift[m]).max() > 0
    assert np.allclose(unc[m] ** 2, unc_without[m] ** 2 + shift[m] ** 2, rtol=1e-12, atol=0)
    assert np.allclose(mixed.uncertainty[m], unc[m], rtol=0, atol=0)
    share = mixed.diagnostics["uncertainty"]["ratio_mix_share_of_variance"]
    assert 0 < share < 1 and plain.diagnostics["uncertainty"]["ratio_mix_share_of_variance"] == 0


def test_ratio_weight_mixes_the_smoothed_ratio_into_the_map(steady):
    """``ratio_weight``: the map is the network's plus that share of the smoothed ratio, exactly;
    the residual, the refit and the record follow it. Fields blurred by a cell after the noise
    (as a render blurs counts), which the model does not describe: there the network's map and
    the ratio err differently, and their mix tracks the truth better than either."""
    m = steady.mask
    f = _blurred_noisy_fields(steady)
    plain = infer_rates(f, iterations=300, uncertainty="noise", device="cpu", seed=0, ratio_weight=0)
    mixed = infer_rates(f, iterations=300, uncertainty="noise", device="cpu", seed=0)     # "auto"
    assert plain.diagnostics["training"]["ratio_weight"] == 0.0 and plain.summary()["ratio_weight"] == 0.0
    # noise this strong (and correlated by the blur): the full weight
    assert mixed.summary()["ratio_weight"] == RATIO_WEIGHT == 0.4
    assert np.allclose(mixed.rate[m], (plain.rate + 0.4 * (plain.ratio - plain.rate))[m], rtol=0, atol=1e-12)
    shift = 2 * (mixed.rate - plain.rate) * plain.phi_e
    assert np.allclose(mixed.residual[m], (plain.residual + shift)[m], rtol=0, atol=1e-9)
    # "how far the physics moved the map from the ratio" reads the network's own map, not the mix
    assert mixed.summary()["ratio_map_r"] == pytest.approx(plain.summary()["ratio_map_r"], abs=1e-9)
    assert mixed.summary()["ratio_map_r"] < _corr(mixed.rate, mixed.ratio, m)
    # the report says the same: the network's own agreement, and that the ratio was mixed in
    from chromflow.report import report_caption

    texts = [" ".join(report_caption(r).split()) for r in (plain, mixed)]
    own = f"from the halves): r = {plain.summary()['ratio_map_r']:.2f}"
    assert own in texts[0] and own in texts[1]
    assert "mixes in 0.40 of that smoothed ratio" in texts[1] and "mixes in" not in texts[0]
    # the split-half score is the mixed map's: the ratio is the more reproducible reading
    assert mixed.diagnostics["split_half_r"] > plain.diagnostics["split_half_r"]
    # measured 0.917 against the network's 0.890 and the ratio's 0.861
    assert _corr(mixed.rate, steady.rate, m) > _corr(plain.rate, steady.rate, m) + 0.015
    assert _corr(mixed.rate, steady.rate, m) > _corr(plain.ratio, steady.rate, m) + 0.03
    with pytest.raises(ValueError, match="ratio_weight"):
        infer_rates(f, iterations=2, uncertainty=False, device="cpu", ratio_weight=1.5)


def test_network_size_follows_the_noise_share_unless_given(steady):
    from chromflow.inverse import LOW_NOISE_SHARE, NETWORK_SIZE, network_size

    assert network_size([0.03, 0.1])[:2] == NETWORK_SIZE["low noise"]
    assert network_size([0.03, LOW_NOISE_SHARE + 0.01])[:2] == NETWORK_SIZE["default"]
    assert network_size([np.nan, 0.1])[:2] == NETWORK_SIZE["default"]        # no interior: no claim
    assert network_size([0.03, 0.03], "fourier")[:2] == NETWORK_SIZE["default"]
    quiet = infer_rates(_noisy(steady, 0.002, 1), iterations=2, uncertainty=False, device="cpu")
    noisy = infer_rates(_noisy(steady, 0.2, 1), iterations=2, uncertainty=False, device="cpu")
    assert (quiet.settings["width"], quiet.settings["depth"]) == NETWORK_SIZE["low noise"]
    assert (noisy.settings["width"], noisy.settings["depth"]) == NETWORK_SIZE["default"]
    assert "noise share" in quiet.settings["network_size"]
    given = infer_rates(_noisy(steady, 0.002, 1), iterations=2, uncertainty=False, device="cpu", width=16)
    assert (given.settings["width"], given.settings["depth"]) == (16, NETWORK_SIZE["low noise"][1])


# ------------------------------------------------------------------ stopping on the other half
def test_validated_step_is_the_factor_times_the_half_step_on_a_check():
    from chromflow.inverse.fit import VALIDATION_STEP_FACTOR, _validated_step

    assert VALIDATION_STEP_FACTOR == 2.0
    assert _validated_step(30, 1000, 10) == 60
    assert _validated_step(35, 1000, 10) == 70
    assert _validated_step(600, 1000, 10) == 999          # within the budget


def test_split_half_refit_chooses_the_step_of_both_fits(steady):
    """With the uncertainty on, the refit of one half leads: its misfit to the other half picks
    the step, the main fit (which follows) is returned at that step, and the refit's map is
    read there too."""
    from chromflow.inverse.fit import VALIDATION_STEP_FACTOR

    f = _noisy(steady, 0.05, 5)
    r = infer_rates(f, iterations=300, check_every=10, patience=3, uncertainty="noise", device="cpu", seed=0)
    tr = r.diagnostics["training"]
    assert tr["stopping"] == "misfit to the other half" and tr["stop_reason"].startswith("split half")
    step = tr["best_iteration"]
    assert step % 10 == 0 or step == 299
    assert np.isfinite(tr["other_half_misfit"]) and tr["other_half_misfit"] > 0
    # the main fit ran to the chosen step and not (much) beyond: it follows the leader
    assert step < tr["iterations_run"] <= step + 2
    assert step >= VALIDATION_STEP_FACTOR * 10 or step == 299
    off = infer_rates(f, iterations=300, check_every=10, patience=3, uncertainty=False, device="cpu", seed=0)
    assert off.diagnostics["training"]["stopping"] == "held-out cells"


def test_leading_refit_ends_when_the_main_fit_has_failed(steady):
    """The main fit signals its failure with a step of -1; the refit leading the stopping must
    then end at once instead of running its whole budget."""
    import torch

    from chromflow.inverse import DEFAULTS
    from chromflow.inverse.fit import StopSignal, fit_fields
    from chromflow.physics.chromatin import ChromatinModel

    f = _noisy(steady, 0.05, 6)
    m = steady.mask
    data = np.stack([f.phi_h, f.phi_e])
    weights = np.where(m, 1e4, 0.0) * np.ones((2, 1, 1))
    opts = dict(DEFAULTS["pinn"], width=8, depth=2, backbone="mlp", optimizer="adam", radius=3.0, check_every=5)
    common = dict(mask=m, spacing_um=0.05, opts=opts, model=ChromatinModel(), seed=0, device=torch.device("cpu"),
                  dtype=torch.float32, iterations=200, validate=data, follow=False)
    failed = StopSignal()
    failed.set(-1)
    out = fit_fields("pinn", data, weights, m, np.zeros_like(m), stop_event=failed, **common)
    assert out.stop_reason == "its companion fit failed" and out.iterations_run == 1
    alone = fit_fields("pinn", data, weights, m, np.zeros_like(m), stop_event=StopSignal(), **common)
    assert alone.iterations_run > 1


def test_fit_on_the_bounding_box_equals_the_whole_padded_grid():
    """The fit convolves only the bounding box of the cells its network is evaluated on: its
    fitted fields must be what the layer gives on the whole padded grid (an off-centre nucleus,
    so that the box and the grid differ on every side by different amounts)."""
    import torch

    from chromflow.inverse import DEFAULTS, _data_weights
    from chromflow.inverse.direct import mollifier_layer
    from chromflow.inverse.fit import _network, _within_halo, fit_fields
    from chromflow.models import build_backbone, grid_coordinates
    from chromflow.physics.chromatin import ChromatinModel

    shape = (48, 56)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = ((yy - 17) / 11.0) ** 2 + ((xx - 34) / 14.0) ** 2 <= 1.0
    rng = np.random.default_rng(4)
    phi_h = 0.3 + 0.05 * np.sin(xx / 5.0) + 0.01 * rng.standard_normal(shape)
    phi_e = 0.2 + 0.03 * np.cos(yy / 4.0) + 0.01 * rng.standard_normal(shape)
    data = np.stack([phi_h, phi_e])
    weights = _data_weights(data, [np.full(shape, 1e-4)] * 2, mask)
    opts = {**DEFAULTS["pinn"], "width": 16, "depth": 2, "backbone": "mlp", "optimizer": "adam", "radius": 3.0}
    out = fit_fields("pinn", data, weights, mask, np.zeros(shape, bool), mask=mask, spacing_um=0.05, opts=opts,
                     model=ChromatinModel(), seed=0, device=torch.device("cpu"), dtype=torch.float64, iterations=5)
    layer = mollifier_layer(3.0)
    pad = layer.halo[0]
    net = _network("mlp", opts, np.zeros(2), np.ones(2), 1.0, build_backbone).to(torch.float64)
    net.load_state_dict(out.state)
    coords, _ = grid_coordinates(shape, pad=pad, dtype=torch.float64)
    with torch.no_grad():
        fields = net(coords)[:, :2]
        needed = torch.as_tensor(_within_halo(mask, pad).reshape(-1))
        # outside the needed cells the fit holds its start constant, the fields' centre
        g = torch.where(needed[:, None], fields, net.centre.to(torch.float64)).T
        whole = layer(g.reshape(2, shape[0] + 2 * pad, shape[1] + 2 * pad))["u"]
    for c, fitted in enumerate((out.phi_h, out.phi_e)):
        np.testing.assert_allclose(fitted[mask], whole[c].numpy()[mask], rtol=0, atol=1e-12)
        assert np.isnan(fitted[~mask]).all()


def test_noise_correlated_beyond_the_model_is_flagged_and_never_read_as_low_noise(steady):
    """Noise smoothed over more than two cells (an image smoothed after rendering, pixels much
    coarser than the grid): the lag-1/lag-2 model cannot describe it and saturates. The map is
    flagged, and the low-noise decisions (network size, boundary layer) do not trust the share:
    on a held-out image of 40 nm pixels on 52 nm cells read by 0.4's capped neighbour-only model,
    the share read 0.33-0.40 and the low-noise network made a map of 0.51 (0.88 with the
    default one)."""
    from chromflow.inverse import _sizing_shares, network_size

    rng = np.random.default_rng(31)
    m = steady.mask

    def smoothed(clean):
        w = ndimage.gaussian_filter(rng.standard_normal(m.shape), 1.5)
        return np.where(m, clean * (1 + 0.5 * w / w.std()), 0.0)

    fields = SimpleNamespace(phi_h=smoothed(steady.phi_h), phi_e=smoothed(steady.phi_e), mask=m, spacing=50.0,
                             origin=(0.0, 0.0), source=None)
    r = infer_rates(fields, method="direct", radius=3, uncertainty=False)
    noise = r.diagnostics["noise"]
    assert all(noise[c]["correlation_saturated"] for c in ("phi_h", "phi_e")), noise
    assert any(f.startswith("correlated noise:") for f in r.diagnostics["flags"]), r.diagnostics["flags"]
    # a share that would read as low-noise is not trusted when its channel saturated
    models = [{"share": 0.2, "correlation_saturated": True}, {"share": 0.2, "correlation_saturated": False}]
    assert np.isnan(_sizing_shares(models)[0]) and _sizing_shares(models)[1] == 0.2
    assert network_size(_sizing_shares(models))[:2] == (32, 3)
    assert network_size([m["share"] for m in models])[:2] == (48, 4)
    # independent noise never saturates
    white = infer_rates(_noisy(steady, 0.2, 5), method="direct", radius=3, uncertainty=False)
    assert not any(f.startswith("correlated noise:") for f in white.diagnostics["flags"])


# ------------------------------------------------------------------------------------- effort
def test_the_effort_follows_the_domain_scale_agreement_of_noisy_well_described_data():
    from chromflow.inverse import DOMAIN_SCALE_AGREEMENT, LOW_NOISE_SHARE, _effort

    noisy = [{"share": LOW_NOISE_SHARE + 0.3, "correlation_saturated": False}] * 2
    assert _effort("auto", DOMAIN_SCALE_AGREEMENT + 0.01, noisy)[0]
    assert not _effort("auto", DOMAIN_SCALE_AGREEMENT - 0.01, noisy)[0]
    larger, why = _effort("auto", float("nan"), noisy)
    assert not larger and "no domain-scale reading" in why   # cells wider than 150 nm
    # fields with little noise run their whole budget already
    quiet = [{"share": 0.03, "correlation_saturated": False}] * 2
    assert not _effort("auto", 0.99, quiet)[0]
    # noise correlated beyond the model: fission halves share part of it and agree too well
    shared = [noisy[0], {**noisy[1], "correlation_saturated": True}]
    larger, why = _effort("auto", 0.9, shared)
    assert not larger and "not trusted" in why
    assert _effort("domain", 0.0, quiet)[0] and not _effort("standard", 0.99, noisy)[0]
    # one channel: phi_h / phi_e follow the total density, so the agreement is not the marks'
    assert _effort("auto", 0.9, noisy, "two-channel")[0]
    larger, why = _effort("auto", 0.9, noisy, "density")
    assert not larger and "one channel" in why
    assert _effort("domain", 0.9, noisy, "density")[0]


def test_cells_wider_than_the_domain_band_give_no_agreement_and_the_standard_effort(steady):
    """The agreement's band is in nm: on 200 nm cells it cannot be read (NaN, kept as JSON null in
    the diagnostics), the effort stays standard, and the summary and a saved file carry NaN."""
    from chromflow.evaluate import DOMAIN_BAND_MAX_CELL_UM

    f = _noisy(steady, 0.3, 3)
    f.spacing = 1000.0 * DOMAIN_BAND_MAX_CELL_UM + 50.0
    r = infer_rates(f, uncertainty=False, device="cpu", iterations=30, check_every=10, seed=0)
    eff = r.diagnostics["effort"]
    assert eff["domain_scale_agreement"] is None and not eff["larger"]
    assert "no domain-scale reading" in eff["reason"]
    s = r.summary()
    assert np.isnan(s["domain_scale_agreement"]) and s["effort"] == "standard"
    # forced, the larger effort runs there too, and the report says why without the reading
    from chromflow.report import report_caption

    forced = infer_rates(f, uncertainty=False, device="cpu", iterations=30, check_every=10, seed=0,
                         effort="domain", ensemble=2)
    assert forced.diagnostics["effort"]["domain_scale_agreement"] is None
    assert forced.summary()["effort"] == "domain"
    assert "larger effort: 2 fits of up to 30 steps (domain scale (effort='domain'))" in " ".join(
        report_caption(forced).split())


def test_the_report_caption_reads_nan_diagnostics_stored_as_json_null():
    """A result saved and loaded holds NaN diagnostics as None (JSON null): the caption skips them."""
    from chromflow.report import report_caption

    m = np.ones((8, 8), bool)
    r = SimpleNamespace(method="pinn", mask=m, edge=None, spacing=50.0, rate=np.ones(m.shape),
                        ratio=np.ones(m.shape),
                        diagnostics={"split_half_r": None, "flags": [], "ratio": {"sigma_cells": None},
                                     "effort": {"larger": True, "domain_scale_agreement": None,
                                                "reason": "domain scale (effort='domain')",
                                                "ensemble": 3, "iterations": 2000}})
    text = " ".join(report_caption(r).split())
    assert "smoothed phi_h/phi_e" not in text and "split-half" not in text
    assert "larger effort: 3 fits of up to 2000 steps" in text


def test_the_larger_effort_runs_more_members_at_the_first_members_step_unless_given(steady):
    from chromflow.inverse import DEFAULTS, DOMAIN_SCALE_EFFORT

    f = _noisy(steady, 0.2, 3)
    quick = dict(uncertainty=False, device="cpu", check_every=5, patience=2, seed=0)
    big = infer_rates(f, effort="domain", **quick)
    eff = big.diagnostics["effort"]
    assert eff["larger"] and (eff["iterations"], eff["ensemble"]) == tuple(DOMAIN_SCALE_EFFORT.values())
    assert (big.settings["iterations"], big.settings["ensemble"]) == tuple(DOMAIN_SCALE_EFFORT.values())
    assert -1 <= eff["domain_scale_agreement"] <= 1
    tr = big.diagnostics["training"]
    step = tr["best_iteration"]
    runs = tr["members_iterations_run"]
    assert len(runs) == 3 and all(step < n <= step + 2 for n in runs[1:])
    assert big.summary()["effort"] == "domain"
    assert np.isclose(big.summary()["domain_scale_agreement"], eff["domain_scale_agreement"])
    given = infer_rates(f, effort="domain", iterations=40, ensemble=1, **quick)
    assert (given.settings["iterations"], given.settings["ensemble"]) == (40, 1)
    plain = infer_rates(f, effort="standard", iterations=40, **quick)
    assert not plain.diagnostics["effort"]["larger"] and plain.settings["ensemble"] == DEFAULTS["pinn"]["ensemble"]
    assert plain.summary()["effort"] == "standard"
    assert infer_rates(f, method="direct", radius=3, uncertainty=False).summary()["effort"] == ""
    with pytest.raises(ValueError, match="effort"):
        infer_rates(f, effort="lots", **quick)


def test_an_ensemble_is_the_same_on_every_run(steady):
    """The members run two at a time in threads: the result must not depend on their timing."""
    f = _noisy(steady, 0.1, 4)
    a, b = (infer_rates(f, iterations=60, ensemble=3, uncertainty="noise", device="cpu", seed=1) for _ in range(2))
    np.testing.assert_array_equal(a.rate, b.rate)


def test_summary_median_uncertainty_is_the_typical_cells_where_a_few_absurd_cells_dominate_the_mean(steady):
    r = infer_rates(_noisy(steady, 0.1, 2), method="direct", radius=3, seed=0)
    m = r.mask & np.isfinite(r.uncertainty)
    s = r.summary()
    assert np.isclose(s["median_uncertainty"], np.median(r.uncertainty[m]))
    assert np.isclose(s["mean_uncertainty"], np.mean(r.uncertainty[m]))
    # one cell in a thousand where lambda is absurd (phi_e ~ 0) moves the mean, not the median
    ys, xs = np.nonzero(m)
    r.uncertainty[ys[:: 1000], xs[:: 1000]] = 1e6
    after = r.summary()
    assert after["mean_uncertainty"] > 10 * s["mean_uncertainty"]
    assert abs(after["median_uncertainty"] - s["median_uncertainty"]) < 0.05 * s["median_uncertainty"]
