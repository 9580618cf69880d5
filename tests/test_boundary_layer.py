"""The envelope's transport layer: the ring-mean correction of network maps near the outline."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from chromflow import infer_rates
from chromflow.fields import distance_to_outline
from chromflow.inverse.boundary import boundary_layer_correction
from chromflow.inverse.direct import local_linear_smooth, mollified_transport
from chromflow.mollifier.kernels import kernel_1d
from chromflow.simulate import chromatin_steady_state
from chromflow.simulate.shapes import nucleus_mask, random_rate_map


@pytest.fixture(scope="module")
def no_flux():
    """A 96x96 no-flux nucleus at 50 nm cells, its steady fields, and fields too smooth for the layer."""
    shape = (96, 96)
    mask = nucleus_mask(shape, 40, 42, seed=5)
    rate = random_rate_map(shape, mean=1.2, amplitude=0.3, length_cells=20, seed=6)
    h, e = chromatin_steady_state(rate, 0.5, mask, spacing_um=0.05)
    w = kernel_1d(0, 8.0)      # a wide local-linear smoother: keeps the fields, loses the layer
    smooth = [np.where(mask, local_linear_smooth(f, mask, w), 0.0) for f in (h, e)]
    return SimpleNamespace(mask=mask, rate=np.where(mask, rate, np.nan), h=h, e=e, smooth=smooth)


def _closed_form(fh, fe, mask, radius=3.0):
    t, _ = mollified_transport(fh, fe, mask, 0.05, radius)
    return (fh - t) / np.where(mask, fe, 1.0)


def _ring_bias(values, truth, mask, rings):
    d = np.floor(distance_to_outline(mask)).astype(int)
    return np.array([np.nanmean((values - truth)[mask & (d == k)]) for k in rings])


def test_the_correction_restores_the_ring_means_of_the_data(no_flux):
    """Fields that miss the layer give a map biased along the outline; the correction, from the
    data's own transport, takes the ring-mean bias out where the kernel fits in the data."""
    f = no_flux
    m = f.mask
    biased = _closed_form(*f.smooth, m)
    correction, info = boundary_layer_correction(f.h, f.e, *f.smooth, m, m, 50.0)
    assert info["applied"] and 0.9 < info["weight"] <= 1.0 and info["rings"] >= 10
    rings = range(5, 12)                           # the first rings whose footprint is in the mask
    before = np.abs(_ring_bias(biased, f.rate, m, rings))
    after = np.abs(_ring_bias(biased - correction, f.rate, m, rings))
    assert before.max() > 0.01                     # the smooth fields do miss the layer
    assert after.max() < 0.25 * before.max(), (before, after)
    # nothing beyond the depth, nothing outside the nucleus
    depth = distance_to_outline(m) * 0.05
    assert np.all(correction[m & (depth > info["depth_um"])] == 0.0)
    assert np.all(correction[~m] == 0.0)


def test_noise_alone_is_not_corrected(no_flux):
    """Fitted fields equal to the truth, data with noise: the data's ring profile is noise, and
    the significance gate leaves the map alone."""
    f = no_flux
    m = f.mask
    for seed in range(5):
        rng = np.random.default_rng(seed)
        h = np.where(m, f.h * (1 + 0.05 * rng.standard_normal(m.shape)), 0.0)
        e = np.where(m, f.e * (1 + 0.05 * rng.standard_normal(m.shape)), 0.0)
        correction, info = boundary_layer_correction(h, e, f.h, f.e, m, m, 50.0)
        assert not info["applied"] and info["reason"] == "the ring profile is within the noise"
        assert np.all(correction == 0.0)


def test_a_nucleus_too_small_for_the_kernel_is_left_alone():
    m = np.zeros((20, 20), bool)
    m[7:13, 7:13] = True
    h = np.where(m, 0.3, 0.0)
    correction, info = boundary_layer_correction(h, h * 0.8, h, h * 0.8, m, m, 50.0)
    assert not info["applied"] and "footprint" in info["reason"] and np.all(correction == 0.0)


def test_infer_rates_applies_and_reports_it(no_flux):
    """The network's map is the uncorrected one minus the correction computed from its own
    fields; the quality score is the fit's; the edge zone's error model moves to the deep
    cells' by the weight; ``boundary_layer=False`` skips it all."""
    from chromflow.inverse import (BIAS_INFLATION, EDGE_BIAS_INFLATION, EDGE_MODEL_ERROR_FLOOR,
                                   MODEL_ERROR_FLOOR)
    from chromflow.inverse.result import edge_bias_zone

    f = no_flux
    rng = np.random.default_rng(1)
    m = f.mask
    # 0.1 % noise: low enough for the layer to show above it (at 1 % it does not, chi2 10 for 12 rings)
    fields = SimpleNamespace(phi_h=np.where(m, f.h * (1 + 0.001 * rng.standard_normal(m.shape)), 0.0),
                             phi_e=np.where(m, f.e * (1 + 0.001 * rng.standard_normal(m.shape)), 0.0),
                             mask=m, spacing=50.0, origin=(0.0, 0.0), source=None)
    kw = dict(iterations=40, uncertainty=True, device="cpu", edge=0)
    plain = infer_rates(fields, boundary_layer=False, **kw)
    fixed = infer_rates(fields, **kw)
    assert "boundary_layer" not in plain.diagnostics
    info = fixed.diagnostics["boundary_layer"]
    assert info["applied"] and 0.5 < info["weight"] <= 1.0
    correction, again = boundary_layer_correction(fields.phi_h, fields.phi_e, plain.phi_h, plain.phi_e, m, m, 50.0)
    assert again["applied"] and again["weight"] == pytest.approx(info["weight"])
    assert np.abs(correction[m]).max() > 0.01
    np.testing.assert_allclose(fixed.rate[m], plain.rate[m] - correction[m], atol=1e-9)
    assert fixed.diagnostics["split_half_r"] == plain.diagnostics["split_half_r"]
    w = info["weight"]
    unc = fixed.diagnostics["uncertainty"]
    assert unc["edge_bias_inflation"] == pytest.approx((1 - w) * EDGE_BIAS_INFLATION["pinn"] + w * BIAS_INFLATION["pinn"])
    assert unc["edge_model_error_floor"] == pytest.approx(
        (1 - w) * EDGE_MODEL_ERROR_FLOOR["pinn"] + w * MODEL_ERROR_FLOOR["pinn"])
    zone = edge_bias_zone(m, 50.0)
    np.testing.assert_allclose(fixed.uncertainty[m & ~zone], plain.uncertainty[m & ~zone])   # deep: the fit's
    assert np.all(fixed.uncertainty[zone] < plain.uncertainty[zone])                         # zone: narrower


def test_summary_and_report_caption_say_whether_the_layer_was_corrected():
    from chromflow.inverse import RateMapResult
    from chromflow.report import report_caption

    m = np.zeros((40, 40), bool)
    m[5:35, 5:35] = True
    arr = np.where(m, 1.0, np.nan)

    def result(layer):
        r = RateMapResult(rate=arr, uncertainty=arr * 0.1, residual=arr * 0, phi_h=arr * 0.3, phi_e=arr * 0.2,
                          mask=m, spacing=50.0, origin=(0.0, 0.0), method="pinn")
        r.diagnostics = {"flags": [], **({"boundary_layer": layer} if layer is not None else {})}
        return r

    applied = result({"applied": True, "weight": 0.91, "depth_um": 0.75})
    assert applied.summary()["edge_correction"] == pytest.approx(0.91)
    text = report_caption(applied)
    assert "transport layer corrected within 0.75 um" in text and "weight 0.91" in text
    skipped = result({"applied": False, "weight": 0.0, "reason": "the ring profile is within the noise"})
    assert skipped.summary()["edge_correction"] == 0.0
    assert "not corrected: the ring profile is within the noise" in report_caption(skipped)
    assert np.isnan(result(None).summary()["edge_correction"])
    assert "corrected" not in report_caption(result(None))


def test_noisy_data_skip_the_correction_and_say_why(no_flux):
    """Above the low-noise share (rendered counting data) the layer is not read at all."""
    from chromflow.inverse import LOW_NOISE_SHARE

    f = no_flux
    m = f.mask
    rng = np.random.default_rng(2)
    fields = SimpleNamespace(phi_h=np.where(m, f.h * (1 + 0.3 * rng.standard_normal(m.shape)), 0.0),
                             phi_e=np.where(m, f.e * (1 + 0.3 * rng.standard_normal(m.shape)), 0.0),
                             mask=m, spacing=50.0, origin=(0.0, 0.0), source=None)
    r = infer_rates(fields, iterations=10, uncertainty=False, device="cpu", edge=0)
    info = r.diagnostics["boundary_layer"]
    assert not info["applied"] and info["weight"] == 0.0
    assert f"not below {LOW_NOISE_SHARE}" in info["reason"]
    assert r.summary()["edge_correction"] == 0.0
