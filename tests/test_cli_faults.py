"""The catalogue of bad inputs and faults: each ends in one error line (or a clear warning),
the right exit code, and an output folder that is empty, absent or unchanged.

One parametrised test per case of the table in issue 12 (see docs/cli.md, "Faults"). Inputs
are tiny and inference is the closed-form ``direct`` method on a small grid, so the whole
catalogue runs in seconds.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chromflow.cli import EXIT_ERROR, EXIT_FAILED_FILES, EXIT_OK, EXIT_TERMINATED, main
from chromflow.pipeline import OUTPUT_KINDS

FAST = ["--grid", "40", "--pixel-size", "40", "--method", "direct", "--quiet"]


SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "nucleus_thunderstorm.csv"


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """The bundled sample nucleus (45 000 localizations, ThunderSTORM): its table (nm) and a copy."""
    from chromflow.io import read_localizations

    path = tmp_path_factory.mktemp("faults_in") / "cell.csv"
    shutil.copy(SAMPLE, path)
    return read_localizations(path), path


def listing(folder):
    """Every name under ``folder`` (hidden ones too), or None when it does not exist."""
    if not folder.exists():
        return None
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def error_lines(err):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    return [line for line in lines if line.startswith("chromflow: error: ")]


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------------------------
# each case: build the input in tmp_path, return (argv, out folder, expected listing of it after)
# ----------------------------------------------------------------------------------------------
def case_truncated_last_line(tmp_path, cell, monkeypatch):
    locs, src = cell
    path = tmp_path / "cut.csv"
    data = src.read_bytes()
    path.write_bytes(data[: len(data) - 25])  # the last row loses its last fields, mid-number
    out = tmp_path / "out"
    return ["run", str(path), "--out", str(out), *FAST], out, None


def case_um_in_nm_column(tmp_path, cell, monkeypatch):
    from chromflow.io import write_localizations

    locs, _ = cell
    um = locs.copy()
    um["x"], um["y"] = um["x"] / 1000.0, um["y"] / 1000.0  # micrometres, written under "x [nm]"
    path = tmp_path / "um.csv"
    write_localizations(um, path, format="thunderstorm")
    out = tmp_path / "out"
    return ["run", str(path), "--out", str(out), *FAST], out, None


def case_precision_1e7_nm(tmp_path, cell, monkeypatch):
    from chromflow.io import write_localizations

    locs, _ = cell
    bad = locs.copy()
    bad["uncertainty"] = 1e7
    path = tmp_path / "precise.csv"
    write_localizations(bad, path, format="thunderstorm")
    out = tmp_path / "out"
    return ["run", str(path), "--out", str(out), "--grid", "40", "--method", "direct", "--quiet"], out, None


def case_grid_1000000(tmp_path, cell, monkeypatch):
    out = tmp_path / "out"
    return ["run", str(cell[1]), "--out", str(out), "--grid", "1000000", "--method", "direct", "-q"], out, None


def case_two_channels_no_euchromatin_in_nucleus(tmp_path, cell, monkeypatch):
    locs, _ = cell
    rng = np.random.default_rng(3)
    het = locs[["x", "y"]].assign(channel=0)
    # the "euchromatin" localizations lie in a square well outside the nucleus
    x0 = float(locs["x"].max()) + 3000.0
    eu = pd.DataFrame({"x": rng.uniform(x0, x0 + 1500, 3000), "y": rng.uniform(0, 1500, 3000), "channel": 1})
    path = tmp_path / "two.csv"
    pd.concat([het, eu], ignore_index=True).to_csv(path, index=False)
    out = tmp_path / "out"
    return ["run", str(path), "--out", str(out), "--euchromatin-channel", "1", *FAST], out, None


def case_bool_tiff_as_density(tmp_path, cell, monkeypatch):
    from chromflow import Image
    from chromflow.io import write_image

    yy, xx = np.indices((120, 120))
    path = tmp_path / "mask.tif"
    write_image(Image((yy - 60) ** 2 + (xx - 60) ** 2 < 40 ** 2, pixel_size=40.0), path)
    out = tmp_path / "out"
    return ["run", str(path), "--out", str(out), *FAST], out, None


def case_unreadable_file(tmp_path, cell, monkeypatch):
    path = tmp_path / "locked.csv"
    path.write_bytes(cell[1].read_bytes())
    if os.geteuid() == 0:  # root reads anything: make open() fail as it does for a user
        import builtins

        real_open = builtins.open

        def denied(file, *args, **kwargs):
            if os.fspath(file) == os.fspath(path):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", denied)
    else:
        path.chmod(0)
    out = tmp_path / "out"
    return ["run", str(path), "--out", str(out), *FAST], out, None


def _no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def case_device_cuda_without_gpu(tmp_path, cell, monkeypatch):
    _no_cuda(monkeypatch)
    out = tmp_path / "out"
    return ["run", str(cell[1]), "--out", str(out), "--device", "cuda", *FAST], out, None


def case_output_folder_is_a_file(tmp_path, cell, monkeypatch):
    out = tmp_path / "out"
    out.write_text("not a folder")
    return ["run", str(cell[1]), "--out", str(out), *FAST], out, "file"


def case_output_folder_not_writable(tmp_path, cell, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == os.fspath(out)
                        else real_access(p, mode, **kw))
    return ["run", str(cell[1]), "--out", str(out), *FAST], out, ["keep.txt"]


def case_disk_full_during_run(tmp_path, cell, monkeypatch):
    import chromflow.io

    real_write = chromflow.io.write_image
    calls = []

    def write_then_full(image, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:  # the third output: some files are written already
            with open(path, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(image, path, *args, **kwargs)

    monkeypatch.setattr(chromflow.io, "write_image", write_then_full)
    out = tmp_path / "out"
    return ["run", str(cell[1]), "--out", str(out), *FAST], out, None


def case_sigterm_during_writing(tmp_path, cell, monkeypatch):
    import chromflow.io

    real_write = chromflow.io.write_image
    calls = []

    def write_then_terminated(image, path, *args, **kwargs):
        calls.append(path)
        result = real_write(image, path, *args, **kwargs)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` from another shell, mid-write
        return result

    monkeypatch.setattr(chromflow.io, "write_image", write_then_terminated)
    out = tmp_path / "out"
    return ["run", str(cell[1]), "--out", str(out), *FAST], out, None


def case_batch_workers_0(tmp_path, cell, monkeypatch):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    (in_dir / "cell.csv").write_bytes(cell[1].read_bytes())
    out = tmp_path / "out"
    return ["batch", str(in_dir), "--out", str(out), "--workers", "0", *FAST], out, None


def case_batch_workers_negative(tmp_path, cell, monkeypatch):
    argv, out, expected = case_batch_workers_0(tmp_path, cell, monkeypatch)
    argv[argv.index("0")] = "-2"
    return argv, out, expected


def case_batch_device_cuda_without_gpu(tmp_path, cell, monkeypatch):
    _no_cuda(monkeypatch)
    argv, out, expected = case_batch_workers_0(tmp_path, cell, monkeypatch)
    argv[argv.index("--workers"):argv.index("--workers") + 2] = ["--device", "cuda"]
    return argv, out, expected


def case_batch_output_folder_is_a_file(tmp_path, cell, monkeypatch):
    argv, out, _ = case_batch_workers_0(tmp_path, cell, monkeypatch)
    argv[argv.index("--workers"):argv.index("--workers") + 2] = ["--scheduler", "synchronous"]
    out.write_text("not a folder")
    return argv, out, "file"


def case_batch_output_folder_not_writable(tmp_path, cell, monkeypatch):
    argv, out, _ = case_batch_output_folder_is_a_file(tmp_path, cell, monkeypatch)
    out.unlink()
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == os.fspath(out)
                        else real_access(p, mode, **kw))
    return argv, out, ["keep.txt"]


# case -> (exit code, words of the error line)
CASES = {
    "truncated last line": (case_truncated_last_line, EXIT_ERROR, ["cut.csv", "truncated", "last line"]),
    "um values in an nm column": (case_um_in_nm_column, EXIT_ERROR, ["um.csv", "span only", "--units"]),
    "precision of 1e7 nm": (case_precision_1e7_nm, EXIT_ERROR, ["precise.csv", "precision", "1e+07"]),
    "--grid 1000000": (case_grid_1000000, EXIT_ERROR, ["fields.grid", "2048", "1000000"]),
    "two channels, no euchromatin in the nucleus": (case_two_channels_no_euchromatin_in_nucleus, EXIT_ERROR,
                                                    ["two.csv", "euchromatin channel holds only",
                                                     "--euchromatin-channel"]),
    "bool TIFF as density": (case_bool_tiff_as_density, EXIT_ERROR, ["mask.tif", "binary", "mask"]),
    "unreadable file": (case_unreadable_file, EXIT_ERROR, ["locked.csv", "cannot read", "Permission denied"]),
    "--device cuda without GPU": (case_device_cuda_without_gpu, EXIT_ERROR, ["CUDA is not available", "--device"]),
    "output folder is a file": (case_output_folder_is_a_file, EXIT_ERROR, ["is a file", "--out"]),
    "output folder not writable": (case_output_folder_not_writable, EXIT_ERROR, ["permission denied", "--out"]),
    "disk full during run": (case_disk_full_during_run, EXIT_ERROR, ["No space left on device", "nothing was written"]),
    "SIGTERM during writing": (case_sigterm_during_writing, EXIT_TERMINATED, []),
    "batch --workers 0": (case_batch_workers_0, EXIT_ERROR, []),
    "batch --workers -2": (case_batch_workers_negative, EXIT_ERROR, []),
    "batch --device cuda without GPU": (case_batch_device_cuda_without_gpu, EXIT_ERROR,
                                        ["CUDA is not available", "--device"]),
    "batch output folder is a file": (case_batch_output_folder_is_a_file, EXIT_ERROR, ["is a file", "--out"]),
    "batch output folder not writable": (case_batch_output_folder_not_writable, EXIT_ERROR,
                                         ["permission denied", "--out"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fault_ends_in_one_line_and_leaves_nothing(name, cell, tmp_path, monkeypatch, capsys):
    build, code, words = CASES[name]
    argv, out, expected = build(tmp_path, cell, monkeypatch)
    before = out.read_text() if expected == "file" else None
    assert main(argv) == code
    err = capsys.readouterr().err
    if code == EXIT_TERMINATED:
        assert "Traceback" not in err and "terminated" in err
    elif name.startswith("batch --workers"):  # argparse's usage error, naming the option
        assert "usage:" in err and "--workers" in err and "at least 1" in err
    else:
        lines = error_lines(err)
        assert len(lines) == 1, err
        for word in words:
            assert word in lines[0], (word, lines[0])
    if expected == "file":
        assert out.is_file() and out.read_text() == before
    else:
        assert listing(out) == expected  # None: not even created


def test_sigkill_then_rerun_sweeps_stale_temporary_folders(cell, tmp_path):
    """What `kill -9` during writing leaves (a temporary folder of a dead process) is removed by a rerun."""
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".cell.{_dead_pid()}.x1y2z3.chromflow-tmp"
    stale.mkdir()
    (stale / "cell_rate.tif").write_bytes(b"half a TIFF")
    other = out / ".other.1.abc.chromflow-tmp"  # pid 1 is alive: not ours to remove
    other.mkdir()
    assert main(["run", str(cell[1]), "--out", str(out), *FAST]) == EXIT_OK
    assert listing(out) == sorted([".other.1.abc.chromflow-tmp", *(f"cell{s}" for s in OUTPUT_KINDS.values())])


def test_one_absurd_precision_is_a_warning(cell, tmp_path, capsys):
    """A few fit failures with a huge precision do not spoil a file: one warning line, exit 0."""
    from chromflow.io import write_localizations

    locs, _ = cell
    some = locs.copy()
    some.loc[some.index[:3], "uncertainty"] = 1e7
    path = tmp_path / "some.csv"
    write_localizations(some, path, format="thunderstorm")
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--grid", "40", "--method", "direct", "-q"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("chromflow: warning: ")]
    assert len(warnings) == 1 and "3 localization(s) with a precision above 1000 nm" in warnings[0], err


def test_batch_records_absurd_precision_and_does_not_retry_it(cell, tmp_path, capsys):
    """A refused file is a recorded failure: a rerun reports it again without recomputing it."""
    from chromflow.io import write_localizations

    locs, src = cell
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    bad = locs.copy()
    bad["uncertainty"] = 1e7
    write_localizations(bad, in_dir / "bad.csv", format="thunderstorm")
    out = tmp_path / "out"
    argv = ["batch", str(in_dir), "--out", str(out), "--scheduler", "synchronous", *FAST]
    assert main(argv) == EXIT_FAILED_FILES
    first = pd.read_csv(out / "summary.csv")
    assert first["status"].tolist() == ["failed"] and "precision" in first["error"][0]
    assert main(argv) == EXIT_FAILED_FILES
    second = pd.read_csv(out / "summary.csv")
    assert second["status"].tolist() == ["failed"] and bool(second["reused"][0])  # not recomputed
    capsys.readouterr()


def test_batch_quiet_still_prints_failures(cell, tmp_path, capsys):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    (in_dir / "good.csv").write_bytes(cell[1].read_bytes())
    (in_dir / "flat.csv").write_text("x,y\n" + "\n".join(f"{i % 97 * 50},{i % 89 * 50}" for i in range(3000)) + "\n")
    out = tmp_path / "out"
    assert main(["batch", str(in_dir), "--out", str(out), "--scheduler", "synchronous", *FAST]) == EXIT_FAILED_FILES
    captured = capsys.readouterr()
    assert captured.out == ""
    failed = [line for line in captured.err.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == 1 and failed[0].startswith("  failed: flat.csv: ") and "Traceback" not in captured.err


def test_batch_workers_start_with_ctrl_c_ignored(terminal_sigint):
    """Workers started inside the guard ignore SIGINT (no traceback per worker on Ctrl-C); the
    main process gets its own handler back afterwards."""
    from chromflow.batch import _workers_ignore_ctrl_c

    before = signal.getsignal(signal.SIGINT)
    probe = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"]
    with _workers_ignore_ctrl_c():
        inside = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    outside = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    assert (inside, outside) == ("True", "False")
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_ctrl_c_during_batch_prints_no_dask_traceback(cell, tmp_path, terminal_sigint):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while a local cluster works."""
    import time

    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for name in ("a.csv", "b.csv"):
        (in_dir / name).write_bytes(cell[1].read_bytes())
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "chromflow.cli", "batch", str(in_dir), "--out", str(out),
                             # 100 fits per file: the split-half stopping ends each fit after a few
                             # hundred steps whatever the budget, so a large --iterations alone let a
                             # fast machine finish both files before the Ctrl-C (exit 0, seen in CI)
                             "--workers", "2", "--grid", "32", "--ensemble", "100", "--device", "cpu", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "chromflow_config.json").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(8)  # the workers are busy now (or still starting: a first Ctrl-C may be ignored)
        # one Ctrl-C at a time, with time to wind the local cluster down on a loaded 2-core
        # machine: a second one during that shutdown is a user's "quit now", which may end the
        # process by the signal itself (seen once in CI with 15 s between presses)
        for _ in range(4):
            os.killpg(proc.pid, signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=45)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    text = err.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "cancelled" in text


@pytest.mark.slow
def test_real_sigkill_during_writing_then_rerun(cell, tmp_path):
    """kill -9 while the outputs are being written, for real; the rerun cleans up and finishes.

    (The fast test above builds the stale folder by hand; this one checks that the names a real
    run leaves are the ones the sweep recognises. ~20 s: a fresh Python process.)"""
    import time

    out = tmp_path / "out"
    marker = tmp_path / "writing"
    # a run whose second output write signals that it is writing, then waits to be killed
    code = f"""
import sys, time, pathlib
import chromflow.io
real = chromflow.io.write_image
calls = []
def slow_write(image, path, *args, **kwargs):
    calls.append(path)
    result = real(image, path, *args, **kwargs)
    if len(calls) == 2:
        pathlib.Path({str(marker)!r}).write_text("now")
        time.sleep(120)
    return result
chromflow.io.write_image = slow_write
from chromflow.cli import main
sys.exit(main({["run", str(cell[1]), "--out", str(out), *FAST]!r}))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the run never reached the writing stage"
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    stale = [p.name for p in out.iterdir() if p.name.endswith(".chromflow-tmp")]
    assert len(stale) == 1 and not any(p.name.startswith("cell_") for p in out.iterdir())
    assert main(["run", str(cell[1]), "--out", str(out), *FAST]) == EXIT_OK
    assert listing(out) == sorted(f"cell{s}" for s in OUTPUT_KINDS.values())
