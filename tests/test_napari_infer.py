"""Inference widget (sync and threaded), cancel, errors as notifications, results panel, export."""
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")

from chromflow.pipeline import PipelineSettings
from napari_plugin._infer_widget import InferWidget
from napari_plugin._layers import SYNC_ENV, image_from_layer
from napari_plugin._results_widget import ResultsWidget
from napari_plugin._widgets import SegmentWidget
from napari_fixtures import errors, small_sample, viewer_with_sample  # noqa: F401 (fixtures)

GRID = 32


@pytest.fixture
def viewer(viewer_with_sample):
    SegmentWidget(viewer_with_sample).segment()
    return viewer_with_sample


def _widget(viewer, method="direct", iterations=30):
    widget = InferWidget(viewer)
    assert widget.image.value is viewer.layers["simulated nucleus density"]
    assert widget.nucleus_labels.value is viewer.layers["simulated nucleus nucleus"]
    widget.grid.value = GRID
    widget.method.value = method
    widget.device.value = "cpu"
    widget.iterations.value = iterations
    return widget


def _direct_reference(viewer, mask):
    import chromflow as cf

    image = image_from_layer(viewer.layers["simulated nucleus density"])
    fields = cf.chromatin_fields(image, mask, grid=GRID)
    return cf.infer_rates(fields, method="direct", device="cpu", seed=0)


def test_sync_run_adds_aligned_layers_equal_to_the_library(viewer, monkeypatch, errors):
    monkeypatch.setenv(SYNC_ENV, "1")
    widget = _widget(viewer)
    widget.run()
    assert not errors, errors
    rate = viewer.layers["simulated nucleus rate"]
    outline = viewer.layers["simulated nucleus outline"]
    result = rate.metadata["chromflow_result"]
    # thin over the library: the same numbers as calling it directly
    labels = viewer.layers["simulated nucleus nucleus"].data > 0
    np.testing.assert_array_equal(rate.data, _direct_reference(viewer, labels).rate)
    assert tuple(rate.scale) == (result.spacing, result.spacing)
    assert tuple(rate.translate) == result.origin
    # the outline is a Shapes layer in nm around the run's mask: its area is the mask's
    polygon = max(outline.data, key=len)
    y, x = polygon.T
    area = abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2
    assert area == pytest.approx(result.mask.sum() * result.spacing ** 2, rel=0.05)
    lo, hi = rate.contrast_limits
    inside = rate.data[result.mask & np.isfinite(rate.data)]
    assert lo == pytest.approx(np.percentile(inside, 1)) and hi == pytest.approx(np.percentile(inside, 99))
    # the rate grid lies over the density image: the nucleus centroids agree in nm
    density = viewer.layers["simulated nucleus density"]
    centroid = lambda m, layer: np.argwhere(m).mean(0) * layer.scale + layer.translate  # noqa: E731
    np.testing.assert_allclose(centroid(result.mask, rate), centroid(labels, density),
                               atol=2 * result.spacing)
    assert widget.status.value == "done" and widget.worker is None


def test_hand_edited_labels_are_what_inference_uses(viewer, monkeypatch, errors):
    monkeypatch.setenv(SYNC_ENV, "1")
    labels = viewer.layers["simulated nucleus nucleus"]
    edited = labels.data.copy()
    cols = np.nonzero(edited.any(0))[0]
    cut = (cols.min() + cols.max()) // 2
    edited[:, cut:] = 0  # the user erases the right half by hand
    labels.data = edited
    _widget(viewer).run()
    assert not errors, errors
    rate = viewer.layers["simulated nucleus rate"]
    mask = rate.metadata["chromflow_result"].mask
    right_edge_nm = labels.translate[1] + cut * labels.scale[1]
    cols_nm = rate.translate[1] + np.nonzero(mask.any(0))[0] * rate.scale[1]
    assert cols_nm.max() < right_edge_nm + rate.scale[1]


def test_failed_run_is_a_notification_and_keeps_layers(viewer, monkeypatch, errors):
    monkeypatch.setenv(SYNC_ENV, "1")
    widget = _widget(viewer)
    widget.run()
    rate = viewer.layers["simulated nucleus rate"]
    before = rate.data.copy()
    names = [layer.name for layer in viewer.layers]
    labels = viewer.layers["simulated nucleus nucleus"]
    tiny = np.zeros_like(labels.data)
    rows, cols = np.nonzero(labels.data)
    tiny[rows[0], cols[0]] = 1  # one pixel: far too small for the mollifier kernel
    labels.data = tiny
    widget.run()
    assert len(errors) == 1 and "Infer rates" in errors[0]
    assert [layer.name for layer in viewer.layers] == names
    np.testing.assert_array_equal(viewer.layers["simulated nucleus rate"].data, before)
    assert widget.status.value == "failed" and widget.run_button.enabled


def test_threaded_pinn_run_reports_progress(viewer, qtbot, monkeypatch, errors):
    monkeypatch.delenv(SYNC_ENV, raising=False)
    widget = _widget(viewer, method="pinn", iterations=20)
    seen = []
    worker = widget.run()
    assert worker is not None and widget.cancel_button.enabled and not widget.run_button.enabled
    worker.yielded.connect(seen.append)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert not errors, errors
    assert seen and all(len(item) == 3 for item in seen)
    assert widget.progress.value == widget.progress.max
    result = viewer.layers["simulated nucleus rate"].metadata["chromflow_result"]
    assert result.method == "pinn" and result.settings.get("iterations", 20) == 20


def test_cancel_stops_the_worker_and_adds_nothing(viewer, qtbot, monkeypatch, errors):
    monkeypatch.delenv(SYNC_ENV, raising=False)
    infos = []
    monkeypatch.setattr("napari.utils.notifications.show_info", infos.append)
    names = [layer.name for layer in viewer.layers]
    widget = _widget(viewer, method="pinn", iterations=100_000)
    worker = widget.run()
    progressed = []
    worker.yielded.connect(progressed.append)
    qtbot.waitUntil(lambda: len(progressed) >= 1, timeout=60_000)
    widget.cancel_button.changed.emit(True)  # what a click does
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    assert [layer.name for layer in viewer.layers] == names
    assert widget.status.value == "cancelled" and infos and not errors
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_results_panel_summary_histogram_and_export(viewer, tmp_path, monkeypatch, errors):
    import chromflow as cf

    monkeypatch.setenv(SYNC_ENV, "1")
    panel = ResultsWidget(viewer)
    assert panel.rate_layer.value is None and panel.export() == []
    assert errors  # nothing to export is said, not raised
    errors.clear()
    widget = _widget(viewer)
    widget.ensemble.value = 1
    widget.run()
    rate = viewer.layers["simulated nucleus rate"]
    result = rate.metadata["chromflow_result"]
    assert panel.rate_layer.value is rate  # the panel follows the new result
    shown = dict(panel.summary_table.data.to_list())  # rows of (quantity, value)
    assert float(shown["median_rate"]) == pytest.approx(result.summary()["median_rate"], rel=1e-3)
    values = panel.histogram_values()
    expected = result.rate[result.mask & np.isfinite(result.rate)]
    np.testing.assert_array_equal(np.sort(values), np.sort(expected))
    counts = sum(patch.get_height() for patch in panel.axes.patches)
    lo, hi = np.percentile(values, [1, 99])
    assert counts == np.count_nonzero((values >= lo) & (values <= hi))
    panel.out_dir.value = tmp_path
    written = panel.export()
    assert not errors, errors
    names = sorted(p.name for p in written)
    assert names == sorted(["simulated nucleus_rate.tif", "simulated nucleus_mask.tif",
                            "simulated nucleus_summary.csv", "simulated nucleus_settings.json"]
                           + (["simulated nucleus_residual.tif"]
                              if "simulated nucleus residual" in viewer.layers else [])
                           + (["simulated nucleus_rate_uncertainty.tif"]
                              if "simulated nucleus rate uncertainty" in viewer.layers else [])
                           + (["simulated nucleus_ratio.tif"]
                              if "simulated nucleus smoothed phi_h/phi_e (no physics)" in viewer.layers else []))
    back = cf.read_image(tmp_path / "simulated nucleus_rate.tif", allow_nan=True)
    np.testing.assert_array_equal(back.data, rate.data)
    assert back.pixel_size == pytest.approx(result.spacing)
    mask = cf.read_image(tmp_path / "simulated nucleus_mask.tif")
    np.testing.assert_array_equal(mask.data > 0, result.mask)
    table = pd.read_csv(tmp_path / "simulated nucleus_summary.csv")
    assert table.loc[0, "median_rate"] == pytest.approx(result.summary()["median_rate"])
    assert table.loc[0, "n_pixels"] == result.mask.sum()
    # the settings of the run, as a CLI config: grid and method as the widget had them
    settings = PipelineSettings.from_json(tmp_path / "simulated nucleus_settings.json")
    assert (settings.fields.grid, settings.inference.method) == (GRID, "direct")
