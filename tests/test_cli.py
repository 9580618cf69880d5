"""Tests of the ``chromflow`` command line (chromflow.cli.main)."""
from __future__ import annotations

import json
import os
import signal
import sys
import types

import numpy as np
import pandas as pd
import pytest

import chromflow
from chromflow.cli import EXIT_CANCELLED, EXIT_ERROR, EXIT_FAILED_FILES, EXIT_OK, main, rate_correlation
from chromflow.inverse.result import split_flags
from chromflow.pipeline import OUTPUT_KINDS

FAST = ["--grid", "40", "--pixel-size", "40", "--method", "direct", "--quiet"]


@pytest.fixture(scope="module")
def cell_csv(tmp_path_factory):
    """A small simulated nucleus (both channels merged) as a ThunderSTORM CSV."""
    from chromflow.io import write_localizations
    from chromflow.simulate import simulate_nucleus

    sim = simulate_nucleus(grid=48, nucleus_um=6.0, n_localizations=30_000, seed=5)
    path = tmp_path_factory.mktemp("cli_in") / "cell.csv"
    write_localizations(sim.localizations, path, format="thunderstorm")
    return path, len(sim.localizations)


def one_error_line(err: str, *words):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("chromflow: error: ")
    assert "Traceback" not in err
    for word in words:
        assert str(word) in lines[0]


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"chromflow {chromflow.__version__}"


def test_usage_error_exit_code(capsys):
    assert main(["run"]) == 2  # FILE and --out missing: argparse's usage error
    assert "usage:" in capsys.readouterr().err
    assert main([]) == 2


def test_run_writes_all_outputs(cell_csv, tmp_path, capsys):
    from chromflow.io import read_image

    cell_csv, n_locs = cell_csv
    out = tmp_path / "out"
    assert main(["run", str(cell_csv), "--out", str(out), "--seed", "3", *FAST]) == EXIT_OK
    assert capsys.readouterr().out == ""  # --quiet
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"cell{suffix}" for suffix in OUTPUT_KINDS.values())
    summary = json.loads((out / "cell_summary.json").read_text())
    assert summary["status"] == "ok" and summary["file"] == str(cell_csv)
    assert summary["n_localizations"] == n_locs
    assert summary["pixel_size_nm"] == 40.0 and summary["method"] == "direct" and summary["seed"] == 3
    assert summary["grid"] == "40x40"
    for key in ("mean_rate", "median_rate", "heterochromatin_fraction", "nucleus_area_um2", "domain_area_um2",
                "time_read_s", "time_infer_s", "time_total_s", "device", "settings_fingerprint"):
        assert key in summary, key
    # a 6 um x 4.8 um ellipse: about 22.6 um^2 (rough outline and blur allow some slack)
    assert 15 < summary["nucleus_area_um2"] < 30
    density = read_image(out / "cell_density.tif")
    assert density.pixel_size == pytest.approx(40.0)
    mask = read_image(out / "cell_mask.tif")
    assert mask.data.dtype == bool and mask.shape == density.shape
    rate = read_image(out / "cell_rate.tif", allow_nan=True)
    assert rate.shape == (40, 40)
    assert rate.pixel_size == pytest.approx(summary["grid_spacing_nm"])
    assert np.nanmedian(rate.data) == pytest.approx(summary["median_rate"], rel=1e-5)
    assert read_image(out / "cell_uncertainty.tif", allow_nan=True).pixel_size == pytest.approx(rate.pixel_size)


def test_run_prints_summary_and_uses_config(cell_csv, tmp_path, capsys):
    cell_csv, _ = cell_csv
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"fields": {"grid": 40}, "render": {"pixel_size": 40},
                                  "inference": {"method": "direct", "seed": 9}}))
    out = tmp_path / "out"
    assert main(["run", str(cell_csv), "--out", str(out), "--config", str(config), "--seed", "4"]) == EXIT_OK
    captured = capsys.readouterr()
    assert f"wrote outputs of {cell_csv}" in captured.out and "rate lambda: mean" in captured.out
    summary = json.loads((out / "cell_summary.json").read_text())
    assert summary["grid"] == "40x40" and summary["seed"] == 4  # the option wins over the config
    # what blink merging did is said on the terminal too
    assert f"  blinks: {summary['blinks']}" in captured.out and "molecules" in summary["blinks"]


@pytest.mark.parametrize("case", ["missing", "empty_csv", "header_only", "no_nucleus", "bad_suffix"])
def test_bad_inputs_one_line_error_no_outputs(case, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "cell.csv"
    if case == "empty_csv":
        path.write_text("")
    elif case == "header_only":
        path.write_text('"x [nm]","y [nm]"\n')
    elif case == "no_nucleus":
        # uniform random localizations: a flat density, nothing nucleus-like to segment
        rng = np.random.default_rng(0)
        pd.DataFrame({"x": rng.uniform(0, 8000, 20_000), "y": rng.uniform(0, 8000, 20_000)}).to_csv(path, index=False)
    elif case == "bad_suffix":
        path = folder / "cell.xyz"
        path.write_text("1,2\n")
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), *FAST]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, path)
    assert not out.exists()


def test_bad_config_key_names_file_and_key(cell_csv, tmp_path, capsys):
    cell_csv, _ = cell_csv
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"inference": {"iteration": 5}}))
    assert main(["run", str(cell_csv), "--out", str(tmp_path / "o"), "--config", str(config)]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, config, "inference.iteration")
    assert main(["run", str(cell_csv), "--out", str(tmp_path / "o"), "--grid", "4"]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, "fields.grid")


def test_ctrl_c_cancels_cleanly(cell_csv, tmp_path, monkeypatch, capsys, terminal_sigint):
    """A SIGINT during the run stops it at the next check: exit 130 and no outputs."""
    cell_csv, _ = cell_csv
    import chromflow.pipeline as pipeline

    real_compute_fields = pipeline.compute_fields

    def fields_then_ctrl_c(*args, **kwargs):
        fields = real_compute_fields(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C now
        return fields

    monkeypatch.setattr(pipeline, "compute_fields", fields_then_ctrl_c)
    out = tmp_path / "out"
    assert main(["run", str(cell_csv), "--out", str(out), *FAST]) == EXIT_CANCELLED
    assert "cancelled" in capsys.readouterr().err
    assert not out.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_batch_passes_arguments_and_exit_code(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run_batch(in_dir, out_dir, **kwargs):
        calls.append((in_dir, out_dir, kwargs))
        status = ["ok", "failed", "skipped"] if kwargs["pattern"] == "*.csv" else ["ok", "skipped"]
        flags = ["sparse data: scatter 0.8; low reproducibility: r 0.3", None, "sparse data: scatter 0.75"]
        return pd.DataFrame({"input": [f"f{i}.csv" for i in range(len(status))], "status": status,
                             "error": [None if st != "failed" else "f.csv: no nucleus" for st in status],
                             "flags": flags[:len(status)]})

    monkeypatch.setitem(sys.modules, "chromflow.batch", types.SimpleNamespace(run_batch=fake_run_batch))
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"fields": {"grid": 32}}))
    code = main(["batch", str(tmp_path), "--out", str(tmp_path / "o"), "--pattern", "*.csv", "--recursive",
                 "--config", str(config), "--scheduler", "tcp://127.0.0.1:8786", "--workers", "3",
                 "--device", "cpu"])
    assert code == EXIT_FAILED_FILES
    in_dir, out_dir, kwargs = calls[0]
    assert in_dir == tmp_path and out_dir == tmp_path / "o"
    assert kwargs["pattern"] == "*.csv" and kwargs["recursive"] is True
    assert kwargs["scheduler"] == "tcp://127.0.0.1:8786" and kwargs["workers"] == 3
    assert kwargs["device"] == "cpu" and kwargs["progress"] is True
    assert kwargs["settings"].fields.grid == 32 and kwargs["settings"].inference.device == "cpu"
    captured = capsys.readouterr()
    assert "1 processed, 1 skipped" in captured.out and "1 failed" in captured.out
    # the flagged maps are counted by kind, so a folder of sparse nuclei does not go unnoticed
    assert "2 map(s) flagged (sparse data: 2, low reproducibility: 1)" in captured.out
    assert "f1.csv: f.csv: no nucleus" in captured.err
    assert main(["batch", str(tmp_path), "--out", str(tmp_path / "o"), "--pattern", "*.tif"]) == EXIT_OK


def test_rate_correlation_resamples_truth_grid():
    """A truth on a finer, shifted grid, sampled from the same smooth function: correlation ~ 1."""
    from chromflow import Image

    def f(y_nm, x_nm):
        return 1 + 0.5 * np.sin(y_nm / 700.0) * np.cos(x_nm / 500.0)

    yy, xx = np.mgrid[:200, :200]
    truth = Image(f(30 + 25.0 * yy, 10 + 25.0 * xx), pixel_size=25.0, origin=(30.0, 10.0))
    ry, rx = np.mgrid[:40, :40]
    mask = np.ones((40, 40), bool)
    result = types.SimpleNamespace(rate=f(500 + 100.0 * ry, 400 + 100.0 * rx), mask=mask, spacing=100.0,
                                   origin=(500.0, 400.0))
    corr, n = rate_correlation(result, truth)
    assert corr > 0.999 and n == 1600
    # a shifted grid origin breaks the match: the resampling really uses the origins
    shifted = types.SimpleNamespace(**{**vars(result), "origin": (1500.0, 1400.0)})
    assert rate_correlation(shifted, truth)[0] < 0.9


def test_demo_fast(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--fast", "--quiet"]) == EXIT_OK
    text = capsys.readouterr().out
    assert "Pearson correlation of the recovered rate with the true rate" in text
    corr = float(text.split("true rate: ")[1].split()[0])
    summary = json.loads((out / "nucleus_two_channel_summary.json").read_text())
    assert summary["truth_correlation"] == pytest.approx(corr, abs=1e-3)
    assert summary["two_channel"] is True
    # the correlation is printed beside both baselines, computed on the same cells
    line = text.split("baselines on the same fields")[1].splitlines()[0]
    ratio = float(line.split("smoothed phi_h/phi_e ")[1].split()[0])
    direct = float(line.split("direct inversion ")[1].split()[0])
    assert ratio == pytest.approx(summary["ratio_truth_correlation"], abs=1e-3) and 0.5 < ratio <= 1
    # the fast demo is itself a direct inversion: the direct baseline, tuned on the truth, is at
    # least as good as the fixed demo radius on the same fields
    assert direct == pytest.approx(summary["direct_truth_correlation"], abs=1e-3) and direct >= corr - 1e-3
    potential = float(line.split("smooth potential ")[1].split()[0])
    assert potential == pytest.approx(summary["potential_truth_correlation"], abs=1e-3) and 0 < potential <= 1
    assert ("smoothed ratio reads the rate better" in text) == (corr < ratio)
    # the truth-free smoothed ratio (result.ratio) is printed beside them; it cannot beat the
    # same ratio at the width tuned on the truth by more than the oracle's grid of widths allows
    cv = float(text.split("the data's halves chose (<stem>_ratio.tif) ")[1].split()[0])
    assert cv == pytest.approx(summary["cv_ratio_truth_correlation"], abs=1e-3) and cv <= ratio + 0.01
    assert f"correlates r = {summary['ratio_map_r']:.2f} with the map" in text
    # the quality score and every flag of the summary are printed
    assert f"split-half reproducibility r = {summary['split_half_r']:.2f}" in text
    flags = split_flags(summary["flags"])
    assert text.count("  WARNING: ") == len(flags) and all(f"WARNING: {f}" in text for f in flags)
    # the direct method on the two-channel sample recovers the rate map well
    assert corr > 0.6
    assert (out / "nucleus_two_channel_report.png").stat().st_size > 20_000


def test_the_full_demos_sample_is_flagged_as_sparse(tmp_path):
    """Known answer: on the sample (45,000 localizations, 186 nm cells) the smoothed ratio reads
    the rate better than the map (docs/cli.md), so the full demo's settings must flag it. Its
    cells share no noise, so it is the high-pass reading's line that fires (0.79 >= 0.7; the
    whole-noise line 0.84 was set on 50 nm cells). The noise shares come from the fields, so the
    closed form stands in for the network here (seconds instead of a fit)."""
    from chromflow.cli import DEMO_FULL, DEMO_INPUT, find_sample_data
    from chromflow.pipeline import PipelineSettings, process_file

    settings = PipelineSettings.from_dict(DEMO_FULL)
    settings.fields.euchromatin_channel = 1
    settings.inference.method = "direct"
    settings.inference.uncertainty = False
    settings.validate()
    folder = find_sample_data(tmp_path)         # the checkout's sample_data/, or generated (seed 0)
    result = process_file(folder / DEMO_INPUT, settings).result
    sparse = [f for f in result.diagnostics["flags"] if f.startswith("sparse data")]
    assert len(sparse) == 1 and "high-pass reading alone" in sparse[0], result.diagnostics["flags"]
    noise = result.diagnostics["noise"]
    assert all(noise[c]["correlation"] == 0.0 and noise[c]["share"] == noise[c]["share_read"] for c in noise)


# ----------------------------------------------------------------------------------------------
# issue 12: a command line that explains itself
# ----------------------------------------------------------------------------------------------
def test_help_shows_library_defaults_and_config_in_user_terms(capsys, monkeypatch):
    from chromflow import inverse

    assert main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("grid cells along the longer side of the nucleus, 16 to 2048 (default: 128)",
                  f"training iterations (default: {inverse.DEFAULTS['pinn']['iterations']};",
                  f"{inverse.DOMAIN_SCALE_EFFORT['iterations']} where the data resolve domain-scale structure",
                  "inference method (default: pinn)", "(default: auto)",
                  "random seed (default: 0)", "default: 20)", "sections render, segmentation, fields and inference",
                  "docs/cli.md", "--ensemble N", "--no-uncertainty", "--columns x=NAME,y=NAME", "--units UNIT",
                  "--camera-pixel-size NM", "--allow-several-objects",
                  f"--effort {{{','.join(inverse.EFFORTS)}}}", f"networks (default: {inverse.DEFAULTS['pinn']['effort']})",
                  "--ratio-weight auto|W", f"networks (default: {inverse.DEFAULTS['pinn']['ratio_weight']}): share W"):
        assert words in text, words
    assert "PipelineSettings" not in text and "default: None" not in text
    # the numbers come from the library at run time, not from a copy in the CLI
    monkeypatch.setitem(inverse.DEFAULTS["pinn"], "iterations", 321)
    assert main(["batch", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "training iterations (default: 321;" in text and "--euchromatin-channel VALUE" in text


def test_short_version_flag(capsys):
    assert main(["-V"]) == 0
    assert capsys.readouterr().out.strip() == f"chromflow {chromflow.__version__}"


def test_new_options_reach_the_settings(tmp_path, monkeypatch):
    import chromflow.pipeline as pipeline

    seen = {}

    def fake_run_file(path, out_dir, settings=None, progress=None, cancel=None):
        seen["settings"] = settings
        raise chromflow.CancelledError("stop here")

    monkeypatch.setattr(pipeline, "run_file", fake_run_file)
    path = tmp_path / "cell.csv"
    path.write_text("x,y\n1,2\n")
    code = main(["run", str(path), "--out", str(tmp_path / "o"), "--ensemble", "4", "--effort", "standard",
                 "--no-uncertainty", "--ratio-weight", "0",
                 "--columns", "x=east,y=north", "--units", "um", "--camera-pixel-size", "160",
                 "--allow-several-objects", "--no-merge-blinks", "--max-dark-frames", "3", "--device", "cpu", "-q"])
    assert code == EXIT_CANCELLED
    s = seen["settings"]
    assert (s.render.merge_blinks, s.render.max_dark_frames) == (False, 3)
    assert (s.inference.ensemble, s.inference.uncertainty, s.inference.effort) == (4, False, "standard")
    assert s.inference.ratio_weight == 0.0
    assert s.render.columns == {"x": "east", "y": "north"} and s.render.units == "um"
    assert s.render.camera_pixel_size == 160.0 and s.segmentation.allow_several_objects is True
    # unset options leave None = the library default
    main(["run", str(path), "--out", str(tmp_path / "o"), "--device", "cpu", "-q"])
    s = seen["settings"]
    assert (s.inference.ensemble, s.inference.uncertainty, s.render.columns, s.inference.effort) == (None,) * 4
    assert s.inference.ratio_weight is None
    main(["run", str(path), "--out", str(tmp_path / "o"), "--device", "cpu", "-q", "--ratio-weight", "AUTO"])
    assert seen["settings"].inference.ratio_weight == "auto"
    assert s.fields.grid == 128  # chromatin_fields' default
    assert (s.render.merge_blinks, s.render.max_dark_frames) == (True, 1)


def test_bad_ratio_weight_is_a_usage_error(tmp_path, capsys):
    for bad in ("1.5", "-0.2", "half"):
        assert main(["run", "x.csv", "--out", str(tmp_path), "--ratio-weight", bad]) == EXIT_ERROR
        err = capsys.readouterr().err
        assert "--ratio-weight" in err and "0 to 1" in err


def test_bad_column_mapping_is_a_usage_error(tmp_path, capsys):
    assert main(["run", "x.csv", "--out", str(tmp_path), "--columns", "x:east"]) == EXIT_ERROR
    assert "x=X_nm,y=Y_nm" in capsys.readouterr().err


def test_batch_euchromatin_channel_and_new_options(tmp_path, monkeypatch):
    calls = []

    def fake_run_batch(in_dir, out_dir, **kwargs):
        calls.append(kwargs)
        return pd.DataFrame({"input": ["a.csv"], "status": ["ok"], "error": [None]})

    monkeypatch.setitem(sys.modules, "chromflow.batch", types.SimpleNamespace(run_batch=fake_run_batch))
    assert main(["batch", str(tmp_path), "--out", str(tmp_path / "o"), "--euchromatin-channel", "2",
                 "--ensemble", "3", "--device", "cpu", "-q"]) == EXIT_OK
    settings = calls[0]["settings"]
    assert settings.fields.euchromatin_channel == 2 and settings.inference.ensemble == 3


@pytest.mark.parametrize("columns, scale, fix, hint", [
    # unknown names, in micrometres
    (("east", "north"), 1e-3, ["--columns", "x=east,y=north", "--units", "um"], "--columns x=NAME,y=NAME"),
    # ThunderSTORM in camera pixels of 160 nm
    (("x [px]", "y [px]"), 1 / 160.0, ["--camera-pixel-size", "160"], "--camera-pixel-size"),
])
def test_tables_only_the_command_line_can_fix(cell_csv, tmp_path, capsys, columns, scale, fix, hint):
    """Refused with a hint naming the option; read with that option: the same 22.6 um^2 nucleus."""
    from chromflow.io import read_localizations

    cell_csv, _ = cell_csv
    locs = read_localizations(cell_csv)
    path = tmp_path / "odd.csv"
    pd.DataFrame({columns[0]: locs["x"] * scale, columns[1]: locs["y"] * scale}).to_csv(path, index=False)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), *FAST]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, hint)
    assert not out.exists()
    assert main(["run", str(path), "--out", str(out), *fix, *FAST]) == EXIT_OK
    assert 15 < json.loads((out / "odd_summary.json").read_text())["nucleus_area_um2"] < 30


def test_field_of_bacteria_is_refused(realdata, tmp_path, capsys):
    """The real ColiCoords STORM export (~10 E. coli cells) is not a nucleus."""
    path = realdata / "colicoords" / "01_storm.csv"
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), *FAST]) == EXIT_ERROR
    one_error_line(capsys.readouterr().err, path, "dense objects", "--allow-several-objects")
    assert not out.exists()


def test_demo_writes_outside_the_clone_by_default(monkeypatch, capsys):
    import chromflow.cli as cli

    seen = {}

    def fake_run_demo(out_dir, **kwargs):
        seen["out"] = out_dir
        raise chromflow.CancelledError("stop")

    monkeypatch.setattr(cli, "run_demo", fake_run_demo)
    assert main(["demo", "--fast", "-q"]) == EXIT_CANCELLED
    repo = os.path.dirname(os.path.dirname(os.path.abspath(chromflow.__file__)))
    assert seen["out"] == cli.default_demo_dir()
    assert not os.path.abspath(seen["out"]).startswith(repo + os.sep)
