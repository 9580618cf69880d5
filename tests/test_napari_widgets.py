"""Widgets on a small simulated nucleus: render, segment (live preview, hand edits), sample data."""
import numpy as np
import pytest

pytest.importorskip("napari")

from napari_plugin._widgets import RenderWidget, SegmentWidget
from napari_fixtures import errors, small_sample, viewer_with_sample  # noqa: F401 (fixtures)


def _world_mask(viewer, mask_layer, reference):
    """``mask_layer`` resampled at the pixel centres of ``reference`` (nearest), via world nm."""
    idx = np.indices(reference.data.shape).reshape(2, -1).T.astype(float)
    world = idx * np.asarray(reference.scale) + np.asarray(reference.translate)
    own = np.rint((world - np.asarray(mask_layer.translate)) / np.asarray(mask_layer.scale)).astype(int)
    inside = np.all((own >= 0) & (own < np.asarray(mask_layer.data.shape)), axis=1)
    out = np.zeros(len(idx), bool)
    out[inside] = np.asarray(mask_layer.data)[own[inside, 0], own[inside, 1]] > 0
    return out.reshape(reference.data.shape)


def test_sample_data_contribution(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("chromflow", "simulated_nucleus")
    density, truth = (viewer.layers[name] for name in
                      ["simulated nucleus density", "simulated nucleus true rate"])
    sim = truth.metadata["simulation"]
    np.testing.assert_array_equal(truth.data, sim.rate)
    assert truth.scale[-1] == pytest.approx(sim.spacing_nm)
    assert tuple(truth.translate) == pytest.approx(sim.origin)
    # both layers cover the same field of view in nm
    for layer in layers:
        extent = layer.extent.world
        np.testing.assert_allclose(extent[0], [0, 0], atol=layer.scale[-1])
        np.testing.assert_allclose(extent[1], [128 * sim.spacing_nm] * 2, atol=layer.scale[-1])
    # the density counts molecules: the table's blinks merged, as a file opened in napari is
    from chromflow.blinks import merge_blinks

    assert density.data.sum() == pytest.approx(len(merge_blinks(density.metadata["localizations"])), rel=1e-3)


def test_render_widget_rerenders_and_shows_points(viewer_with_sample):
    viewer = viewer_with_sample
    density = viewer.layers["simulated nucleus density"]
    total = density.data.sum()
    widget = RenderWidget(viewer)
    assert widget.source.value is density
    widget.pixel_size.value = 160.0
    widget.method.value = "histogram"
    layer = widget.render()
    assert layer is density  # updated in place
    assert density.scale[-1] == 160.0
    assert density.data.sum() == pytest.approx(total, rel=1e-9)
    assert density.metadata["render_method"] == "histogram"
    # blinks merged by default (as the sample was drawn); unmerged, every localization counts
    locs = density.metadata["localizations"]
    assert density.metadata["blinks"].startswith(f"{len(locs)} localizations ->") and total < 0.8 * len(locs)
    widget.merge_blinks.value = False
    widget.render()
    assert density.data.sum() == pytest.approx(len(locs), rel=1e-9) and density.metadata["blinks"] == "off"
    assert widget.settings.render.merge_blinks is False
    widget.as_points.value = True
    points = widget.render()
    locs = density.metadata["localizations"]
    np.testing.assert_allclose(points.data, locs[["y", "x"]].to_numpy())


def test_segment_widget_finds_the_simulated_nucleus(viewer_with_sample, errors):
    viewer = viewer_with_sample
    density = viewer.layers["simulated nucleus density"]
    sim = viewer.layers["simulated nucleus true rate"].metadata["simulation"]
    widget = SegmentWidget(viewer)
    labels = widget.segment()
    assert not errors
    assert labels.data.shape == density.data.shape
    assert tuple(labels.scale) == tuple(density.scale)
    assert tuple(labels.translate) == tuple(density.translate)
    truth = viewer.add_labels(sim.mask.astype(np.uint8), scale=(sim.spacing_nm,) * 2,
                              translate=sim.origin, name="true mask")
    true_on_density = _world_mask(viewer, truth, density)
    found = labels.data > 0
    iou = (found & true_on_density).sum() / (found | true_on_density).sum()
    assert iou > 0.85, iou


def test_threshold_slider_previews_live_and_failures_keep_labels(viewer_with_sample, qtbot, errors):
    viewer = viewer_with_sample
    widget = SegmentWidget(viewer)
    labels = widget.segment()
    area_auto = int((labels.data > 0).sum())
    widget.auto_threshold.value = False
    assert widget.threshold.enabled
    # the preview shows exactly what the library gives at the slider's threshold
    import chromflow as cf
    from napari_plugin._layers import image_from_layer

    image = image_from_layer(viewer.layers["simulated nucleus density"])
    for fraction in np.linspace(0.05, 0.95, 19):
        widget.threshold.value = fraction * widget.threshold.max
        threshold = widget.threshold.value  # as the slider rounds it
        try:
            expected = cf.segment_nucleus(image, threshold=threshold)
        except cf.SegmentationError:
            continue
        if int(expected.sum()) != area_auto:
            break
    else:
        pytest.fail("no slider position gives a nucleus different from the automatic one")
    qtbot.waitUntil(lambda: np.array_equal(labels.data > 0, expected), timeout=5000)
    assert labels.metadata["threshold"] == threshold
    before = labels.data.copy()
    # above every pixel: no nucleus -> a notification, the labels layer is left as it was
    widget.live_preview.value = False
    widget.threshold.value = widget.threshold.max
    assert widget.segment() is None
    assert errors and "Segment" in errors[-1]
    np.testing.assert_array_equal(labels.data, before)
    assert len([layer for layer in viewer.layers if layer.name.endswith("nucleus")]) == 1
