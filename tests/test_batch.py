"""Tests of chromflow.batch: folder processing on Dask, resumable, bad files as rows.

Small simulated nuclei (32-cell grids, the direct method, one PINN case) keep the runs short;
the Dask clusters are local, on loopback. The slow parts are the worker processes' first
imports, so the two-worker run is shared by several tests (module fixture).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chromflow import Image
from chromflow.batch import (CONFIG_NAME, FIGURE_NAME, RECORD_SUFFIX, SUMMARY_NAME, find_inputs, input_sha256,
                             load_settings, rate_distribution_figure, run_batch)
from chromflow.cli import EXIT_FAILED_FILES, EXIT_OK, main
from chromflow.errors import InputError
from chromflow.io import read_image, write_image, write_localizations
from chromflow.pipeline import PipelineSettings, output_paths

SETTINGS = {"render": {"pixel_size": 40.0}, "fields": {"grid": 32},
            "inference": {"method": "direct", "device": "cpu"}}
GOOD = ["a.csv", "b.hdf5", "sub/a.tif"]  # ThunderSTORM, Picasso, TIFF; 'a' twice in two folders
BAD = {"empty.csv": "empty", "nox.csv": "x", "blank.tif": "nucleus"}


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def _write_inputs(folder: Path):
    """Three good nuclei in three formats and three broken files."""
    from chromflow.render import render
    from chromflow.simulate import simulate_nucleus

    (folder / "sub").mkdir(parents=True, exist_ok=True)
    sim_a = simulate_nucleus(grid=32, nucleus_um=5.0, n_localizations=8000, seed=3)
    sim_b = simulate_nucleus(grid=32, nucleus_um=5.0, n_localizations=8000, seed=4)
    sim_c = simulate_nucleus(grid=32, nucleus_um=5.0, n_localizations=8000, seed=5)
    write_localizations(sim_a.localizations, folder / "a.csv", format="thunderstorm")
    write_localizations(sim_b.localizations, folder / "b.hdf5", format="picasso", pixel_size=130.0)
    write_image(render(sim_c.localizations, pixel_size=40.0), folder / "sub" / "a.tif")
    (folder / "empty.csv").write_text("")
    (folder / "nox.csv").write_text("y [nm],frame\n1.0,1\n2.0,2\n")
    write_image(Image(np.zeros((48, 48), np.float32), 40.0), folder / "blank.tif")
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return _write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "settings.json"
    path.write_text(json.dumps(SETTINGS))
    return path


def _mtimes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _leftovers(folder: Path) -> list:
    return [p for p in folder.rglob("*") if ".part" in p.name or p.name.endswith(".chromflow-tmp")]


def _rate(out: Path, rel: str) -> np.ndarray:
    rel = Path(rel)
    return read_image(output_paths(rel.name, out / rel.parent)["rate"], allow_nan=True).data


@pytest.fixture(scope="module")
def cluster():
    """A local Dask cluster on loopback with 2 worker processes (one thread each)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as local:
        yield local


@pytest.fixture(scope="module")
def two_workers(inputs, config, cluster, tmp_path_factory):
    """`chromflow batch --recursive --scheduler ADDRESS` on the mixed folder, on the 2-worker cluster."""
    out = tmp_path_factory.mktemp("out2")
    code = main(["batch", str(inputs), "--out", str(out), "--recursive", "--scheduler", cluster.scheduler_address,
                 "--config", str(config), "--quiet"])
    table = pd.read_csv(out / SUMMARY_NAME)
    return code, out, table, _mtimes(out)


# ------------------------------------------------------------------------------------------------
# the two-worker run
# ------------------------------------------------------------------------------------------------
def test_batch_cli_good_and_bad_files(two_workers, inputs):
    code, out, table, _ = two_workers
    assert code == EXIT_FAILED_FILES
    status = dict(zip(table["input"], table["status"]))
    assert status == {**{g: "ok" for g in GOOD}, **{b: "failed" for b in BAD}}
    assert list(table["input"]) == sorted(table["input"])
    for name, word in BAD.items():
        row = table[table["input"] == name].iloc[0]
        assert str(inputs / name) in row["error"] and word in row["error"]
        log = (out / row["log"]).read_text()
        assert "Traceback" in log and row["error_type"] in log
        assert not any(p.exists() for p in output_paths(name, out).values())
    ok = table[table["status"] == "ok"]
    assert (ok["device"] == "cpu").all() and np.isfinite(ok["mean_rate"]).all()
    assert (ok["time_total_s"] > 0).all() and ok["error"].isna().all()
    # same stem in two folders: both complete, in mirrored folders
    for rel in GOOD:
        folder = out / Path(rel).parent
        for path in output_paths(rel, folder).values():
            assert path.is_file(), path
        record = json.loads((folder / f"{Path(rel).stem}{RECORD_SUFFIX}").read_text())
        assert record["input_sha256"] == input_sha256(inputs / rel)
        assert record["settings_fingerprint"] == PipelineSettings.from_dict(SETTINGS).fingerprint()
        rate = _rate(out, rel)
        assert rate.shape == (32, 32) and np.isfinite(rate).sum() > 100
        log = (out / "logs" / Path(rel).with_suffix(".log")).read_text()
        assert "status: ok" in log and "infer" in log and record["input_sha256"] in log
    assert not np.array_equal(_rate(out, "a.csv"), _rate(out, "sub/a.tif"), equal_nan=True)
    assert json.loads((out / CONFIG_NAME).read_text()) == PipelineSettings.from_dict(SETTINGS).to_dict()
    assert (out / FIGURE_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _leftovers(out) == []


def test_rerun_skips_finished_files(two_workers, inputs, config):
    _, out, first, mtimes = two_workers
    table = run_batch(inputs, out, recursive=True, settings=config, progress=False)
    status = dict(zip(table["input"], table["status"]))
    assert status == {**{g: "skipped" for g in GOOD}, **{b: "failed" for b in BAD}}
    assert table["reused"].all()
    after = _mtimes(out)
    unchanged = {k: v for k, v in mtimes.items() if k not in (SUMMARY_NAME, FIGURE_NAME, CONFIG_NAME)}
    assert {k: after[k] for k in unchanged} == unchanged
    merged = first.set_index("input").join(table.set_index("input"), rsuffix="_again")
    assert np.allclose(merged["mean_rate"], merged["mean_rate_again"], equal_nan=True)
    # the CLI counts a carried-over failure as a failure
    assert main(["batch", str(inputs), "--out", str(out), "-r", "--config", str(config), "-q"]) == EXIT_FAILED_FILES
    # retry_failed runs the broken files again (and they fail again); the good ones stay skipped
    again = run_batch(inputs, out, recursive=True, settings=config, progress=False, retry_failed=True,
                      scheduler="synchronous")
    failed = again[again["status"] == "failed"]
    assert set(failed["input"]) == set(BAD) and not failed["reused"].any()
    assert set(again.loc[again["status"] == "skipped", "input"]) == set(GOOD)
    # only good files selected: exit code 0 (and nothing to do, so no cluster is started)
    assert main(["batch", str(inputs), "--out", str(out), "--pattern", "*.hdf5", "--config", str(config),
                 "--scheduler", "tcp://127.0.0.1:9", "-q"]) == EXIT_OK
    assert list(pd.read_csv(out / SUMMARY_NAME)["status"]) == ["skipped"]


def test_kill_and_resume_one_worker_matches_two(two_workers, cluster, inputs, config, tmp_path):
    """SIGKILL `chromflow batch --workers 1` (its own local cluster) after its first file; the rerun
    skips that file, does the rest, leaves no partial file, and every rate map equals the 2-worker run's."""
    _, out2, _, _ = two_workers
    src = tmp_path / "in"
    for rel in GOOD + ["b.yaml"]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(inputs / rel, src / rel)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "chromflow.cli", "batch", str(src), "--out", str(out), "-r", "--workers", "1",
           "--config", str(config), "--quiet"]
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "wb") as err:  # a file, not a pipe: a full pipe would stall the child
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 240
    try:
        while not list(out.rglob(f"*{RECORD_SUFFIX}")):
            assert proc.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, "no file finished in time"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its Dask worker, at once
        proc.wait()
    done = {p.relative_to(out).parent / p.name[:-len(RECORD_SUFFIX)] for p in out.rglob(f"*{RECORD_SUFFIX}")}
    assert 1 <= len(done) < len(GOOD), "the kill came too late to test anything"
    finished = {rel for rel in GOOD if Path(rel).with_suffix("") in done}
    for rel in finished:  # a finished file is whole
        assert all(p.is_file() for p in output_paths(rel, out / Path(rel).parent).values())
    before = _mtimes(out)
    # what a kill during a write can leave (hidden temporary names) is cleared by the rerun
    (out / ".a.x1y2.chromflow-tmp").mkdir(exist_ok=True)
    (out / ".a.x1y2.chromflow-tmp" / "a_rate.tif").write_bytes(b"half")
    (out / "sub").mkdir(exist_ok=True)
    (out / "sub" / ".a_rate.k3j4.part.tif").write_bytes(b"half")
    assert len(_leftovers(out)) >= 2

    table = run_batch(src, out, recursive=True, settings=config, scheduler=cluster.scheduler_address,
                      progress=False)
    status = dict(zip(table["input"], table["status"]))
    assert status == {rel: ("skipped" if rel in finished else "ok") for rel in GOOD}
    after = _mtimes(out)
    for rel in finished:
        for path in output_paths(rel, Path(rel).parent).values():
            assert after[path.as_posix()] == before[path.as_posix()]
    assert _leftovers(out) == []
    for rel in GOOD:
        assert np.array_equal(_rate(out, rel), _rate(out2, rel), equal_nan=True), rel


# ------------------------------------------------------------------------------------------------
# resume logic (in-process runs: scheduler="synchronous")
# ------------------------------------------------------------------------------------------------
def test_changed_content_redoes_changed_settings_refused(inputs, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy2(inputs / "a.csv", src / "a.csv")
    shutil.copy2(inputs / "sub" / "a.tif", src / "c.tif")
    calls = []
    first = run_batch(src, out, settings=SETTINGS, scheduler="synchronous",
                      progress=lambda done, total, msg: calls.append((done, total)))
    assert list(first["status"]) == ["ok", "ok"] and calls[-1] == (2, 2)

    # new content, same name: redone; the other file is skipped
    text = (src / "a.csv").read_text().splitlines()
    (src / "a.csv").write_text("\n".join(text[: len(text) * 3 // 4]) + "\n")
    second = run_batch(src, out, settings=SETTINGS, scheduler="synchronous", progress=False)
    assert dict(zip(second["input"], second["status"])) == {"a.csv": "ok", "c.tif": "skipped"}
    assert second.loc[0, "n_localizations"] < first.loc[0, "n_localizations"]
    assert second.loc[0, "input_sha256"] == hashlib.sha256((src / "a.csv").read_bytes()).hexdigest()

    # other settings into the same folder: refused, naming the difference
    other = json.loads(json.dumps(SETTINGS))
    other["fields"]["grid"] = 24
    with pytest.raises(InputError, match=r"fields\.grid 32 -> 24"):
        run_batch(src, out, settings=other, scheduler="synchronous", progress=False)
    # another device is the same question: allowed, nothing recomputed
    same = run_batch(src, out, settings=SETTINGS, device="auto", scheduler="synchronous", progress=False)
    assert list(same["status"]) == ["skipped", "skipped"]
    # with force: every file recomputed with the new settings
    forced = run_batch(src, out, settings=other, scheduler="synchronous", progress=False, force=True)
    assert list(forced["status"]) == ["ok", "ok"]
    assert (forced["settings_fingerprint"] == PipelineSettings.from_dict(other).fingerprint()).all()
    assert _rate(out, "c.tif").shape == (24, 24)
    assert PipelineSettings.from_json(out / CONFIG_NAME).fields.grid == 24

    # a file that breaks loses its old outputs: nothing stale stays beside a failure
    (src / "a.csv").write_text("")
    broken = run_batch(src, out, settings=other, scheduler="synchronous", progress=False)
    assert dict(zip(broken["input"], broken["status"])) == {"a.csv": "failed", "c.tif": "skipped"}
    assert not any(p.exists() for p in output_paths("a.csv", out).values())
    assert json.loads((out / f"a{RECORD_SUFFIX}").read_text())["status"] == "failed"
    assert _leftovers(out) == []


def test_rerun_checks_the_outputs_that_were_written(inputs, tmp_path):
    # without uncertainty no uncertainty file is written: the rerun still skips the file, but
    # redoes it once one of the files it did write is gone
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy2(inputs / "a.csv", src / "a.csv")
    settings = json.loads(json.dumps(SETTINGS))
    settings["inference"]["uncertainty"] = False
    first = run_batch(src, out, settings=settings, scheduler="synchronous", progress=False)
    assert list(first["status"]) == ["ok"]
    paths = output_paths("a.csv", out)
    record = json.loads((out / f"a{RECORD_SUFFIX}").read_text())
    assert not paths["uncertainty"].exists() and paths["uncertainty"].name not in record["outputs"]
    assert paths["ratio"].name in record["outputs"] and paths["ratio"].exists()
    again = run_batch(src, out, settings=settings, scheduler="synchronous", progress=False)
    assert list(again["status"]) == ["skipped"]
    paths["ratio"].unlink()
    redone = run_batch(src, out, settings=settings, scheduler="synchronous", progress=False)
    assert list(redone["status"]) == ["ok"] and paths["ratio"].exists()


def test_pinn_in_batch(inputs, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy2(inputs / "a.csv", src / "a.csv")
    settings = PipelineSettings.from_dict(SETTINGS)
    settings.inference.method, settings.inference.iterations, settings.inference.ensemble = "pinn", 5, 1
    table = run_batch(src, tmp_path / "out", settings=settings, scheduler="synchronous", progress=False)
    row = table.iloc[0]
    assert row["status"] == "ok" and row["method"] == "pinn" and np.isfinite(row["mean_rate"])
    assert np.isfinite(_rate(tmp_path / "out", "a.csv")).sum() > 100
    assert settings.inference.method == "pinn" and settings.inference.device == "cpu"  # caller's object untouched


def test_same_stem_in_one_folder_is_a_failed_row(inputs, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy2(inputs / "a.csv", src / "cell.csv")
    shutil.copy2(inputs / "sub" / "a.tif", src / "cell.tif")
    table = run_batch(src, tmp_path / "out", settings=SETTINGS, scheduler="synchronous", progress=False)
    assert list(table["status"]) == ["failed", "failed"]
    assert "cell.tif" in table.loc[0, "error"] and "cell.csv" in table.loc[1, "error"]
    assert not list((tmp_path / "out").glob("cell_*"))


# ------------------------------------------------------------------------------------------------
# pieces
# ------------------------------------------------------------------------------------------------
def test_find_inputs(tmp_path):
    content = {".csv": b"x,y\n1,2\n", ".hdf5": b"\x89HDF\r\n\x1a\n", ".tif": b"II*\x00", ".yaml": b"x"}
    for rel in ["a.csv", "b.hdf5", "b.yaml", "c.TIF", "notes.md", ".hidden.csv", "sub/d.csv",
                ".git/e.csv", "results/a_rate.tif"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(content.get((tmp_path / rel).suffix.lower(), b"x"))

    def names(**kw):
        return [p.relative_to(tmp_path).as_posix() for p in find_inputs(tmp_path, **kw)]
    assert names() == ["a.csv", "b.hdf5", "c.TIF"]
    assert names(recursive=True, exclude=tmp_path / "results") == ["a.csv", "b.hdf5", "c.TIF", "sub/d.csv"]
    assert "results/a_rate.tif" in names(recursive=True)
    assert names(pattern="*.csv", recursive=True) == ["a.csv", "sub/d.csv"]
    assert names(pattern="sub/*", recursive=True) == ["sub/d.csv"]
    # files with a data suffix but other content are skipped, and said so
    (tmp_path / "LICENSE.txt").write_text("MIT License\n\nCopyright (c) 2024 someone\n")
    (tmp_path / "README.txt").write_text("Nuclei imaged on 2024-03-01, 100x objective\n")
    (tmp_path / "fake.tif").write_text("not an image")
    (tmp_path / "table.txt").write_text("X_pos\tY_pos\n1\t2\n")  # a table: an input, even unmapped
    skipped = []
    assert [p.relative_to(tmp_path).as_posix() for p in find_inputs(tmp_path)] == ["a.csv", "b.hdf5", "c.TIF",
                                                                                  "table.txt"]
    find_inputs(tmp_path, skipped=skipped)
    assert sorted((p.name, why.split(" ")[0]) for p, why in skipped) == [
        ("LICENSE.txt", "text,"), ("README.txt", "text,"), ("fake.tif", "not")]
    with pytest.raises(InputError, match="not found"):
        find_inputs(tmp_path / "nope")
    with pytest.raises(InputError, match="not a folder"):
        find_inputs(tmp_path / "a.csv")


def test_input_sha256(tmp_path):
    a = tmp_path / "a.csv"
    a.write_bytes(b"x [nm],y [nm]\n1,2\n")
    assert input_sha256(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    b = tmp_path / "renamed.csv"
    shutil.copy(a, b)
    os.utime(b, (0, 0))
    assert input_sha256(b) == input_sha256(a)  # content, not name or time
    h5 = tmp_path / "p.hdf5"
    h5.write_bytes(b"\x89HDF")
    no_yaml = input_sha256(h5)
    (tmp_path / "p.yaml").write_text("Pixelsize: 130\n")
    with_yaml = input_sha256(h5)
    (tmp_path / "p.yaml").write_text("Pixelsize: 160\n")
    assert len({no_yaml, with_yaml, input_sha256(h5)}) == 3  # the metadata is part of the input


def test_load_settings(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(SETTINGS))
    base = PipelineSettings.from_dict(SETTINGS)
    assert load_settings(path) == base == load_settings(SETTINGS) == load_settings(base)
    assert load_settings(None) == PipelineSettings()
    moved = load_settings(base, device="cuda:1")
    assert moved.inference.device == "cuda:1" and base.inference.device == "cpu"
    assert moved.fingerprint() == base.fingerprint()
    with pytest.raises(InputError, match="settings must be"):
        load_settings(42)


def test_folder_errors(inputs, tmp_path):
    with pytest.raises(InputError, match="must not be the input folder"):
        run_batch(inputs, inputs, progress=False)
    with pytest.raises(InputError, match=r"matching '\*\.nd2'"):
        run_batch(inputs, tmp_path / "o", pattern="*.nd2", progress=False)
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "locked"
    out.mkdir()
    with open(out / ".chromflow-batch.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(InputError, match="another `chromflow batch`"):
            run_batch(inputs, out, pattern="empty.csv", scheduler="synchronous", progress=False)


def test_rate_distribution_figure():
    rng = np.random.default_rng(0)
    samples = {"a.csv": rng.normal(1.0, 0.1, 500), "sub/b.tif": rng.lognormal(0.3, 0.2, 300),
               "flat.tif": np.full(10, 0.7)}
    fig = rate_distribution_figure(samples)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(samples)
    # horizontal violins: the median/extrema bars are vertical segments at x = the statistic
    bars = [seg[0][0] for c in ax.collections if hasattr(c, "get_segments") for seg in c.get_segments()
            if len(seg) == 2 and np.isclose(seg[0][0], seg[1][0])]
    for key in ("a.csv", "sub/b.tif"):
        for stat in (np.median, np.min, np.max):
            assert np.isclose(bars, stat(samples[key])).any(), (key, stat)
    assert [line.get_xdata()[0] for line in ax.lines] == [0.7]  # a constant map: one tick
    many = rate_distribution_figure({f"f{i}": rng.normal(i, 1, 50) for i in range(40)})
    assert len(many.axes[0].get_yticklabels()) == 40


def _cuda_available():
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
def test_gpu_batch_and_device_free_reuse(inputs, tmp_path):
    """The device reaches the pipeline (PINN on CUDA), and a CPU rerun reuses the GPU result."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy2(inputs / "a.csv", src / "a.csv")
    settings = PipelineSettings.from_dict(SETTINGS)
    settings.inference.method, settings.inference.iterations, settings.inference.ensemble = "pinn", 5, 1
    cpu = run_batch(src, tmp_path / "cpu", settings=settings, scheduler="synchronous", progress=False)
    gpu = run_batch(src, tmp_path / "gpu", settings=settings, device="cuda", scheduler="synchronous",
                    progress=False)
    assert cpu.loc[0, "device"] == "cpu"
    assert gpu.loc[0, "status"] == "ok" and str(gpu.loc[0, "device"]).startswith("cuda")
    assert gpu.loc[0, "settings_fingerprint"] == cpu.loc[0, "settings_fingerprint"]
    rate_cpu, rate_gpu = _rate(tmp_path / "cpu", "a.csv"), _rate(tmp_path / "gpu", "a.csv")
    assert np.array_equal(np.isnan(rate_cpu), np.isnan(rate_gpu)) and np.isfinite(rate_gpu).sum() > 100
    # the device is not part of the question: a CPU rerun into the GPU folder reuses the result
    again = run_batch(src, tmp_path / "gpu", settings=settings, device="cpu", scheduler="synchronous",
                      progress=False)
    assert again.loc[0, "status"] == "skipped" and str(again.loc[0, "device"]).startswith("cuda")
