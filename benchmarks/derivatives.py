"""Cost of a 4th-order derivative + backward: Taylor-mode and recursive autodiff vs the mollifier layer.

One evaluation = network on the grid -> biharmonic ``u_xxxx + 2 u_xxyy + u_yyyy`` -> loss
(mean square) -> ``loss.backward()``.

* taylor: a coordinate network ``u(y, x)`` (chromflow.models.MLP, width 64) on the grid's
  points, exact derivatives by forward Taylor mode (``chromflow.autodiff.taylor_derivatives``,
  the baseline);
* recursive: the same by nested reverse mode (``chromflow.autodiff.recursive_derivatives``,
  6 ``torch.autograd.grad(create_graph=True)`` calls; the second baseline);
* mollifier: the same network on the grid padded by the kernel half-width, then
  ``MollifierLayer(radius, ("biharmonic",), boundary="valid")``.

Time is the median over repeats (after one warm-up); memory is the peak above the state before
the first evaluation: on CPU the RSS high-water mark (``VmHWM`` in /proc/self/status) of a fresh
subprocess per case, on CUDA ``torch.cuda.max_memory_allocated``. A second table times the layer
alone (forward + backward) for direct and FFT convolution against the kernel radius, which sets
``FFT_MIN_WIDTH``.

Usage: python benchmarks/derivatives.py [--quick] [--device cpu|cuda] [--repeats N] [--radius R]
(--quick: grids 32 and 64, depths 2 and 4; under 2 minutes on 2 CPU cores.)
CSV files go to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from chromflow.autodiff import derivatives
from chromflow.io._atomic import atomic_path
from chromflow.models import MLP, evaluate_on_grid, grid_coordinates
from chromflow.mollifier import MollifierLayer

RESULTS = Path(__file__).resolve().parent / "results"
#: benchmark name -> chromflow.autodiff method
AUTODIFF = {"taylor": "taylor", "recursive": "recursive"}


def _vm_hwm_mb() -> float:
    """Peak resident set size of this process in MiB (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status (not Linux?)")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autodiff_step(net, coords, method="taylor"):
    """Biharmonic of u(coords) by chromflow.autodiff (``"taylor"`` or ``"recursive"``), then backward."""
    bilap = derivatives(net, coords, order=4, method=method)["biharmonic"]
    loss = bilap.square().mean()
    loss.backward()
    return float(loss.detach())


def mollifier_step(net, layer, shape, coords):
    g = evaluate_on_grid(net, shape, pad=layer.halo[0], coords=coords)
    bilap = layer(g)["biharmonic"]
    loss = bilap.square().mean()
    loss.backward()
    return float(loss.detach())


def run_case(method: str, size: int, depth: int, radius: float, repeats: int, device: str, seed: int = 0) -> dict:
    """Time and peak memory of one (method, grid size, depth) case in this process."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    net = MLP(2, 1, width=64, depth=depth).to(dev)
    shape = (size, size)
    if method in AUTODIFF:
        coords, _ = grid_coordinates(shape, device=dev)
        step = lambda: autodiff_step(net, coords, AUTODIFF[method])  # noqa: E731
    else:
        layer = MollifierLayer(radius, ("biharmonic",), boundary="valid").to(dev)
        coords, _ = grid_coordinates(shape, pad=layer.halo[0], device=dev)
        step = lambda: mollifier_step(net, layer, shape, coords)  # noqa: E731
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _vm_hwm_mb()
    times = []
    for i in range(repeats + 1):
        net.zero_grad(set_to_none=True)
        _sync(dev)
        t0 = time.perf_counter()
        step()
        _sync(dev)
        if i:  # first call warms up kernels and allocators
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    else:
        peak = _vm_hwm_mb() - base
    return {"method": method, "grid": size, "depth": depth, "time_s": statistics.median(times), "peak_mb": peak}


#: the outputs the rate fits take from the layer (chromflow.inverse.direct.ORDERS)
FIT_ORDERS = ("u", (1, 0), (0, 1), "lap", "biharmonic")


def layer_case(size: int, radius: float, method: str, repeats: int, device: str,
               orders=("u", "lap", "biharmonic"), fields: int = 1) -> dict:
    dev = torch.device(device)
    layer = MollifierLayer(radius, orders, boundary="valid", method=method).to(dev)
    h = layer.halo[0]
    g = torch.randn(fields, 1, size + 2 * h, size + 2 * h, device=dev, requires_grad=True)
    times = []
    for i in range(repeats + 1):
        _sync(dev)
        t0 = time.perf_counter()
        out = layer(g)
        sum(v.square().mean() for v in out.values()).backward()
        _sync(dev)
        if i:
            times.append(time.perf_counter() - t0)
    return {"grid": size, "radius": radius, "width": 2 * h + 1, "method": method,
            "time_ms": 1e3 * statistics.median(times)}


def _mollified_cos_factor(w: float, radius: float) -> float:
    """(cos(w .) * eta_radius) = factor * cos(w .) for the (even) bump kernel."""
    import math

    from scipy import integrate

    from chromflow.mollifier import profile
    from chromflow.mollifier.kernels import profile_integral

    val = integrate.quad(lambda s: float(profile("bump", s)) * math.cos(w * radius * s), -1, 1, limit=200)[0]
    return val / profile_integral("bump")


BANDS = ((0.0, 0.5), (0.5, 1.0), (1.0, 1.5), (1.5, float("inf")))


def boundary_errors(size: int = 128, radius: float = 6.0, wavelength: float = 40.0) -> list[dict]:
    """Error of mollified derivatives against the exact mollified field, by distance to the edge.

    Field ``sin(w x + 0.7) cos(w y + 0.3)`` (w = 2 pi / wavelength, grid units), whose exact
    mollified derivatives are the raw ones times a Fourier factor of the kernel. Errors are the
    largest absolute error in each band of distance to the domain edge (in units of the radius),
    divided by the largest exact value. Domains: the whole grid (reflect, zeros) and a disk of
    radius 0.4 size (mask, extension degrees 1-3).
    """
    import math

    import numpy as np
    from scipy import ndimage

    from chromflow.mollifier import derivative

    w = 2 * math.pi / wavelength
    t = torch.arange(size, dtype=torch.float64)
    y, x = torch.meshgrid(t, t, indexing="ij")
    field = torch.sin(w * x + 0.7) * torch.cos(w * y + 0.3)
    fac = _mollified_cos_factor(w, radius) ** 2
    truth = {"d/dx": ((0, 1), w * fac * torch.cos(w * x + 0.7) * torch.cos(w * y + 0.3)),
             "lap": ("lap", -2 * w**2 * fac * field),
             "biharmonic": ("biharmonic", 4 * w**4 * fac * field)}
    c = (size - 1) / 2
    disk = ((x - c) ** 2 + (y - c) ** 2 <= (0.4 * size) ** 2).numpy()
    full = np.ones((size, size), bool)
    cases = [("reflect", full, {}), ("zeros", full, {})]
    cases += [(f"mask, degree {d}", disk, {"mask": disk, "mask_degree": d}) for d in (1, 2, 3)]
    rows = []
    for label, domain, extra in cases:
        boundary = "mask" if "mask" in extra else label
        # distance (cells) from each pixel centre to the edge of its domain
        dist = ndimage.distance_transform_edt(np.pad(domain, 1))[1:-1, 1:-1] - 0.5
        for name, (order, want) in truth.items():
            got = derivative(field, order, radius, boundary=boundary, **extra)
            err = (got - want).abs().numpy()
            scale = float(want.abs().max())
            row = {"boundary": label, "order": name, "wavelength": wavelength, "radius": radius}
            for lo, hi in BANDS:
                sel = domain & (dist >= lo * radius) & (dist < hi * radius)
                row[f"{lo:g}-{hi:g}"] = float(err[sel].max()) / scale
            rows.append(row)
    return rows


def _case_in_subprocess(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--_case", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _write_csv(rows: list[dict], path: Path) -> None:
    import csv

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="grids 32, 64 and depths 2, 4")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--radius", type=float, default=4.0, help="kernel radius in grid cells")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--parts", default="speed,layer,boundary",
                        help="comma-separated tables to make: speed, layer, boundary")
    parser.add_argument("--_case", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args._case:  # child process: one case, JSON on the last line of stdout
        method, size, depth, radius, repeats = args._case
        row = run_case(method, int(size), int(depth), float(radius), int(repeats), args.device)
        print(json.dumps(row))
        return

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available")
    parts = set(args.parts.split(","))
    if "speed" in parts:
        speed_table(args)
    if "layer" in parts:
        layer_table(args)
    if "boundary" in parts:
        boundary_table()


def boundary_table():
    print("\nRelative error of mollified derivatives near the domain edge (bump, radius 6 cells, "
          "128x128 grid, float64); columns: distance to the edge in radii\n")
    rows = []
    for wavelength in (40.0, 80.0):
        print(f"wavelength {wavelength:g} cells\n")
        print("| boundary | order | " + " | ".join(f"{lo:g}-{hi:g}" for lo, hi in BANDS) + " |")
        print("|---|---|" + "---:|" * len(BANDS))
        for row in boundary_errors(wavelength=wavelength):
            rows.append(row)
            vals = " | ".join(f"{row[f'{lo:g}-{hi:g}']:.1e}" for lo, hi in BANDS)
            print(f"| {row['boundary']} | {row['order']} | {vals} |")
        print()
    path = RESULTS / "mollifier_boundary.csv"
    _write_csv(rows, path)
    print(f"wrote {path}")


def speed_table(args):
    sizes = [32, 64] if args.quick else [32, 64, 128, 256]
    depths = [2, 4] if args.quick else [2, 4, 6, 8]
    name = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    print(f"4th-order derivative (biharmonic) + backward on {args.device} ({name}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads); MLP width 64; mollifier radius {args.radius:g} cells; "
          f"median of {args.repeats}; peak memory above the starting state\n")
    print("| grid | depth | taylor (s) | recursive (s) | mollifier (s) | speed-up vs taylor | vs recursive | "
          "taylor peak (MiB) | recursive peak (MiB) | mollifier peak (MiB) | memory ratio vs taylor | vs recursive |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for size in sizes:
        for depth in depths:
            res = {}
            for method in ("taylor", "recursive", "mollifier"):
                if args.device == "cuda":
                    try:
                        res[method] = run_case(method, size, depth, args.radius, args.repeats, "cuda")
                    except torch.OutOfMemoryError:
                        res[method] = {"error": "out of memory"}
                    torch.cuda.empty_cache()
                else:
                    extra = ["--threads", str(args.threads)] if args.threads else []
                    res[method] = _case_in_subprocess([method, str(size), str(depth), str(args.radius),
                                                       str(args.repeats)] + extra)
            t, r, m = res["taylor"], res["recursive"], res["mollifier"]
            if any("error" in v for v in res.values()):
                print(f"| {size} | {depth} | {t.get('error', '')} | {r.get('error', '')} | {m.get('error', '')} "
                      "| | | | | | | |")
                continue
            mm = max(m["peak_mb"], 0.1)
            print(f"| {size} | {depth} | {t['time_s']:.4f} | {r['time_s']:.4f} | {m['time_s']:.4f} | "
                  f"{t['time_s'] / m['time_s']:.1f}x | {r['time_s'] / m['time_s']:.1f}x | {t['peak_mb']:.1f} | "
                  f"{r['peak_mb']:.1f} | {m['peak_mb']:.1f} | {t['peak_mb'] / mm:.1f}x | {r['peak_mb'] / mm:.1f}x |",
                  flush=True)
            rows += [t, r, m]
    if rows:
        path = RESULTS / f"derivatives_{args.device}.csv"
        _write_csv(rows, path)
        print(f"\nwrote {path}")


def layer_table(args):
    """The layer alone: direct vs FFT against kernel width; then direct, FFT and matmul against grid size."""
    size = 128 if args.quick else 256
    radii = [4, 16, 32] if args.quick else [4, 8, 16, 24, 32, 48]
    print(f"\nMollifierLayer(('u', 'lap', 'biharmonic')) forward + backward on a {size}x{size} grid "
          f"(float32, median of {args.repeats})\n")
    print("| radius (cells) | kernel width | direct (ms) | fft (ms) |")
    print("|---:|---:|---:|---:|")
    layer_rows = []
    for radius in radii:
        d = layer_case(size, radius, "direct", args.repeats, args.device)
        f = layer_case(size, radius, "fft", args.repeats, args.device)
        layer_rows += [d, f]
        print(f"| {radius} | {d['width']} | {d['time_ms']:.2f} | {f['time_ms']:.2f} |", flush=True)
    path = RESULTS / f"mollifier_layer_{args.device}.csv"
    _write_csv(layer_rows, path)
    print(f"\nwrote {path}")
    # the three methods on the fits' five outputs against the grid size, at the fits' radius 3
    methods = ("direct", "fft", "matmul")
    sizes = [64, 128] if args.quick else [64, 100, 128, 192, 256, 384]
    print(f"\nMollifierLayer({FIT_ORDERS}) (the rate fits' outputs) on two fields, radius 3, forward + backward, "
          "float32, "
          f"median of {max(args.repeats, 5)}, ms\n")
    print("| grid | " + " | ".join(methods) + " |")
    print("|---:|" + "---:|" * len(methods))
    size_rows = []
    for size in sizes:
        row = {m: layer_case(size, 3.0, m, max(args.repeats, 5), args.device, FIT_ORDERS, fields=2) for m in methods}
        size_rows += list(row.values())
        print(f"| {size} | " + " | ".join(f"{row[m]['time_ms']:.2f}" for m in methods) + " |", flush=True)
    path = RESULTS / f"mollifier_layer_sizes_{args.device}.csv"
    _write_csv(size_rows, path)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
