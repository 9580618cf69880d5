"""napari reader: real ThunderSTORM / Picasso files, TIFF, nm placement, errors as notifications."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")

from napari_plugin import _layers
from napari_plugin._reader import get_reader, read_layers

from conftest import REALDATA as REAL
THUNDERSTORM = REAL / "colicoords" / "01_storm.csv"
THUNDERSTORM_OLD = REAL / "locan" / "Thunderstorm_dstorm_data.csv"
PICASSO = REAL / "picasso" / "testdata_locs.hdf5"
needs_real = pytest.mark.skipif(not THUNDERSTORM.exists(), reason="real data folder not present")


def test_get_reader_accepts_our_suffixes_only():
    for name in ["a.csv", "a.CSV", "b.hdf5", "b.h5", "c.tif", "c.tiff", ["a.csv"]]:
        assert callable(get_reader(name)), name
    for name in ["a.txt", "a.png", ["a.csv", "b.csv"]]:
        assert get_reader(name) is None, name


@needs_real
@pytest.mark.parametrize("path, pixel_size", [(THUNDERSTORM, 100.0), (THUNDERSTORM_OLD, None),
                                              (PICASSO, None)], ids=["storm", "old_storm", "picasso"])
def test_real_files_open_as_density_image_in_nm(path, pixel_size):
    import chromflow as cf

    locs = cf.read_localizations(path)
    if pixel_size is None:  # what napari calls on drag-and-drop: default 20 nm pixels
        [(data, kwargs, kind)] = get_reader(str(path))(str(path))
        pixel_size = 20.0
    else:  # the 40 um E. coli field at 20 nm is 3 Mpixel: slow on a shared test machine
        [(data, kwargs, kind)] = read_layers(path, pixel_size=pixel_size)
    assert kind == "image"
    assert kwargs["scale"] == (pixel_size, pixel_size)
    meta = kwargs["metadata"]
    assert meta["source"] == str(path)
    pd.testing.assert_frame_equal(meta["localizations"], locs)
    # a rendered density counts molecules (each one's blinks merged, as chromflow run does):
    # its sum is the number of rows after merging
    from chromflow.blinks import merge_blinks

    molecules = len(merge_blinks(locs))
    assert molecules < len(locs) or len(locs) < 50
    assert data.sum() == pytest.approx(molecules, rel=1e-6)
    assert meta["blinks"].startswith(f"{len(locs)} localizations -> {molecules} molecules")
    # the image spans the data: pixel centres (translate + i * scale) cover every localization
    y0, x0 = kwargs["translate"]
    ny, nx = data.shape
    half = pixel_size / 2
    assert y0 - half <= locs["y"].min() and locs["y"].max() <= y0 + (ny - 1) * pixel_size + half
    assert x0 - half <= locs["x"].min() and locs["x"].max() <= x0 + (nx - 1) * pixel_size + half


@needs_real
def test_points_option_keeps_nm_coordinates():
    import chromflow as cf

    locs = cf.read_localizations(PICASSO)
    [(coords, kwargs, kind)] = read_layers(PICASSO, as_points=True)
    assert kind == "points"
    np.testing.assert_allclose(coords, locs[["y", "x"]].to_numpy())
    assert len(coords) == 564
    assert "scale" not in kwargs  # points are already in nm world coordinates


def test_single_localization_lands_on_its_pixel(tmp_path, make_napari_viewer):
    """Known answer: a bright spot at (y, x) nm is at world (y, x) in the viewer."""
    import chromflow as cf

    rng = np.random.default_rng(0)
    background = pd.DataFrame({"x": rng.uniform(0, 4000, 300), "y": rng.uniform(0, 3000, 300)})
    spot = pd.DataFrame({"x": np.full(200, 2510.0), "y": np.full(200, 1230.0)})
    locs = pd.concat([background, spot], ignore_index=True)
    locs["frame"] = np.arange(len(locs)) + 1
    path = cf.write_localizations(locs, tmp_path / "spot.csv", format="thunderstorm")
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="chromflow")
    peak = np.unravel_index(np.argmax(layer.data), layer.data.shape)
    world = np.asarray(layer.data_to_world(peak))
    assert np.all(np.abs(world - [1230.0, 2510.0]) <= layer.scale[-1] / 2 + 1e-9)


def test_tiff_keeps_pixel_size_and_origin(tmp_path):
    import chromflow as cf

    image = cf.Image(np.arange(12.0).reshape(3, 4), pixel_size=35.0, origin=(100.0, -50.0))
    path = tmp_path / "density.tif"
    cf.write_image(image, path)
    [(data, kwargs, kind)] = read_layers(path)
    np.testing.assert_array_equal(data, image.data)
    assert kind == "image" and kwargs["scale"] == (35.0, 35.0)
    assert kwargs["metadata"]["source"] == str(path)
    back = cf.read_image(path)
    assert kwargs["translate"] == back.origin


def test_bad_file_becomes_notification_not_traceback(tmp_path, monkeypatch):
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    path = tmp_path / "broken.csv"
    path.write_text("frame,intensity\n1,2\n")
    result = get_reader(str(path))(str(path))
    assert result == [(None,)]  # napari's "handled, nothing to add"
    assert len(messages) == 1 and str(path) in messages[0]


def test_contrast_limits_are_robust_percentiles():
    data = np.arange(101.0)
    data[0] = -1e9  # an outlier does not move the limits
    assert _layers.robust_contrast_limits(data, low=1, high=99) == (1.0, 99.0)
    mask = np.zeros(101, bool)
    mask[50] = True
    lo, hi = _layers.robust_contrast_limits(data, mask)
    assert lo < hi and lo <= 50.0 <= hi
    assert _layers.robust_contrast_limits(np.full(3, np.nan)) == (0.0, 1.0)
