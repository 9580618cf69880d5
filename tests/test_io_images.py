"""TIFF reader/writer: pixel size and origin round trips, foreign metadata, bad files."""
import warnings

import numpy as np
import pytest
import tifffile

from chromflow import Image
from chromflow.errors import InputError
from chromflow.io import DEFAULT_PIXEL_SIZE_NM, read_image, write_image


def _raises_with_path(path, match, **kwargs):
    with pytest.raises(InputError) as info:
        read_image(path, **kwargs)
    assert str(path) in str(info.value)
    assert match.lower() in str(info.value).lower(), str(info.value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.uint16, np.int32, bool])
@pytest.mark.parametrize("shape", [(7, 9), (3, 7, 9)])
def test_round_trip_exact(tmp_path, dtype, shape):
    rng = np.random.default_rng(1)
    data = (rng.uniform(0, 200, shape)).astype(dtype)
    origin = (-12.5, 1234.0625, 0.1)[-len(shape):]
    img = Image(data, pixel_size=16.384615384615383, origin=origin)  # not a short rational
    path = write_image(img, tmp_path / "img.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a written file must never trigger the no-size warning
        back = read_image(path)
    assert back.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.data, data)
    assert back.pixel_size == img.pixel_size
    assert back.origin == tuple(float(o) for o in origin)
    assert back.source == str(path)


def test_imagej_sees_the_right_pixel_size(tmp_path):
    path = write_image(Image(np.zeros((4, 4), np.float32), pixel_size=20.0), tmp_path / "ij.tif")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["unit"] == "micron"
        num, den = tif.pages[0].tags["XResolution"].value
        assert num / den == pytest.approx(50.0)  # pixels per micron = 1000 / 20 nm


def test_imagej_file_without_chromflow_keys(tmp_path):
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(path, np.zeros((5, 6), np.uint16), imagej=True,
                     resolution=(1 / 0.065, 1 / 0.065), metadata={"unit": "micron"})
    assert read_image(path).pixel_size == pytest.approx(65.0)
    tifffile.imwrite(path, np.zeros((5, 6), np.uint16), imagej=True, resolution=(0.1, 0.1),
                     metadata={"unit": "nm"})
    assert read_image(path).pixel_size == pytest.approx(10.0)


@pytest.mark.parametrize("size,unit,expected", [(0.0325, "\u00b5m", 32.5), (108.0, "nm", 108.0)])
def test_ome_physical_size(tmp_path, size, unit, expected):
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(path, np.zeros((4, 5), np.uint16),
                     metadata={"axes": "YX", "PhysicalSizeX": size, "PhysicalSizeXUnit": unit,
                               "PhysicalSizeY": size, "PhysicalSizeYUnit": unit})
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
    assert read_image(path).pixel_size == pytest.approx(expected)


def test_resolution_tags_cm_and_inch(tmp_path):
    cm = tmp_path / "cm.tif"
    tifffile.imwrite(cm, np.zeros((4, 5), np.uint8), resolution=(1e7 / 25.0, 1e7 / 25.0),
                     resolutionunit="CENTIMETER", metadata=None)
    assert read_image(cm).pixel_size == pytest.approx(25.0)
    inch = tmp_path / "inch.tif"
    tifffile.imwrite(inch, np.zeros((4, 5), np.uint8), resolution=(2.54e7 / 40.0, 2.54e7 / 40.0),
                     resolutionunit="INCH", metadata=None)
    assert read_image(inch).pixel_size == pytest.approx(40.0)


def test_missing_pixel_size_warns_and_uses_default(tmp_path):
    path = tmp_path / "bare.tif"
    tifffile.imwrite(path, np.zeros((4, 5), np.uint8), metadata=None)
    with pytest.warns(UserWarning, match="no pixel size") as record:
        img = read_image(path)
    assert str(path) in str(record[0].message)
    assert img.pixel_size == DEFAULT_PIXEL_SIZE_NM
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(path, pixel_size=12.0).pixel_size == 12.0


def test_stack_where_2d_expected(tmp_path):
    path = write_image(np.zeros((5, 4, 4), np.float32), tmp_path / "stack.tif", pixel_size=10.0)
    _raises_with_path(path, "stack of 5 planes", ndim=2)
    assert read_image(path).data.shape == (5, 4, 4)
    plane = write_image(np.zeros((4, 4), np.float32), tmp_path / "plane.tif", pixel_size=10.0)
    assert read_image(plane, ndim=2).ndim == 2


def test_bad_files(tmp_path):
    _raises_with_path(tmp_path / "missing.tif", "not found")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    _raises_with_path(empty, "empty")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(np.random.default_rng(0).bytes(2048))
    _raises_with_path(junk, "cannot read as TIFF")


def test_nan_image(tmp_path):
    data = np.ones((4, 4), np.float32)
    data[1, 2] = np.nan
    path = write_image(data, tmp_path / "nan.tif", pixel_size=20.0)
    _raises_with_path(path, "1 NaN")
    img = read_image(path, allow_nan=True)
    assert np.isnan(img.data[1, 2])


def test_write_bare_array_needs_pixel_size(tmp_path):
    with pytest.raises(InputError, match="pixel_size") as info:
        write_image(np.zeros((3, 3)), tmp_path / "a.tif")
    assert str(tmp_path / "a.tif") in str(info.value)


def test_explicit_pixel_size_overrides_image(tmp_path):
    path = write_image(Image(np.zeros((3, 3), np.float32), pixel_size=20.0), tmp_path / "a.tif",
                       pixel_size=7.5)
    assert read_image(path).pixel_size == 7.5


def test_failing_write_leaves_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "keep.tif"
    write_image(np.ones((3, 3), np.float32), path, pixel_size=20.0)
    before = path.read_bytes()

    def broken(file, *a, **k):
        with open(file, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError):
        write_image(np.zeros((3, 3), np.float32), path, pixel_size=20.0)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tif"]


def test_float64_stack_is_grey_planes_not_rgb(tmp_path):
    path = write_image(np.zeros((3, 4, 5)), tmp_path / "f64.tif", pixel_size=20.0)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
        assert tif.pages[0].samplesperpixel == 1


def test_rgb_rejected(tmp_path):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((4, 5, 3), np.uint8), photometric="rgb")
    _raises_with_path(path, "RGB", pixel_size=10.0)
