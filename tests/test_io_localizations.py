"""Localization readers/writers against real files and known answers."""
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from chromflow.errors import InputError
from chromflow.io import localizations, read_localizations, write_localizations


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _raises_with_path(path, match=None, **kwargs):
    with pytest.raises(InputError) as info:
        read_localizations(path, **kwargs)
    assert str(path) in str(info.value)
    if match:
        assert match.lower() in str(info.value).lower(), str(info.value)
    return info.value


# ----------------------------------------------------------------------------- real files
def test_picasso_real_file(realdata):
    path = realdata / "picasso" / "testdata_locs.hdf5"
    df = read_localizations(path)
    with h5py.File(path, "r") as h5:
        raw = h5["locs"][()]
    assert len(df) == 564 == len(raw)
    # the yaml has Camera.Pixelsize 160 in its first document and Pixelsize 130 in the last
    assert df.attrs == {"source": str(path), "format": "picasso", "pixel_size": 130.0}
    np.testing.assert_array_equal(df["x"].to_numpy(), raw["x"].astype(np.float64) * 130.0)
    np.testing.assert_array_equal(df["y"].to_numpy(), raw["y"].astype(np.float64) * 130.0)
    unc = (raw["lpx"].astype(np.float64) + raw["lpy"]) / 2 * 130.0
    np.testing.assert_allclose(df["uncertainty"], unc, rtol=1e-12)
    np.testing.assert_allclose(df["sigma"], (raw["sx"].astype(np.float64) + raw["sy"]) / 2 * 130.0,
                               rtol=1e-12)
    np.testing.assert_array_equal(df["frame"], raw["frame"])
    np.testing.assert_array_equal(df["photons"], raw["photons"])
    assert df["x"].dtype == np.float64 and df["frame"].dtype == np.int64
    assert list(df.columns[:6]) == ["x", "y", "frame", "photons", "sigma", "uncertainty"]
    assert {"bg", "lpx", "lpy", "net_gradient", "likelihood", "iterations"} <= set(df.columns)
    # spot check one row by hand
    assert df["x"].iloc[0] == pytest.approx(5.618027 * 130.0, rel=1e-6)


def test_picasso_without_yaml_needs_pixel_size(realdata, tmp_path):
    h5 = tmp_path / "copy_locs.hdf5"
    shutil.copy(realdata / "picasso" / "testdata_locs.hdf5", h5)
    err = _raises_with_path(h5, match="yaml")
    assert "missing" in str(err)
    df = read_localizations(h5, pixel_size=100.0)
    assert df.attrs["pixel_size"] == 100.0
    with h5py.File(h5, "r") as f:
        np.testing.assert_array_equal(df["x"], f["locs"]["x"].astype(np.float64) * 100.0)


def test_picasso_pixel_size_from_hdf5_metadata(realdata, tmp_path):
    h5 = tmp_path / "new_locs.hdf5"
    shutil.copy(realdata / "picasso" / "testdata_locs.hdf5", h5)
    with h5py.File(h5, "a") as f:
        f.create_dataset("metadata", data=yaml.safe_dump_all([{"Pixelsize": 160}, {"Pixelsize": 108.5}]))
    df = read_localizations(h5)
    assert df.attrs["pixel_size"] == 108.5


def test_picasso_explicit_pixel_size_overrides_with_warning(realdata):
    with pytest.warns(UserWarning, match="overrides"):
        df = read_localizations(realdata / "picasso" / "testdata_locs.hdf5", pixel_size=100.0)
    assert df.attrs["pixel_size"] == 100.0


def test_picasso_old_pandas_group_layout(tmp_path):
    path = tmp_path / "old_locs.hdf5"
    values = np.array([[1.0, 2.0, 0.1, 0.2], [3.0, 4.0, 0.3, 0.4]])
    with h5py.File(path, "w") as f:
        g = f.create_group("locs")
        g.create_dataset("axis0", data=np.array([b"x", b"y", b"lpx", b"lpy"]))
        g.create_dataset("block0_items", data=np.array([b"x", b"y", b"lpx", b"lpy"]))
        g.create_dataset("block0_values", data=values)
        g.create_dataset("block1_items", data=np.array([b"frame"]))
        g.create_dataset("block1_values", data=np.array([[5], [6]]))
    (tmp_path / "old_locs.yaml").write_text("Pixelsize: 100\n")
    df = read_localizations(path)
    np.testing.assert_allclose(df["x"], [100.0, 300.0])
    np.testing.assert_allclose(df["uncertainty"], [15.0, 35.0])
    assert df["frame"].tolist() == [5, 6]


def test_thunderstorm_colicoords_real_file(realdata):
    path = realdata / "colicoords" / "01_storm.csv"
    df = read_localizations(path)
    n_lines = sum(1 for line in path.read_text().splitlines() if line.strip())
    assert len(df) == n_lines - 1
    assert df.attrs["format"] == "thunderstorm" and df.attrs["pixel_size"] is None
    # "uncertainty_xy [nm]" (newer ThunderSTORM) -> uncertainty; intensity -> photons
    first = path.read_text().splitlines()[1].split(",")
    assert df["x"].iloc[0] == float(first[2]) and df["y"].iloc[0] == float(first[3])
    assert df["uncertainty"].iloc[0] == float(first[9])
    assert df["photons"].iloc[0] == float(first[5])
    assert df["chi2"].iloc[0] == float(first[8])
    assert df["frame"].min() == 1  # ThunderSTORM frames start at 1 and are kept as written
    assert {"id", "offset", "bkgstd", "chi2"} <= set(df.columns)


def test_thunderstorm_mangled_quotes_locan(realdata):
    path = realdata / "locan" / "Thunderstorm_dstorm_data.csv"
    df = read_localizations(path)
    assert len(df) == 19
    assert df.attrs["format"] == "thunderstorm"
    assert df["x"].iloc[0] == 1320.109670647555
    assert df["y"].iloc[0] == 26344.7124618434
    assert df["uncertainty"].iloc[0] == 22.93255128689051  # older "uncertainty [nm]"
    assert df["frame"].iloc[0] == 2001 and df["frame"].dtype == np.int64
    assert df["id"].iloc[0] == 73897 and df["id"].dtype == np.int64  # written as 73897.0


# ----------------------------------------------------------------------------- variants
def test_thunderstorm_tab_separated_without_id(tmp_path):
    path = _write(tmp_path / "ts.txt", '"frame"\t"x [nm]"\t"y [nm]"\t"uncertainty_xy [nm]"\n'
                                       "1\t10.5\t20.25\t5\n2\t11.5\t21.25\t6\n")
    df = read_localizations(path)
    assert df["x"].tolist() == [10.5, 11.5] and df["y"].tolist() == [20.25, 21.25]
    assert df["uncertainty"].tolist() == [5.0, 6.0]
    assert "id" not in df.columns


@pytest.mark.parametrize("unit", ["um", "\u00b5m", "\u03bcm", "micron"])
def test_thunderstorm_micrometre_units(tmp_path, unit):
    path = _write(tmp_path / "um.csv", f'"x [{unit}]","y [{unit}]","sigma [{unit}]"\n1.5,2.25,0.1\n')
    df = read_localizations(path)
    assert df["x"].iloc[0] == 1500.0 and df["y"].iloc[0] == 2250.0
    assert df["sigma"].iloc[0] == pytest.approx(100.0)


def test_pixel_units_need_pixel_size(tmp_path):
    path = _write(tmp_path / "px.csv", '"x [px]","y [px]"\n1.5,2\n')
    _raises_with_path(path, match="pixel_size")
    df = read_localizations(path, pixel_size=160)
    assert df["x"].iloc[0] == 240.0 and df["y"].iloc[0] == 320.0
    assert df.attrs["pixel_size"] == 160.0


def test_unknown_unit(tmp_path):
    path = _write(tmp_path / "bad.csv", '"x [furlong]","y [nm]"\n1,2\n')
    _raises_with_path(path, match="unknown length unit")
    ok = _write(tmp_path / "ok.csv", "x,y\n1,2\n")
    _raises_with_path(ok, match="unknown length unit", units="parsec")


def test_plain_csv_with_mapping_and_units(tmp_path):
    path = _write(tmp_path / "plain.csv", "X_pos,Y_pos,Frame,prec,extra\n1.5,2,0,0.01,a\n3,4.5,1,0.02,b\n")
    df = read_localizations(path, columns={"x": "X_pos", "y": "Y_pos", "uncertainty": "prec"},
                            units={"x": "um", "y": "um", "uncertainty": "um"})
    assert df.attrs["format"] == "csv"
    assert df["x"].tolist() == [1500.0, 3000.0] and df["y"].tolist() == [2000.0, 4500.0]
    assert df["uncertainty"].tolist() == pytest.approx([10.0, 20.0])
    assert df["frame"].tolist() == [0, 1]
    assert df["extra"].tolist() == ["a", "b"]


@pytest.mark.parametrize("header,scale", [("x,y", 1), ("X,Y", 1), ("x_nm,y_nm", 1),
                                          ("x (nm),y (nm)", 1), ("x_um,y_um", 1000),
                                          ("Position X,Position Y", 1)])
def test_plain_csv_auto_names(tmp_path, header, scale):
    path = _write(tmp_path / "auto.csv", f"{header},photons\n1.25,2.5,100\n")
    df = read_localizations(path)
    assert df["x"].iloc[0] == 1.25 * scale and df["y"].iloc[0] == 2.5 * scale
    assert df["photons"].iloc[0] == 100


def test_plain_csv_mapping_to_missing_column(tmp_path):
    path = _write(tmp_path / "plain.csv", "a,b\n1,2\n")
    err = _raises_with_path(path, columns={"x": "X_pos", "y": "b"})
    assert "X_pos" in str(err) and "'a'" in str(err)


def test_3d_kept(tmp_path):
    ts = _write(tmp_path / "ts3d.csv",
                '"frame","x [nm]","y [nm]","z [nm]","uncertainty_xy [nm]","uncertainty_z [nm]"\n'
                "1,1,2,-350.5,5,20\n")
    df = read_localizations(ts)
    assert df["z"].iloc[0] == -350.5 and df["uncertainty_z"].iloc[0] == 20.0
    plain = _write(tmp_path / "p3d.csv", "x,y,z\n1,2,0.3\n")
    df = read_localizations(plain, units="um")
    assert df["z"].iloc[0] == pytest.approx(300.0)


# ----------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    _raises_with_path(tmp_path / "nope.csv", match="not found")


def test_empty_file_and_header_only(tmp_path):
    _raises_with_path(_write(tmp_path / "empty.csv", ""), match="empty")
    _raises_with_path(_write(tmp_path / "head.csv", '"x [nm]","y [nm]"\n'), match="no localizations")
    _raises_with_path(_write(tmp_path / "head2.csv", "x,y\n"), match="no localizations")


def test_missing_xy_lists_columns(tmp_path):
    err = _raises_with_path(_write(tmp_path / "noy.csv", "x,photons\n1,2\n"), match="no y column")
    assert "photons" in str(err)


def test_nan_coordinates_raise_or_drop(tmp_path):
    path = _write(tmp_path / "nan.csv", "x,y\n1,2\nnan,3\n4,inf\n5,6\n")
    _raises_with_path(path, match="2 row(s)")
    df = read_localizations(path, on_invalid="drop")
    assert df["x"].tolist() == [1.0, 5.0]


def test_non_numeric_column(tmp_path):
    path = _write(tmp_path / "text.csv", "x,y\n1,2\nabc,3\n")
    _raises_with_path(path, match="non-numeric")


@pytest.mark.parametrize("bad", [0, -130, float("nan")])
def test_bad_pixel_size(realdata, bad):
    _raises_with_path(realdata / "picasso" / "testdata_locs.hdf5", match="pixel_size", pixel_size=bad)


def test_units_rejected_for_picasso(realdata):
    _raises_with_path(realdata / "picasso" / "testdata_locs.hdf5", match="camera pixels", units="um")


def test_not_hdf5(tmp_path):
    _raises_with_path(_write(tmp_path / "fake.hdf5", "not hdf5"), match="HDF5")


def test_unknown_format_argument(tmp_path):
    _raises_with_path(_write(tmp_path / "a.csv", "x,y\n1,2\n"), match="unknown format", format="xls")


# ----------------------------------------------------------------------------- round trips
@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    n = 200
    return pd.DataFrame({
        "x": rng.uniform(0, 40000, n), "y": rng.uniform(0, 40000, n), "z": rng.normal(0, 300, n),
        "frame": rng.integers(1, 5000, n), "photons": rng.uniform(100, 5000, n),
        "sigma": rng.uniform(80, 200, n), "uncertainty": rng.uniform(3, 30, n),
        "chi2": rng.uniform(0, 1e6, n),
    })


@pytest.mark.parametrize("fmt", ["thunderstorm", "csv"])
def test_text_round_trip_exact(tmp_path, table, fmt):
    path = tmp_path / "out.csv"
    write_localizations(table, path, format=fmt)
    back = read_localizations(path)
    assert back.attrs["format"] == fmt
    for col in table.columns:
        np.testing.assert_array_equal(back[col].to_numpy(), table[col].to_numpy(), err_msg=col)


@pytest.mark.parametrize("fmt", ["thunderstorm", "csv"])
def test_text_round_trip_text_columns_and_nan(tmp_path, fmt):
    df = pd.DataFrame({"x": [0.1, 1e-300, 12345.678901234567], "y": [1.0, 2.0, 3.0],
                       "channel": ["h3k9, me3", 'say "eu"', "b"], "chi2": [np.nan, 1.5, np.inf]})
    path = tmp_path / "t.csv"
    write_localizations(df, path, format=fmt)
    back = read_localizations(path)
    assert back["x"].tolist() == df["x"].tolist()
    assert back["channel"].tolist() == df["channel"].tolist()
    np.testing.assert_array_equal(back["chi2"], df["chi2"])


def test_thunderstorm_writer_header(tmp_path, table):
    path = tmp_path / "ts.csv"
    write_localizations(table, path, format="thunderstorm")
    header = path.read_text().splitlines()[0]
    assert header.startswith('"frame","x [nm]","y [nm]","z [nm]","sigma [nm]","intensity [photon]"')
    assert '"uncertainty [nm]"' in header


def test_picasso_round_trip(tmp_path, table):
    path = tmp_path / "out_locs.hdf5"
    write_localizations(table, path, format="picasso", pixel_size=117.0)
    info = list(yaml.safe_load_all((tmp_path / "out_locs.yaml").read_text()))
    assert info[-1]["Pixelsize"] == 117.0
    with h5py.File(path, "r") as h5:
        raw = h5["locs"][()]
    assert raw.dtype["x"] == np.float32 and raw.dtype["frame"] == np.uint32
    np.testing.assert_allclose(raw["x"], table["x"] / 117.0, rtol=1e-7)  # camera pixels
    back = read_localizations(path)
    assert back.attrs["pixel_size"] == 117.0
    for col in ("x", "y", "z", "photons", "sigma", "uncertainty", "chi2"):
        np.testing.assert_allclose(back[col], table[col], rtol=2e-7, err_msg=col)
    np.testing.assert_array_equal(back["frame"], table["frame"])


def test_picasso_writer_needs_pixel_size(tmp_path, table):
    with pytest.raises(InputError, match="pixel_size") as info:
        write_localizations(table, tmp_path / "a.hdf5", format="picasso")
    assert str(tmp_path / "a.hdf5") in str(info.value)


def test_real_picasso_rewritten_as_picasso(realdata, tmp_path):
    df = read_localizations(realdata / "picasso" / "testdata_locs.hdf5")
    write_localizations(df, tmp_path / "again.hdf5", format="picasso")  # pixel size from attrs
    back = read_localizations(tmp_path / "again.hdf5")
    np.testing.assert_allclose(back["x"], df["x"], rtol=1e-7)
    np.testing.assert_allclose(back["lpx"], df["lpx"], rtol=1e-6)


# ----------------------------------------------------------------------------- atomicity
def test_failing_csv_write_leaves_file_untouched(tmp_path, table, monkeypatch):
    path = tmp_path / "keep.csv"
    path.write_text("old content\n")

    def broken(frame, fh, *a, **k):
        fh.write("1,2,3\n")
        raise OSError("disk full")

    monkeypatch.setattr(localizations, "_write_csv_body", broken)
    with pytest.raises(OSError):
        write_localizations(table, path, format="thunderstorm")
    assert path.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv"]


def test_failing_picasso_write_leaves_both_files(tmp_path, table, monkeypatch):
    h5, info = tmp_path / "keep.hdf5", tmp_path / "keep.yaml"
    h5.write_bytes(b"old h5")
    info.write_text("Pixelsize: 1\n")

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(yaml, "safe_dump_all", broken)
    with pytest.raises(OSError):
        write_localizations(table, h5, format="picasso", pixel_size=100)
    assert h5.read_bytes() == b"old h5" and info.read_text() == "Pixelsize: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.hdf5", "keep.yaml"]


# ----------------------------------------------------------------------------- issue 12 readers
def test_picasso_picked_and_linked_files_keep_mean_frame(tmp_path):
    """After picking/linking/clustering Picasso stores the mean frame (float) of the merged
    localizations, with std_frame, n and group: accepted, under names that keep their meaning."""
    path = tmp_path / "picked_locs.hdf5"
    table = np.zeros(3, dtype=[("frame", "<f4"), ("std_frame", "<f4"), ("x", "<f4"), ("y", "<f4"),
                               ("std_x", "<f4"), ("std_y", "<f4"), ("lpx", "<f4"), ("lpy", "<f4"),
                               ("n", "<u4"), ("group", "<i4")])
    table["frame"] = [10.5, 200.25, 3.0]
    table["std_frame"] = [2.0, 15.5, 0.0]
    table["x"], table["y"] = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
    table["std_x"], table["std_y"] = [0.1, 0.2, 0.3], [0.05, 0.05, 0.05]
    table["lpx"], table["lpy"] = [0.1, 0.1, 0.2], [0.1, 0.3, 0.2]
    table["n"], table["group"] = [4, 12, 1], [0, 0, 1]
    with h5py.File(path, "w") as f:
        f.create_dataset("locs", data=table)
    (tmp_path / "picked_locs.yaml").write_text("Pixelsize: 100\n")
    df = read_localizations(path)
    assert "frame" not in df.columns  # not a camera frame any more
    np.testing.assert_allclose(df["frame_mean"], [10.5, 200.25, 3.0])
    np.testing.assert_allclose(df["std_frame"], [2.0, 15.5, 0.0])
    assert df["n"].tolist() == [4, 12, 1] and df["group"].tolist() == [0, 0, 1]
    np.testing.assert_allclose(df["x"], [100.0, 200.0, 300.0], rtol=1e-6)
    np.testing.assert_allclose(df["std_x"], [10.0, 20.0, 30.0], rtol=1e-6)  # camera pixels -> nm
    np.testing.assert_allclose(df["uncertainty"], [10.0, 20.0, 20.0], rtol=1e-6)
    # a plain table with fractional frames is still refused: there a frame is a camera frame
    _raises_with_path(_write(tmp_path / "f.csv", "x,y,frame\n1,2,1.5\n"), match="non-integer")


def test_truncated_last_line_is_refused(tmp_path, realdata):
    text = (realdata / "colicoords" / "01_storm.csv").read_text()
    cut = _write(tmp_path / "cut.csv", text[: len(text) - 30])
    err = _raises_with_path(cut, match="truncated")
    assert "of 10 fields" in str(err) and "no line end" in str(err)
    # a complete file without a final line end is fine
    lines = text.rstrip("\n").splitlines()
    whole = _write(tmp_path / "whole.csv", "\n".join(lines[:50]))
    assert len(read_localizations(whole)) == 49


def test_reader_hints_name_command_line_options(tmp_path):
    err = _raises_with_path(_write(tmp_path / "odd.csv", "east,north\n1,2\n"), match="--columns x=NAME,y=NAME")
    assert "render.columns" in str(err)
    err = _raises_with_path(_write(tmp_path / "px.csv", '"x [px]","y [px]"\n1.5,2\n'),
                            match="--camera-pixel-size")
    assert "render.camera_pixel_size" in str(err)
    # the mapping a user gives on the command line works
    df = read_localizations(tmp_path / "odd.csv", columns={"x": "east", "y": "north"}, units="um")
    assert (df["x"].iloc[0], df["y"].iloc[0]) == (1000.0, 2000.0)


@pytest.mark.parametrize("text, table", [
    ("MIT License\n\nCopyright (c) 2024 someone\n", False),
    ("Nuclei imaged on 2024-03-01, 100x objective\n", False),
    ("# notes\nsome words here\n", False),
    ('"x [nm]","y [nm]"\n', True),               # header only: a (broken) table, reported as such
    ("X_pos\tY_pos\n1\t2\n", True),               # unknown names but a row of numbers
    ("x y\n1 2\n", True),
    ("", True),                                    # an empty export is reported, not skipped
])
def test_sniff_localizations(tmp_path, text, table):
    path = _write(tmp_path / "f.txt", text)
    assert (localizations.sniff_localizations(path) is None) is table
