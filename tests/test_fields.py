"""Tests of chromflow.fields: the documented rule on simulated densities, geometry, errors."""
import numpy as np
import pytest
from scipy import ndimage

from chromflow.errors import GridError, InputError, SegmentationError
from chromflow.fields import MAX_TOTAL, ChromatinFields, chromatin_fields
from chromflow.image import Image

PS = 20.0
ORIGIN = (1010.0, -490.0)


def _aligned_case(seed=0):
    """A 128 x 128 image whose nucleus box (rows 20..99, cols 30..89) makes, with margin 0.1 and
    grid 32, a square of 96 pixels starting at pixel edge (12, 12): each grid cell is exactly a
    3 x 3 block of pixels, so the expected resampling is a plain block mean."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((128, 128), bool)
    mask[20:100, 30:90] = True
    yy, xx = np.indices(mask.shape)
    smooth = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 4)
    density = np.where(mask, 3.0 + 1.5 * smooth / smooth.std() + 0.01 * yy, 0.0).clip(0.05, None) * mask
    return Image(density, pixel_size=PS, origin=ORIGIN, source="/data/cell.tif"), mask


def _block_mean(a, start=12, block=3, n=32):
    sub = a[start:start + block * n, start:start + block * n]
    return sub.reshape(n, block, n, block).mean(axis=(1, 3))


def test_geometry_spacing_origin_exact():
    image, mask = _aligned_case()
    f = chromatin_fields(image, mask, grid=32)
    assert f.shape == (32, 32) and f.phi_h.dtype == np.float64 and f.mask.dtype == bool
    assert f.spacing == pytest.approx(3 * PS)
    assert f.spacing_um == pytest.approx(3 * PS / 1000)
    # centre of cell (0, 0) = centre of pixel (13, 13): origin + 13 pixels
    assert f.origin == pytest.approx((ORIGIN[0] + 13 * PS, ORIGIN[1] + 13 * PS))
    np.testing.assert_array_equal(f.mask, _block_mean(mask.astype(float)) > 0.5)
    assert f.source == "/data/cell.tif"
    img = f.to_image("phi_h")
    assert img.pixel_size == f.spacing and img.origin == f.origin and img.name == "phi_h"


def test_geometry_non_aligned_box_and_padding_beyond_image():
    # nucleus at the image corner: the padded square leaves the image (zeros there)
    mask = np.zeros((60, 80), bool)
    mask[0:25, 70:80] = True                      # box rows 0..25, cols 70..80 -> side 25
    density = np.where(mask, 2.0, 0.0)
    density[5, 75] = 9.0
    image = Image(density, pixel_size=10.0, origin=(5.0, 5.0))
    f = chromatin_fields(image, mask, grid=20, margin=0.2)
    side = 25 * 1.4                                # 35 pixels
    cell = side / 20
    y_start, x_start = 12.5 - side / 2, 75.0 - side / 2
    assert f.spacing == pytest.approx(cell * 10.0)
    assert f.origin == pytest.approx((5.0 + (y_start + cell / 2 - 0.5) * 10.0, 5.0 + (x_start + cell / 2 - 0.5) * 10.0))
    # cell centres land on the nucleus centre: the middle of the grid is the middle of the box
    centre_nm = np.array(f.origin) + f.spacing * (20 - 1) / 2
    assert centre_nm == pytest.approx((5.0 + 12.0 * 10.0, 5.0 + 74.5 * 10.0))


def test_resampling_conserves_the_mean():
    rng = np.random.default_rng(3)
    mask = np.zeros((200, 170), bool)
    yy, xx = np.indices(mask.shape)
    mask[((yy - 97.3) / 61) ** 2 + ((xx - 83.1) / 47) ** 2 < 1] = True
    # density only well inside the outline, so that every cell holding some is a nuclear cell
    core = ndimage.binary_erosion(mask, iterations=6)
    density = np.where(core, rng.gamma(8.0, 0.25, mask.shape), 0.0)
    f = chromatin_fields(Image(density, pixel_size=PS), mask, grid=64, split="uniform", split_range=(0.5, 0.5))
    # phi_t = a * resampled density (no clipping here); the integral of the resampled density
    # (sum * cell area) equals the image integral
    a = f.settings["scale"]
    cell_px = f.spacing / PS
    assert f.phi_t.max() < MAX_TOTAL
    assert (f.phi_t.sum() / a) * cell_px ** 2 == pytest.approx(density.sum(), rel=1e-10)


def test_single_channel_density_rule_exact():
    image, mask = _aligned_case()
    f = chromatin_fields(image, mask, grid=32, total_mean=0.4, split_range=(0.1, 0.7), split_percentiles=(10, 90))
    rho = _block_mean(image.data)
    m = _block_mean(mask.astype(float)) > 0.5
    # phi_t proportional to density inside, mean total_mean, zero outside
    expected_t = np.where(m, rho * 0.4 / rho[m].mean(), 0.0)
    np.testing.assert_allclose(f.phi_t, expected_t, rtol=1e-10, atol=1e-14)
    assert f.phi_t[f.mask].mean() == pytest.approx(0.4, rel=1e-12)
    assert (f.phi_h[~f.mask] == 0).all() and (f.phi_e[~f.mask] == 0).all()
    np.testing.assert_allclose(f.phi_h + f.phi_e, f.phi_t, atol=1e-15)
    # the share s follows the documented formula, stays in split_range and grows with density
    s = f.phi_h[m] / f.phi_t[m]
    q_lo, q_hi = np.percentile(rho[m], [10, 90])
    np.testing.assert_allclose(s, 0.1 + 0.6 * np.clip((rho[m] - q_lo) / (q_hi - q_lo), 0, 1), rtol=1e-10)
    assert s.min() == pytest.approx(0.1) and s.max() == pytest.approx(0.7)
    order = np.argsort(rho[m])
    assert (np.diff(s[order]) >= -1e-12).all()
    assert (f.phi_e[m] > 0).all()                  # euchromatin never vanishes inside
    assert np.allclose(f.phi_w, 1 - f.phi_t)


def test_uniform_split_and_smoothing_keep_the_mean():
    image, mask = _aligned_case(1)
    f = chromatin_fields(image, mask, grid=32, split="uniform", split_range=(0.3, 0.5), smoothing=120.0)
    s = f.phi_h[f.mask] / f.phi_t[f.mask]
    np.testing.assert_allclose(s, 0.4)
    assert f.phi_t[f.mask].mean() == pytest.approx(0.5, rel=1e-12)
    rough = chromatin_fields(image, mask, grid=32, split="uniform")
    # smoothing lowers the cell-to-cell variation but not the level
    assert np.diff(f.phi_t[f.mask]).std() < np.diff(rough.phi_t[rough.mask]).std()


def test_clipping_keeps_the_mean_and_the_cap():
    image, mask = _aligned_case(2)
    data = image.data.copy()
    data[50:56, 50:56] *= 40.0                     # a very dense spot
    f = chromatin_fields(Image(data, PS), mask, grid=32, total_mean=0.6)
    assert f.phi_t.max() == pytest.approx(MAX_TOTAL)
    assert f.phi_t[f.mask].mean() == pytest.approx(0.6, rel=1e-9)
    # away from the cap, still proportional to density
    rho = _block_mean(data)
    free = f.mask & (f.phi_t < MAX_TOTAL - 1e-9)
    ratio = f.phi_t[free] / rho[free]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-10)


def test_two_channels_recover_known_fields():
    # smooth truth on a fine 400 x 400 image (10 nm pixels), densities = labelling * truth
    n = 400
    yy, xx = (np.indices((n, n)) + 0.5) / n
    r2 = (yy - 0.5) ** 2 + (xx - 0.52) ** 2
    mask = r2 < 0.38 ** 2
    phi_h_true = 0.25 + 0.15 * np.sin(2 * np.pi * xx) * np.cos(2 * np.pi * yy)
    phi_e_true = 0.25 - 0.1 * np.sin(2 * np.pi * yy)
    t = (phi_h_true + phi_e_true)[mask].mean()
    phi_h_true, phi_e_true = phi_h_true * 0.5 / t, phi_e_true * 0.5 / t
    rho_h = np.where(mask, 120.0 * phi_h_true, 0.0)
    rho_e = np.where(mask, 60.0 * phi_e_true, 0.0)  # euchromatin labelled half as efficiently
    f = chromatin_fields(Image(rho_h, 10.0), mask, grid=64, euchromatin=Image(rho_e, 10.0), euchromatin_gain=2.0)
    assert f.settings["split"] == "two-channel"
    assert f.phi_t[f.mask].mean() == pytest.approx(0.5, rel=1e-12)
    # compare with the truth at the grid cell centres, away from the edge (cells cut by the
    # outline average in the empty outside)
    cy = (np.array(f.origin[0]) + f.spacing * np.arange(64)) / 10.0 + 0.5
    cx = (np.array(f.origin[1]) + f.spacing * np.arange(64)) / 10.0 + 0.5
    gy, gx = np.meshgrid(cy / n, cx / n, indexing="ij")
    truth_h = (0.25 + 0.15 * np.sin(2 * np.pi * gx) * np.cos(2 * np.pi * gy)) * 0.5 / t
    truth_e = (0.25 - 0.1 * np.sin(2 * np.pi * gy)) * 0.5 / t
    core = ndimage.binary_erosion(f.mask, iterations=2)
    assert np.abs(f.phi_h - truth_h)[core].max() < 0.01
    assert np.abs(f.phi_e - truth_e)[core].max() < 0.01
    # without the gain correction the euchromatin share is too low
    g1 = chromatin_fields(Image(rho_h, 10.0), mask, grid=64, euchromatin=rho_e)
    assert (g1.phi_e[core] < f.phi_e[core]).all()


def test_save_load_round_trip(tmp_path):
    image, mask = _aligned_case()
    f = chromatin_fields(image, mask, grid=32)
    path = tmp_path / "sub" / "fields.npz"
    f.save(path)
    g = ChromatinFields.load(path)
    np.testing.assert_array_equal(g.phi_h, f.phi_h)
    np.testing.assert_array_equal(g.phi_e, f.phi_e)
    np.testing.assert_array_equal(g.mask, f.mask)
    assert (g.spacing, g.origin, g.source) == (f.spacing, f.origin, f.source)
    assert g.settings == f.settings
    assert [p.name for p in path.parent.iterdir()] == ["fields.npz"]   # no temporary left
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz"):
        ChromatinFields.load(tmp_path / "junk.npz")


def test_bad_inputs():
    image, mask = _aligned_case()
    with pytest.raises(SegmentationError, match="/data/cell.tif"):
        chromatin_fields(image, np.zeros_like(mask))
    with pytest.raises(InputError, match="shape"):
        chromatin_fields(image, mask[:-1])
    with pytest.raises(InputError, match="contrast"):
        chromatin_fields(Image(mask * 2.0, PS, source="/data/flat.tif"), mask)
    with pytest.raises(GridError, match="grid"):
        chromatin_fields(image, mask, grid=8)
    with pytest.raises(GridError, match="from 16 to 2048"):  # refused before a multi-GB allocation
        chromatin_fields(image, mask, grid=1_000_000)
    tiny = np.zeros_like(mask)
    tiny[40:43, 40:43] = True
    with pytest.raises(GridError, match="pixels"):
        chromatin_fields(image, tiny)
    nan = image.data.copy()
    nan[50, 50] = np.nan
    with pytest.raises(InputError, match="NaN"):
        chromatin_fields(Image(nan, PS, source="/data/nan.tif"), mask)
    with pytest.raises(InputError, match="euchromatin shape"):
        chromatin_fields(image, mask, euchromatin=np.ones((10, 10)))
    for kwargs in ({"total_mean": 0.99}, {"split_range": (0.8, 0.2)}, {"split_percentiles": (90, 10)},
                   {"split": "magic"}, {"margin": -0.1}):
        with pytest.raises(InputError):
            chromatin_fields(image, mask, **kwargs)


def test_check_channels_refuses_a_missing_channel_inside_the_nucleus():
    from chromflow.fields import MIN_CHANNEL_SHARE, check_channels

    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    het = np.where(mask, 5.0, 0.0)
    eu_outside = np.where(mask, 0.0, 3.0)  # the euchromatin mark lies around the nucleus only
    with pytest.raises(InputError, match="euchromatin channel holds only 0%") as info:
        check_channels(het, eu_outside, mask, source="/data/two.csv")
    assert "/data/two.csv" in str(info.value) and "--euchromatin-channel" in str(info.value)
    with pytest.raises(InputError, match="heterochromatin channel"):
        check_channels(np.zeros((40, 40)), het, mask)  # swapped roles
    share = 1.5 * MIN_CHANNEL_SHARE  # just above the limit: accepted, and the share is returned
    assert check_channels(het, het * share / (1 - share), mask) == pytest.approx(share)
    # and chromatin_fields applies it
    with pytest.raises(InputError, match="euchromatin channel"):
        chromatin_fields(Image(het + 0.01 * np.indices((40, 40))[0], 20.0), mask, grid=16,
                         euchromatin=Image(eu_outside, 20.0))


def _two_channel_with_background(bg_h, bg_e, seed=0, neighbour=False):
    """Counts of a disc nucleus in a wide field of view, with uniform backgrounds."""
    rng = np.random.default_rng(seed)
    n = 300
    yy, xx = np.indices((n, n))
    mask = (yy - 150) ** 2 + (xx - 150) ** 2 < 80 ** 2
    phi_h = 0.3 + 0.1 * np.sin(xx / 9.0)
    phi_e = 0.25 + 0.05 * np.cos(yy / 7.0)
    lam_h = np.where(mask, 40.0 * phi_h, 0.0) + bg_h
    lam_e = np.where(mask, 40.0 * phi_e, 0.0) + bg_e
    if neighbour:  # a second nucleus in a corner of the field of view
        other = (yy - 20) ** 2 + (xx - 20) ** 2 < 40 ** 2
        lam_h, lam_e = lam_h + 12.0 * other, lam_e + 10.0 * other
    return (Image(rng.poisson(lam_h).astype(float), 20.0), Image(rng.poisson(lam_e).astype(float), 20.0),
            mask, phi_h, phi_e)


def test_background_is_measured_outside_and_subtracted():
    from chromflow.fields import estimate_background

    for neighbour in (False, True):
        h, e, mask, _, _ = _two_channel_with_background(1.5, 2.5, neighbour=neighbour)
        assert estimate_background(h, mask) == pytest.approx(1.5, rel=0.05)
        assert estimate_background(e, mask) == pytest.approx(2.5, rel=0.05)
    # a field of view cropped to the nucleus has no far pixels: nothing is subtracted
    assert estimate_background(h.data[70:230, 70:230], mask[70:230, 70:230], pixel_size=20.0) == 0.0
    clean = chromatin_fields(*_two_channel_with_background(0.0, 0.0)[:1], _two_channel_with_background(0.0, 0.0)[2],
                             grid=48, euchromatin=_two_channel_with_background(0.0, 0.0)[1])
    raw = chromatin_fields(h, mask, grid=48, euchromatin=e, background=None)
    auto = chromatin_fields(h, mask, grid=48, euchromatin=e)  # "auto" is the default
    fixed = chromatin_fields(h, mask, grid=48, euchromatin=e, background=(1.5, 2.5))
    assert auto.settings["background"] == pytest.approx([1.5, 2.5], rel=0.05)
    assert fixed.settings["background"] == [1.5, 2.5] and raw.settings["background"] is None
    core = ndimage.binary_erosion(clean.mask, iterations=2)
    ratio = [f.phi_h[core] / f.phi_e[core] for f in (clean, raw, auto, fixed)]
    # the background pulls the ratio towards its own (1.5 / 2.5, and its spread down);
    # subtracted, the ratio has the clean one's level and spread
    level = [np.median(r) for r in ratio]
    spread = [np.subtract(*np.percentile(r, [90, 10])) for r in ratio]
    assert level[1] / level[0] < 0.95 and spread[1] / spread[0] < 0.9
    for lv, sp in zip(level[2:], spread[2:]):
        assert lv / level[0] == pytest.approx(1.0, abs=0.02)
        assert sp / spread[0] == pytest.approx(1.0, abs=0.06)
    with pytest.raises(InputError, match="background"):
        chromatin_fields(h, mask, grid=48, background="median")
    with pytest.raises(InputError, match="background"):
        chromatin_fields(h, mask, grid=48, background=-1.0)
