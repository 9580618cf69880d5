"""Tests of the sample-data writer: real formats, read back by chromflow.io, known ground truth."""
import json

import numpy as np
import pytest

from chromflow.io import read_image, read_localizations
from chromflow.simulate import make_sample_data, simulate_nucleus


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    return out, make_sample_data(out, seed=2, n_localizations=3000, grid=48, nucleus_um=6.0)


def test_files_and_truth_round_trip(written):
    out, paths = written
    sim = simulate_nucleus(grid=48, nucleus_um=6.0, seed=2, n_localizations=3000)
    truth = json.loads(paths["truth"].read_text())
    assert truth["localizations"]["total"] == 3000
    assert truth["grid"]["spacing_nm"] == pytest.approx(sim.spacing_nm)
    assert set(truth["files"].values()) <= {p.name for p in out.iterdir()}
    rate = read_image(paths["rate_truth"], allow_nan=True)
    assert rate.pixel_size == pytest.approx(sim.spacing_nm)
    assert rate.origin == pytest.approx(sim.origin)
    np.testing.assert_array_equal(np.isnan(rate.data), ~sim.mask)
    np.testing.assert_allclose(rate.data[sim.mask], sim.rate[sim.mask], rtol=1e-6)
    np.testing.assert_array_equal(read_image(paths["mask_truth"]).data, sim.mask)
    np.testing.assert_allclose(read_image(paths["phi_h_truth"]).data, sim.phi_h, rtol=1e-6, atol=1e-7)


def test_localization_files_match_the_simulation(written):
    _, paths = written
    sim = simulate_nucleus(grid=48, nucleus_um=6.0, seed=2, n_localizations=3000)
    ts = read_localizations(paths["thunderstorm"])
    assert ts.attrs["format"] == "thunderstorm" and len(ts) == 3000
    np.testing.assert_allclose(ts["x"], sim.localizations["x"], atol=0.051)
    assert ts["frame"].min() >= 1
    two = read_localizations(paths["two_channel"])
    np.testing.assert_array_equal(two["channel"], sim.localizations["channel"])
    pic = read_localizations(paths["picasso"])
    assert pic.attrs["pixel_size"] == 130.0
    np.testing.assert_allclose(pic["y"], sim.localizations["y"], atol=0.06)
    np.testing.assert_array_equal(pic["frame"], sim.localizations["frame"] - 1)  # Picasso counts from 0
    density = read_image(paths["density"])
    assert density.data.sum() == pytest.approx(3000, abs=5)


def test_same_seed_same_files(written, tmp_path):
    _, paths = written
    again = make_sample_data(tmp_path, seed=2, n_localizations=3000, grid=48, nucleus_um=6.0)
    for role in ("thunderstorm", "two_channel", "truth"):
        assert again[role].read_bytes() == paths[role].read_bytes()
