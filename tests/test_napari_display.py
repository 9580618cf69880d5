"""What a biologist sees: nm units and scale bar, colorbar and legend, a smooth outline that does
not tint, a window that fits 1920x1080, two channels, the direct method's controls, the shared
pipeline settings and the TIFF writer."""
import json

import numpy as np
import pytest

pytest.importorskip("napari")

import chromflow as cf
from chromflow.errors import InputError
from chromflow.pipeline import PipelineSettings, load_input, process
from napari_plugin._infer_widget import InferWidget, negative_rate_warning, result_layers
from napari_plugin._layers import (NM_UNITS, RATE_LEGEND, SYNC_ENV, nucleus_contours,
                                   plugin_settings)
from napari_plugin._reader import read_layers
from napari_plugin._results_widget import ResultsWidget
from napari_plugin._widgets import RenderWidget, SegmentWidget
from napari_plugin._writer import write_rate_map
from napari_fixtures import SMALL, errors, small_sample, viewer_with_sample  # noqa: F401 (fixtures)

GRID = 32


def _polygon_area(vertices):
    y, x = np.asarray(vertices, dtype=float).T
    return abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2


def _result(uncertainty, rate=None, method="pinn"):
    mask = np.zeros((12, 12), bool)
    mask[2:10, 3:9] = True
    rate = np.where(mask, 1.5, np.nan) if rate is None else rate
    return cf.RateMapResult(rate=rate, uncertainty=uncertainty, residual=np.where(mask, 0.0, np.nan),
                            phi_h=np.where(mask, 0.3, np.nan), phi_e=np.where(mask, 0.2, np.nan),
                            mask=mask, spacing=50.0, origin=(100.0, 200.0), method=method)


# -- pure functions (no viewer) -------------------------------------------------------------------
def test_nucleus_contours_are_smooth_closed_outlines_in_nm():
    yy, xx = np.mgrid[:60, :60]
    disc = (yy - 30) ** 2 + (xx - 28) ** 2 <= 20 ** 2
    ring = disc & ((yy - 30) ** 2 + (xx - 28) ** 2 > 6 ** 2)
    spacing, origin = 40.0, (1000.0, -500.0)
    [outline] = nucleus_contours(disc, spacing, origin)
    assert np.allclose(outline[0], outline[-1])  # closed
    # the iso-line at 0.5 encloses the mask's area (to the corner cut-offs) and sits half a cell
    # outside the centres of the edge cells: radius 20.5 cells of 40 nm around the disc centre
    assert _polygon_area(outline) == pytest.approx(disc.sum() * spacing ** 2, rel=0.02)
    centre = np.array([30 * spacing + origin[0], 28 * spacing + origin[1]])
    radius = np.hypot(*(outline - centre).T)
    assert radius.mean() == pytest.approx(np.sqrt(disc.sum() / np.pi) * spacing, rel=0.01)
    assert np.ptp(radius) < 1.5 * spacing  # smooth: no staircase wider than a cell
    # a hole gives a second outline, the nucleus first; a mask on the border stays closed
    outer, hole = nucleus_contours(ring, spacing, origin)
    assert _polygon_area(outer) > _polygon_area(hole)
    [edge] = nucleus_contours(np.ones((5, 5), bool), 10.0)
    assert np.allclose(edge[0], edge[-1]) and edge[:, 0].min() == pytest.approx(-5.0)


def test_writer_keeps_pixel_size_origin_and_nan(tmp_path):
    rate = np.where(np.eye(6, dtype=bool), np.nan, np.arange(36.0).reshape(6, 6))
    [path] = write_rate_map(tmp_path / "cell rate", rate,
                            {"scale": (37.5, 37.5), "translate": (120.0, -40.0), "name": "cell rate",
                             "metadata": {"source": "cell.csv"}})
    assert path.endswith("cell rate.tif")
    back = cf.read_image(path, allow_nan=True)
    assert back.pixel_size == pytest.approx(37.5) and back.origin == pytest.approx((120.0, -40.0))
    assert back.data.dtype == np.float32
    np.testing.assert_array_equal(back.data, rate.astype(np.float32))
    with pytest.raises(InputError, match="non-square"):
        write_rate_map(tmp_path / "bad.tif", rate, {"scale": (10.0, 20.0), "name": "bad"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell rate.tif"]  # nothing half-written


def test_writer_is_in_the_manifest():
    npe2 = pytest.importorskip("npe2")
    from pathlib import Path

    manifest = npe2.PluginManifest.from_file(
        Path(__file__).resolve().parents[1] / "napari_plugin" / "napari.yaml")
    [writer] = manifest.contributions.writers
    assert writer.layer_types == ["image"] and ".tif" in writer.filename_extensions
    command = next(c for c in manifest.contributions.commands if c.id == writer.command)
    assert command.python_name == "napari_plugin._writer:write_rate_map"


def test_npe2_dispatches_a_tif_save_to_the_writer(tmp_path):
    npe2 = pytest.importorskip("npe2")
    npe2.PluginManager.instance().discover()
    rate = np.linspace(0.5, 2.0, 20).reshape(4, 5)
    layer = (rate, {"scale": (62.5, 62.5), "translate": (31.25, 7.0), "name": "cell rate",
                    "metadata": {}}, "image")
    [path] = npe2.write(str(tmp_path / "cell_rate.tif"), [layer], plugin_name="chromflow")
    back = cf.read_image(path)
    assert (back.pixel_size, back.origin) == (pytest.approx(62.5), pytest.approx((31.25, 7.0)))
    np.testing.assert_allclose(back.data, rate, rtol=1e-6)


def test_negative_rate_warning_counts_the_negative_cells():
    mask = np.zeros((12, 12), bool)
    mask[2:10, 3:9] = True
    rate = np.where(mask, 1.5, np.nan)
    assert negative_rate_warning(_result(np.full((12, 12), np.nan), rate, "direct")) is None
    rate[2, 3:6] = [-0.5, -0.1, -2.0]
    rate[0, 0] = -9.0  # outside the nucleus: not counted
    message = negative_rate_warning(_result(np.full((12, 12), np.nan), rate, "direct"))
    assert "lambda < 0 in 3 of 48" in message and "min -2" in message and "radius" in message


def test_result_layers_units_colorbar_and_uncertainty_only_when_finite():
    nan = np.full((12, 12), np.nan)
    layers = {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in result_layers(_result(nan), "c")}
    assert "c rate uncertainty" not in layers
    spread = np.where(_result(nan).mask, 0.2, np.nan)
    layers = {kwargs["name"]: (data, kwargs, kind)
              for data, kwargs, kind in result_layers(_result(spread), "c")}
    data, kwargs, kind = layers["c rate uncertainty"]
    np.testing.assert_array_equal(data, spread)
    assert kind == "image" and kwargs["colorbar_visible"] and kwargs["units"] == NM_UNITS
    _, rate_kwargs, _ = layers["c rate"]
    assert rate_kwargs["colorbar_visible"] and rate_kwargs["metadata"]["legend"] == RATE_LEGEND
    assert rate_kwargs["scale"] == (50.0, 50.0) and rate_kwargs["translate"] == (100.0, 200.0)
    outlines, outline_kwargs, kind = layers["c outline"]
    assert kind == "shapes" and outline_kwargs["units"] == NM_UNITS
    assert _polygon_area(outlines[0]) == pytest.approx(48 * 50.0 ** 2, rel=0.05)
    # this 8 x 6 nucleus of 50 nm cells is all within 0.5 um of its outline: no edge-bias line
    assert "c edge-bias line" not in layers
    # a result of an earlier release has no smoothed ratio: no layer; with one, it lies hidden on
    # the rate's colour scale
    assert "c smoothed phi_h/phi_e (no physics)" not in layers
    with_ratio = _result(spread)
    with_ratio.ratio = np.where(with_ratio.mask, 1.4, np.nan)
    with_ratio.diagnostics["ratio"] = {"sigma_cells": 1.8}
    layers = {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in result_layers(with_ratio, "c")}
    data, kwargs, kind = layers["c smoothed phi_h/phi_e (no physics)"]
    np.testing.assert_array_equal(data, with_ratio.ratio)
    assert not kwargs["visible"] and kwargs["contrast_limits"] == layers["c rate"][1]["contrast_limits"]
    assert kwargs["metadata"]["sigma_cells"] == 1.8


def test_result_layers_draw_the_edge_bias_line_inside_a_large_nucleus():
    from chromflow.inverse import RateMapResult
    from chromflow.report import edge_bias_zone

    yy, xx = np.mgrid[:80, :80]
    mask = (yy - 40) ** 2 + (xx - 40) ** 2 < 35 ** 2          # radius 35 cells of 20 nm: 0.7 um
    values = np.where(mask, 1.0, np.nan)
    result = RateMapResult(rate=values, uncertainty=values, residual=values, phi_h=values, phi_e=values,
                           mask=mask, spacing=20.0, origin=(0.0, 0.0))
    layers = {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in result_layers(result, "c")}
    polygons, kwargs, kind = layers["c edge-bias line"]
    assert kind == "shapes" and kwargs["units"] == NM_UNITS and kwargs["metadata"]["depth_um"] == 0.5
    inner = mask & ~edge_bias_zone(mask, 20.0)
    # the line encloses the cells deeper than 0.5 um: a disk of radius ~0.7 - 0.5 = 0.2 um
    assert _polygon_area(max(polygons, key=len)) == pytest.approx(inner.sum() * 20.0 ** 2, rel=0.15)
    assert inner.sum() * 20.0 ** 2 == pytest.approx(np.pi * 200.0 ** 2, rel=0.25)


# -- in a viewer ----------------------------------------------------------------------------------
def test_layers_are_in_nm_and_the_scale_bar_and_colorbar_are_on(viewer_with_sample, monkeypatch,
                                                                 errors):
    viewer = viewer_with_sample
    monkeypatch.setenv(SYNC_ENV, "1")
    SegmentWidget(viewer).segment()
    widget = InferWidget(viewer)
    widget.grid.value, widget.method.value, widget.device.value = GRID, "direct", "cpu"
    widget.run()
    assert not errors, errors
    for name in ["simulated nucleus density", "simulated nucleus nucleus", "simulated nucleus rate",
                 "simulated nucleus outline"]:
        assert tuple(str(u) for u in viewer.layers[name].units) == ("nanometer", "nanometer"), name
    rate = viewer.layers["simulated nucleus rate"]
    assert rate.colorbar.visible and viewer.layers.selection.active is rate
    overlays = viewer.canvas.overlays
    assert overlays.scale_bar.visible
    assert overlays.text.visible and overlays.text.text == RATE_LEGEND


def test_nucleus_labels_do_not_tint_the_map_under_them(make_napari_viewer, small_sample):
    viewer = make_napari_viewer(show=True)
    for data, kwargs, kind in small_sample:
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    truth = viewer.layers["simulated nucleus true rate"]
    truth.visible = True
    viewer.layers["simulated nucleus density"].visible = False
    labels = SegmentWidget(viewer).segment()
    viewer.reset_view()
    with_labels = viewer.screenshot(canvas_only=True, flash=False)
    labels.visible = False
    without = viewer.screenshot(canvas_only=True, flash=False)
    assert without[..., :3].std() > 10  # the map itself is on screen
    changed = np.any(with_labels[..., :3] != without[..., :3], axis=-1)
    nucleus_share = (truth.data > 0).mean()  # the nucleus covers this share of the map's box
    # only the outline changes colour, not the nucleus it encloses
    assert changed.mean() < 0.15 * nucleus_share, changed.mean()


def test_render_widget_follows_the_selected_layer(viewer_with_sample):
    from napari_plugin._reader import localization_layers

    viewer = viewer_with_sample
    density = viewer.layers["simulated nucleus density"]
    locs = density.metadata["localizations"]
    [(data, kwargs, kind)] = localization_layers(locs, pixel_size=40.0, name="other",
                                                 split_channels=False)
    other = viewer.add_image(data, **kwargs)
    widget = RenderWidget(viewer)
    viewer.layers.selection.active = density
    assert widget.source.value is density and widget.pixel_size.value == pytest.approx(80.0)
    viewer.layers.selection.active = other
    assert widget.source.value is other and widget.pixel_size.value == pytest.approx(40.0)
    widget.pixel_size.value = 100.0
    assert widget.render() is other and other.scale[-1] == pytest.approx(100.0)
    assert plugin_settings(viewer).render.pixel_size == pytest.approx(100.0)


def test_two_channel_file_gives_the_pipelines_two_channel_map(make_napari_viewer, tmp_path,
                                                              monkeypatch, errors):
    from chromflow.simulate import simulate_nucleus

    monkeypatch.setenv(SYNC_ENV, "1")
    sim = simulate_nucleus(**SMALL)
    path = cf.write_localizations(sim.localizations, tmp_path / "cell.csv", format="csv")
    layers = read_layers(path, pixel_size=80.0)
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["cell channel 0 density",
                                                           "cell channel 1 density"]
    viewer = make_napari_viewer()
    for data, kwargs, kind in layers:
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    het, eu = viewer.layers["cell channel 0 density"], viewer.layers["cell channel 1 density"]
    assert het.data.shape == eu.data.shape and tuple(het.translate) == tuple(eu.translate)
    widget = InferWidget(viewer)
    assert widget.image.value is het and widget.euchromatin.value is eu  # picked for the user
    assert widget.nucleus_labels.value is None  # segmented by the pipeline
    widget.grid.value, widget.method.value, widget.device.value = GRID, "direct", "cpu"
    widget.run()
    assert not errors, errors
    rate = viewer.layers["cell rate"]
    # the CLI's pipeline on the same file, in two-channel mode, with the same settings
    settings = PipelineSettings.from_dict({"render": {"pixel_size": 80.0}, "fields": {
        "grid": GRID, "euchromatin_channel": 1}, "inference": {"method": "direct", "device": "cpu"}})
    expected = process(load_input(path, settings), settings, figure=False).result
    np.testing.assert_allclose(rate.data, expected.rate, rtol=1e-10, equal_nan=True)
    assert tuple(rate.translate) == pytest.approx(expected.origin)
    # one channel (no euchromatin layer) is a different map: the second channel was used
    widget.euchromatin.value = None
    widget.run()
    assert not np.allclose(viewer.layers["cell rate"].data, expected.rate, equal_nan=True)


def test_direct_method_controls_and_negative_rate_warning(viewer_with_sample, monkeypatch, errors, tmp_path):
    monkeypatch.setenv(SYNC_ENV, "1")
    warnings = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warnings.append)
    viewer = viewer_with_sample
    SegmentWidget(viewer).segment()
    widget = InferWidget(viewer)
    assert widget.iterations.enabled and widget.ensemble.enabled and widget.radius.enabled
    assert widget.effort.enabled and widget.effort.value == "auto"
    widget.method.value = "direct"
    assert not widget.iterations.enabled and not widget.ensemble.enabled and widget.radius.enabled
    assert not widget.effort.enabled and widget.update_settings().inference.effort is None
    widget.method.value = "pinn"
    widget.effort.value = "standard"
    assert widget.update_settings().inference.effort == "standard"
    widget.effort.value = "auto"            # the library's default is stored as None
    assert widget.update_settings().inference.effort is None
    # the ratio mix: auto is the library's default (None), off is 0, direct has none
    assert widget.ratio_weight.enabled and widget.ratio_weight.value == "auto"
    assert widget.update_settings().inference.ratio_weight is None
    widget.ratio_weight.value = "off"
    assert widget.update_settings().inference.ratio_weight == 0.0
    # a share from a settings file is shown and kept, not rounded to auto / off
    config = tmp_path / "mix.json"
    PipelineSettings.from_dict({"inference": {"ratio_weight": 0.25}}).to_json(config)
    widget.load_settings(config)
    assert widget.ratio_weight.value == "0.25" and widget.update_settings().inference.ratio_weight == 0.25
    widget.ratio_weight.value = "auto"
    widget.method.value = "direct"
    assert not widget.ratio_weight.enabled and widget.update_settings().inference.ratio_weight is None
    widget.method.value = "direct"
    widget.grid.value, widget.device.value = GRID, "cpu"
    seen_negative = []
    for radius in (2.0, 6.0):
        warnings.clear()
        widget.radius.value = radius
        widget.run()
        assert not errors, errors
        result = viewer.layers["simulated nucleus rate"].metadata["chromflow_result"]
        assert result.settings["radius"] == radius
        negative = (result.rate[result.mask] < 0).any()
        assert any("lambda < 0" in w for w in warnings) == negative, (radius, warnings)
        seen_negative.append(negative)
    assert seen_negative[0]  # this noisy sample at a small radius has negative cells: warned
    assert plugin_settings(viewer).inference.iterations is None  # direct: not used, not set


def test_widgets_share_one_settings_object_saved_as_a_cli_config(viewer_with_sample, tmp_path,
                                                                errors):
    viewer = viewer_with_sample
    segment = SegmentWidget(viewer)
    infer = InferWidget(viewer)
    segment.live_preview.value = False
    segment.auto_threshold.value = False
    segment.threshold.value = 0.05 * segment.threshold.max
    segment.segment()
    infer.grid.value, infer.method.value, infer.iterations.value, infer.seed.value = 48, "pinn", 50, 7
    infer.save_settings(tmp_path / "config.json")
    assert not errors, errors
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["segmentation"]["threshold"] == pytest.approx(segment.threshold.value)
    assert saved["fields"]["grid"] == 48
    assert (saved["inference"]["iterations"], saved["inference"]["seed"]) == (50, 7)
    assert saved["inference"]["radius"] is None  # left at the library default
    # a CLI config loads back into the widgets
    (tmp_path / "cli.json").write_text(json.dumps({"fields": {"grid": 64},
                                                   "inference": {"method": "direct", "radius": 4.5}}))
    infer.load_settings(tmp_path / "cli.json")
    assert (infer.grid.value, infer.method.value, infer.radius.value) == (64, "direct", 4.5)
    assert not infer.iterations.enabled
    assert plugin_settings(viewer) is infer.settings is segment.settings
    infer.load_settings(tmp_path / "missing.json")
    assert errors and "Load settings" in errors[-1]


def test_docked_widgets_fit_1080p_and_the_table_shows_every_row(make_napari_viewer, small_sample,
                                                                monkeypatch, qtbot, errors):
    monkeypatch.setenv(SYNC_ENV, "1")
    viewer = make_napari_viewer(show=True)
    for data, kwargs, kind in small_sample:
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widgets = [RenderWidget(viewer), SegmentWidget(viewer), InferWidget(viewer), ResultsWidget(viewer)]
    for widget in widgets:
        viewer.window.add_dock_widget(widget, area="right")
    window = widgets[0].native.window()
    window.resize(1920, 1080)
    qtbot.wait(50)
    assert window.minimumSizeHint().height() <= 1080 and window.height() <= 1080
    for widget in widgets[:2]:  # the small forms are shown whole
        assert widget.native.height() >= widget.native.widget().minimumSizeHint().height()
    widgets[1].segment()
    infer = widgets[2]
    infer.grid.value, infer.method.value, infer.device.value = GRID, "direct", "cpu"
    infer.run()
    assert not errors, errors
    table = widgets[3].summary_table.native
    assert table.rowCount() >= 10
    qtbot.wait(50)
    rows_height = sum(table.rowHeight(i) for i in range(table.rowCount()))
    assert table.viewport().height() >= rows_height
    assert window.minimumSizeHint().height() <= 1080
