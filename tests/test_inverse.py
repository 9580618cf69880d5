"""Rate inference against simulated nuclei with a known rate map."""
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from chromflow.errors import CancelledError, GridError, InputError
from chromflow.inverse import RateMapResult, infer_rates
from chromflow.simulate import chromatin_steady_state

SPACING_NM = 100.0


def _nucleus(n=48):
    """Elliptic nucleus, smooth spatially varying rate, steady-state fields (independent FD solver)."""
    y, x = np.mgrid[0:n, 0:n].astype(float)
    c = (n - 1) / 2
    mask = np.hypot((y - c) / (0.44 * n), (x - c) / (0.40 * n)) < 1
    rate = 1.4 + 0.4 * np.sin(2 * np.pi * x / n + 0.4) * np.cos(1.6 * np.pi * y / n)
    h, e = chromatin_steady_state(rate, total=0.5, mask=mask, spacing_um=SPACING_NM / 1000)
    fields = SimpleNamespace(phi_h=h, phi_e=e, mask=mask, spacing=SPACING_NM, origin=(100.0, 200.0),
                             source="sim.tif")
    return fields, rate


@pytest.fixture(scope="module")
def nucleus():
    return _nucleus()


def _corr(a, b, where):
    return float(np.corrcoef(a[where], b[where])[0, 1])


def test_direct_uniform_fields_give_exact_ratio():
    m = np.zeros((32, 32), bool)
    m[6:26, 5:27] = True
    f = SimpleNamespace(phi_h=np.full((32, 32), 0.33), phi_e=np.full((32, 32), 0.22), mask=m, spacing=40.0,
                        origin=(0.0, 0.0), source=None)
    r = infer_rates(f, method="direct")
    assert np.allclose(r.rate[m], 1.5, atol=1e-12)
    assert np.isnan(r.rate[~m]).all()
    assert np.allclose(r.residual[m], 0, atol=1e-12)


def test_direct_recovers_rate_inside(nucleus):
    fields, rate = nucleus
    r = infer_rates(fields, method="direct", radius=3, uncertainty=False)
    # away from the edge (kernel footprint inside the nucleus) the closed form is near exact
    inner = ndimage.binary_erosion(fields.mask, iterations=5)
    assert _corr(r.rate, rate, inner) > 0.999
    assert np.nanmax(np.abs(r.rate - rate)[inner]) < 0.02
    assert r.method == "direct" and np.isnan(r.uncertainty).all()


def test_pinn_recovers_rate_from_noisy_fields(nucleus):
    """5 % noise: the mollified PINN beats the closed form at the same kernel radius."""
    fields, rate = nucleus
    m = fields.mask
    rng = np.random.default_rng(0)
    noisy = SimpleNamespace(**vars(fields))
    noisy.phi_h = fields.phi_h + 0.05 * fields.phi_h[m].std() * rng.standard_normal(m.shape)
    noisy.phi_e = fields.phi_e + 0.05 * fields.phi_e[m].std() * rng.standard_normal(m.shape)
    r = infer_rates(noisy, method="pinn", iterations=PINN_ITERATIONS, seed=0, device="cpu")
    direct = infer_rates(noisy, method="direct", radius=3, uncertainty=False)
    corr = _corr(r.rate, rate, m)
    # measured: pinn 0.992, direct 0.970 (radius 3)
    assert corr > PINN_MIN_CORR
    assert corr > _corr(direct.rate, rate, m) + 0.01
    assert np.isnan(r.rate[~m]).all() and np.isfinite(r.rate[m]).all()
    assert r.loss_history["total"][-1] < 0.1 * r.loss_history["total"][0]
    # the fitted fields are closer to the clean fields than the noisy data are
    assert np.abs(r.phi_h - fields.phi_h)[m].mean() < np.abs(noisy.phi_h - fields.phi_h)[m].mean()
    assert r.settings["iterations"] == PINN_ITERATIONS and r.device == "cpu"


PINN_ITERATIONS = 300
PINN_MIN_CORR = 0.98


def test_autodiff_method_runs():
    """method="autodiff" (Taylor-mode derivatives, tested in tests/test_autodiff.py) fits and lowers the loss."""
    n = 10
    m = np.ones((n, n), bool)
    yy, xx = np.mgrid[0:n, 0:n] / n
    fields = SimpleNamespace(phi_h=0.3 + 0.02 * np.sin(2 * yy + xx), phi_e=0.2 + 0.01 * np.cos(xx), mask=m,
                             spacing=SPACING_NM, origin=(0.0, 0.0), source=None)
    r = infer_rates(fields, method="autodiff", iterations=40, lr=1e-2, width=16, depth=2, device="cpu")
    assert r.method == "autodiff" and np.isfinite(r.rate).all() and np.isfinite(r.residual).all()
    assert r.loss_history["total"][-1] < r.loss_history["total"][0]


def test_deterministic_on_cpu(nucleus):
    fields, _ = nucleus
    a = infer_rates(fields, method="pinn", iterations=15, seed=3, device="cpu")
    b = infer_rates(fields, method="pinn", iterations=15, seed=3, device="cpu")
    c = infer_rates(fields, method="pinn", iterations=15, seed=4, device="cpu")
    assert np.array_equal(a.rate, b.rate, equal_nan=True)
    assert not np.array_equal(a.rate, c.rate, equal_nan=True)


def test_ensemble_gives_uncertainty(nucleus):
    fields, _ = nucleus
    r = infer_rates(fields, method="pinn", iterations=20, ensemble=2, device="cpu")
    m = fields.mask
    assert np.isfinite(r.uncertainty[m]).all() and (r.uncertainty[m] > 0).all()
    assert np.isnan(r.uncertainty[~m]).all()


def test_progress_and_cancel(nucleus):
    fields, _ = nucleus
    calls = []
    infer_rates(fields, method="pinn", iterations=10, log_every=5, progress=lambda d, t, msg: calls.append((d, t)))
    # the fit, then the bootstrap refit of the uncertainty: one bar of 2 x 10 steps
    assert calls and calls[-1] == (20, 20) and (5, 20) in calls
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    calls.clear()
    infer_rates(fields, method="pinn", iterations=10, log_every=5, uncertainty=False,
                progress=lambda d, t, msg: calls.append((d, t)))
    assert calls[-1] == (10, 10) and (5, 10) in calls
    with pytest.raises(CancelledError):
        infer_rates(fields, method="pinn", iterations=10, cancel=lambda: True)
    event = threading.Event()
    event.set()
    with pytest.raises(CancelledError):
        infer_rates(fields, method="direct", cancel=event)


def test_errors():
    m = np.zeros((32, 32), bool)
    m[14:18, 14:18] = True
    f = SimpleNamespace(phi_h=np.full((32, 32), 0.3), phi_e=np.full((32, 32), 0.2), mask=m, spacing=50.0,
                        origin=(0.0, 0.0), source="tiny.tif")
    for method in ("direct", "pinn"):
        with pytest.raises(GridError, match="tiny.tif"):
            infer_rates(f, method=method, radius=3)
    m2 = np.zeros((32, 32), bool)
    m2[4:28, 4:28] = True
    e = np.full((32, 32), 1e-4)               # no euchromatin: lambda = ... / phi_e is meaningless
    bad = SimpleNamespace(phi_h=np.full((32, 32), 0.3), phi_e=e, mask=m2, spacing=50.0, origin=(0, 0), source="b.tif")
    for method in ("direct", "pinn"):
        with pytest.raises(InputError, match="euchromatin.*b.tif|b.tif.*euchromatin"):
            infer_rates(bad, method=method)
    good = SimpleNamespace(phi_h=np.full((32, 32), 0.3), phi_e=np.full((32, 32), 0.2), mask=m2, spacing=50.0,
                           origin=(0, 0), source=None)
    with pytest.raises(ValueError, match="pinn"):
        infer_rates(good, method="magic")
    with pytest.raises(ValueError, match="auto"):
        infer_rates(good, device="tpu")
    with pytest.raises(ValueError, match="mlp"):
        infer_rates(good, backbone="resnet")
    with pytest.raises(ValueError, match="unknown option"):
        infer_rates(good, learning_rate=1.0)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_result_save_load_round_trip(tmp_path, nucleus, suffix):
    fields, _ = nucleus
    r = infer_rates(fields, method="pinn", iterations=5, ensemble=2)
    path = tmp_path / f"result{suffix}"
    r.save(path)
    back = RateMapResult.load(path)
    for name in ("rate", "uncertainty", "residual", "phi_h", "phi_e", "mask"):
        assert np.array_equal(getattr(back, name), getattr(r, name), equal_nan=True)
    assert back.mask.dtype == bool and back.rate.dtype == np.float64
    assert back.spacing == r.spacing and back.origin == r.origin == (100.0, 200.0)
    assert back.loss_history == r.loss_history and back.settings == r.settings
    assert (back.method, back.device, back.source, back.timing) == (r.method, r.device, r.source, r.timing)
    assert list(tmp_path.iterdir()) == [path]  # atomic write leaves no temporary file
    with pytest.raises(InputError, match="nope.npz"):
        RateMapResult.load(tmp_path / "nope.npz")


def test_summary_and_image(nucleus):
    fields, rate = nucleus
    r = infer_rates(fields, method="direct")
    s = r.summary()
    m = fields.mask
    assert s["nucleus_area_um2"] == pytest.approx(m.sum() * (SPACING_NM / 1000) ** 2)
    assert s["median_rate"] == pytest.approx(float(np.nanmedian(r.rate)))
    h, e = fields.phi_h[m], fields.phi_e[m]
    assert s["heterochromatin_fraction"] == pytest.approx(r.phi_h[m].sum() / (r.phi_h[m] + r.phi_e[m]).sum())
    assert 0.3 < s["heterochromatin_fraction"] < 0.8 and h.sum() > e.sum() * 0.5
    assert s["network"] == "" and np.isnan(s["closed_form_weight"])      # direct: no network, no mixing
    img = r.to_image("rate")
    assert img.pixel_size == SPACING_NM and img.origin == (100.0, 200.0) and img.source == "sim.tif"
    assert np.array_equal(img.data, r.rate, equal_nan=True)
    with pytest.raises(ValueError):
        r.to_image("nothing")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinn_on_cuda_matches_cpu_closely(nucleus):
    fields, rate = nucleus
    r = infer_rates(fields, method="pinn", iterations=PINN_ITERATIONS, device="cuda")
    assert r.device.startswith("cuda")
    assert _corr(r.rate, rate, fields.mask) > PINN_MIN_CORR


def test_smooth_potential_rates_recover_a_known_rate_map(nucleus):
    """The closed form with a smooth chemical potential on steady fields of the model (FD solver)."""
    from chromflow.inverse.direct import smooth_potential_rates

    f, rate = nucleus
    inner = ndimage.binary_erosion(f.mask, iterations=4)
    lam = smooth_potential_rates(f.phi_h, f.phi_e, f.mask, SPACING_NM / 1000, sigma_mu_um=0.2)
    assert np.isnan(lam[~f.mask]).all() and np.isfinite(lam[f.mask]).all()
    # noise-free: the potential's smoothing is the only error (measured 0.017 at most inside)
    assert np.abs(lam[inner] - rate[inner]).max() < 0.03
    assert _corr(lam, rate, f.mask) > 0.99
    # counting-like noise, 10 % of each field's spread: the transport is read from the smooth
    # potential, not from 4th derivatives of the noise (measured 0.995 at 300 nm)
    rng = np.random.default_rng(0)
    h = f.phi_h + 0.1 * f.phi_h[f.mask].std() * rng.standard_normal(f.phi_h.shape)
    e = f.phi_e + 0.1 * f.phi_e[f.mask].std() * rng.standard_normal(f.phi_h.shape)
    assert _corr(smooth_potential_rates(h, e, f.mask, SPACING_NM / 1000, sigma_mu_um=0.3), rate, f.mask) > 0.98
    # a wider potential smooths the rate: the error grows with the width
    wide = smooth_potential_rates(f.phi_h, f.phi_e, f.mask, SPACING_NM / 1000, sigma_mu_um=0.8)
    assert np.abs(wide[inner] - rate[inner]).max() > 2 * np.abs(lam[inner] - rate[inner]).max()


def test_smooth_potential_rates_bad_input():
    from chromflow.inverse.direct import smooth_potential_rates

    m = np.zeros((16, 16), bool)
    m[4:12, 4:12] = True
    h, e = np.full(m.shape, 0.3), np.full(m.shape, 0.2)
    with pytest.raises(ValueError, match="sigma_mu_um"):
        smooth_potential_rates(h, e, m, 0.05, sigma_mu_um=0.0)
    with pytest.raises(ValueError, match="sigma_h_um"):
        smooth_potential_rates(h, e, m, 0.05, sigma_h_um=-1.0)
    with pytest.raises(ValueError, match="no cells"):
        smooth_potential_rates(h, e, np.zeros_like(m), 0.05)
    # the outside never enters: zeros there change nothing
    a = smooth_potential_rates(h, e, m, 0.05)
    b = smooth_potential_rates(np.where(m, h, 0.0), np.where(m, e, 0.0), m, 0.05)
    np.testing.assert_allclose(a[m], b[m])
