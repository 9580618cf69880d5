"""Why the heat task's PirateNet fails under autodiff: the Fourier scale of its embedding.

Each argument is ``mode,iterations,lr,fourier_scale,noise``; prints the correlation of the
recovered conductivity and the data / physics losses at 0, 1/4, 1/2 and all of the steps
(heat task, 24x24, seed 0, SOAP, the paper table's PirateNet otherwise).

Usage::

    python benchmarks/heat_piratenet.py autodiff,600,5e-3,1.0,0.01 autodiff,600,5e-3,0.25,0.01
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _tasks  # noqa: E402


def main(specs):
    torch.set_num_threads(1)
    for spec in specs:
        mode, iterations, lr, scale, noise = spec.split(",")
        data = _tasks.make_data("heat", grid=24, noise=float(noise), seed=0)
        start = time.time()
        result = _tasks.fit_pinn(data, "piratenet", mode, iterations=int(iterations), lr=float(lr),
                                 backbone_options={"fourier_scale": float(scale)})
        losses = result.history.losses
        trace = {k: ["%.3g" % v[j] for j in (0, len(v) // 4, len(v) // 2, -1)] for k, v in losses.items()}
        print(f"{spec}: corr {_tasks.score(result.rate, data.truth)[0]:.3f}, {time.time() - start:.0f} s, "
              f"losses {trace}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["autodiff,600,5e-3,1.0,0.01", "autodiff,600,5e-3,0.25,0.01"])
