"""The three benchmark problems of the Mollifier-Layers paper, set up for a fair autodiff-vs-mollifier race.

Benchmark-only code (the product only needs the chromatin problem, which lives in
:func:`chromflow.inverse.infer_rates`). Each task has a data maker (forward solvers of
:mod:`chromflow.simulate` with a known parameter) and a fitting function that trains the *same*
backbone with the *same* data, loss and optimiser, differing only in how derivatives are taken:

``"autodiff"``
    The network is evaluated at the grid points and exact derivatives come from forward
    Taylor mode (:func:`chromflow.autodiff.taylor_derivatives`), the fastest exact baseline.
``"autodiff_recursive"``
    The same derivatives by nested reverse mode (:func:`chromflow.autodiff.recursive_derivatives`),
    the way PINN codes usually take them: a second, labelled baseline.
``"mollifier"``
    The network is evaluated on the grid padded by the kernel half-width, and the field and its
    derivatives are convolutions with the mollifier kernel and its derivatives
    (:func:`chromflow.mollifier.derivative`, ``boundary="valid"``), so the output covers exactly
    the data grid.

Tasks (lambda is always the unknown, output as a second channel of the network):

1. ``"langevin"`` (1st order, 1D in time): ``u_t = u + lambda(t)``.
2. ``"heat"`` (2nd order, steady, 2D): ``0 = lambda(y, x) lap u + m(y, x)``, ``m`` known.
3. ``"chromatin"`` (4th order, 2D): the steady chromatin model, solved by
   :func:`chromflow.inverse.infer_rates` with ``method="pinn"`` (mollifier) or ``"autodiff"``.

Loss for tasks 1-2 (identical in both modes)::

    L = mean((u - u_obs)^2) / var(u_obs) + physics_weight * mean(R^2) / s_R^2

with ``R`` the residual of :mod:`chromflow.physics` and ``s_R`` a fixed scale of its terms
(``var(u_obs)`` per unit time squared for Langevin, ``mean(m^2)`` for heat).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

TASKS = ("langevin", "heat", "chromatin")
MODES = ("autodiff", "mollifier")
#: Every mode a case can run: ``"autodiff_recursive"`` is the second, labelled baseline (nested
#: reverse-mode autograd instead of Taylor mode; same derivatives, more time and memory).
ALL_MODES = ("autodiff", "mollifier", "autodiff_recursive")
ORDER = {"langevin": 1, "heat": 2, "chromatin": 4}

#: Per-task defaults: grid points per axis, mollifier radius (cells), learning rate, physics weight,
#: optimiser (SOAP for Langevin and heat: with Adam the fit of ``u`` stalls at ~16x the noise level
#: and the recovered rate is only its linear trend, corr 0.87 = |corr(t, lambda)|, in both modes).
#: The chromatin task takes :func:`chromflow.inverse.infer_rates`'s own defaults.
DEFAULTS = {
    "langevin": dict(grid=256, radius_cells=6.0, lr=5e-3, physics_weight=1.0, optimizer="soap"),
    "heat": dict(grid=64, radius_cells=3.0, lr=5e-3, physics_weight=1.0, optimizer="soap"),
    "chromatin": dict(grid=64, radius_cells=None, lr=None, physics_weight=None, optimizer=None),
}
#: Chromatin task: cell size (nm) and correlation length of the rate map (um, ~2x the smoothing
#: length of :func:`chromflow.simulate.random_rate_map`).
CHROMATIN_SPACING_NM = 50.0
CHROMATIN_RATE_LENGTH_UM = 0.4
#: Backbone sizes used for every task (same network in both modes).
BACKBONE_OPTIONS = {
    "mlp": dict(width=64, depth=4),
    "piratenet": dict(width=64, blocks=2),
    "fourier": dict(width=64, depth=3),
}


@dataclass
class TaskData:
    """Simulated observations with a known parameter.

    Attributes
    ----------
    task : str
        One of :data:`TASKS`.
    observed : ndarray
        Noisy field on the grid: ``u(t)`` (Langevin), ``u(y, x)`` (heat); for the chromatin task
        ``phi_h`` and ``phi_e`` are in ``arrays``.
    truth : ndarray
        The parameter to recover, same grid.
    spacing : float
        Grid spacing (time units for Langevin, length units for heat, nm for chromatin).
    noise : float
        Noise standard deviation relative to the field's standard deviation.
    arrays : dict
        Extra arrays: ``source`` (heat), ``clean``, ``phi_h``, ``phi_e``, ``mask`` (chromatin).
    """

    task: str
    observed: np.ndarray
    truth: np.ndarray
    spacing: float
    noise: float
    seed: int
    arrays: dict = field(default_factory=dict)

    def save(self, path) -> None:
        """Write to an ``.npz`` file (used to hand identical data to every benchmark case)."""
        np.savez(path, task=self.task, observed=self.observed, truth=self.truth, spacing=self.spacing,
                 noise=self.noise, seed=self.seed, **{f"extra_{k}": v for k, v in self.arrays.items()})

    @classmethod
    def load(cls, path) -> "TaskData":
        """Read what :meth:`save` wrote."""
        with np.load(path) as z:
            extra = {k[len("extra_"):]: z[k] for k in z.files if k.startswith("extra_")}
            return cls(task=str(z["task"]), observed=z["observed"], truth=z["truth"], spacing=float(z["spacing"]),
                       noise=float(z["noise"]), seed=int(z["seed"]), arrays=extra)


# ---------------------------------------------------------------------------------------------
# data


def _noisy(clean: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise of std ``noise * std(clean)`` (the paper's relative noise level)."""
    from chromflow.simulate import add_noise

    return np.asarray(add_noise(clean, noise, seed=int(rng.integers(2**31))), dtype=np.float64)


def langevin_rate_truth(t: np.ndarray) -> np.ndarray:
    """Known forcing of the Langevin benchmark: a smooth two-mode signal on ``t in [0, 1]``."""
    return 1.0 + 0.6 * np.sin(2 * math.pi * t) + 0.3 * np.cos(math.pi * t + 0.4)


def heat_rate_truth(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Known conductivity of the heat benchmark on ``[0, 1]^2``: two broad positive blobs."""
    return (1.0 + 0.6 * np.exp(-((x - 0.35) ** 2 + (y - 0.4) ** 2) / 0.06)
            + 0.4 * np.exp(-((x - 0.72) ** 2 + (y - 0.68) ** 2) / 0.05))


def heat_source(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Known, strictly positive source: keeps ``lap u`` away from 0 so ``lambda`` is identifiable."""
    return 2.0 + np.cos(math.pi * x) * np.cos(math.pi * y)


def make_data(task: str, grid: int | None = None, noise: float = 0.0, seed: int = 0) -> TaskData:
    """Simulate one benchmark data set with a known parameter.

    Parameters
    ----------
    task : {"langevin", "heat", "chromatin"}
    grid : int, optional
        Points per axis (default :data:`DEFAULTS`).
    noise : float
        Noise std relative to the field's std (0.01 = 1 %).
    seed : int
        Seed of the noise.

    Returns
    -------
    TaskData
    """
    grid = int(grid or DEFAULTS[task]["grid"])
    rng = np.random.default_rng(seed)
    if task == "langevin":
        from chromflow.simulate import langevin_solution

        t = np.linspace(0.0, 1.0, grid)
        rate = langevin_rate_truth(t)
        clean = np.asarray(langevin_solution(t, rate, u0=0.0), dtype=np.float64)
        return TaskData(task, _noisy(clean, noise, rng), rate, float(t[1] - t[0]), noise, seed, {"clean": clean})
    if task == "heat":
        from chromflow.simulate import steady_heat

        h = 1.0 / (grid - 1)
        y, x = np.meshgrid(np.arange(grid) * h, np.arange(grid) * h, indexing="ij")
        rate, source = heat_rate_truth(y, x), heat_source(y, x)
        clean = np.asarray(steady_heat(rate, source, spacing=h), dtype=np.float64)
        # the equation only holds on interior nodes (u = 0 is imposed on the outer ring): lambda
        # is not identifiable on the ring, so the truth is NaN there and scores skip it
        truth = rate.copy()
        truth[[0, -1], :] = np.nan
        truth[:, [0, -1]] = np.nan
        return TaskData(task, _noisy(clean, noise, rng), truth, h, noise, seed, {"clean": clean, "source": source})
    if task == "chromatin":
        from chromflow.simulate import chromatin_steady_state, random_rate_map

        # 50 nm cells and a rate varying on the domain scale (correlation ~0.4 um): where the
        # transport terms, the 4th-order one included, matter (DESIGN, "When the physics matters")
        spacing_um = CHROMATIN_SPACING_NM / 1000.0
        yy, xx = np.meshgrid((np.arange(grid) + 0.5) / grid, (np.arange(grid) + 0.5) / grid, indexing="ij")
        mask = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.45 ** 2
        rate = random_rate_map((grid, grid), mean=1.0, amplitude=0.5,
                               length_cells=CHROMATIN_RATE_LENGTH_UM / 2 / spacing_um, seed=seed + 1000)
        phi_h, phi_e = chromatin_steady_state(rate, mask=mask, spacing_um=spacing_um)
        phi_h, phi_e = np.asarray(phi_h, np.float64), np.asarray(phi_e, np.float64)
        noisy_h = _noisy(phi_h, noise, rng)
        noisy_e = _noisy(phi_e, noise, rng)
        truth = np.where(mask, rate, np.nan)
        return TaskData(task, noisy_h, truth, spacing_um * 1000.0, noise, seed,
                        {"phi_h": noisy_h, "phi_e": noisy_e, "mask": mask, "clean_h": phi_h, "clean_e": phi_e})
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


# ---------------------------------------------------------------------------------------------
# scores


def score(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Pearson correlation and RMSE of ``estimate`` against ``truth`` over their finite points."""
    estimate, truth = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
    ok = np.isfinite(estimate) & np.isfinite(truth)
    if ok.sum() < 3:
        return float("nan"), float("nan")
    a, b = estimate[ok], truth[ok]
    rmse = float(np.sqrt(np.mean((a - b) ** 2)))
    if a.std() == 0 or b.std() == 0:
        return float("nan"), rmse
    return float(np.corrcoef(a, b)[0, 1]), rmse


# ---------------------------------------------------------------------------------------------
# PINN fits for the Langevin and heat tasks


@dataclass
class FitResult:
    """Outcome of one fit: the recovered parameter on the data grid and the training history."""

    rate: np.ndarray
    iterations: int
    loss: float
    history: object = None


class PinnProblem:
    """The grid, coordinates and derivative machinery of one Langevin or heat fit.

    Both modes evaluate the network on the *same* normalised coordinates (those of the data grid
    padded by the mollifier half-width, from :func:`chromflow.models.grid_coordinates`): autodiff
    uses the data-grid points, the mollifier the padded grid whose ``boundary="valid"``
    convolution lands back on the data grid.

    Parameters
    ----------
    shape : tuple of int
        Data grid, ``(n,)`` for Langevin or ``(ny, nx)`` for heat.
    spacing : float
        Physical grid spacing.
    radius_cells : float
        Mollifier support radius in grid cells.
    order : {1, "lap"}
        Derivative the residual needs: ``u_t`` (1D) or the Laplacian (2D).
    u_mean, u_std : float
        The network's first channel ``g`` is mapped to ``u = u_mean + u_std * g`` so that the
        target is O(1) in every task.
    positive : bool
        Keep ``lambda`` positive (see :meth:`parameter`): the heat task's conductivity is.
    device, dtype : torch device and dtype
    """

    def __init__(self, shape, spacing, radius_cells, order, u_mean=0.0, u_std=1.0, positive=False, device="cpu",
                 dtype=None):
        import torch

        from chromflow.models import grid_coordinates
        from chromflow.mollifier import halo

        self.shape = tuple(int(n) for n in shape)
        self.ndim = len(self.shape)
        self.spacing = float(spacing)
        self.order = order
        self.radius = float(radius_cells) * self.spacing
        self.pad = halo(radius_cells)
        self.u_mean, self.u_std = float(u_mean), float(u_std)
        self.positive = bool(positive)
        dtype = dtype or torch.float32
        self.coords_padded, self.scale = grid_coordinates(self.shape, spacing=self.spacing, pad=self.pad,
                                                          device=device, dtype=dtype)
        self.full = tuple(n + 2 * self.pad for n in self.shape)
        inside = np.zeros(self.full, bool)
        inside[tuple(slice(self.pad, self.pad + n) for n in self.shape)] = True
        self.interior = torch.as_tensor(np.flatnonzero(inside.reshape(-1)), device=device)
        self.coords = self.coords_padded[self.interior].clone()

    def parameter(self, raw):
        """Map the network's second channel to ``lambda``: as is, or ``softplus`` if ``positive``.

        The positive map starts at ``lambda = 1`` for a zero output (``softplus(log(e - 1)) = 1``).
        """
        import torch

        if not self.positive:
            return raw
        return torch.nn.functional.softplus(raw + math.log(math.e - 1.0))

    def fields(self, net, mode: str):
        """``(u, derivative, lambda)`` on the data grid, derivatives per physical unit.

        ``mode="autodiff"``: ``u`` is the network output and the derivative comes from Taylor mode
        (``"autodiff_recursive"``: nested reverse mode), both :mod:`chromflow.autodiff`.
        ``mode="mollifier"``: ``u`` and its derivative are
        the network's grid output convolved with the kernel and its derivative.
        """
        from chromflow.mollifier import derivative

        if mode in ("autodiff", "autodiff_recursive"):
            from chromflow.autodiff import derivatives

            method = "recursive" if mode == "autodiff_recursive" else "taylor"
            d = derivatives(net, self.coords, order=1 if self.order == 1 else 2, method=method, channels=(0,))
            u, lam = self.u_mean + self.u_std * d["u"][:, 0], self.parameter(d["u"][:, 1])
            if self.order == 1:
                deriv = self.u_std * d[(1,)][:, 0] / self.scale
            else:
                deriv = self.u_std * d["lap"][:, 0] / self.scale**2
            return u.reshape(self.shape), deriv.reshape(self.shape), lam.reshape(self.shape)
        if mode != "mollifier":
            raise ValueError(f"mode must be one of {ALL_MODES}, got {mode!r}")
        out = net(self.coords_padded)
        g = (self.u_mean + self.u_std * out[:, 0]).reshape(self.full)
        lam = self.parameter(out[:, 1][self.interior]).reshape(self.shape)
        u = derivative(g, 0, self.radius, spacing=self.spacing, boundary="valid", ndim=self.ndim)
        deriv = derivative(g, self.order, self.radius, spacing=self.spacing, boundary="valid", ndim=self.ndim)
        return u, deriv, lam

    def rate(self, net, mode: str):
        """The recovered parameter (second channel) on the data grid, as a float64 array."""
        import torch

        with torch.no_grad():
            lam = self.parameter(net(self.coords)[:, 1]).reshape(self.shape)
        return lam.double().cpu().numpy()


def fit_pinn(data: TaskData, backbone: str = "mlp", mode: str = "mollifier", iterations: int = 2000,
             device="cpu", seed: int = 0, lr: float | None = None, physics_weight: float | None = None,
             radius_cells: float | None = None, optimizer: str | None = None, backbone_options: dict | None = None,
             progress=None) -> FitResult:
    """Fit the Langevin or heat task with a PINN, derivatives by ``mode``.

    Parameters
    ----------
    data : TaskData
        From :func:`make_data` (task ``"langevin"`` or ``"heat"``).
    backbone : {"mlp", "piratenet", "fourier"}
    mode : {"autodiff", "mollifier"}
    iterations : int
        Optimiser steps (the same in both modes).
    device : str or torch.device
    seed : int
        Seeds the network initialisation.
    lr, physics_weight, radius_cells : float, optional
        Default to :data:`DEFAULTS` of the task. ``radius_cells`` is the mollifier support radius
        in grid cells; the autodiff fit uses it only to build the same (padded) coordinates, so
        both modes see identical network inputs.
    optimizer : {"adam", "soap"}, optional
        Default from :data:`DEFAULTS` (the same in both modes).
    backbone_options : dict, optional
        Overrides of :data:`BACKBONE_OPTIONS`.

    Returns
    -------
    FitResult
        ``rate`` has the shape of ``data.observed``.

    Examples
    --------
    >>> data = make_data("langevin", grid=64, noise=0.01)          # doctest: +SKIP
    >>> fit_pinn(data, "mlp", "mollifier", iterations=300).rate.shape  # doctest: +SKIP
    (64,)
    """
    import torch

    from chromflow.models import build_backbone
    from chromflow.physics import langevin_residual, steady_heat_residual
    from chromflow.training import resolve_device, seed_everything, train

    if data.task not in ("langevin", "heat"):
        raise ValueError(f"fit_pinn handles 'langevin' and 'heat', got {data.task!r}")
    if mode not in ALL_MODES:
        raise ValueError(f"mode must be one of {ALL_MODES}, got {mode!r}")
    defaults = DEFAULTS[data.task]
    lr = defaults["lr"] if lr is None else lr
    physics_weight = defaults["physics_weight"] if physics_weight is None else physics_weight
    radius_cells = defaults["radius_cells"] if radius_cells is None else radius_cells
    optimizer = defaults["optimizer"] if optimizer is None else optimizer
    device = resolve_device(device)
    dtype = torch.float32

    var_u = float(np.var(data.observed)) or 1.0
    problem = PinnProblem(data.observed.shape, data.spacing, radius_cells, 1 if data.task == "langevin" else "lap",
                          u_mean=float(np.mean(data.observed)), u_std=math.sqrt(var_u), positive=data.task == "heat",
                          device=device, dtype=dtype)
    seed_everything(seed)
    net = build_backbone(backbone, problem.ndim, 2, **{**BACKBONE_OPTIONS[backbone], **(backbone_options or {})})
    net = net.to(device=device, dtype=dtype)

    obs = torch.as_tensor(data.observed, device=device, dtype=dtype)
    if data.task == "langevin":
        res_scale = var_u  # u and u_t are of the same size over a unit time
    else:
        source = torch.as_tensor(data.arrays["source"], device=device, dtype=dtype)
        res_scale = float(np.mean(data.arrays["source"] ** 2))

    def loss_fn():
        u, deriv, lam = problem.fields(net, mode)
        if data.task == "langevin":
            res = langevin_residual(u, deriv, lam)
        else:
            res = steady_heat_residual(deriv, lam, source)
        data_loss = torch.mean((u - obs) ** 2) / var_u
        phys_loss = torch.mean(res**2) / res_scale
        return data_loss + physics_weight * phys_loss, {"data": data_loss, "physics": phys_loss}

    history = train(loss_fn, net.parameters(), iterations=iterations, optimizer=optimizer, lr=lr,
                    progress=progress, message=f"{data.task} {backbone} {mode}")
    return FitResult(problem.rate(net, mode), history.iterations, history.final_loss, history)


# ---------------------------------------------------------------------------------------------
# chromatin task: through the product's own inverse solver


def chromatin_fields(data: TaskData):
    """The chromatin task's data as :class:`chromflow.ChromatinFields` (spacing in nm).

    Falls back to a plain namespace with the same attributes (all that
    :func:`chromflow.inverse.infer_rates` reads) when :mod:`chromflow.fields` is not importable.
    """
    values = dict(phi_h=data.arrays["phi_h"], phi_e=data.arrays["phi_e"], mask=data.arrays["mask"].astype(bool),
                  spacing=data.spacing, origin=(0.0, 0.0), source=None)
    try:
        from chromflow.fields import ChromatinFields
    except ImportError:
        from types import SimpleNamespace

        return SimpleNamespace(**values)
    return ChromatinFields(**values, settings={})


def fit_chromatin(data: TaskData, backbone: str = "mlp", mode: str = "mollifier", iterations: int = 2000,
                  device="cpu", seed: int = 0, **options) -> FitResult:
    """Recover the rate map of the chromatin task with :func:`chromflow.inverse.infer_rates`.

    ``mode="mollifier"`` calls ``method="pinn"``, ``mode="autodiff"`` calls ``method="autodiff"``
    (Taylor mode), ``"autodiff_recursive"`` the same under
    ``chromflow.autodiff.use_method("recursive")``, with the same backbone, iterations, seed and remaining options (``lr``, ``radius``, ...).
    """
    from chromflow.autodiff import use_method
    from chromflow.inverse import infer_rates

    if mode not in ALL_MODES:
        raise ValueError(f"mode must be one of {ALL_MODES}, got {mode!r}")
    method = {"mollifier": "pinn", "autodiff": "autodiff", "autodiff_recursive": "autodiff"}[mode]
    with use_method("recursive" if mode == "autodiff_recursive" else "taylor"):
        result = infer_rates(chromatin_fields(data), method=method, device=device, seed=seed, backbone=backbone,
                             iterations=iterations, **options)
    losses = (result.loss_history or {}).get("total", [])
    return FitResult(np.asarray(result.rate, np.float64), len(losses) or int(iterations),
                     float(losses[-1]) if losses else float("nan"), result)


def fit(data: TaskData, backbone: str = "mlp", mode: str = "mollifier", iterations: int = 2000, device="cpu",
        seed: int = 0, **options) -> FitResult:
    """Fit any task: :func:`fit_pinn` for Langevin/heat, :func:`fit_chromatin` for chromatin."""
    if data.task == "chromatin":
        return fit_chromatin(data, backbone, mode, iterations, device, seed, **options)
    return fit_pinn(data, backbone, mode, iterations, device, seed, **options)
