"""Folder processing: every input file of a folder through :func:`chromflow.pipeline.run_file`, on Dask.

:func:`run_batch` is built to be left running overnight on hundreds of nuclei:

* **One pipeline.** Each file goes through :func:`~chromflow.pipeline.run_file`, exactly as
  ``chromflow run`` would process it; outputs land in ``out_dir/<relative folder>/`` with the
  usual ``<stem>_*`` names, so the output tree mirrors the input tree and files of the same
  name in different sub-folders never collide.
* **Resumable.** After a file's outputs are published, a record ``<stem>_done.json`` is
  written last, holding the SHA-256 of the input's bytes (plus its Picasso ``.yaml``) and the
  settings fingerprint. A rerun skips a file only when its record matches both (and its outputs
  are still there); killing the run at any moment loses no finished file.
* **Safe.** A bad file never stops the batch: it becomes a ``"failed"`` row of
  ``summary.csv`` with the error message, and its log (``logs/<stem>.log``) holds the
  traceback. Settings that differ from those recorded in ``chromflow_config.json`` are
  refused unless ``force=True``, so one output folder never silently mixes two settings.
* **Scales out.** A local :class:`distributed.LocalCluster` (processes, one thread each) by
  default; the address of a running Dask scheduler (``"tcp://head:8786"``) runs the same batch
  on a cluster whose workers see the same file system.

Files written into ``out_dir`` besides the per-file outputs:

===========================  ===================================================================
``chromflow_config.json``    the settings of the folder (:meth:`PipelineSettings.to_json`)
``summary.csv``              one row per input file: status, error, timings, device, statistics
``rate_distributions.png``   the rate inside each nucleus, one violin (or box) per file
``logs/<rel>/<stem>.log``    per-file log: hash, settings, timings, warnings, traceback
``<rel>/<stem>_done.json``   per-file record that makes reruns skip finished files
===========================  ===================================================================

See ``docs/batch.md`` for the user guide.
"""
from __future__ import annotations

import contextlib
import datetime
import fnmatch
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from ._json import jsonable
from .errors import ChromflowError, InputError, OutputError
from .io._atomic import atomic_path

__all__ = ["run_batch", "find_inputs", "input_sha256", "load_settings", "rate_distribution_figure",
           "CONFIG_NAME", "SUMMARY_NAME", "FIGURE_NAME", "LOG_DIR", "RECORD_SUFFIX"]

CONFIG_NAME = "chromflow_config.json"
SUMMARY_NAME = "summary.csv"
FIGURE_NAME = "rate_distributions.png"
LOG_DIR = "logs"
RECORD_SUFFIX = "_done.json"
_LOCK_NAME = ".chromflow-batch.lock"
_RECORD_FORMAT = 1
# first columns of summary.csv; the statistics of run_file follow in their own order
_LEADING_COLUMNS = ["input", "status", "error", "error_type", "reused", "device", "time_total_s", "batch_time_s"]
# above this many files the figure uses box plots (violins get unreadable)
_MAX_VIOLINS = 30


# ----------------------------------------------------------------------------------------------
# inputs, hashes, settings
# ----------------------------------------------------------------------------------------------
def _supported_suffixes():
    from .pipeline import IMAGE_SUFFIXES, LOCALIZATION_SUFFIXES

    return tuple(LOCALIZATION_SUFFIXES) + tuple(IMAGE_SUFFIXES)


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _why_not_input(path: Path, columns=None) -> str | None:
    """Why a file with a supported suffix is not an input (None: it is one), from its content."""
    from .io.localizations import sniff_localizations

    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            with open(path, "rb") as fh:
                head = fh.read(4)
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
        return None if head in _TIFF_SIGNATURES else "not a TIFF file"
    return sniff_localizations(path, columns=columns)


def find_inputs(in_dir, pattern: str | None = None, recursive: bool = False, exclude=None, columns=None,
                skipped: list | None = None) -> list[Path]:
    """Input files of a folder, sorted by their path relative to ``in_dir``.

    A file is an input when its suffix is one the pipeline reads (localization tables
    ``.csv .txt .tsv .hdf5 .h5`` and images ``.tif .tiff``), it matches ``pattern`` and its
    content is what the suffix says: a TIFF or HDF5 signature, or a text table whose header
    names x and y columns (:func:`chromflow.io.localizations.sniff_localizations`). So a
    ``LICENSE.txt`` or ``README.txt`` in a data folder is not an input. The ``.yaml`` beside
    a Picasso ``.hdf5`` is part of that input, never an input of its own. Hidden files and
    folders (name starting with ``.``) are ignored.

    Parameters
    ----------
    in_dir : str or os.PathLike
        The folder.
    pattern : str, optional
        Shell-style pattern (``fnmatch``). Matched against the file name, or against the path
        relative to ``in_dir`` (with ``/``) when the pattern contains a ``/``.
    recursive : bool
        Also look in sub-folders.
    exclude : str or os.PathLike, optional
        A folder whose files are never inputs (the output folder, when it lies inside ``in_dir``).
    columns : dict, optional
        Column mapping (``render.columns``) under which a table's x and y columns count.
    skipped : list, optional
        When given, ``(path, reason)`` is appended for every file with a supported suffix that
        was left out because of its content.

    Returns
    -------
    list of pathlib.Path

    Raises
    ------
    InputError
        ``in_dir`` is not a folder.

    Examples
    --------
    >>> find_inputs("nuclei/", pattern="*.csv", recursive=True)   # doctest: +SKIP
    [PosixPath('nuclei/a/cell1.csv'), PosixPath('nuclei/b/cell1.csv')]
    """
    in_dir = Path(in_dir)
    if not in_dir.exists():
        raise InputError("input folder not found", path=in_dir)
    if not in_dir.is_dir():
        raise InputError("not a folder (batch processes a folder; use `chromflow run` for one file)", path=in_dir)
    root = in_dir.resolve()
    exclude = Path(exclude).resolve() if exclude is not None else None
    suffixes = _supported_suffixes()
    candidates = in_dir.rglob("*") if recursive else in_dir.iterdir()
    found = []
    for path in candidates:
        rel = path.relative_to(in_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if exclude is not None and _is_within(path.resolve(), exclude) and exclude != root:
            continue
        if pattern is not None:
            target = rel.as_posix() if "/" in pattern else path.name
            if not fnmatch.fnmatch(target, pattern):
                continue
        reason = _why_not_input(path, columns)
        if reason is not None:
            if skipped is not None:
                skipped.append((path, reason))
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.relative_to(in_dir).as_posix())


def _companions(path: Path) -> list[Path]:
    """Files that are part of an input besides itself (the Picasso metadata ``.yaml``)."""
    if path.suffix.lower() in (".hdf5", ".h5"):
        return [path.with_suffix(".yaml")]
    return []


def input_sha256(path, extra=()) -> str:
    """SHA-256 (hex) of an input's content: its bytes, its Picasso ``.yaml`` if any, and ``extra`` files.

    The hash decides whether a finished result can be reused: the same bytes give the same
    hash whatever the file's name, time stamp or folder, and any change to the data or to the
    Picasso metadata (pixel size!) gives another one.

    Parameters
    ----------
    path : str or os.PathLike
        The input file.
    extra : sequence of paths
        Further files the result depends on (e.g. a euchromatin file named in the settings).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.csv"
    >>> _ = p.write_bytes(b"abc")
    >>> input_sha256(p)[:12]
    'ba7816bf8f01'
    """
    path = Path(path)
    digest = hashlib.sha256()

    def feed(p: Path, role: bytes):
        digest.update(b"\x00" + role + b"\x00")
        if not p.is_file():
            digest.update(b"<absent>")
            return
        digest.update(str(p.stat().st_size).encode() + b"\x00")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)

    # the main file alone hashes to plain sha256(bytes) so that `sha256sum` agrees with it
    if not _companions(path) and not extra:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    feed(path, b"input")
    for companion in _companions(path):
        feed(companion, b"companion")
    for p in extra:
        feed(Path(p), b"extra")
    return digest.hexdigest()


def load_settings(settings=None, device: str | None = None):
    """Settings from a :class:`PipelineSettings`, a (partial) dict, a JSON file path, or None.

    Returns a new object (the caller's is not modified); ``device``, when given, replaces
    ``settings.inference.device``.
    """
    from .pipeline import PipelineSettings

    if settings is None:
        out = PipelineSettings()
    elif isinstance(settings, PipelineSettings):
        out = settings.copy()
    elif isinstance(settings, dict):
        out = PipelineSettings.from_dict(settings)
    elif isinstance(settings, (str, os.PathLike)):
        out = PipelineSettings.from_json(settings)
    else:
        raise InputError(f"settings must be PipelineSettings, a dict, a JSON file path or None, "
                         f"got {type(settings).__name__}")
    if device is not None:
        out.inference.device = device
    return out.validate()


def _comparable(settings_dict: dict) -> dict:
    from .pipeline import PipelineSettings

    # None and the library default it stands for are the same settings
    settings_dict = PipelineSettings.from_dict(settings_dict).resolved().to_dict()
    data = jsonable(settings_dict)
    data.get("inference", {}).pop("device", None)  # the device does not change the answer
    return data


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section) or {}, new.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{section}.{key} {a.get(key)!r} -> {b.get(key)!r}")
    return out


def _check_config(out_dir: Path, settings, force: bool) -> bool:
    """Compare ``settings`` with the folder's recorded config; True when they differ (and force)."""
    from .pipeline import PipelineSettings

    path = out_dir / CONFIG_NAME
    if not path.exists():
        return False
    try:
        old = PipelineSettings.from_json(path).to_dict()
    except ChromflowError as exc:
        if force:
            return True
        raise InputError(f"cannot read the settings this folder was made with ({exc.reason}); use another "
                         "output folder, or force=True (--force) to recompute with the new settings",
                         path=path) from None
    changes = _differences(_comparable(old), _comparable(settings.to_dict()))
    if not changes:
        return False
    if force:
        return True
    raise InputError("this output folder holds results made with other settings ("
                     + "; ".join(changes) + "). Use another output folder, or force=True (--force) to "
                     "recompute every file with the new settings", path=out_dir)


# ----------------------------------------------------------------------------------------------
# per-file work (runs on a Dask worker, or in this process)
# ----------------------------------------------------------------------------------------------
def _record_path(out_folder: Path, stem: str) -> Path:
    return out_folder / f"{stem}{RECORD_SUFFIX}"


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != _RECORD_FORMAT:
        return None
    if not isinstance(record.get("row"), dict):
        return None
    return record


def _write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(jsonable(data), indent=2) + "\n", encoding="utf-8")


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _worker_name() -> str:
    try:
        from distributed import get_worker

        worker = get_worker()
        return f"{worker.name} ({worker.address})"
    except (ImportError, ValueError):
        return f"local ({platform.node()}, pid {os.getpid()})"


def _pick_device(device: str) -> str:
    """On a local cluster with several GPUs, spread workers over them (worker i -> cuda:i mod n)."""
    if device not in ("auto", "cuda"):
        return device
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return device
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return device
    if isinstance(name, (int, np.integer)) or (isinstance(name, str) and name.isdigit()):
        return f"cuda:{int(name) % count}"
    return device


class _StageLog:
    """Progress callback of run_file that keeps one time-stamped line per stage for the log."""

    def __init__(self, start: float):
        self.start, self.lines, self._last = start, [], None

    def __call__(self, done, total, message=""):
        stage = (message or "").split(" ")[0]
        if stage and stage != self._last:
            self._last = stage
            self.lines.append(f"  {time.perf_counter() - self.start:8.2f} s  {message}")


def _process_one(task: dict) -> dict:
    """Run one input through run_file; write its log, then its record. Returns the summary row.

    Every failure of the file is caught and becomes a ``"failed"`` row: the batch goes on.
    Failures a rerun would repeat (a :class:`ChromflowError`: bad input, no nucleus...) get a
    record, so that they are not retried until the file or the settings change; anything else
    (a bug, out of memory) gets none and is retried by the next run.
    """
    from .errors import CancelledError, OutputError
    from .pipeline import PipelineSettings, output_paths, resolve_device, run_file

    start = time.perf_counter()
    path = Path(task["path"])
    out_folder = Path(task["out_folder"])
    record_path = Path(task["record"])
    settings = PipelineSettings.from_dict(task["settings"])
    settings.inference.device = _pick_device(settings.inference.device)
    try:
        device = resolve_device(settings.inference.device)
    except Exception:  # noqa: BLE001 - reported by run_file below, as the file's error
        device = settings.inference.device
    stage_log = _StageLog(start)
    header = [f"chromflow {__version__} batch: {task['input']}",
              f"  input        {path}",
              f"  output       {out_folder}",
              f"  started      {_now()}",
              f"  worker       {_worker_name()}",
              f"  settings     fingerprint {task['fingerprint']}; device {settings.inference.device} -> {device}"]
    row: dict[str, Any]
    tb = None
    recorded_failure = False
    caught: list = []
    digest = None
    try:
        # a stale record must not outlive a redo that gets killed half-way
        with contextlib.suppress(FileNotFoundError):
            record_path.unlink()
        extra = [settings.fields.euchromatin] if settings.fields.euchromatin else []
        digest = input_sha256(path, extra)
        header.append(f"  sha256       {digest}")
        stage_log.lines.append(f"  {time.perf_counter() - start:8.2f} s  set up and hashed the input")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            row = dict(run_file(path, out_folder, settings=settings, progress=stage_log))
        row.update(status="ok", error=None, error_type=None)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
        tb = traceback.format_exc()
        # a full disk or a lost permission is the machine's state, not the file's: retried next time
        recorded_failure = (isinstance(exc, ChromflowError) and not isinstance(exc, (CancelledError, OutputError))
                            and digest is not None)
        row = {"file": str(path), "stem": path.stem, "status": "failed", "error": str(exc),
               "error_type": type(exc).__name__, "device": device,
               "settings_fingerprint": task["fingerprint"], "chromflow_version": __version__}
        # no stale outputs of an earlier success may stay next to a failed record
        for old in output_paths(path, out_folder).values():
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
    elapsed = time.perf_counter() - start
    row.update(input=task["input"], input_sha256=digest, out_dir=str(out_folder),
               log=task["log"], worker=_worker_name(), batch_time_s=round(elapsed, 4), reused=False)
    warning_lines = [f"  {w.category.__name__}: {w.message}" for w in caught]
    if warning_lines:
        row["warnings"] = " | ".join(str(w.message) for w in caught)
    lines = header + ["stages:"] + stage_log.lines
    # time_<stage>_s of run_file (its bare time_s is the solver's share of "infer")
    timings = [f"  {k[5:-2]:<10s} {v:8.3f} s" for k, v in row.items()
               if k.startswith("time_") and k.endswith("_s") and len(k) > 7 and isinstance(v, (int, float))]
    if timings:
        lines += ["timings:"] + timings
    if warning_lines:
        lines += ["warnings:"] + warning_lines
    lines.append(f"status: {row['status']} after {elapsed:.2f} s ({_now()})")
    if tb is not None:
        lines += [f"error: {row['error']}", "traceback:", tb.rstrip()]
    log_path = Path(task["log_path"])
    try:
        with atomic_path(log_path) as tmp:
            Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    except OSError as exc:  # a full disk must not hide the file's own result
        row["log_error"] = str(exc)
    # the record comes last: it is what tells a rerun that this file is done
    if row["status"] == "ok" or recorded_failure:
        # the files this run wrote (an uncertainty switched off, or a ratio that could not be made,
        # leaves its file out), which a rerun checks before it skips the input
        outputs = (sorted(p.name for p in output_paths(path, out_folder).values() if p.exists())
                   if row["status"] == "ok" else [])
        _write_json(record_path, {"format": _RECORD_FORMAT, "input": task["input"], "input_sha256": digest,
                                  "settings_fingerprint": task["fingerprint"], "status": row["status"],
                                  "outputs": outputs, "written": _now(), "row": row})
    return row


# ----------------------------------------------------------------------------------------------
# planning: which files to do, which to skip
# ----------------------------------------------------------------------------------------------
def _plan(files, in_dir: Path, out_dir: Path, settings, retry_failed: bool):
    """Split the inputs into rows known now (skipped, carried-over failures, name clashes) and tasks."""
    from .pipeline import output_paths

    fingerprint = settings.fingerprint()
    settings_dict = settings.to_dict()
    extra = [settings.fields.euchromatin] if settings.fields.euchromatin else []
    # inputs whose outputs would share names: same folder, same stem (case-insensitive filesystems too)
    groups: dict[tuple, list[Path]] = {}
    for path in files:
        rel = path.relative_to(in_dir)
        groups.setdefault((rel.parent.as_posix().lower(), rel.stem.lower()), []).append(path)
    known, tasks = {}, []
    for path in files:
        rel = path.relative_to(in_dir)
        rel_posix = rel.as_posix()
        out_folder = out_dir / rel.parent
        log_rel = (Path(LOG_DIR) / rel.parent / f"{rel.stem}.log").as_posix()
        clash = [p for p in groups[(rel.parent.as_posix().lower(), rel.stem.lower())] if p != path]
        if clash:
            others = ", ".join(p.relative_to(in_dir).as_posix() for p in clash)
            known[rel_posix] = {"input": rel_posix, "file": str(path), "stem": rel.stem, "status": "failed",
                                "error": f"{path}: its outputs would have the same names as those of {others} "
                                         "(same folder, same name without extension); rename one, or select "
                                         "one with a pattern", "error_type": "InputError", "reused": False}
            continue
        record_path = _record_path(out_folder, rel.stem)
        record = _read_record(record_path) if record_path.exists() else None
        if record is not None and record.get("settings_fingerprint") == fingerprint:
            digest = input_sha256(path, extra)
            if record.get("input_sha256") == digest:
                written = record.get("outputs") or []
                rate_name = output_paths(path, out_folder)["rate"].name
                outputs_there = rate_name in written and all((out_folder / name).exists() for name in written)
                if record["status"] == "ok" and outputs_there:
                    known[rel_posix] = dict(record["row"], input=rel_posix, status="skipped", reused=True)
                    continue
                if record["status"] == "failed" and not retry_failed:
                    known[rel_posix] = dict(record["row"], input=rel_posix, status="failed", reused=True)
                    continue
        tasks.append({"path": str(path.resolve()), "input": rel_posix, "out_folder": str(out_folder.resolve()),
                      "record": str(record_path.resolve()), "log": log_rel,
                      "log_path": str((out_dir / log_rel).resolve()), "settings": settings_dict,
                      "fingerprint": fingerprint})
    return known, tasks


def _remove_leftovers(out_dir: Path) -> int:
    """Delete temporary files and folders a killed run left behind (this run holds the lock)."""
    removed = 0
    if not out_dir.is_dir():
        return 0
    for path in sorted(out_dir.rglob(".*"), key=lambda p: len(p.parts), reverse=True):
        name = path.name
        if path.is_dir() and name.endswith(".chromflow-tmp"):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        elif path.is_file() and ".part" in name and name != _LOCK_NAME:
            # atomic_path's temporary names: .<stem>.<random>.part<suffix>
            stem_rest = name.rsplit(".part", 1)
            if len(stem_rest) == 2 and (stem_rest[1] == "" or stem_rest[1].startswith(".")):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
    return removed


@contextlib.contextmanager
def _folder_lock(out_dir: Path):
    """One batch per output folder at a time (an OS lock: released even if the run is killed)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    fh = open(out_dir / _LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError("another `chromflow batch` is writing into this folder; wait for it or use another "
                             "output folder", path=out_dir) from None
        yield
    finally:
        fh.close()


# ----------------------------------------------------------------------------------------------
# running the tasks
# ----------------------------------------------------------------------------------------------
def _default_workers(n_tasks: int, device: str) -> int:
    """CUDA: one worker per GPU. CPU: one per core, at most one per 2 GiB of memory, at most one per file."""
    from .pipeline import resolve_device

    if resolve_device(device).startswith("cuda"):
        import torch

        n = max(1, torch.cuda.device_count()) if not device.startswith("cuda:") else 1
    else:
        n = os.cpu_count() or 1
        try:
            import psutil

            n = min(n, max(1, int(psutil.virtual_memory().total // (2 << 30))))
        except ImportError:  # pragma: no cover - psutil comes with distributed
            pass
    return max(1, min(n, n_tasks))


class _FileProgress:
    """tqdm bar over files (progress=True), a protocol callback, or nothing."""

    def __init__(self, progress, total: int, initial: int):
        self.bar, self.callback, self.total, self.done, self.failed = None, None, total, initial, 0
        if progress is True:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="file", desc="chromflow batch", file=sys.stderr,
                            dynamic_ncols=True)
        elif callable(progress):
            self.callback = progress
        self._report("start")

    def _report(self, message):
        if self.callback is not None:
            self.callback(self.done, self.total, message)

    def update(self, row: dict):
        self.done += 1
        self.failed += row.get("status") == "failed"
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.failed} failed, last: {row.get('input')}", refresh=False)
            self.bar.update(1)
        self._report(f"{row.get('input')}: {row.get('status')}")

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _crash_row(task: dict, exc: BaseException) -> dict:
    """Row of a file whose worker died (killed, out of memory) before it could answer."""
    return {"input": task["input"], "file": task["path"], "stem": Path(task["path"]).stem, "status": "failed",
            "error": f"{task['path']}: worker failed: {type(exc).__name__}: {exc}", "error_type": type(exc).__name__,
            "reused": False, "log": task["log"]}


def _run_in_process(tasks, bar) -> list[dict]:
    rows = []
    for task in tasks:
        row = _process_one(task)
        rows.append(row)
        bar.update(row)
    return rows


@contextlib.contextmanager
def _workers_ignore_ctrl_c():
    """Start worker processes with SIGINT ignored (an ignored signal stays ignored in children).

    Ctrl-C in a terminal goes to the whole process group: without this, every worker that is
    still starting prints its own KeyboardInterrupt traceback (and its nanny a "failed to
    start" one) while the main process stops the batch cleanly. The workers are stopped by the
    main process instead. The price: a Ctrl-C pressed during the few seconds the local cluster
    takes to start is ignored (press it again). A blocked signal mask would defer it instead,
    but worker processes do not inherit the mask (measured with distributed 2025).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_on_dask(tasks, bar, scheduler, workers, device) -> list[dict]:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    with warnings.catch_warnings():
        # distributed warns about ports and such while starting; the log level keeps it quiet
        warnings.simplefilter("ignore")
        if scheduler is None:
            n = workers if workers is not None else _default_workers(len(tasks), device)
            try:
                # CRITICAL only: when a batch is stopped, workers still busy with a fit log the
                # lost scheduler as ERROR tracebacks; a file's own errors go to its row and log
                with _workers_ignore_ctrl_c():
                    cluster = LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None, silence_logs=logging.CRITICAL)
            except RuntimeError as exc:
                # the usual cause: worker processes start by importing the caller's script
                raise RuntimeError(
                    "could not start the local Dask cluster's workers. When run_batch is called from a "
                    "script, the script must protect its code with `if __name__ == \"__main__\":` (the "
                    "workers are new Python processes that import it); or pass scheduler=\"synchronous\""
                ) from exc
            client = Client(cluster)
        else:
            client = Client(scheduler, timeout="30s")
    rows = []
    try:
        futures = {}
        for i, task in enumerate(tasks):
            # files in sorted order first; pure=False: a file is read afresh every time
            future = client.submit(_process_one, task, pure=False, priority=len(tasks) - i,
                                   key=f"chromflow-batch-{i}-{os.getpid()}-{time.time_ns()}")
            futures[future] = task
        for future in as_completed(futures):
            task = futures[future]
            try:
                row = future.result()
            except Exception as exc:  # noqa: BLE001 - a dead worker fails its file, not the batch
                row = _crash_row(task, exc)
            rows.append(row)
            bar.update(row)
            future.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return rows


# ----------------------------------------------------------------------------------------------
# summary table and figure
# ----------------------------------------------------------------------------------------------
def _summary_table(rows: list[dict]):
    import pandas as pd

    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=_LEADING_COLUMNS)
    for column in _LEADING_COLUMNS:
        if column not in table.columns:
            table[column] = None
    ordered = _LEADING_COLUMNS + [c for c in table.columns if c not in _LEADING_COLUMNS]
    for column in table.columns:
        # counts stay integers in the CSV even where failed rows leave holes (pandas would make floats)
        values = [row[column] for row in rows if row.get(column) is not None]
        if values and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values):
            table[column] = table[column].astype("Int64")
    table = table[ordered].sort_values("input", kind="stable").reset_index(drop=True)
    return table


def _rate_samples(table, out_dir: Path) -> dict:
    """``{input: rate values inside the nucleus}`` read from each finished file's rate TIFF."""
    from .io import read_image
    from .pipeline import output_paths

    samples = {}
    for _, row in table.iterrows():
        if row["status"] not in ("ok", "skipped"):
            continue
        rel = Path(row["input"])
        rate_path = output_paths(rel.name, out_dir / rel.parent)["rate"]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rate = np.asarray(read_image(rate_path, allow_nan=True).data, dtype=float)
        except (ChromflowError, OSError):
            continue
        values = rate[np.isfinite(rate)]
        if values.size:
            samples[row["input"]] = values
    return samples


def rate_distribution_figure(samples: dict, title: str = "Rate inside each nucleus"):
    """Figure comparing the distribution of the rate ``lambda`` across files.

    One violin (with its median and extremes) per file, or one box per file when there are
    more than 30 files; files run down the vertical axis so that long names stay readable.

    Parameters
    ----------
    samples : dict
        ``{label: 1-D array of rate values}`` (the rate map's values inside the nucleus).
    title : str

    Returns
    -------
    matplotlib.figure.Figure
        Drawn without pyplot (no GUI, safe in worker threads); ``fig.savefig(path)``.

    Examples
    --------
    >>> import numpy as np
    >>> fig = rate_distribution_figure({"a.csv": np.array([1.0, 1.2, 0.9]), "b.csv": np.array([2.0, 2.1])})
    >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
    ['a.csv', 'b.csv']
    """
    from matplotlib.figure import Figure

    labels = list(samples)
    data = [np.asarray(samples[k], dtype=float) for k in labels]
    n = len(labels)
    height = min(2.0 + 0.35 * max(n, 1), 60.0)
    width = 7.0 + min(max((len(s) for s in labels), default=0), 60) * 0.07
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(1, n + 1)
    if n == 0:
        ax.text(0.5, 0.5, "no finished file", ha="center", va="center", transform=ax.transAxes)
    elif n <= _MAX_VIOLINS:
        # a violin needs spread (its density estimate fails on a constant map): those get a tick
        varied = [i for i, d in enumerate(data) if d.size > 1 and np.ptp(d) > 0]
        if varied:
            ax.violinplot([data[i] for i in varied], positions=positions[varied], orientation="horizontal",
                          showmedians=True, showextrema=True)
        for i in sorted(set(range(n)) - set(varied)):
            ax.plot([data[i][0]] * 2, [positions[i] - 0.3, positions[i] + 0.3], color="C0", lw=2)
    else:
        ax.boxplot(data, positions=positions, orientation="horizontal", showfliers=False)
    ax.set_yticks(positions, labels)
    ax.set_ylim(0.4, n + 0.6)
    ax.invert_yaxis()  # first file on top, as in summary.csv
    ax.set_xlabel("rate λ = Γ_me / Γ_ac (inside the nucleus)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return fig


def _write_figure(table, out_dir: Path) -> Path | None:
    samples = _rate_samples(table, out_dir)
    path = out_dir / FIGURE_NAME
    if not samples:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a figure of an earlier run must not pass for this one
        return None
    fig = rate_distribution_figure(samples)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _write_summary(table, out_dir: Path) -> Path:
    path = out_dir / SUMMARY_NAME
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


# ----------------------------------------------------------------------------------------------
# the batch
# ----------------------------------------------------------------------------------------------
def run_batch(in_dir, out_dir, pattern: str | None = None, recursive: bool = False, settings=None,
              scheduler: str | None = None, workers: int | None = None, device: str | None = None,
              progress: bool | Callable = True, retry_failed: bool = False, force: bool = False):
    """Process every input file of a folder, in parallel on Dask; resumable; returns the summary table.

    Each file goes through :func:`chromflow.pipeline.run_file`. Its outputs go to
    ``out_dir/<folder of the file relative to in_dir>/<stem>_*`` (the output tree mirrors the
    input tree), its log to ``out_dir/logs/<relative folder>/<stem>.log``, and last a record
    ``<stem>_done.json`` with the SHA-256 of the input and the settings fingerprint. A rerun
    skips the files whose record matches (status ``"skipped"``, row carried over) and redoes
    the others, so an interrupted batch resumes where it stopped.

    Parameters
    ----------
    in_dir : str or os.PathLike
        Folder of inputs: ThunderSTORM / plain CSV, Picasso ``.hdf5`` (with its ``.yaml``),
        TIFF images.
    out_dir : str or os.PathLike
        Output folder (created if needed). May lie inside ``in_dir`` (it is then not scanned),
        must not be ``in_dir`` itself.
    pattern : str, optional
        Shell pattern selecting inputs, matched against the file name (``"*.csv"``,
        ``"cell_*"``), or the relative path when it contains ``/`` (``"day1/*.tif"``).
    recursive : bool
        Also process files in sub-folders.
    settings : PipelineSettings, dict, path or None
        Pipeline settings (a dict or a JSON file may hold only the keys that differ from the
        defaults). Recorded in ``out_dir/chromflow_config.json``.
    scheduler : str, optional
        ``None``: start a local Dask cluster (processes, one thread each; stopped at the end).
        ``"tcp://host:8786"``: use a running Dask scheduler; its workers must see ``in_dir`` and
        ``out_dir`` at the same paths and have chromflow installed. ``"synchronous"``: no Dask,
        files one after another in this process (debugging, tiny folders).
    workers : int, optional
        Workers of the local cluster. Default: one per GPU when the device is CUDA, else one
        per CPU core (at most one per 2 GiB of memory), never more than files to do.
    device : str, optional
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``; overrides ``settings.inference.device``.
        The device does not change the settings fingerprint: results move between CPU and GPU
        runs without recomputation.
    progress : bool or callable
        True: a tqdm bar over files on standard error. A callable: ``progress(done, total,
        message)`` after each file. False: silent.
    retry_failed : bool
        Retry files whose earlier failure was recorded (bad input, no nucleus). By default such
        a file is retried only when its content or the settings change.
    force : bool
        Accept settings that differ from those ``out_dir`` was made with: every file is then
        recomputed with the new settings. Without it such a run raises :class:`InputError`.

    Returns
    -------
    pandas.DataFrame
        One row per input file (also written to ``out_dir/summary.csv``): ``input`` (path
        relative to ``in_dir``), ``status`` (``"ok"``, ``"skipped"`` = done by an earlier run
        and reused, ``"failed"``), ``error``, ``error_type``, ``reused``, ``device``,
        ``time_total_s`` (pipeline), ``batch_time_s`` (including hashing and the log), then the
        summary statistics of :func:`~chromflow.pipeline.run_file`, ``input_sha256``,
        ``out_dir`` (the file's output folder), ``log``, ``worker``.

    Raises
    ------
    InputError
        ``in_dir`` is not a folder, no input matches, ``out_dir`` is ``in_dir``, the settings
        are invalid or differ from the folder's (without ``force``), or another batch is
        writing into ``out_dir``. Problems of single files never raise: they are rows.

    Examples
    --------
    >>> table = run_batch("nuclei/", "results/", pattern="*.csv", workers=4)   # doctest: +SKIP
    >>> table[["input", "status", "mean_rate"]].head()                         # doctest: +SKIP
    >>> (table["status"] == "failed").sum()                                    # doctest: +SKIP
    0
    """
    from .pipeline import check_device, check_out_dir

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    settings = load_settings(settings, device)
    # everything that can be checked is checked before the output folder, its lock or its config exist
    if workers is not None and (not isinstance(workers, (int, np.integer)) or isinstance(workers, bool)
                                or workers < 1):
        raise InputError(f"workers must be a whole number >= 1, got {workers!r} (option --workers)")
    if scheduler is None or scheduler == "synchronous":
        check_device(settings.inference.device)  # a remote cluster's workers have their own devices
    check_out_dir(out_dir)
    if in_dir.is_dir() and out_dir.exists() and out_dir.resolve() == in_dir.resolve():
        raise InputError("the output folder must not be the input folder (its outputs would become inputs)",
                         path=out_dir)
    skipped: list = []
    files = find_inputs(in_dir, pattern=pattern, recursive=recursive, exclude=out_dir,
                        columns=settings.render.columns, skipped=skipped)
    if skipped:
        shown = ", ".join(f"{p.relative_to(in_dir).as_posix()} ({why})" for p, why in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        warnings.warn(f"skipped {len(skipped)} file(s) that are not localization tables or images: {shown}{more}",
                      UserWarning, stacklevel=2)
    if not files:
        what = f"matching {pattern!r}" if pattern else "of a supported type (" + " ".join(_supported_suffixes()) + ")"
        if skipped:
            what += f" ({len(skipped)} file(s) skipped for their content; see the warning)"
        raise InputError(f"no input file {what}{' (sub-folders included)' if recursive else ''}", path=in_dir)
    if scheduler is not None and workers is not None and scheduler != "synchronous":
        warnings.warn("workers is ignored with a scheduler address: the cluster has its own workers",
                      UserWarning, stacklevel=2)

    out_dir.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out_dir):
        changed = _check_config(out_dir, settings, force)
        if changed:
            # the old table and figure describe other settings: they must not outlive this run
            for name in (SUMMARY_NAME, FIGURE_NAME):
                with contextlib.suppress(FileNotFoundError):
                    (out_dir / name).unlink()
        with _output_errors(out_dir):
            settings.to_json(out_dir / CONFIG_NAME)
        _remove_leftovers(out_dir)
        known, tasks = _plan(files, in_dir, out_dir, settings, retry_failed)
        bar = _FileProgress(progress, total=len(files), initial=len(known))
        try:
            if not tasks:
                rows = []
            elif scheduler == "synchronous":
                rows = _run_in_process(tasks, bar)
            else:
                rows = _run_on_dask(tasks, bar, scheduler, workers, settings.inference.device)
        finally:
            bar.close()
        table = _summary_table(list(known.values()) + rows)
        with _output_errors(out_dir):
            _write_summary(table, out_dir)
            _write_figure(table, out_dir)
    return table


@contextlib.contextmanager
def _output_errors(out_dir: Path):
    """An operating-system error while writing the folder's own files (disk full) as one line."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write into the output folder ({exc.strerror or exc}); the files finished so "
                          "far are kept, rerun the same command when the problem is fixed", path=out_dir) from None
