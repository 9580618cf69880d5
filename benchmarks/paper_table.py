"""Reproduce the Mollifier-Layers paper's benchmark table: autodiff vs mollifier, three tasks, three backbones.

For every task (Langevin 1st order, steady heat 2nd order, chromatin 4th order), noise level and
backbone, the same network is trained on the same simulated data with the same loss, optimiser
and iteration count, once with recursive autograd derivatives and once with mollifier
derivatives. Each case runs in a fresh Python process so that its peak memory is its own:

* CPU: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the fit minus the same reading
  taken after imports, data loading and a few-point warm-up of autograd, convolution and FFT
  (the high-water mark of the resident set, in MB). Allocator caching and page granularity make
  readings under ~5 MB noise.
* CUDA: ``torch.cuda.max_memory_allocated()`` during the fit minus the memory allocated before it.

Wall time is measured around the fit with ``torch.cuda.synchronize()`` before and after on
CUDA. Prints Markdown tables and writes a CSV to ``benchmarks/results/``.

Usage::

    python benchmarks/paper_table.py --quick                  # a few minutes on 2 CPU cores
    python benchmarks/paper_table.py --device cuda            # the full table
    python benchmarks/paper_table.py --tasks chromatin --backbones mlp --noise 0 0.05 \\
        --iterations 3000 --autodiff-iterations 200          # autodiff capped, time extrapolated
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _tasks  # noqa: E402  (benchmark-only set-ups, next to this script)

#: The paper's press figures for the 4th-order task (autodiff -> mollifier).
PAPER = {"chromatin": {"autodiff": dict(time_s=3386.0, peak_mb=2750.0, corr=0.44),
                       "mollifier": dict(time_s=335.0, peak_mb=230.0, corr=0.99)}}

#: --quick: small grids, one noise level, MLP only, equal iteration budgets in both modes (with the
#: Taylor-mode baseline the 4th-order autodiff case no longer needs a cap at this size).
QUICK = dict(tasks=["langevin", "heat", "chromatin"], backbones=["mlp"], noise=[0.01],
             grid={"langevin": 128, "heat": 32, "chromatin": 32}, iterations=300,
             autodiff_iterations={}, threads=1)
FULL_ITERATIONS = 2000
#: --preset cpu: the full table (3 tasks x 3 backbones x 3 noise levels x 2 modes) at reduced size so
#: that it runs in ~15-20 minutes on 2 shared CPU cores: smaller grids, width-32 backbones, per-task
#: iteration budgets equal in both modes (never capped).
CPU_PRESET = dict(tasks=list(_tasks.TASKS), backbones=list(_tasks.BACKBONE_OPTIONS), noise=[0.0, 0.01, 0.05],
                  grid={"langevin": 64, "heat": 24, "chromatin": 24},
                  iterations={"langevin": 600, "heat": 1000, "chromatin": 200}, threads=1, width=32,
                  chromatin_depth=3)

COLUMNS = ["task", "order", "backbone", "noise", "mode", "grid", "iterations", "corr", "rmse", "peak_mb",
           "time_s", "ms_per_iter", "time_full_s", "note"]


# ---------------------------------------------------------------------------------------------
# one case, in its own process


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _warm_up(device) -> None:
    """Initialise torch's lazy machinery before the memory baseline.

    The first backward pass, the first double-backward, the first convolution and FFT allocate
    thread pools, kernels caches and workspaces (tens of MB of RSS on CPU) whatever the problem
    size. A few-point problem runs each of them once so that the baseline holds them and the
    measured peak is what the case itself needs.
    """
    import torch

    x = torch.rand(8, 2, device=device, requires_grad=True)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)  # the first step imports torch._dynamo & co.
    y = net(x).sum()
    (g,) = torch.autograd.grad(y, x, create_graph=True)
    (g2,) = torch.autograd.grad(g[:, 0].sum(), x, create_graph=True)
    (g2.sum() + torch.nn.functional.conv1d(x.T[None, :1], x.T[None, None, 1]).sum()
     + torch.fft.rfft(x[:, 0]).abs().sum()).backward()
    opt.step()
    for dtype in (torch.float32, torch.float64):  # both precisions' kernels
        z = torch.rand(4, 4, device=device, dtype=dtype, requires_grad=True)
        (torch.fft.irfft2(torch.fft.rfft2(z), s=(4, 4)).sum() + torch.nn.functional.conv2d(
            z[None, None], z[None, None, :3, :3]).sum()).backward()


def memory_baseline(device) -> float:
    """Start of a peak-memory measurement: CUDA allocated bytes (peak stats reset) or RSS high-water MB."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    return _rss_mb()


def memory_peak(device, base: float) -> float:
    """Peak memory (MB) since :func:`memory_baseline` returned ``base``."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20 - base
    return _rss_mb() - base


class CpuTensorPeak:
    """Peak of the bytes held by CPU tensors inside a ``with`` block, above what was held at its
    start: the CPU analogue of ``torch.cuda.max_memory_allocated`` minus the allocated bytes at
    the start, free of the allocator's slack and of the process's libraries that an RSS reading
    includes.

    It replays the allocation and free events that ``torch.profiler`` records with
    ``profile_memory=True``, in time order. ``mb`` is NaN when the profiler gives no such events.
    """

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self.mb = float("nan")
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc):
        self._prof.__exit__(*exc)
        try:
            events = [e for e in self._prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        except AttributeError:       # the profiler's results have another shape in this torch
            return False
        held = peak = 0
        for e in sorted(events, key=lambda e: e.start_ns()):
            if str(e.device_type()).endswith("CPU"):
                held += e.nbytes()
                peak = max(peak, held)
        if events:
            self.mb = peak / 2**20
        return False


def run_case(spec: dict) -> dict:
    """Fit one (task, noise, backbone, mode) case and measure it. Runs inside the worker process."""
    import numpy as np
    import torch

    import chromflow.models  # noqa: F401  (imports before the memory baseline)
    import chromflow.mollifier  # noqa: F401
    import chromflow.physics  # noqa: F401
    import chromflow.training  # noqa: F401
    from chromflow.training import resolve_device

    if spec["task"] == "chromatin":
        import chromflow.inverse  # noqa: F401
    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    device = resolve_device(spec["device"])
    data = _tasks.TaskData.load(spec["data"])
    _warm_up(device)
    cuda = device.type == "cuda"
    base = memory_baseline(device)
    start = time.perf_counter()
    result = _tasks.fit(data, spec["backbone"], spec["mode"], spec["iterations"], device=device, seed=spec["seed"],
                        **spec.get("options", {}))
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    peak = memory_peak(device, base)
    corr, rmse = _tasks.score(result.rate, data.truth)
    return dict(corr=corr, rmse=rmse, peak_mb=peak, time_s=elapsed, iterations=int(result.iterations),
                final_loss=float(result.loss), device=str(device),
                finite=bool(np.isfinite(result.rate).any()))


def _worker(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out = run_case(spec)
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


def _spawn(spec: dict, workdir: Path, timeout: float | None) -> dict:
    """Run one case in a fresh interpreter; return its measurements or an ``error``."""
    name = f"{spec['task']}_{spec['noise']}_{spec['backbone']}_{spec['mode']}"
    spec = {**spec, "result": str(workdir / f"{name}.result.json")}
    spec_path = workdir / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timeout after {timeout:g} s")
    if proc.returncode != 0 or not Path(spec["result"]).exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return dict(error=f"failed: {tail[0][:160]}")
    return json.loads(Path(spec["result"]).read_text())


# ---------------------------------------------------------------------------------------------
# tables


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e3 else f"{value:.0f}"
    return str(value)


def markdown(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` (dicts) with the given columns."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[dict]:
    """Autodiff / mollifier ratios per (task, backbone, noise): time per iteration and peak memory."""
    out = []
    keyed = {(r["task"], r["backbone"], r["noise"], r["mode"]): r for r in rows}
    for (task, backbone, noise, mode), auto in keyed.items():
        moll = keyed.get((task, backbone, noise, "mollifier"))
        if mode != "autodiff" or moll is None:
            continue

        def ratio(a, b):
            try:
                return a / b if a is not None and b not in (None, 0) and a == a and b == b else float("nan")
            except TypeError:
                return float("nan")

        out.append(dict(task=task, order=_tasks.ORDER[task], backbone=backbone, noise=noise,
                        speedup_per_iter=ratio(auto.get("ms_per_iter"), moll.get("ms_per_iter")),
                        memory_ratio=ratio(auto.get("peak_mb"), moll.get("peak_mb")),
                        corr_autodiff=auto.get("corr"), corr_mollifier=moll.get("corr")))
    return out


def paper_rows() -> list[dict]:
    """The paper's press figures in the same layout, for side-by-side reading."""
    rows = []
    for task, modes in PAPER.items():
        for mode, v in modes.items():
            rows.append(dict(source="paper (arXiv 2505.11682)", task=task, mode=mode, time_s=v["time_s"],
                             peak_mb=v["peak_mb"], corr=v["corr"]))
    return rows


# ---------------------------------------------------------------------------------------------
# driver


def _write_rows(rows: list[dict], out: Path) -> None:
    import pandas as pd

    from chromflow.io._atomic import atomic_path

    with atomic_path(out) as tmp_path:
        pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp_path, index=False)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small grids, few iterations, one noise level, MLP only")
    p.add_argument("--preset", choices=["cpu"], default=None,
                   help="cpu: the full table at reduced grid / width / iterations (see CPU_PRESET)")
    p.add_argument("--width", type=int, default=None, help="hidden width of every backbone (default 64)")
    p.add_argument("--fourier-scale", type=float, default=None,
                   help="Fourier-embedding scale of PirateNet and the Fourier MLP (default 1; see heat_piratenet.py)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--tasks", nargs="+", choices=_tasks.TASKS, default=None)
    p.add_argument("--backbones", nargs="+", choices=list(_tasks.BACKBONE_OPTIONS), default=None)
    p.add_argument("--noise", nargs="+", type=float, default=None, help="relative noise std levels (0.01 = 1%%)")
    p.add_argument("--iterations", type=int, default=None, help="optimiser steps per case (both modes)")
    p.add_argument("--autodiff-iterations", type=int, default=None,
                   help="cap autodiff runs at this many steps; total time is then extrapolated to --iterations")
    p.add_argument("--grid", type=int, default=None, help="grid points per axis (all tasks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per case (default: torch's own; 1 with --quick on CPU)")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per case")
    p.add_argument("--out", default=None, help="CSV path (default benchmarks/results/paper_table_<time>.csv)")
    p.add_argument("--table-from", default=None, metavar="CSV", help="only print the tables of an earlier run's CSV")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return _worker(args.worker)

    from chromflow.training import resolve_device

    if args.table_from:  # print the tables of an earlier (possibly cut-off) run
        import pandas as pd

        rows = [{k: (None if v != v else v) for k, v in r.items()}
                for r in pd.read_csv(args.table_from, keep_default_na=True).to_dict("records")]
        for r in rows:
            r["note"] = r.get("note") or ""
        print(markdown(rows, COLUMNS))
        print("\n" + markdown(ratios(rows), ["task", "order", "backbone", "noise", "speedup_per_iter", "memory_ratio",
                                            "corr_autodiff", "corr_mollifier"]))
        return 0
    device = str(resolve_device(args.device))
    preset = CPU_PRESET if args.preset == "cpu" else None
    tasks = args.tasks or (QUICK["tasks"] if args.quick else list(_tasks.TASKS))
    backbones = args.backbones or (QUICK["backbones"] if args.quick else list(_tasks.BACKBONE_OPTIONS))
    noises = args.noise or (QUICK["noise"] if args.quick else [0.0, 0.01, 0.05])
    iterations = args.iterations or (QUICK["iterations"] if args.quick else FULL_ITERATIONS)
    width = args.width or (preset["width"] if preset else None)
    if preset and not args.threads:
        args.threads = preset["threads"]
    budgets = {}

    out = Path(args.out) if args.out else HERE / "results" / f"paper_table_{time.strftime('%Y%m%d_%H%M%S')}.csv"
    rows = []
    with tempfile.TemporaryDirectory(prefix="chromflow_paper_table_") as tmp:
        workdir = Path(tmp)
        for task in tasks:
            grid = args.grid or (QUICK["grid"][task] if args.quick else
                                 preset["grid"][task] if preset else _tasks.DEFAULTS[task]["grid"])
            task_iterations = args.iterations or (preset["iterations"][task] if preset else iterations)
            budgets[task] = task_iterations
            for noise in noises:
                data = _tasks.make_data(task, grid=grid, noise=noise, seed=args.seed)
                data_path = workdir / f"{task}_{noise}.npz"
                data.save(data_path)
                for backbone in backbones:
                    for mode in _tasks.MODES:
                        its, note = task_iterations, ""
                        cap = args.autodiff_iterations or (QUICK["autodiff_iterations"].get(task) if args.quick else None)
                        if mode == "autodiff" and cap and cap < task_iterations:
                            its, note = cap, f"capped at {cap} its: time_full_s extrapolated, corr not converged"
                        threads = args.threads or (QUICK["threads"] if args.quick and device == "cpu" else None)
                        spec = dict(task=task, noise=noise, backbone=backbone, mode=mode, iterations=its,
                                    device=device, seed=args.seed, data=str(data_path), threads=threads)
                        net = {"width": width} if width else {}
                        if preset and task == "chromatin":
                            # infer_rates sizes its MLP from the noise ("auto"); the CPU table
                            # keeps the 32 x 3 it was measured with
                            net["depth"] = preset["chromatin_depth"]
                        if args.fourier_scale is not None and backbone in ("piratenet", "fourier"):
                            net["fourier_scale"] = args.fourier_scale
                        if net:
                            spec["options"] = net if task == "chromatin" else {"backbone_options": net}
                        print(f"[paper_table] {task} noise={noise:g} {backbone} {mode} ({its} its) ...",
                              file=sys.stderr, flush=True)
                        res = _spawn(spec, workdir, args.timeout)
                        row = dict(task=task, order=_tasks.ORDER[task], backbone=backbone, noise=noise, mode=mode,
                                   grid=grid, note=note)
                        if "error" in res:
                            row.update(iterations=its, note=res["error"])
                        else:
                            per_iter = res["time_s"] / max(res["iterations"], 1)
                            row.update(iterations=res["iterations"], corr=res["corr"], rmse=res["rmse"],
                                       peak_mb=res["peak_mb"], time_s=res["time_s"], ms_per_iter=1e3 * per_iter,
                                       time_full_s=per_iter * task_iterations)
                        rows.append(row)
                        _write_rows(rows, out)  # after every case: a cut-off run keeps what it measured
                        print(f"[paper_table]   -> {json.dumps({k: row.get(k) for k in ('corr', 'peak_mb', 'time_s', 'note')})}",
                              file=sys.stderr, flush=True)

    _write_rows(rows, out)

    capped = any(r.get("note", "").startswith("capped") for r in rows)
    budget = ", ".join(f"{t} {n}" for t, n in budgets.items())
    print(f"## Mollifier vs autodiff ({device}{', quick' if args.quick else ''}{', preset ' + args.preset if args.preset else ''}"
          f"{f', width {width}' if width else ''}"
          f"{f', Fourier scale {args.fourier_scale:g}' if args.fourier_scale is not None else ''}; iteration budget per task: {budget}; "
          f"{'autodiff runs CAPPED where noted (not equal budgets)' if capped else 'equal in both modes'})\n")
    print(markdown(rows, COLUMNS))
    print(f"\n## Autodiff / mollifier ratios (same backbone, grid, data, loss, optimiser; "
          f"{'iterations differ where capped' if capped else 'equal iterations'})\n")
    print(markdown(ratios(rows), ["task", "order", "backbone", "noise", "speedup_per_iter", "memory_ratio",
                                  "corr_autodiff", "corr_mollifier"]))
    print("\n## Paper's press figures (4th-order task, GPU)\n")
    print(markdown(paper_rows(), ["source", "task", "mode", "time_s", "peak_mb", "corr"]))
    print(f"\nCSV: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
