"""Classical domain analysis (chromflow.domains): known answers, bad input, outputs, CLI."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import Voronoi, cKDTree

import chromflow as cf
from chromflow.domains import (DOMAIN_COLUMNS, analyze_domains, cross_check, dbscan_labels, domain_rates,
                               voronoi_areas)
from chromflow.errors import InputError
from chromflow.simulate import simulate_domains


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def cloud():
    return simulate_domains(domain_radius=80.0, spacing=480.0, seed=3)


@pytest.fixture(scope="module")
def dom(cloud):
    return _quiet(analyze_domains, cloud.localizations, downsample=1)


# ----------------------------------------------------------------------------------------------
# pieces
# ----------------------------------------------------------------------------------------------
def test_voronoi_areas_match_scipy_voronoi_polygons():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1000, (400, 2))
    ours = voronoi_areas(pts)
    vor = Voronoi(pts)
    checked = 0
    for i, region_index in enumerate(vor.point_region):
        region = vor.regions[region_index]
        if -1 in region or not region:
            assert np.isinf(ours[i])  # unbounded cell <-> point on the hull
            continue
        y, x = vor.vertices[region].T
        area = 0.5 * abs(np.dot(y, np.roll(x, -1)) - np.dot(x, np.roll(y, -1)))
        assert ours[i] == pytest.approx(area, rel=1e-9)
        checked += 1
    assert checked > 350


def test_voronoi_areas_lattice_and_duplicates():
    yy, xx = np.mgrid[0:6, 0:6]
    pts = np.c_[yy.ravel(), xx.ravel()] * 10.0
    areas = voronoi_areas(pts)
    inner = (yy.ravel() % 5 != 0) & (xx.ravel() % 5 != 0)
    np.testing.assert_allclose(areas[inner], 100.0)      # cocircular points: still exact
    assert np.isinf(areas[~inner]).all()
    doubled = voronoi_areas(np.vstack([pts, pts[14:15]]))  # one point twice: the copies share its cell
    assert doubled[14] == pytest.approx(50.0) and doubled[-1] == pytest.approx(50.0)
    with pytest.raises(InputError, match="distinct"):
        voronoi_areas(np.zeros((5, 2)))
    with pytest.raises(InputError, match="line"):
        voronoi_areas(np.c_[np.arange(6.0), np.arange(6.0)])


def test_dbscan_on_a_hand_checkable_cloud():
    # on a line: 10 is a core point (0, 10, 20 within 15 nm: 3 with itself), 0 and 20 its border
    # points; 100 is alone; 200 and 210 see only each other (2 < 3): noise
    pts = np.array([[0, 0], [0, 10], [0, 20], [0, 100], [0, 200], [0, 210]], float)
    assert dbscan_labels(pts, eps=15, min_samples=3).tolist() == [0, 0, 0, -1, -1, -1]
    # with min_samples=2 the last pair becomes a second cluster; eps just below 10 splits all
    assert dbscan_labels(pts, eps=15, min_samples=2).tolist() == [0, 0, 0, -1, 1, 1]
    assert dbscan_labels(pts, eps=9.9, min_samples=2).tolist() == [-1] * 6


def test_domain_rates_known_values():
    g_ac, g_me, lam = domain_rates([100.0, 100.0, 200.0], [300.0, 100.0, 150.0], diffusivity=2.0)
    assert g_ac[0] == pytest.approx(2.0 / 0.3 ** 2)
    assert lam[0] == pytest.approx(1 / 8) and g_me[0] == pytest.approx(g_ac[0] / 8)
    assert np.isnan(lam[1:]).all() and np.isnan(g_me[1:]).all()   # d <= R: no meaning


# ----------------------------------------------------------------------------------------------
# known answers
# ----------------------------------------------------------------------------------------------
def _matched(dom, sim):
    rows = dom.interior
    dist, j = cKDTree(np.c_[rows["y"], rows["x"]]).query(sim.centres)
    found = dist < sim.domain_radius
    return rows.iloc[j[found]], found


@pytest.mark.parametrize("radius, seed", [(60.0, 0), (100.0, 1), (150.0, 2)])
def test_known_domains_radius_spacing_lam_and_lad_thickness(radius, seed):
    sim = simulate_domains(domain_radius=radius, spacing=6 * radius, seed=seed)
    dom = _quiet(analyze_domains, sim.localizations, downsample=1)
    rows, found = _matched(dom, sim)
    assert found.all() and dom.summary["n_domains"] == len(sim.centres)   # every disc, nothing else
    np.testing.assert_allclose(rows["radius_nm"], radius, rtol=0.15)
    assert np.median(rows["radius_nm"]) == pytest.approx(radius, rel=0.10)
    np.testing.assert_allclose(rows["spacing_nm"], sim.spacing, rtol=0.10)
    np.testing.assert_allclose(rows["lam"], sim.lam, rtol=0.35)
    assert np.median(rows["lam"] / sim.lam) == pytest.approx(1.0, abs=0.15)
    assert dom.summary["lad_thickness_nm"] == pytest.approx(sim.lad_thickness, rel=0.15)
    assert dom.summary["nucleus_diameter_nm"] == pytest.approx(2 * sim.nucleus_radius, rel=0.03)
    assert dom.summary["n_lads"] >= 1
    assert not dom.interior["flag"].astype(bool).any()


def test_default_thinning_gives_the_same_answer():
    # four times the density thinned by 4 (the default) is the density of the known-answer cloud
    sim = simulate_domains(domain_radius=100.0, spacing=600.0, domain_density=0.06, background_density=0.012,
                           seed=4)
    dom = _quiet(analyze_domains, sim.localizations)
    assert dom.summary["n_analysed"] == len(sim.localizations) // 4
    rows, found = _matched(dom, sim)
    assert found.all()
    assert np.median(rows["radius_nm"]) == pytest.approx(100.0, rel=0.10)
    np.testing.assert_allclose(rows["spacing_nm"], sim.spacing, rtol=0.10)


def test_result_layout(dom, cloud):
    assert tuple(dom.domains.columns) == DOMAIN_COLUMNS
    assert dom.domains["peripheral"].dtype == bool
    s = dom.summary
    for key in ("n_domains", "n_lads", "mean_domain_diameter_nm", "lad_thickness_nm", "nucleus_diameter_nm",
                "nucleus_area_nm2", "boundary_length_nm", "n_localizations", "settings", "warnings"):
        assert key in s
    assert s["settings"]["eps"] == 30.0 and s["settings"]["min_cluster_size"] == 35
    assert s["n_localizations"] == len(cloud.localizations)
    assert dom.labels.shape == dom.density.shape == (len(dom.points),)
    assert dom.labels.max() == len(dom.domains) - 1
    assert np.array_equal(np.bincount(dom.labels[dom.labels >= 0]), dom.domains["n_localizations"].to_numpy())
    assert np.allclose(dom.boundary[0], dom.boundary[-1])
    lads = dom.domains[dom.domains["peripheral"]]
    assert lads["lam"].isna().all() and lads["flag"].str.contains("LAD").all()
    density, labels = dom.raster()
    assert density.data.shape == labels.shape and labels.max() == len(dom.domains)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
def _uniform_disc(n, radius, seed):
    rng = np.random.default_rng(seed)
    r = radius * np.sqrt(rng.random(n))
    t = 2 * np.pi * rng.random(n)
    return pd.DataFrame({"x": 3000 + r * np.cos(t), "y": 3000 + r * np.sin(t)})


def test_no_dense_region_is_an_empty_table_with_a_warning(tmp_path):
    locs = _uniform_disc(4000, 2000.0, 0)   # 0.0003 per nm^2: nothing clusters at eps 30 nm
    with pytest.warns(UserWarning, match="no dense region"):
        dom = analyze_domains(locs, downsample=1)
    assert len(dom.domains) == 0 and dom.summary["n_domains"] == 0
    assert any("no dense region" in w for w in dom.summary["warnings"])
    paths = dom.save(tmp_path, stem="empty")
    summary = json.loads(paths["summary"].read_text())
    assert summary["mean_domain_diameter_nm"] is None     # JSON null, not NaN
    assert pd.read_csv(paths["table"]).empty


def test_everything_in_one_cluster_is_warned():
    locs = _uniform_disc(45000, 1200.0, 1)  # uniform and dense (0.01 per nm^2): the dense half percolates
    with pytest.warns(UserWarning, match="one cluster covers"):
        analyze_domains(locs, downsample=1)


def test_fewer_than_six_domains_are_flagged():
    sim = simulate_domains(nucleus_radius=900.0, domain_radius=100.0, spacing=500.0, seed=0)
    assert 2 <= len(sim.centres) <= 5
    with pytest.warns(UserWarning, match="fewer than 5 neighbours"):
        dom = analyze_domains(sim.localizations, downsample=1)
    rows = dom.interior
    assert len(rows) == len(sim.centres)
    assert rows["flag"].str.contains("neighbour").all()
    assert (rows["n_neighbours"] == len(rows) - 1).all()
    assert np.isfinite(rows["lam"]).all()


def test_d_not_larger_than_r_is_flagged_not_a_silent_nan():
    rng = np.random.default_rng(5)
    parts = [_uniform_disc(int(0.003 * math.pi * 2000 ** 2), 2000.0, 5).to_numpy()[:, ::-1] - 3000]
    # a wide ring domain (R = 332 nm) around six small domains 250 nm from its centre: d = 250 < R
    r = np.sqrt(500 ** 2 + (600 ** 2 - 500 ** 2) * rng.random(5000))
    t = 2 * np.pi * rng.random(5000)
    parts.append(np.c_[r * np.sin(t), r * np.cos(t)])
    for k in range(6):
        c = 250 * np.array([np.sin(k * np.pi / 3), np.cos(k * np.pi / 3)])
        rr = 50 * np.sqrt(rng.random(150))
        tt = 2 * np.pi * rng.random(150)
        parts.append(c + np.c_[rr * np.sin(tt), rr * np.cos(tt)])
    pts = np.concatenate(parts) + 3000
    # the dense structures hold ~14 % of the localizations: threshold at the 85th percentile
    with pytest.warns(UserWarning, match="d <= R"):
        dom = analyze_domains(pts, downsample=1, density_percentile=85)
    assert len(dom.interior) == 7
    ring = dom.interior.loc[dom.interior["radius_nm"].idxmax()]
    assert ring["spacing_nm"] < ring["radius_nm"]
    assert "d<=R" in ring["flag"] and np.isnan(ring["lam"]) and np.isnan(ring["gamma_me"])
    assert np.isfinite(ring["gamma_ac"])
    small = dom.interior.drop(index=ring.name)
    assert np.isfinite(small["lam"]).all() and not small["flag"].str.contains("d<=R").any()


def test_duplicates_are_dropped_with_a_warning(cloud, dom):
    doubled = pd.concat([cloud.localizations, cloud.localizations.iloc[:5000]], ignore_index=True)
    with pytest.warns(UserWarning, match="5000 exact duplicate"):
        again = analyze_domains(doubled, downsample=1)
    pd.testing.assert_frame_equal(again.domains, dom.domains)


def test_3d_input_uses_xy_and_says_so(cloud, dom):
    locs = cloud.localizations.copy()
    locs["z"] = np.random.default_rng(0).normal(0, 200, len(locs))
    with pytest.warns(UserWarning, match="3D"):
        again = analyze_domains(locs, downsample=1)
    pd.testing.assert_frame_equal(again.domains, dom.domains)


@pytest.mark.parametrize("locs, match", [
    (pd.DataFrame({"x": [1.0, 2.0]}), "no 'y' column"),
    (pd.DataFrame({"x": [1.0, np.nan] * 30, "y": [1.0, 2.0] * 30}), "NaN"),
    (pd.DataFrame({"x": np.arange(20.0), "y": np.arange(20.0) ** 2}), "too few"),
    (np.zeros((10, 4)), "shape"),
])
def test_bad_tables_are_input_errors(locs, match):
    with pytest.raises(InputError, match=match):
        analyze_domains(locs, downsample=1)


@pytest.mark.parametrize("setting", [{"eps": 0}, {"density_percentile": 100}, {"min_samples": 1.5},
                                     {"downsample": 0}, {"peripheral_fraction": -0.1}])
def test_bad_settings_are_input_errors(cloud, setting):
    with pytest.raises(InputError, match="setting"):
        analyze_domains(cloud.localizations, **setting)


# ----------------------------------------------------------------------------------------------
# outputs, cross-check, CLI
# ----------------------------------------------------------------------------------------------
def test_save_writes_three_files_all_or_nothing(dom, tmp_path, monkeypatch):
    paths = dom.save(tmp_path / "out", stem="cell")
    assert sorted(p.name for p in paths.values()) == ["cell_domains.csv", "cell_domains.png",
                                                      "cell_domains_summary.json"]
    table = pd.read_csv(paths["table"])
    assert list(table.columns) == ["domain", *DOMAIN_COLUMNS] and len(table) == len(dom.domains)
    assert json.loads(paths["summary"].read_text())["n_domains"] == dom.summary["n_domains"]
    assert paths["figure"].read_bytes()[:4] == b"\x89PNG"

    def broken(self, title=None):
        raise RuntimeError("figure failed")
    monkeypatch.setattr(cf.DomainAnalysis, "figure", broken)
    with pytest.raises(RuntimeError):
        dom.save(tmp_path / "fresh", stem="cell")
    assert not (tmp_path / "fresh").exists()          # nothing half-written, folder removed
    with pytest.raises(RuntimeError):
        dom.save(tmp_path / "out", stem="other")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())


def test_cross_check_ranks_a_rate_map_against_domain_lam(dom):
    from chromflow.inverse import RateMapResult

    spacing, origin = 25.0, (2800.0, 2800.0)
    ny = nx = int(4400 / spacing)
    gy, gx = np.mgrid[0:ny, 0:nx] * spacing
    rows = dom.interior
    _, nearest = cKDTree(np.c_[rows["y"], rows["x"]]).query(np.c_[gy.ravel() + origin[0], gx.ravel() + origin[1]])
    lam_map = rows["lam"].to_numpy()[nearest].reshape(ny, nx)
    nan = np.full((ny, nx), np.nan)

    def result(rate):
        return RateMapResult(rate=rate, uncertainty=nan, residual=nan, phi_h=nan, phi_e=nan,
                             mask=np.ones((ny, nx), bool), spacing=spacing, origin=origin)
    same = cross_check(result(lam_map), dom)
    assert same["n"] == len(rows) and same["spearman"] == pytest.approx(1.0) and same["p_value"] < 1e-6
    assert cross_check(result(-lam_map), dom)["spearman"] == pytest.approx(-1.0)
    assert cross_check(result(nan), dom)["spearman"] is None


def test_cli_domains_writes_outputs_and_reports_errors(cloud, tmp_path, capsys):
    from chromflow.cli import main

    src = tmp_path / "nucleus_ctrl.csv"
    cf.write_localizations(cloud.localizations, src)
    assert main(["domains", str(src), "--out", str(tmp_path / "out"), "--downsample", "1"]) == 0
    out = capsys.readouterr().out
    assert "domains" in out and "single-channel estimate" in out
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"nucleus_ctrl_domains.csv", "nucleus_ctrl_domains.png",
                                                             "nucleus_ctrl_domains_summary.json"}
    assert main(["domains", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "bad")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["domains", str(src), "--out", str(tmp_path / "bad"), "--eps", "-1"]) == 2
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------------------------
# napari widget
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def domains_viewer(make_napari_viewer, cloud):
    pytest.importorskip("napari")
    from napari_plugin._reader import localization_layers

    viewer = make_napari_viewer()
    locs = cloud.localizations.copy()
    locs.attrs["source"] = "nucleus_ctrl.csv"
    for data, kwargs, kind in localization_layers(locs, pixel_size=40.0):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    return viewer


def test_domains_widget_adds_layers_equal_to_the_library(domains_viewer, dom, monkeypatch, tmp_path):
    from napari_plugin._domains_widget import DomainsWidget
    from napari_plugin._layers import SYNC_ENV

    monkeypatch.setenv(SYNC_ENV, "1")
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    widget = DomainsWidget(domains_viewer)
    assert widget.layer.value is not None
    widget.downsample.value = 1
    widget.run()
    assert not shown, shown
    base = widget._base
    labels = domains_viewer.layers[f"{base} domains"]
    density = domains_viewer.layers[f"{base} Voronoi density"]
    pd.testing.assert_frame_equal(widget.result.domains, dom.domains)   # thin over the library
    expected_density, expected_labels = dom.raster()
    np.testing.assert_array_equal(labels.data, expected_labels)
    assert tuple(density.scale) == tuple(labels.scale) == (expected_density.pixel_size,) * 2
    assert tuple(density.translate) == expected_density.origin
    assert domains_viewer.layers[f"{base} domain lam"].colorbar.visible
    assert domains_viewer.layers[f"{base} LADs"].data.any()
    assert f"{base} nucleus boundary" in domains_viewer.layers
    assert "single-channel estimate" in widget.status.value
    assert widget.table.shape == (len(dom.domains), len(DOMAIN_COLUMNS) + 1)
    widget.out_dir.value = tmp_path
    paths = widget.export()
    assert all(p.exists() for p in paths.values()) and len(paths) == 3


def test_domains_widget_cancel_adds_nothing(domains_viewer, monkeypatch):
    from napari_plugin._domains_widget import DomainsWidget
    from napari_plugin._layers import SYNC_ENV

    monkeypatch.setenv(SYNC_ENV, "1")
    infos = []
    monkeypatch.setattr("napari.utils.notifications.show_info", infos.append)
    widget = DomainsWidget(domains_viewer)
    n_layers = len(domains_viewer.layers)
    original = widget._on_progress

    def cancel_on_first(item):
        original(item)
        widget.cancel()
    widget._on_progress = cancel_on_first
    widget.run()
    assert len(domains_viewer.layers) == n_layers and widget.result is None
    assert widget.status.value == "cancelled" and infos


# ----------------------------------------------------------------------------------------------
# single-channel honesty of the rate-map pipeline
# ----------------------------------------------------------------------------------------------
def test_run_says_when_phi_h_phi_e_are_assumed(tmp_path, capsys):
    from chromflow.cli import main
    from chromflow.simulate import simulate_nucleus

    sim = simulate_nucleus(grid=32, n_localizations=20000, seed=1)
    src = tmp_path / "two.csv"
    cf.write_localizations(sim.localizations, src)
    args = ["--method", "direct", "--grid", "24", "--pixel-size", "60", "--device", "cpu"]
    assert main(["run", str(src), "--out", str(tmp_path / "one"), *args]) == 0
    out = capsys.readouterr().out
    assert "single channel: phi_h/phi_e are assumed from the density" in out
    one = json.loads((tmp_path / "one" / "two_summary.json").read_text())
    assert one["split"].startswith("density rule (single channel: phi_h/phi_e assumed from density")
    assert main(["run", str(src), "--out", str(tmp_path / "both"), "--euchromatin-channel", "1", *args]) == 0
    assert "assumed" not in capsys.readouterr().out
    both = json.loads((tmp_path / "both" / "two_summary.json").read_text())
    assert both["split"] == "two channels (phi_h and phi_e measured)"
    # the rate map of that run cross-checked against the domain rates of the same file
    assert main(["domains", str(src), "--out", str(tmp_path / "dom"), "--downsample", "1",
                 "--rate-map", str(tmp_path / "one" / "two_result.npz")]) == 0
    assert "rate map lambda vs domain lam" in capsys.readouterr().out
    check = json.loads((tmp_path / "dom" / "two_domains_summary.json").read_text())["cross_check"]
    assert set(check) == {"spearman", "p_value", "n", "note"}


def test_distance_to_boundary_shortcut_is_exact_near_the_boundary():
    from chromflow.domains import _distance_to_polygon

    t = np.linspace(0, 2 * np.pi, 300)
    poly = np.c_[1500 * np.sin(t) * (1 + 0.1 * np.cos(3 * t)), 1500 * np.cos(t)]
    poly = np.vstack([poly, poly[:1]])
    pts = np.random.default_rng(0).uniform(-1800, 1800, (20000, 2))
    exact = _distance_to_polygon(pts, poly, 5.0)
    fast = _distance_to_polygon(pts, poly, 5.0, near=100.0)
    near = exact <= 100.0
    np.testing.assert_array_equal(fast[near], exact[near])
    assert (fast[~near] > 100.0).all()
    # the sampled outline is within half a step of the true distance: a point on a circle of radius 1000
    circle = np.c_[1000 * np.sin(t), 1000 * np.cos(t)]
    d = _distance_to_polygon(np.array([[0.0, 0.0], [0.0, 1050.0]]), np.vstack([circle, circle[:1]]), 2.0)
    np.testing.assert_allclose(d, [1000.0, 50.0], atol=1.0)
