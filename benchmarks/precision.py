"""What the default PINN run costs and what float32, threads and a contiguous layer input change.

Parts (``--parts``, comma-separated):

``fields``
    Field level, domain scale: ``_tasks.make_data("chromatin")`` (50 nm cells, rate varying on
    ~0.4 um, steady state of the chromatin model) with 3 % field noise; ``infer_rates(method="pinn")``
    with its defaults in float64 and float32, same seed. Reports the correlation with the true
    rate inside the nucleus and the wall time, beside the direct inversion and the plain ratio
    ``phi_h / phi_e`` on the same data.
``end_to_end``
    ``benchmarks/end_to_end.py``'s case (simulated localizations -> ``run_file``) with
    ``DEFAULTS["pinn"]["dtype"]`` set to float64 and to float32 in this process (what changing the
    default would do; the pipeline has no dtype setting).
``layout``
    One training step of the PINN loss core at the given grid (network on the padded grid ->
    ``MollifierLayer`` -> squared sum -> backward) with the network output handed to the layer as
    the transposed view ``net(coords).T.reshape(3, ny, nx)`` (as ``inverse.py`` does) and as a
    contiguous copy (``.T.contiguous()``); median of repeats, both dtypes.
``threads``
    The default PINN fit (``fields`` data) with 1, 2 and all torch threads.

Usage::

    python benchmarks/precision.py --grid 64 --parts fields,layout,threads
    python benchmarks/precision.py --parts end_to_end --counts 3e5
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _tasks  # noqa: E402


def fields_part(args):
    from chromflow.inverse import infer_rates

    print(f"\n### float64 vs float32, field level: {args.grid}x{args.grid} cells of 50 nm, rate correlation "
          f"length ~0.4 um, {args.noise:.0%} noise, pinn defaults ({torch.get_num_threads()} thread(s))\n")
    print("| seed | estimator | corr | time s |")
    print("|---:|---|---:|---:|")
    for seed in args.seeds:
        data = _tasks.make_data("chromatin", grid=args.grid, noise=args.noise, seed=seed)
        fields = _tasks.chromatin_fields(data)
        m = data.arrays["mask"]
        ratio = np.where(m, data.arrays["phi_h"] / data.arrays["phi_e"], np.nan)
        print(f"| {seed} | ratio phi_h/phi_e | {_tasks.score(ratio, data.truth)[0]:.4f} | |")
        t0 = time.perf_counter()
        direct = infer_rates(fields, method="direct")
        print(f"| {seed} | direct (radius 3) | {_tasks.score(direct.rate, data.truth)[0]:.4f} | "
              f"{time.perf_counter() - t0:.2f} |")
        for dtype in ("float64", "float32"):
            t0 = time.perf_counter()
            r = infer_rates(fields, method="pinn", seed=seed, dtype=dtype, iterations=args.iterations)
            print(f"| {seed} | pinn {dtype} | {_tasks.score(r.rate, data.truth)[0]:.4f} | "
                  f"{time.perf_counter() - t0:.1f} |", flush=True)


def end_to_end_part(args):
    import end_to_end

    from chromflow import inverse

    print(f"\n### float64 vs float32, end to end (simulated localizations -> run_file, 128^2 fields, "
          f"{torch.get_num_threads()} thread(s))\n")
    print("| seed | localizations | dtype | corr | wall s | inference s |")
    print("|---:|---:|---|---:|---:|---:|")
    before = inverse.DEFAULTS["pinn"]["dtype"]
    try:
        with tempfile.TemporaryDirectory() as work:
            for seed in args.seeds:
                for count in args.counts:
                    for dtype in ("float64", "float32"):
                        inverse.DEFAULTS["pinn"]["dtype"] = dtype
                        row = end_to_end.one_case(seed, count, "pinn", "cpu", 128, work, args.iterations)
                        t_inf = next((v for k, v in row.items() if "infer" in k), float("nan"))
                        print(f"| {seed} | {int(count)} | {dtype} | {row['corr']:.4f} | {row['wall_s']:.1f} | "
                              f"{t_inf:.1f} |", flush=True)
    finally:
        inverse.DEFAULTS["pinn"]["dtype"] = before


def layout_part(args):
    from chromflow.inverse import _mollifier
    from chromflow.models import build_backbone, grid_coordinates

    shape = (args.grid, args.grid)
    print(f"\n### Network output handed to the mollifier layer: transposed view vs contiguous, {shape[0]}^2, "
          f"one forward + backward, median of {args.repeats} ({torch.get_num_threads()} thread(s))\n")
    print("| dtype | .T.reshape (view) ms | .T.contiguous().reshape ms | view / contiguous |")
    print("|---|---:|---:|---:|")
    for dtype in (torch.float64, torch.float32):
        torch.manual_seed(0)
        net = build_backbone("mlp", 2, 3, width=32, depth=3).to(dtype)
        layer = _mollifier(3.0, "bump", "valid")
        pad = layer.halo[0]
        coords, _ = grid_coordinates(shape, pad=pad, dtype=dtype)
        full = tuple(n + 2 * pad for n in shape)

        def step(contiguous):
            out = net(coords).T
            out = (out.contiguous() if contiguous else out).reshape(3, *full)
            d = layer(out[:2])
            loss = sum(v.square().sum() for v in d.values()) + out[2].square().sum()
            net.zero_grad(set_to_none=True)
            loss.backward()

        times = {}
        for contiguous in (False, True, False, True):  # interleaved, first of each is a warm-up
            ts = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                step(contiguous)
                ts.append(time.perf_counter() - t0)
            times[contiguous] = statistics.median(ts)
        print(f"| {str(dtype).replace('torch.', '')} | {1e3 * times[False]:.1f} | {1e3 * times[True]:.1f} | "
              f"{times[False] / times[True]:.2f} |", flush=True)


def threads_part(args):
    from chromflow.inverse import infer_rates
    from chromflow.training import set_threads

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    data = _tasks.make_data("chromatin", grid=args.grid, noise=args.noise, seed=args.seeds[0])
    fields = _tasks.chromatin_fields(data)
    its = args.iterations or 800
    print(f"\n### Threads: pinn defaults ({its} iterations), {args.grid}^2 fields, {cores} cores available\n")
    print("| threads | wall s | ms / iteration | corr |")
    print("|---:|---:|---:|---:|")
    before = torch.get_num_threads()
    try:
        for n in sorted({1, 2, cores}):
            set_threads(n)
            t0 = time.perf_counter()
            r = infer_rates(fields, method="pinn", seed=0, iterations=its)
            wall = time.perf_counter() - t0
            print(f"| {n} | {wall:.1f} | {1e3 * wall / its:.1f} | {_tasks.score(r.rate, data.truth)[0]:.4f} |",
                  flush=True)
    finally:
        torch.set_num_threads(before)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="fields,layout,threads")
    p.add_argument("--grid", type=int, default=64, help="field grid (cells per side) for fields/layout/threads")
    p.add_argument("--noise", type=float, default=0.03)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--counts", type=float, nargs="+", default=[3e5])
    p.add_argument("--iterations", type=int, default=None, help="PINN iterations (default: infer_rates')")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads for the non-thread parts")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = {"fields": fields_part, "end_to_end": end_to_end_part, "layout": layout_part, "threads": threads_part}
    for name in args.parts.split(","):
        parts[name](args)


if __name__ == "__main__":
    main()
