"""Tests of chromflow.pipeline (settings, run_file, all-or-nothing outputs) and chromflow.report."""
from __future__ import annotations

import errno
import json
import threading

import numpy as np
import pandas as pd
import pytest

from chromflow import Image
from chromflow.errors import CancelledError, ChromflowError, InputError, OutputError
from chromflow.pipeline import (OUTPUT_KINDS, PipelineSettings, _domain_stats, load_input, output_paths,
                                process_file, run_file)
from chromflow.report import REPORT_PANELS, make_report, nice_scale_bar_length

# small and fast: a 48-cell nucleus, a few thousand localizations per channel
SIM_GRID = 48


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A simulated two-channel nucleus written as a ThunderSTORM CSV, and its ground truth."""
    from chromflow.io import write_localizations
    from chromflow.simulate.sample import simulate_nucleus

    sim = simulate_nucleus(grid=SIM_GRID, nucleus_um=6.0, n_localizations=30_000, seed=3)
    folder = tmp_path_factory.mktemp("sim")
    path = folder / "cell.csv"
    write_localizations(sim.localizations, path, format="thunderstorm")
    return sim, path


def fast_settings(**inference):
    """Direct inversion on a small grid: the whole pipeline in about a second."""
    s = PipelineSettings()
    s.render.pixel_size = 40.0
    s.fields.grid = 40
    s.inference.method = "direct"
    for key, value in inference.items():
        setattr(s.inference, key, value)
    return s


def listing(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# ------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------
def test_settings_json_round_trip(tmp_path):
    s = PipelineSettings()
    s.render.pixel_size = 15.5
    s.fields.grid = 64
    s.fields.euchromatin_channel = 1
    s.inference.method = "autodiff"
    s.inference.iterations = 10
    path = tmp_path / "settings.json"
    s.to_json(path)
    back = PipelineSettings.from_json(path)
    assert back == s
    assert back.to_dict() == s.to_dict()
    assert json.loads(path.read_text())["render"]["pixel_size"] == 15.5


def test_settings_partial_config_keeps_defaults(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"inference": {"method": "direct"}}))
    s = PipelineSettings.from_json(path)
    assert s.inference.method == "direct"
    assert s.render == PipelineSettings().render and s.fields == PipelineSettings().fields
    path.write_text(json.dumps({"fields": {"euchromatin": "eu/marks.csv"}}))
    assert PipelineSettings.from_json(path).fields.euchromatin == str(tmp_path / "eu" / "marks.csv")


@pytest.mark.parametrize("config, words", [
    ({"render": {"pixel_sise": 10}}, ["render.pixel_sise", "unknown"]),
    ({"rendering": {}}, ["rendering", "unknown"]),
    ({"fields": {"grid": 3}}, ["fields.grid", "from 16 to 2048"]),
    ({"fields": {"grid": 1_000_000}}, ["fields.grid", "from 16 to 2048"]),
    ({"segmentation": {"allow_several_objects": "yes"}}, ["segmentation.allow_several_objects"]),
    ({"render": {"columns": ["x"]}}, ["render.columns"]),
    ({"inference": {"uncertainty": 1}}, ["inference.uncertainty"]),
    ({"fields": {"grid": 32.5}}, ["fields.grid"]),
    ({"inference": {"method": "magic"}}, ["inference.method", "pinn"]),
    ({"inference": {"seed": True}}, ["inference.seed"]),
    ({"inference": {"device": "gpu"}}, ["inference.device"]),
    ({"render": {"pixel_size": -1}}, ["render.pixel_size"]),
    ([1, 2], ["JSON object"]),
])
def test_settings_errors_name_the_file_and_key(tmp_path, config, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    with pytest.raises(InputError) as info:
        PipelineSettings.from_json(path)
    message = str(info.value)
    assert message.startswith(str(path))
    for word in words:
        assert word in message


def test_settings_bad_json_and_missing_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"render": {"pixel_size": 10,}}')
    with pytest.raises(InputError, match="not valid JSON.*line 1"):
        PipelineSettings.from_json(path)
    with pytest.raises(InputError, match="config file not found"):
        PipelineSettings.from_json(tmp_path / "nope.json")


def test_fingerprint_tracks_results_not_device():
    a = PipelineSettings()
    b = PipelineSettings()
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16
    b.inference.device = "cpu"
    assert a.fingerprint() == b.fingerprint()  # same numbers on any device
    for section, key, value in [("fields", "grid", 64), ("render", "pixel_size", 10.0),
                                ("inference", "seed", 1), ("segmentation", "threshold", 2.0)]:
        c = PipelineSettings()
        setattr(getattr(c, section), key, value)
        assert c.fingerprint() != a.fingerprint(), (section, key)


def test_fingerprint_tracks_the_release(monkeypatch):
    # results of another release are recomputed by `chromflow batch`, not skipped as current
    import chromflow.pipeline as pl

    before = PipelineSettings().fingerprint()
    monkeypatch.setattr(pl, "__version__", "0.0.1")
    assert PipelineSettings().fingerprint() != before


def test_one_version_for_package_metadata_library_and_plugin():
    from importlib.metadata import version

    import chromflow
    import napari_plugin

    assert version("chromflow") == chromflow.__version__ == napari_plugin.__version__


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def test_nice_scale_bar_length():
    assert nice_scale_bar_length(10.0) == 2.0
    assert nice_scale_bar_length(2.56) == 0.5
    assert nice_scale_bar_length(0.9) == pytest.approx(0.1)
    assert nice_scale_bar_length(30.0) == 5.0
    for width in np.geomspace(0.05, 500, 37):
        length = nice_scale_bar_length(width)
        assert 0.08 * width <= length <= 0.2 * width * (1 + 1e-9)
        mantissa = length / 10 ** np.floor(np.log10(length))
        assert round(mantissa, 6) in (1.0, 2.0, 5.0)


def _hand_made_result(shape=(30, 40), spacing=50.0, origin=(100.0, 300.0)):
    from chromflow.inverse import RateMapResult

    yy, xx = np.mgrid[:shape[0], :shape[1]]
    mask = (yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 < (min(shape) / 2.5) ** 2
    rate = np.where(mask, 1.0 + 0.1 * np.sin(xx / 4.0), np.nan)
    return RateMapResult(rate=rate, uncertainty=np.where(mask, 0.05, np.nan),
                         residual=np.where(mask, 1e-3 * np.cos(yy / 3.0), np.nan),
                         phi_h=np.where(mask, 0.3, np.nan), phi_e=np.where(mask, 0.2, np.nan), mask=mask,
                         spacing=spacing, origin=origin)


def test_make_report_panels_scale_bars_and_png(tmp_path):
    density = Image(np.random.default_rng(0).random((100, 150)), pixel_size=20.0, origin=(50.0, 250.0), name="cell")
    mask = np.zeros(density.shape, bool)
    mask[20:80, 30:120] = True
    result = _hand_made_result()
    path = tmp_path / "report.png"
    fig = make_report(density, mask, result, path=path, title="my cell")
    assert path.stat().st_size > 20_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name != "report.png"]  # no temporary left
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == list(REPORT_PANELS)
    assert fig._suptitle.get_text() == "my cell"
    for ax in panels:
        (image,) = ax.get_images()
        left, right, bottom, top = image.get_extent()
        if ax.get_title() in ("density", "nucleus mask"):
            # 150 pixels of 20 nm = 3 um wide, 100 of 20 nm = 2 um high; first pixel centre at 250 nm
            assert right - left == pytest.approx(3.0) and bottom - top == pytest.approx(2.0)
            assert left == pytest.approx(0.24)
            expected_bar = 0.5
        else:
            # 40 cells of 50 nm = 2 um wide, 30 cells = 1.5 um high
            assert right - left == pytest.approx(2.0) and bottom - top == pytest.approx(1.5)
            assert top == pytest.approx(0.075)
            expected_bar = 0.2
        bars = [a for a in ax.artists if a.get_gid() == "scale_bar"]
        assert len(bars) == 1 and bars[0].length_um == pytest.approx(expected_bar)
        label = bars[0].txt_label.get_text()
        assert label == (f"{expected_bar:g} µm" if expected_bar >= 1 else f"{expected_bar * 1000:g} nm")
    # every panel has a colour bar with a unit label
    colorbar_labels = [ax.get_ylabel() for ax in fig.axes if not ax.get_title()]
    assert len(colorbar_labels) == len(REPORT_PANELS) and all(colorbar_labels)
    assert "volume fraction" in colorbar_labels
    # the mask outline is drawn on the mask panel
    assert panels[1].collections
    # the depth to which simulated nuclei read lambda high is drawn dotted on the rate map
    rate_panel = panels[REPORT_PANELS.index("rate lambda")]
    assert [c for c in rate_panel.collections if c.get_gid() == "edge_bias_zone"]
    # the smoothed ratio without physics lies beside it on the same colour scale; a result
    # without one (an earlier release) says so instead
    ratio_panel = panels[REPORT_PANELS.index("smoothed phi_h/phi_e (no physics)")]
    assert ratio_panel.get_images()[0].get_clim() == rate_panel.get_images()[0].get_clim()
    assert any(t.get_text() == "not available" for t in ratio_panel.texts)
    assert any("dotted: 0.5 um inside the outline" in t.get_text() for t in fig.texts)


def test_edge_bias_zone_is_the_cells_within_its_depth_of_the_outline():
    from chromflow.report import EDGE_BIAS_DEPTH_UM, edge_bias_zone

    assert EDGE_BIAS_DEPTH_UM == 0.5
    mask = np.zeros((300, 300), bool)
    mask[50:250, 50:250] = True                  # 200 cells of 10 nm: a 2 um square
    zone = edge_bias_zone(mask, 10.0)
    # the outline lies half a cell outside the outermost centres: ring k (0 = outermost) is at
    # (k + 0.5) * 10 nm, so rings 0-49 are within 0.5 um, ring 50 is not
    assert zone[150, 50:100].all() and not zone[150, 100:200].any() and zone[150, 200:250].all()
    assert zone.sum() == 200 ** 2 - 100 ** 2
    assert edge_bias_zone(mask, 5.0).sum() == mask.sum()     # 5 nm cells: a 1 um square, all within 0.5 um
    assert not edge_bias_zone(mask, None).any() and not edge_bias_zone(np.zeros((5, 5), bool), 10.0).any()


@pytest.mark.parametrize("n_flags", [0, 3])
def test_make_report_caption_stays_on_the_page_and_clear_of_the_panels(n_flags):
    density = Image(np.random.default_rng(0).random((100, 150)), pixel_size=20.0, name="cell")
    mask = np.zeros(density.shape, bool)
    mask[20:80, 30:120] = True
    result = _hand_made_result()
    # long flags, as the library writes them (the sparse-data one is ~230 characters)
    result.diagnostics = {"split_half_r": 0.6, "flags": [f"flag {k}: " + "words " * 40 for k in range(n_flags)]}
    fig = make_report(density, mask, result)
    renderer = fig.canvas.get_renderer()
    (caption,) = [t for t in fig.texts if t is not fig._suptitle]
    box = caption.get_window_extent(renderer)
    page = fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1
    assert (caption.get_text().count("\n") > 0) == (n_flags > 0)
    title = fig._suptitle.get_window_extent(renderer)
    assert box.y1 <= title.y0 + 1                                   # under the page title
    for ax in fig.axes:
        if ax.get_title():
            assert box.y0 >= ax.title.get_window_extent(renderer).y1 - 1   # above every panel title


def test_report_caption_sets_the_map_beside_the_smoothed_ratio():
    from types import SimpleNamespace

    from chromflow.report import report_caption

    mask = np.zeros((20, 20), bool)
    mask[4:16, 4:16] = True
    yy, xx = np.indices(mask.shape)
    rate = np.where(mask, 1.0 + 0.1 * xx, np.nan)
    shown = SimpleNamespace(method="pinn", rate=rate, ratio=np.where(mask, 2.0 - 0.1 * xx, np.nan), mask=mask,
                            edge=None, diagnostics={"ratio": {"sigma_cells": 2.0}})
    assert "without physics (width 2.0 cells from the halves): r = -1.00" in report_caption(shown)
    # a result of an earlier release has no ratio: nothing said
    old = SimpleNamespace(method="pinn", rate=rate, ratio=np.full(mask.shape, np.nan), mask=mask, edge=None,
                          diagnostics={})
    assert "without physics" not in report_caption(old)


def test_make_report_draws_a_result_whose_nan_diagnostics_were_stored_as_json_null():
    density = Image(np.random.default_rng(0).random((100, 150)), pixel_size=20.0, name="cell")
    mask = np.zeros(density.shape, bool)
    mask[20:80, 30:120] = True
    result = _hand_made_result()
    result.diagnostics = {"split_half_r": None, "flags": [], "ratio": {"sigma_cells": None}}
    fig = make_report(density, mask, result)
    units = [ax.get_ylabel() for ax in fig.axes]
    assert "φ_h / φ_e (dimensionless)" in units and not any("width" in u for u in units)


def test_make_report_rejects_mismatched_mask():
    density = Image(np.ones((10, 10)), pixel_size=20.0)
    with pytest.raises(ValueError, match="mask shape"):
        make_report(density, np.ones((5, 5), bool), _hand_made_result())


# ------------------------------------------------------------------------------------------------
# summary helpers
# ------------------------------------------------------------------------------------------------
def test_domain_stats_known_pattern():
    phi_h = np.full((20, 20), 0.1)
    phi_e = np.full((20, 20), 0.2)
    phi_h[2:6, 2:6] = 0.5     # 16 cells
    phi_h[10:18, 10:12] = 0.5  # 16 cells
    phi_h[0, 19] = 0.5         # outside the mask: ignored
    mask = np.ones((20, 20), bool)
    mask[0, 19] = False
    n, area, diameter = _domain_stats(phi_h, phi_e, mask, spacing_nm=100.0)
    assert n == 2
    assert area == pytest.approx(16 * 0.01)  # 16 cells of 0.1 um x 0.1 um
    assert diameter == pytest.approx(2000 * np.sqrt(0.16 / np.pi))
    n, area, _ = _domain_stats(np.zeros((5, 5)), np.ones((5, 5)), np.ones((5, 5), bool), 50.0)
    assert n == 0 and np.isnan(area)


def test_output_paths():
    paths = output_paths("/data/run1/cell_07.csv", "/out")
    assert set(paths) == set(OUTPUT_KINDS)
    assert paths["rate"].name == "cell_07_rate.tif" and paths["summary"].name == "cell_07_summary.json"
    assert str(paths["report"].parent) == "/out"


# ------------------------------------------------------------------------------------------------
# run_file end to end
# ------------------------------------------------------------------------------------------------
def test_run_file_two_channel_recovers_rate(simulated, tmp_path):
    """Two-channel table -> outputs on disk; the rate map correlates with the simulation's truth."""
    from chromflow.cli import rate_correlation
    from chromflow.inverse import RateMapResult
    from chromflow.io import read_image

    sim, path = simulated
    s = fast_settings(radius=4.0)
    s.fields.euchromatin_channel = 1
    s.fields.smoothing = 150.0
    steps = []
    row = run_file(path, tmp_path / "out", s, progress=lambda done, total, msg: steps.append((done, total, msg)))
    assert row["status"] == "ok" and row["two_channel"] is True
    assert row["n_localizations"] == len(sim.localizations)
    # progress runs monotonically from 0 to 100 through every stage
    dones = [d for d, _, _ in steps]
    assert dones == sorted(dones) and dones[0] == 0 and dones[-1] == 100 and {t for _, t, _ in steps} == {100}
    for stage in ("read", "segment", "fields", "infer", "report", "write"):
        assert any(msg.startswith(stage) for _, _, msg in steps), stage
        assert row[f"time_{stage}_s"] >= 0
    paths = output_paths(path, tmp_path / "out")
    assert all(p.is_file() for p in paths.values())
    assert json.loads(paths["summary"].read_text()) == row
    result = RateMapResult.load(paths["result"])
    rate_tif = read_image(paths["rate"], allow_nan=True)
    np.testing.assert_allclose(rate_tif.data, result.rate.astype(np.float32), equal_nan=True)
    assert rate_tif.pixel_size == pytest.approx(result.spacing)
    assert rate_tif.origin == pytest.approx(result.origin)
    from chromflow import Image
    truth = Image(sim.rate, pixel_size=sim.spacing_nm, origin=sim.origin)
    corr, n = rate_correlation(result, truth)
    # sparse data (30 000 localizations) limit the accuracy; placement errors would kill the match:
    # the same map compared with the truth mirrored left-right correlates far less
    mirrored = Image(sim.rate[:, ::-1], pixel_size=sim.spacing_nm, origin=sim.origin)
    corr_mirrored, _ = rate_correlation(result, mirrored)
    assert n > 500 and corr > 0.4 and corr_mirrored < corr - 0.3, (corr, corr_mirrored)


def test_run_file_tiff_input_and_no_overwrite(tmp_path, simulated):
    from chromflow.io import write_image

    sim, path = simulated
    density = load_input(path, fast_settings()).density
    tif = tmp_path / "dens.tif"
    write_image(Image(density.data.astype(np.float32), pixel_size=40.0, origin=density.origin), tif)
    s = fast_settings()
    s.render.pixel_size = 10.0  # ignored: the TIFF records its pixel size
    row = run_file(tif, tmp_path / "out", s)
    assert row["kind"] == "image" and row["pixel_size_nm"] == 40.0 and row["n_localizations"] is None
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    with pytest.raises(InputError, match="outputs exist"):
        run_file(tif, tmp_path / "out", s, overwrite=False)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before


def _tiff(tmp_path, data, name="x.tif", pixel_size=40.0):
    from chromflow.io import write_image

    path = tmp_path / name
    write_image(Image(np.asarray(data, dtype=np.float32), pixel_size=pixel_size), path)
    return path


@pytest.mark.parametrize("case", ["no_contrast", "tiny_nucleus", "no_nucleus"])
def test_failures_raise_and_leave_nothing(tmp_path, case):
    yy, xx = np.mgrid[:200, :200]
    if case == "no_contrast":
        data = np.full((200, 200), 3.0)
    elif case == "tiny_nucleus":
        # a nucleus of ~3 pixels radius (120 nm): fewer grid cells than the mollifier kernel needs
        data = np.where((yy - 100) ** 2 + (xx - 100) ** 2 < 9, 50.0, 0.0)
    else:
        data = np.random.default_rng(1).poisson(2.0, (200, 200))
    path = _tiff(tmp_path, data)
    out = tmp_path / "out"
    with pytest.raises(ChromflowError) as info:
        run_file(path, out, fast_settings())
    assert str(path) in str(info.value) or "nucleus" in str(info.value)
    assert not out.exists()


def test_cancel_and_write_failure_leave_nothing(simulated, tmp_path, monkeypatch):
    sim, path = simulated
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    cancel = threading.Event()

    def cancel_when_inferring(done, total, message):
        if message.startswith("infer"):
            cancel.set()

    with pytest.raises(CancelledError):
        run_file(path, out, fast_settings(), progress=cancel_when_inferring, cancel=cancel)
    assert listing(out) == ["keep.txt"]

    # a failure while writing (here: the result file) removes everything written so far
    from chromflow import inverse

    def broken_save(self, path):
        open(path, "wb").write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(inverse.RateMapResult, "save", broken_save)
    with pytest.raises(OutputError, match="No space left on device"):
        run_file(path, out, fast_settings())
    assert listing(out) == ["keep.txt"]


def test_euchromatin_channel_errors(simulated, tmp_path):
    sim, path = simulated
    s = fast_settings()
    s.fields.euchromatin_channel = 7
    with pytest.raises(InputError, match="no localizations in channel 7"):
        load_input(path, s)
    s.fields.euchromatin_channel = 1
    s.fields.euchromatin = str(path)
    with pytest.raises(InputError, match="use one"):
        load_input(path, s)


def test_euchromatin_file_gives_no_half_and_renders_none(simulated, monkeypatch):
    """With a euchromatin file (no frames in common with the table) there is no split-half data,
    and the half of the table is not even rendered."""
    import chromflow.pipeline as pipeline

    sim, path = simulated
    s = fast_settings()
    assert load_input(path, s).half is not None            # the table alone: a half from its frames

    def no_render(*args, **kwargs):
        raise AssertionError("a half was rendered")

    monkeypatch.setattr(pipeline, "_quiet_render", no_render)
    s.fields.euchromatin = str(path)
    loaded = load_input(path, s)
    assert loaded.half is None and loaded.euchromatin is not None


def test_process_file_is_reproducible(simulated):
    sim, path = simulated
    a = process_file(path, fast_settings(), figure=False)
    b = process_file(path, fast_settings(), figure=False)
    np.testing.assert_array_equal(a.result.rate, b.result.rate)
    assert a.summary["settings_fingerprint"] == b.summary["settings_fingerprint"]


def test_tiff_without_pixel_size_uses_render_setting(tmp_path):
    import tifffile

    path = tmp_path / "bare.tif"
    tifffile.imwrite(path, np.ones((20, 30), np.float32))  # no calibration at all
    s = PipelineSettings()
    s.render.pixel_size = 12.5
    with pytest.warns(UserWarning, match="render.pixel_size = 12.5"):
        loaded = load_input(path, s)
    assert loaded.density.pixel_size == 12.5 and loaded.kind == "image" and loaded.density.shape == (20, 30)


# ----------------------------------------------------------------------------------------------
# issue 12: one settings object, plausibility of the nucleus
# ----------------------------------------------------------------------------------------------
def _with_default(func, **defaults):
    """``func`` with other defaults in its signature (as a library upgrade would change them)."""
    import functools
    import inspect

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    sig = inspect.signature(func)
    wrapper.__signature__ = sig.replace(parameters=[p.replace(default=defaults.get(p.name, p.default))
                                                    for p in sig.parameters.values()])
    return wrapper


def test_none_means_the_library_default_read_at_call_time(monkeypatch):
    import importlib

    from chromflow import inverse

    chromflow_render = importlib.import_module("chromflow.render")  # the module, not cf.render

    s = PipelineSettings()
    assert (s.inference.iterations, s.inference.radius, s.inference.ensemble, s.inference.uncertainty) == (None,) * 4
    # the two numbers every front end shows start at the defaults of the functions that use them
    assert (s.fields.grid, s.render.pixel_size) == (128, 20.0)
    with monkeypatch.context() as patch:
        patch.setattr(chromflow_render, "render", _with_default(chromflow_render.render, pixel_size=33.0))
        assert PipelineSettings().render.pixel_size == 33.0
    r = s.resolved()
    assert (r.fields.grid, r.render.pixel_size) == (128, 20.0)
    assert (r.inference.iterations, r.inference.radius, r.inference.ensemble) == (
        inverse.DEFAULTS["pinn"]["iterations"], inverse.DEFAULTS["pinn"]["radius"], inverse.DEFAULTS["pinn"]["ensemble"])
    assert r.inference.effort == inverse.DEFAULTS["pinn"]["effort"]
    assert r.inference.ratio_weight == inverse.DEFAULTS["pinn"]["ratio_weight"] == "auto"
    # the values a settings file may hold are the library's (kept apart so settings need no torch)
    from chromflow.pipeline import INFERENCE_EFFORTS
    assert INFERENCE_EFFORTS == inverse.EFFORTS
    monkeypatch.setitem(inverse.DEFAULTS["pinn"], "iterations", 123)
    assert PipelineSettings().resolved().inference.iterations == 123  # not a copy made at import
    # None and the explicit default are the same run: same fingerprint
    explicit = PipelineSettings()
    explicit.inference.iterations = 123
    none = PipelineSettings()
    none.fields.grid = None  # a config file's null
    assert explicit.fingerprint() == s.fingerprint() == none.fingerprint()
    explicit.inference.iterations = 124
    assert explicit.fingerprint() != s.fingerprint()


def test_infer_passes_only_what_was_set(monkeypatch):
    from chromflow import inverse
    from chromflow.pipeline import infer

    seen = {}

    def fake_infer_rates(fields, method="pinn", device="auto", seed=0, uncertainty=True, **options):
        seen.update(options, uncertainty=uncertainty)
        return "result"

    monkeypatch.setattr(inverse, "infer_rates", fake_infer_rates)
    s = PipelineSettings()
    assert infer("fields", s) == "result"
    assert seen["uncertainty"] is True and "iterations" not in seen and "ensemble" not in seen
    seen.clear()
    s.inference.uncertainty, s.inference.ensemble = False, 5
    infer("fields", s)
    assert seen["uncertainty"] is False and seen["ensemble"] == 5 and "effort" not in seen
    assert "ratio_weight" not in seen
    s.inference.effort, s.inference.ratio_weight = "standard", 0
    infer("fields", s)
    assert seen["effort"] == "standard" and seen["ratio_weight"] == 0
    # direct fits once in closed form: the networks' effort and ratio mix are not passed to it
    seen.clear()
    s.inference.method = "direct"
    infer("fields", s)
    assert "effort" not in seen and "ratio_weight" not in seen
    s.inference.method = "pinn"
    s.inference.effort = "lots"
    with pytest.raises(InputError, match="effort"):
        s.validate()
    s.inference.effort = "standard"
    for bad in (1.5, -0.1, float("nan"), "half", True):
        s.inference.ratio_weight = bad
        with pytest.raises(InputError, match="ratio_weight"):
            s.validate()
    s.inference.ratio_weight = 0.25
    assert PipelineSettings.from_dict(s.to_dict()).inference.ratio_weight == 0.25
    # the explicit default is the same run as None; another weight is another run
    auto = PipelineSettings()
    auto.inference.ratio_weight = "auto"
    off = PipelineSettings()
    off.inference.ratio_weight = 0
    assert auto.fingerprint() == PipelineSettings().fingerprint() != off.fingerprint()
    # an infer_rates without the option: a clear error naming the setting, not a crash
    monkeypatch.setattr(inverse, "infer_rates", lambda fields, method="pinn", device="auto", seed=0, **kw: kw)
    with pytest.raises(InputError, match="inference.uncertainty"):
        infer("fields", s)


def _discs(centres, radius=20, shape=(200, 200)):
    yy, xx = np.indices(shape)
    return sum(((yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2).astype(float) for cy, cx in centres)


def test_several_objects_are_refused_unless_allowed():
    from chromflow.errors import SegmentationError
    from chromflow.pipeline import check_single_object, segment

    cells = Image(5.0 * _discs([(50, 50), (50, 150), (150, 100)]) + 0.05, pixel_size=100.0)
    s = PipelineSettings()
    s.segmentation.nucleus_area_um2 = (1.0, 1000.0)
    with pytest.raises(SegmentationError, match="3 dense objects") as info:
        segment(cells, s)
    assert "--allow-several-objects" in str(info.value) and "segmentation.allow_several_objects" in str(info.value)
    s.segmentation.allow_several_objects = True
    mask = segment(cells, s)
    assert mask.sum() == pytest.approx(np.pi * 20 ** 2, rel=0.15)
    # one nucleus with a small speck beside it (< 10 % of its localizations) is one object
    lone = Image(5.0 * (_discs([(100, 100)], radius=40) + _discs([(20, 20)], radius=5)) + 0.05, pixel_size=100.0)
    assert check_single_object(lone, _discs([(100, 100)], radius=40) > 0) == 1
    # a big nucleus and a cut-off neighbour holding less than half: accepted, counted
    pair = Image(5.0 * (_discs([(100, 90)], radius=45) + _discs([(100, 185)], radius=25)) + 0.05, pixel_size=100.0)
    assert check_single_object(pair, _discs([(100, 90)], radius=45) > 0) == 2


def test_implausible_nucleus_area_warns_with_the_setting():
    from chromflow.pipeline import segment

    small = Image(5.0 * _discs([(100, 100)], radius=30) + 0.05, pixel_size=20.0)  # ~1.1 um^2
    with pytest.warns(UserWarning, match=r"outside the plausible range 10-1000 um\^2.*segmentation.nucleus_area_um2"):
        segment(small, PipelineSettings())
    s = PipelineSettings()
    s.segmentation.nucleus_area_um2 = (0.5, 5.0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        segment(small, s)


def test_segmentation_errors_name_settings_a_user_can_set():
    from chromflow.errors import SegmentationError
    from chromflow.pipeline import segment

    tiny = Image(5.0 * _discs([(100, 100)], radius=8) + 0.05, pixel_size=20.0)  # 0.08 um^2 < 1 um^2
    with pytest.raises(SegmentationError, match="segmentation.min_area_um2"):
        segment(tiny, PipelineSettings())
    s = PipelineSettings()
    s.segmentation.min_area_um2 = 0.01
    s.segmentation.nucleus_area_um2 = (0.01, 1.0)
    assert segment(tiny, s).any()


def test_uncertainty_on_by_default_and_never_an_all_nan_file(simulated, tmp_path):
    """Default runs write a finite uncertainty map; switched off, no uncertainty file at all."""
    from chromflow.io import read_image

    sim, path = simulated
    s = fast_settings(radius=4.0)
    s.fields.euchromatin_channel = 1
    row = run_file(path, tmp_path / "on", s)
    unc = read_image(output_paths(path, tmp_path / "on")["uncertainty"], allow_nan=True).data
    # a correlation, negative when the halves disagree (this small noisy fixture sits near 0);
    # below LOW_REPRODUCIBILITY the row says the map is dominated by noise
    from chromflow.inverse import LOW_REPRODUCIBILITY

    assert np.isfinite(unc).any() and -1 <= row["split_half_r"] <= 1
    assert (row["split_half_r"] < LOW_REPRODUCIBILITY) == ("noise" in row["flags"]), row["flags"]
    s.inference.uncertainty = False
    first = run_file(path, tmp_path / "on", s)          # rerun into the same folder: the old map goes
    assert first["status"] == "ok"
    paths = output_paths(path, tmp_path / "on")
    assert not paths["uncertainty"].exists()
    assert all(p.exists() for kind, p in paths.items() if kind != "uncertainty")


# ------------------------------------------------------------------------------------------------
# split halves of the localizations
# ------------------------------------------------------------------------------------------------
def test_half_of_frames_takes_whole_alternate_blocks():
    import pandas as pd

    from chromflow.pipeline import HALF_FRAME_BLOCK, MIN_HALF_BLOCKS, half_of_frames

    locs = pd.DataFrame({"frame": np.arange(7, 2007), "x": 0.0, "y": 0.0})
    half = half_of_frames(locs)
    blocks = (half["frame"].to_numpy() - 7) // HALF_FRAME_BLOCK
    assert len(half) == 1000 and set(blocks % 2) == {0}
    assert half_of_frames(locs.drop(columns="frame")) is None
    few = locs[locs["frame"] < 7 + (MIN_HALF_BLOCKS - 1) * HALF_FRAME_BLOCK]
    assert half_of_frames(few) is None                      # too few blocks to sample the acquisition


def test_split_half_refit_uses_the_localization_halves(simulated):
    """A table with frames: the pipeline makes the fields of one half of the localizations, and
    the uncertainty's refit fits that half; given as the half ``X + Z`` of a white fission draw,
    the result is exactly the one of data fission with that draw."""
    from types import SimpleNamespace

    from chromflow import infer_rates
    from chromflow.inverse.noise import fission
    from chromflow.pipeline import compute_fields, segment

    sim, path = simulated
    s = fast_settings(radius=4.0)
    s.fields.euchromatin_channel = 1
    loaded = load_input(path, s)
    assert loaded.half is not None and loaded.half[0].shape == loaded.density.shape
    mask = segment(loaded.density, s)
    fields = compute_fields(loaded.density, mask, s, loaded.euchromatin, loaded.half)
    assert fields.settings["half"].startswith("alternate blocks") and fields.half[0].shape == fields.phi_h.shape
    m = fields.mask
    # the half holds about half the localizations, on the same scale
    assert abs(fields.half[0][m].mean() / fields.phi_h[m].mean() - 1) < 0.05
    r = infer_rates(fields, method="direct", radius=4.0)
    assert r.diagnostics["split_half"] == "localization halves"
    without = compute_fields(loaded.density, mask, s, loaded.euchromatin)
    assert without.half is None
    white = infer_rates(without, method="direct", radius=4.0)
    assert white.diagnostics["split_half"].startswith("data fission")
    assert not np.allclose(r.uncertainty[m], white.uncertainty[m])
    # known answer: the half X + Z of the draw fission would make gives fission's result (with
    # the data's own noise level: a Z much smaller than the noise would read as halves that share it)
    from chromflow.inverse.noise import estimate_noise, local_level
    from scipy import ndimage

    inner = ndimage.binary_erosion(m, iterations=2)
    variances = [estimate_noise(x, inner).variance(local_level(x, inner)) for x in (without.phi_h, without.phi_e)]
    f = SimpleNamespace(phi_h=without.phi_h, phi_e=without.phi_e, mask=m, spacing=without.spacing,
                        origin=without.origin, source=None, variance_h=variances[0], variance_e=variances[1])
    (hp, ep), _ = fission([f.phi_h, f.phi_e], variances, 0 + 10_000)
    drawn = infer_rates(f, method="direct", radius=4.0, seed=0)
    f.half = (hp, ep)
    given = infer_rates(f, method="direct", radius=4.0, seed=0)
    assert given.diagnostics["split_half"] == "localization halves"
    np.testing.assert_allclose(given.uncertainty[m], drawn.uncertainty[m], rtol=1e-12)


def test_halves_that_share_molecules_are_detected_and_their_difference_scaled(simulated, tmp_path):
    """Known answer: every localization of the table seen again 100 frames later (a dye that
    switches on again, in the other half of the frames) leaves the fields and their noise as
    they were, but the halves now share it. Taken as they are, the noise part of the
    uncertainty would shrink to a fraction; detected and scaled, it is back near the one of the
    original table, whose halves are independent."""
    from chromflow import infer_rates
    from chromflow.inverse.noise import MIN_HALF_INDEPENDENCE
    from chromflow.io import write_localizations
    from chromflow.pipeline import HALF_FRAME_BLOCK, compute_fields, segment

    sim, path = simulated
    s = fast_settings(radius=4.0)
    s.fields.euchromatin_channel = 1

    def run(p):
        loaded = load_input(p, s)
        mask = segment(loaded.density, s)
        fields = compute_fields(loaded.density, mask, s, loaded.euchromatin, loaded.half)
        return infer_rates(fields, method="direct", radius=4.0, seed=0), fields

    original, fields = run(path)
    first = sim.localizations
    again = first.copy()
    rng = np.random.default_rng(0)
    again["frame"] = first["frame"] + HALF_FRAME_BLOCK
    again["x"] = first["x"] + first["uncertainty"] * rng.standard_normal(len(first))
    again["y"] = first["y"] + first["uncertainty"] * rng.standard_normal(len(first))
    both = tmp_path / "returning.csv"
    write_localizations(pd.concat([first, again], ignore_index=True).sort_values("frame", kind="stable"), both,
                        format="thunderstorm")
    shared, _ = run(both)
    s_orig = original.diagnostics["halves"]["independence"]
    s_shared = shared.diagnostics["halves"]["independence"]
    assert min(s_orig) > MIN_HALF_INDEPENDENCE and original.diagnostics["halves"]["scale"] == [1.0, 1.0]
    assert max(s_shared) < 0.4 and min(shared.diagnostics["halves"]["scale"]) > 1.5
    assert "share noise" in shared.diagnostics["split_half"]
    assert shared.summary()["halves_independence"] == min(s_shared)
    # the user is told, in the report's caption and the CLI's output; not for independent halves
    import io

    from chromflow.cli import _print_summary
    from chromflow.report import report_caption

    assert "the halves share noise" in report_caption(shared)
    assert "share noise" not in report_caption(original)
    for result, told in ((shared, True), (original, False)):
        text = io.StringIO()
        _print_summary({"file": str(both), "stem": "returning", **result.summary()}, tmp_path, text)
        assert ("halves of the frames share noise" in text.getvalue()) == told
    m = fields.mask & shared.mask
    ratio = np.nanmean(shared.uncertainty[m]) / np.nanmean(original.uncertainty[m])
    assert 0.6 < ratio < 1.6, ratio
    # what the halves alone would have said: the shared difference, unscaled, is far too small
    scale = np.mean(shared.diagnostics["halves"]["scale"])
    assert ratio / scale < 0.6


def test_a_half_too_sparse_for_fields_is_not_used_and_says_why():
    """A half that cannot make fields (here: no localizations at all) leaves the run on data
    fission, with the reason in the fields' settings; the full data are unaffected."""
    from chromflow.pipeline import compute_fields

    rng = np.random.default_rng(0)
    density = Image(rng.poisson(5, (120, 120)).astype(float), pixel_size=40.0)
    euchromatin = Image(rng.poisson(5, (120, 120)).astype(float), pixel_size=40.0)
    mask = np.zeros((120, 120), bool)
    mask[20:100, 20:100] = True
    s = PipelineSettings()
    s.fields.grid = 40
    empty = Image(np.zeros((120, 120)), pixel_size=40.0)
    fields = compute_fields(density, mask, s, euchromatin, (empty, empty))
    assert fields.half is None and fields.settings["half"].startswith("not used: ")
    plain = compute_fields(density, mask, s, euchromatin)
    np.testing.assert_array_equal(fields.phi_h, plain.phi_h)


def test_summary_mean_rate_deep_leaves_out_the_edge_bias_zone():
    from chromflow.inverse import RateMapResult
    from chromflow.report import edge_bias_zone

    yy, xx = np.mgrid[:100, :100]
    mask = (yy - 50) ** 2 + (xx - 50) ** 2 < 45 ** 2           # radius 45 cells of 20 nm: 0.9 um
    zone = edge_bias_zone(mask, 20.0)
    rate = np.where(mask, np.where(zone, 2.0, 1.0), np.nan)     # a map biased high along the envelope
    values = np.where(mask, 0.3, np.nan)
    result = RateMapResult(rate=rate, uncertainty=values, residual=values, phi_h=values, phi_e=values,
                           mask=mask, spacing=20.0, origin=(0.0, 0.0))
    summary = result.summary()
    assert summary["mean_rate_deep"] == 1.0
    assert summary["mean_rate"] == pytest.approx(1.0 + zone.sum() / mask.sum())
    small = RateMapResult(rate=rate, uncertainty=values, residual=values, phi_h=values, phi_e=values,
                          mask=mask, spacing=5.0, origin=(0.0, 0.0))   # 0.225 um: all edge zone
    assert np.isnan(small.summary()["mean_rate_deep"])


def test_blink_merging_and_background_in_the_pipeline(simulated, tmp_path):
    """render.merge_blinks turns localizations into molecules; fields.background is measured and
    subtracted; both are said in the summary, and a table without frames is rendered as it is."""
    from chromflow.io import write_localizations
    from chromflow.pipeline import compute_fields, load_input, segment, summarize

    sim, path = simulated
    s = fast_settings()
    s.fields.euchromatin_channel = 1
    s.render.merge_blinks = False
    plain = load_input(path, s)
    assert plain.n_molecules is None and plain.blinks == "off"
    s.render.merge_blinks = True
    merged = load_input(path, s)
    n = len(sim.localizations)
    assert merged.n_localizations == n and n / 4 < merged.n_molecules < n
    assert merged.blinks.startswith(f"{n} localizations -> {merged.n_molecules} molecules")
    # merging keeps the structure: the densities correlate, with fewer counts
    inside = segment(plain.density, s)
    assert merged.density.data.sum() < 0.8 * plain.density.data.sum()
    assert np.corrcoef(plain.density.data[inside], merged.density.data[inside])[0, 1] > 0.5
    s.fields.background = "auto"
    fields = compute_fields(merged.density, inside, s, merged.euchromatin)
    row = summarize(merged, inside, fields, _hand_made_result(), s)
    assert row["n_molecules"] == merged.n_molecules and row["blinks"] == merged.blinks
    assert row["background_h"] == fields.settings["background"][0] >= 0
    assert row["background_e"] == fields.settings["background"][1] >= 0
    frameless = tmp_path / "noframes.csv"
    write_localizations(sim.localizations.drop(columns="frame"), frameless, format="csv")
    loaded = load_input(frameless, s)
    assert loaded.n_molecules is None and loaded.blinks == "not merged: no frame column"


def test_channel_selection_by_number_or_text():
    """Channels are matched numerically in a numeric column (1 = "1" = 1.0) and as text otherwise."""
    import pandas as pd

    from chromflow.pipeline import rows_in_channel

    ints = pd.DataFrame({"channel": [0, 1, 1, 2]})
    for value in (1, "1", 1.0, "1.0"):
        assert rows_in_channel(ints, value).tolist() == [False, True, True, False]
    assert not rows_in_channel(ints, "H2B").any()
    floats = pd.DataFrame({"channel": [0.0, 1.0, 2.5]})
    assert rows_in_channel(floats, "2.5").tolist() == [False, False, True]
    names = pd.DataFrame({"channel": ["H2B", "H3K9me3", "H2B"]})
    assert rows_in_channel(names, "H2B").tolist() == [True, False, True]
    assert not rows_in_channel(names, 1).any()
