"""Tests of chromflow.nucleus.segment_nucleus on synthetic nuclei with a known outline."""
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from chromflow.errors import InputError, SegmentationError
from chromflow.image import Image
from chromflow.nucleus import segment_nucleus
from chromflow.render import render

FIELD_NM = 12_000.0
PS = 40.0


def _nucleus_locs(seed, centre=(6000.0, 6000.0), axes=(4500.0, 3200.0), angle=0.4, n_locs=60_000,
                  background=0.05, nucleoli=2):
    """Localizations of an elliptical nucleus with texture, a dense periphery and dark nucleoli,
    plus uniform background; returns the table and the true outline on the 40 nm render grid."""
    rng = np.random.default_rng(seed)
    n_grid = int(FIELD_NM / PS)
    yy, xx = (np.indices((n_grid, n_grid)) + 0.5) * PS
    c, s = np.cos(angle), np.sin(angle)

    def ellipse_r(y, x):
        dy, dx = y - centre[0], x - centre[1]
        return np.hypot((c * dx + s * dy) / axes[0], (-s * dx + c * dy) / axes[1])

    holes = [(centre[0] + rng.uniform(-0.4, 0.4) * axes[1], centre[1] + rng.uniform(-0.4, 0.4) * axes[0],
              rng.uniform(500, 800)) for _ in range(nucleoli)]
    texture = ndimage.gaussian_filter(rng.standard_normal((n_grid, n_grid)), 6)
    texture = np.clip(1 + 0.6 * texture / texture.std(), 0.2, None)

    def density(y, x):
        r = ellipse_r(y, x)
        iy = np.clip((y / PS).astype(int), 0, n_grid - 1)
        ix = np.clip((x / PS).astype(int), 0, n_grid - 1)
        d = np.where(r < 1, texture[iy, ix] * (1 + 1.5 * (r > 0.85)), 0.0)
        for hy, hx, hr in holes:
            d = np.where(np.hypot(y - hy, x - hx) < hr, 0.05 * d, d)
        return d

    # rejection sampling inside the bounding box of the ellipse
    r_max = max(axes)
    ys = rng.uniform(centre[0] - r_max, centre[0] + r_max, 8 * n_locs)
    xs = rng.uniform(centre[1] - r_max, centre[1] + r_max, 8 * n_locs)
    keep = rng.uniform(0, 2.5 * 1.0 + 2.5 * 3, ys.size) < density(ys, xs)
    ys, xs = ys[keep][:n_locs], xs[keep][:n_locs]
    n_bg = rng.poisson(background * n_locs)
    ys = np.concatenate([ys, rng.uniform(0, FIELD_NM, n_bg)])
    xs = np.concatenate([xs, rng.uniform(0, FIELD_NM, n_bg)])
    locs = pd.DataFrame({"x": xs, "y": ys, "uncertainty": rng.uniform(8, 25, ys.size)})
    locs.attrs["source"] = f"/data/nucleus_{seed}.csv"
    return locs, ellipse_r(yy, xx) < 1


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


FOV = (0.0, 0.0, FIELD_NM, FIELD_NM)


@pytest.mark.parametrize("seed, kwargs", [
    (0, {}),
    (1, {"centre": (4200.0, 7600.0)}),                     # off-centre
    (2, {"n_locs": 8_000}),                                # sparse
    (3, {"background": 0.6}),                              # heavy background
    (4, {"axes": (2500.0, 1800.0), "angle": 1.2}),         # small, rotated
    (5, {"nucleoli": 4}),                                  # more holes
])
def test_synthetic_nuclei_iou(seed, kwargs):
    locs, truth = _nucleus_locs(seed, **kwargs)
    image = render(locs, pixel_size=PS, fov=FOV)
    mask = segment_nucleus(image)
    assert mask.shape == image.shape and mask.dtype == bool
    assert _iou(mask, truth) > 0.9
    # one component, no holes (nucleoli filled)
    assert ndimage.label(mask)[1] == 1
    assert (ndimage.binary_fill_holes(mask) == mask).all()


def test_holes_kept_when_not_filling():
    # a dark ring-free hole well inside: with fill_holes=False it stays open
    yy, xx = np.indices((200, 200))
    r = np.hypot(yy - 100, xx - 100)
    density = np.where(r < 70, 10.0, 0.5)
    density[np.hypot(yy - 100, xx - 110) < 20] = 0.5
    filled = segment_nucleus(density, smoothing=3)
    open_ = segment_nucleus(density, smoothing=3, fill_holes=False)
    assert filled[100, 110] and not open_[100, 110]
    assert _iou(filled, r < 70) > 0.95


def test_ndarray_uses_pixel_units_and_manual_threshold():
    yy, xx = np.indices((160, 160))
    inner = np.hypot(yy - 80, xx - 80) < 30
    outer = np.hypot(yy - 80, xx - 80) < 60
    density = np.where(inner, 10.0, np.where(outer, 4.0, 0.2))
    auto = segment_nucleus(density, smoothing=2)
    assert _iou(auto, outer) > 0.95
    # a manual threshold between 4 and 10 selects only the dense core
    core = segment_nucleus(density, threshold=7.0, smoothing=2)
    assert _iou(core, inner) > 0.9
    # and an Image with 20 nm pixels: smoothing given in nm gives the same as the pixel value
    img = Image(density, pixel_size=20.0)
    np.testing.assert_array_equal(segment_nucleus(img, smoothing=40.0, min_area=1e4), auto)


@pytest.mark.parametrize("make, match", [
    (lambda rng: np.zeros((100, 100)), "empty"),
    (lambda rng: np.full((100, 100), 3.0), "constant"),
    (lambda rng: rng.poisson(2.0, (150, 150)).astype(float), "no nucleus|covers"),
    (lambda rng: rng.poisson(0.05, (150, 150)).astype(float), "no nucleus|covers"),
])
def test_no_nucleus_raises(make, match):
    rng = np.random.default_rng(7)
    img = Image(make(rng), pixel_size=40.0, source="/data/blank.tif")
    with pytest.raises(SegmentationError, match=match) as info:
        segment_nucleus(img)
    assert "/data/blank.tif" in str(info.value)


@pytest.mark.parametrize("n", [30, 300, 3_000, 30_000])
def test_noise_only_renders_raise(n):
    rng = np.random.default_rng(n)
    locs = pd.DataFrame({"x": rng.uniform(0, FIELD_NM, n), "y": rng.uniform(0, FIELD_NM, n)})
    locs.attrs["source"] = "/data/noise.csv"
    with pytest.raises(SegmentationError, match="/data/noise.csv"):
        segment_nucleus(render(locs, pixel_size=PS, fov=FOV))


def test_too_small_and_border_filling_raise():
    yy, xx = np.indices((200, 200))
    tiny = np.where(np.hypot(yy - 100, xx - 100) < 4, 10.0, 0.1)
    with pytest.raises(SegmentationError, match="min_area"):
        segment_nucleus(tiny, smoothing=2, min_area=500)
    # bright everywhere except one corner: covers most of the border
    most = np.where(np.hypot(yy, xx) > 60, 10.0, 0.1)
    with pytest.raises(SegmentationError, match="border|covers"):
        segment_nucleus(most, smoothing=2)


def test_bad_input_raises_input_error():
    with pytest.raises(InputError, match="2D"):
        segment_nucleus(np.ones((3, 10, 10)))
    bad = np.ones((50, 50))
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        segment_nucleus(Image(bad, 20.0, source="/data/nan.tif"))
