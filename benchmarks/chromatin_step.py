"""Per-step time and peak memory of the 4th-order chromatin fit: mollifier vs Taylor-mode vs recursive autodiff.

The same data (``_tasks.make_data("chromatin", grid)``), the same backbone, loss, optimiser and
seed go through :func:`chromflow.inverse.infer_rates` three times, differing only in how the
derivatives up to the biharmonic are taken:

* ``mollifier``: ``method="pinn"`` (network on the padded grid, mollifier-kernel convolutions);
* ``autodiff``: ``method="autodiff"``, exact derivatives by forward Taylor mode (the baseline);
* ``autodiff_recursive``: the same under ``chromflow.autodiff.use_method("recursive")`` (nested
  reverse-mode autograd; the second baseline).

Each mode runs in its own fresh Python process (so its peak memory is its own), side by side in
one invocation. Time per step: median of the intervals between consecutive iterations (the
progress callback is called after every step), the first step excluded. Peak memory: on CPU the
``ru_maxrss`` high-water mark after the run minus the reading after imports, data and a tiny
warm-up (``paper_table._warm_up``); on CUDA ``torch.cuda.max_memory_allocated`` above the start.
A third, allocator-independent figure: the megabytes of distinct tensor storages autograd saves
for the backward pass in one step (``torch.autograd.graph.saved_tensors_hooks``), median over
steps. Time, RSS and saved bytes come from the same run. On CPU a fourth figure, the tensors' own
peak (the CPU analogue of CUDA's ``max_memory_allocated``: allocation and free events replayed,
``paper_table.CpuTensorPeak``), comes from the same fit repeated for 3 steps in the same process
under ``torch.profiler``; on CUDA it is the ``max_memory_allocated`` reading itself.

Usage::

    python benchmarks/chromatin_step.py                        # 128^2, CPU, 1 thread
    python benchmarks/chromatin_step.py --device cuda --steps 50
    python benchmarks/chromatin_step.py --steps 20 --dtype float32 --modes mollifier autodiff --rounds 5
    python benchmarks/chromatin_step.py --steps 60 --dtype float32 --rounds 5 --no-tensor-peak \
        --modes mollifier_direct mollifier_fft mollifier_matmul     # the layer's methods in the fit
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _tasks  # noqa: E402

MODES = ("mollifier", "autodiff", "autodiff_recursive")
#: the mollifier fit with each of the layer's methods forced (``mollifier`` is its ``"auto"``
#: choice); not run by default: ``--modes mollifier_direct mollifier_fft mollifier_matmul``
LAYER_MODES = {"mollifier_direct": "direct", "mollifier_fft": "fft", "mollifier_matmul": "matmul"}
LABEL = {"mollifier": "mollifier (pinn)", "autodiff": "autodiff, Taylor mode",
         "autodiff_recursive": "autodiff, recursive reverse mode",
         **{m: f"mollifier (pinn), layer method {k!r}" for m, k in LAYER_MODES.items()}}


def worker(spec: dict) -> dict:
    import torch

    import chromflow.inverse  # noqa: F401  (imports before the memory baseline)
    from chromflow.autodiff import use_method
    from chromflow.inverse import infer_rates
    from paper_table import CpuTensorPeak, _warm_up, memory_baseline, memory_peak

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    data = _tasks.TaskData.load(spec["data"])
    fields = _tasks.chromatin_fields(data)
    _warm_up(device)
    cuda = device.type == "cuda"
    base = memory_baseline(device)
    stamps = []
    # bytes of the tensors autograd saves for the backward pass, per step (distinct storages):
    # the part of the memory that grows with the derivative method, free of allocator noise
    saved, saved_per_step = {}, []

    def pack(t):
        try:
            key = t.untyped_storage().data_ptr()
            saved[key] = max(saved.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage
            pass
        return t

    def progress(done, total, msg):
        if cuda:
            torch.cuda.synchronize(device)
        stamps.append((done, time.perf_counter()))
        if saved:
            saved_per_step.append(sum(saved.values()) / 2**20)
            saved.clear()

    autodiff = "recursive" if spec["mode"] == "autodiff_recursive" else "taylor"
    if spec["mode"] in LAYER_MODES:
        import chromflow.inverse.fit as fit_module
        from chromflow.inverse.direct import ORDERS
        from chromflow.mollifier import MollifierLayer

        how = LAYER_MODES[spec["mode"]]
        fit_module.mollifier_layer = (lambda radius, kernel="bump", boundary="valid", mask=None: MollifierLayer(
            radius, orders=ORDERS, ndim=2, kernel=kernel, boundary=boundary, mask=mask, method=how))
    # one fit: the uncertainty's refits (a split-half companion in a second thread, a bootstrap
    # refit) would share the timed core and add their own memory to both modes
    network_method = "autodiff" if spec["mode"].startswith("autodiff") else "pinn"
    fit = functools.partial(infer_rates, fields, method=network_method,
                            device=device, seed=0, dtype=spec["dtype"], **{"uncertainty": False, **spec["options"]})
    start = time.perf_counter()
    with use_method(autodiff), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fit(iterations=spec["steps"], log_every=1, progress=progress)
    total = time.perf_counter() - start
    peak = memory_peak(device, base)
    # intervals between consecutive steps; stamps are (done, time) with done = 0, 1, ..., steps
    steps = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(stamps, stamps[1:]) if b[0] > a[0]]
    per_step = statistics.median(steps[1:] if len(steps) > 2 else steps)
    corr, _ = _tasks.score(result.rate, data.truth)
    if cuda:            # max_memory_allocated is the tensors' own peak already
        tensor_mb = peak
    elif spec.get("tensor_peak"):
        # the same fit again (same seed, data and settings; 3 steps reach its peak) under the
        # profiler that records every allocation: in the timed fit, the profiler's own event
        # records would slow Taylor mode ~1.7x and add GBs of RSS
        with use_method(autodiff), CpuTensorPeak() as tensor_peak:
            fit(iterations=min(3, spec["steps"]))
        tensor_mb = tensor_peak.mb
    else:
        tensor_mb = float("nan")
    return {"mode": spec["mode"], "ms_per_step": 1e3 * per_step, "peak_mb": peak, "tensor_mb": tensor_mb,
            "saved_mb": statistics.median(saved_per_step) if saved_per_step else float("nan"), "total_s": total,
            "steps": spec["steps"], "corr_after_steps": corr,
            "network": f"{result.settings.get('width')}x{result.settings.get('depth')}"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=8, help="optimiser steps per mode (the first is not timed)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backbone", default="mlp")
    p.add_argument("--width", type=int, default=None, help="default: infer_rates' (\"auto\": from the noise share)")
    p.add_argument("--depth", type=int, default=None, help="default: infer_rates' (\"auto\")")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES + tuple(LAYER_MODES))
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--no-tensor-peak", dest="tensor_peak", action="store_false",
                   help="CPU: skip the second, profiled fit that measures the tensors' peak")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat all modes this many times, alternating their order; the table gives medians "
                        "and each round's own ratios (the machine's speed drifts between runs)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        Path(spec["result"]).write_text(json.dumps(worker(spec)))
        return 0
    options = {"backbone": args.backbone}
    if args.width:
        options["width"] = args.width
    if args.depth:
        options["depth"] = args.depth
    runs = []                     # one list of rows per round
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "data.npz"
        _tasks.make_data("chromatin", grid=args.grid, noise=args.noise, seed=0).save(data_path)
        for k in range(args.rounds):
            # alternate the order, so that a drift of the machine's speed does not favour one mode
            order = list(args.modes) if k % 2 == 0 else list(reversed(args.modes))
            runs.append([])
            for mode in order:
                spec = dict(mode=mode, device=args.device, steps=args.steps, threads=args.threads, dtype=args.dtype,
                            tensor_peak=args.tensor_peak and k == 0,   # deterministic: read once
                            data=str(data_path), options=options, result=str(Path(tmp) / f"{mode}.json"))
                spec_path = Path(tmp) / f"{mode}.spec.json"
                spec_path.write_text(json.dumps(spec))
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
                proc = subprocess.run([sys.executable, __file__, "--worker", str(spec_path)], capture_output=True,
                                      text=True, env=env)
                if proc.returncode != 0:
                    runs[-1].append({"mode": mode, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]})
                else:
                    runs[-1].append(json.loads(Path(spec["result"]).read_text()))
                print(f"[chromatin_step] round {k + 1}: {runs[-1][-1]}", file=sys.stderr, flush=True)
    rows = combine_rounds(runs, args.modes)
    ref = {r["mode"]: r for r in rows if "error" not in r}
    # ratios against the mollifier fit ("auto" layer method), else against the first mode asked for
    ref_mode = "mollifier" if "mollifier" in args.modes else args.modes[0]
    moll = ref.get(ref_mode)
    networks = sorted({r["network"] for r in rows if "network" in r})
    print(f"## 4th-order chromatin fit, {args.grid}x{args.grid}, {args.device} ({args.threads} thread(s)), "
          f"{args.backbone} {'/'.join(networks)} {options}, {args.dtype}, {args.steps} steps per mode\n")
    print("| derivatives | ms / step | peak RSS MB | peak tensor MB | saved for backward MB / step | "
          "step time / mollifier | peak RSS / mollifier | peak tensors / mollifier | saved / mollifier |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {LABEL[r['mode']]} | {r['error']} | | | | | | | |")
            continue
        t = r["ms_per_step"] / moll["ms_per_step"] if moll else float("nan")
        m = r["peak_mb"] / max(moll["peak_mb"], 0.1) if moll else float("nan")
        sv = r["saved_mb"] / moll["saved_mb"] if moll else float("nan")
        tm = r["tensor_mb"] / max(moll["tensor_mb"], 0.1) if moll else float("nan")
        print(f"| {LABEL[r['mode']]} | {r['ms_per_step']:.1f} | {r['peak_mb']:.1f} | {r['tensor_mb']:.1f} | "
              f"{r['saved_mb']:.1f} | {t:.1f}x | {m:.1f}x | {tm:.1f}x | {sv:.1f}x |")
    if args.rounds > 1:
        print(f"\nMedians over {args.rounds} rounds (modes alternated in order). Each round's own ratios "
              f"(time / peak RSS against the {LABEL[ref_mode]} run of the same round):\n")
        others = [m for m in args.modes if m != ref_mode]
        print("| round | mollifier ms / step | " + " | ".join(f"{LABEL[m]}: time, RSS" for m in others) + " |")
        print("|---|---:|" + "---:|" * len(others))
        for k, ratios in enumerate(round_ratios(runs, ref_mode)):
            if ref_mode not in ratios:
                continue
            cells = [f"{ratios[m][0]:.2f}x, {ratios[m][1]:.1f}x" if m in ratios else "failed" for m in others]
            print(f"| {k + 1} | {ratios[ref_mode][2]:.1f} | " + " | ".join(cells) + " |")
    return 0


def combine_rounds(runs, modes):
    """One row per mode: medians over the rounds of time, RSS and saved bytes; the tensor peak
    of the round that measured it. A mode that failed in every round keeps its error."""
    rows = []
    for mode in modes:
        ok = [r for run in runs for r in run if r["mode"] == mode and "error" not in r]
        if not ok:
            rows.append(next(r for run in runs for r in run if r["mode"] == mode))
            continue
        row = dict(ok[0])
        for key in ("ms_per_step", "peak_mb", "saved_mb", "total_s"):
            row[key] = statistics.median(r[key] for r in ok)
        measured = [r["tensor_mb"] for r in ok if r["tensor_mb"] == r["tensor_mb"]]
        row["tensor_mb"] = measured[0] if measured else float("nan")
        rows.append(row)
    return rows


def round_ratios(runs, ref_mode="mollifier"):
    """Per round: ``{mode: (time ratio, RSS ratio, ms per step)}`` against that round's ``ref_mode`` run."""
    out = []
    for run in runs:
        done = {r["mode"]: r for r in run if "error" not in r}
        moll = done.get(ref_mode)
        out.append({m: (r["ms_per_step"] / moll["ms_per_step"], r["peak_mb"] / max(moll["peak_mb"], 0.1),
                        r["ms_per_step"]) for m, r in done.items()} if moll else {})
    return out


if __name__ == "__main__":
    sys.exit(main())
