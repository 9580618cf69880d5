"""Epigenetic reaction-rate maps from chromatin fields: :func:`infer_rates`.

Three methods share one steady-state residual (:mod:`chromflow.physics.chromatin`)::

    R = lap(mu_d) + 2 (lambda phi_e - phi_h) = 0

* ``"direct"``: closed form ``lambda = (phi_h - lap(mu_d) / 2) / phi_e`` with mollified
  derivatives of the data. Fast; a baseline and the starting level of the networks.
* ``"pinn"``: a coordinate network outputs ``(g_h, g_e, g_lambda)`` on the grid padded by the
  kernel half-width; a :class:`~chromflow.mollifier.MollifierLayer` (``boundary="valid"``)
  turns ``g_h, g_e`` into smooth fields ``u_h, u_e`` with their derivatives;
  ``lambda = softplus(g_lambda)``. Loss: data misfit of ``u_h, u_e`` on the mask plus a weighted
  mean squared residual on the mask. Outside the mask the network is unconstrained, so the
  nucleus edge needs no special kernel treatment.
* ``"autodiff"``: the same network and loss, exact derivatives of the network output (no
  mollification) by forward Taylor mode (:mod:`chromflow.autodiff`): the baseline of the
  Mollifier-Layers paper, in its fastest exact form.

Numerics: derivatives are taken in grid units (one cell = 1) and rescaled to micrometres by
powers of ``fields.spacing_um`` inside the residual; fits run in float64.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._progress import CancelToken, ProgressCallback, check_cancel, report
from .errors import GridError, InputError
from .image import Image
from .io._atomic import atomic_path
from .physics.chromatin import ChromatinModel, FieldDerivatives, rate_from_fields, steady_state_residual
from .training import resolve_device, seed_everything, train

__all__ = ["infer_rates", "RateMapResult", "METHODS", "DEFAULTS", "direct_rates"]

METHODS = ("pinn", "direct", "autodiff")

#: Default settings per method (``infer_rates`` keyword options override them).
DEFAULTS: dict[str, dict[str, Any]] = {
    "direct": {"radius": 3.0, "kernel": "bump"},
    "pinn": {"radius": 3.0, "kernel": "bump", "iterations": 800, "lr": 1e-2, "schedule": "cosine",
             "residual_weight": 1.0, "width": 32, "depth": 3, "blocks": 2, "fourier_scale": 1.0,
             "ensemble": 1, "noise_resample": False, "log_every": 25, "dtype": "float64"},
    "autodiff": {"iterations": 800, "lr": 1e-2, "schedule": "cosine", "residual_weight": 1.0,
                 "width": 32, "depth": 3, "blocks": 2, "fourier_scale": 1.0, "ensemble": 1,
                 "noise_resample": False, "log_every": 25, "dtype": "float64"},
}

_ARRAYS = ("rate", "uncertainty", "residual", "phi_h", "phi_e", "mask")


# ---------------------------------------------------------------------------------------------
# result container


@dataclass
class RateMapResult:
    """A rate map ``lambda(y, x)`` and everything needed to judge and reproduce it.

    Attributes
    ----------
    rate : ndarray (ny, nx) float64
        ``lambda = Gamma_me / Gamma_ac`` (dimensionless); NaN outside the mask.
    uncertainty : ndarray (ny, nx) float64
        Per-pixel standard deviation over the ensemble (NaN outside the mask, and everywhere
        for a single fit or the direct method).
    residual : ndarray (ny, nx) float64
        Steady-state residual of the fitted fields and rate (units of ``Gamma_ac``); NaN outside.
    phi_h, phi_e : ndarray (ny, nx) float64
        Fitted (smoothed) volume fractions; NaN outside the mask.
    mask : ndarray (ny, nx) bool
        Nucleus.
    spacing : float
        Grid cell size, nm.
    origin : tuple of float
        Position (nm) of the centre of cell (0, 0).
    loss_history : dict of str -> list of float
        Loss components per iteration (first ensemble member; empty for direct).
    settings : dict
        Every setting used (JSON-able), to rerun the fit.
    timing : float
        Seconds spent in :func:`infer_rates`.
    device : str
        Where it ran.
    method : str
        ``"pinn"``, ``"direct"`` or ``"autodiff"``.
    source : str or None
        Path of the data the fields came from.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.ones((4, 4), bool)
    >>> r = RateMapResult(rate=np.full((4, 4), 2.0), uncertainty=np.full((4, 4), np.nan),
    ...                   residual=np.zeros((4, 4)), phi_h=np.full((4, 4), 0.3),
    ...                   phi_e=np.full((4, 4), 0.15), mask=m, spacing=50.0)
    >>> s = r.summary()
    >>> s["median_rate"], round(s["nucleus_area_um2"], 6)
    (2.0, 0.04)
    """

    rate: np.ndarray
    uncertainty: np.ndarray
    residual: np.ndarray
    phi_h: np.ndarray
    phi_e: np.ndarray
    mask: np.ndarray
    spacing: float
    origin: tuple = (0.0, 0.0)
    loss_history: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    timing: float = 0.0
    device: str = "cpu"
    method: str = "direct"
    source: str | None = None

    def __post_init__(self):
        for name in _ARRAYS:
            arr = np.asarray(getattr(self, name))
            setattr(self, name, arr.astype(bool) if name == "mask" else arr.astype(np.float64))
        self.spacing = float(self.spacing)
        self.origin = tuple(float(o) for o in self.origin)

    # -- derived ------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Scalar summary (one row of ``summary.csv``).

        Keys: ``mean_rate``, ``median_rate``, ``std_rate``, ``p05_rate``, ``p95_rate``,
        ``mean_uncertainty``, ``rms_residual``, ``heterochromatin_fraction`` (share of the
        chromatin that is heterochromatin, ``sum phi_h / sum (phi_h + phi_e)`` on the mask),
        ``nucleus_area_um2``, ``n_pixels``, ``method``, ``time_s``, ``device``.
        """
        m = self.mask
        lam = self.rate[m]
        lam = lam[np.isfinite(lam)]
        unc = self.uncertainty[m]
        res = self.residual[m]
        h, e = self.phi_h[m], self.phi_e[m]
        stat = (lambda f, a: float(f(a)) if a.size else float("nan"))
        total = float(np.nansum(h) + np.nansum(e))
        return {
            "mean_rate": stat(np.mean, lam),
            "median_rate": stat(np.median, lam),
            "std_rate": stat(np.std, lam),
            "p05_rate": stat(lambda a: np.percentile(a, 5), lam),
            "p95_rate": stat(lambda a: np.percentile(a, 95), lam),
            "mean_uncertainty": float(np.nanmean(unc)) if np.isfinite(unc).any() else float("nan"),
            "rms_residual": float(np.sqrt(np.nanmean(res ** 2))) if np.isfinite(res).any() else float("nan"),
            "heterochromatin_fraction": float(np.nansum(h) / total) if total > 0 else float("nan"),
            "nucleus_area_um2": float(m.sum() * (self.spacing / 1000.0) ** 2),
            "n_pixels": int(m.sum()),
            "method": self.method,
            "time_s": float(self.timing),
            "device": self.device,
        }

    def to_image(self, name: str = "rate") -> Image:
        """One map as a :class:`chromflow.Image` (pixel size and origin in nm).

        ``name``: ``"rate"``, ``"uncertainty"``, ``"residual"``, ``"phi_h"``, ``"phi_e"`` or ``"mask"``.
        """
        if name not in _ARRAYS:
            raise ValueError(f"name must be one of {list(_ARRAYS)}, got {name!r}")
        return Image(getattr(self, name).copy(), pixel_size=self.spacing, origin=self.origin, name=name,
                     source=self.source, metadata={"method": self.method, "quantity": name})

    # -- files --------------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"spacing": self.spacing, "origin": list(self.origin), "loss_history": self.loss_history,
                "settings": self.settings, "timing": self.timing, "device": self.device,
                "method": self.method, "source": self.source, "format": "chromflow.RateMapResult", "version": 1}

    def save(self, path) -> None:
        """Write to ``.npz`` (default) or ``.h5``/``.hdf5``, atomically.

        Arrays are stored as they are (float64, bool); the rest as one JSON string.
        """
        path = os.fspath(path)
        suffix = os.path.splitext(path)[1].lower()
        meta = json.dumps(_jsonable(self._meta()))
        with atomic_path(path) as tmp:
            if suffix in (".h5", ".hdf5"):
                import h5py

                with h5py.File(tmp, "w") as f:
                    for name in _ARRAYS:
                        f.create_dataset(name, data=getattr(self, name), compression="gzip")
                    f.attrs["meta"] = meta
            else:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, meta=np.array(meta), **{n: getattr(self, n) for n in _ARRAYS})

    @classmethod
    def load(cls, path) -> "RateMapResult":
        """Read a file written by :meth:`save`."""
        path = os.fspath(path)
        suffix = os.path.splitext(path)[1].lower()
        try:
            if suffix in (".h5", ".hdf5"):
                import h5py

                with h5py.File(path, "r") as f:
                    arrays = {n: f[n][()] for n in _ARRAYS}
                    meta = json.loads(f.attrs["meta"])
            else:
                with np.load(path, allow_pickle=False) as z:
                    arrays = {n: z[n] for n in _ARRAYS}
                    meta = json.loads(str(z["meta"]))
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"not a chromflow rate-map file ({exc})", path) from exc
        if meta.get("format") != "chromflow.RateMapResult":
            raise InputError("not a chromflow rate-map file (missing format tag)", path)
        return cls(**arrays, spacing=meta["spacing"], origin=tuple(meta["origin"]),
                   loss_history=meta["loss_history"], settings=meta["settings"], timing=meta["timing"],
                   device=meta["device"], method=meta["method"], source=meta["source"])


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else obj
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


# ---------------------------------------------------------------------------------------------
# input checks


def _unpack(fields):
    """(phi_h, phi_e, mask, spacing_nm, origin, source) from a ChromatinFields-like object."""
    try:
        phi_h = np.asarray(fields.phi_h, dtype=np.float64)
        phi_e = np.asarray(fields.phi_e, dtype=np.float64)
        mask = np.asarray(fields.mask, dtype=bool)
        spacing = float(fields.spacing)
    except AttributeError as exc:
        raise InputError(f"fields must have phi_h, phi_e, mask and spacing (a ChromatinFields): {exc}") from None
    source = getattr(fields, "source", None)
    origin = tuple(float(o) for o in getattr(fields, "origin", (0.0, 0.0)))
    if phi_h.ndim != 2 or phi_h.shape != phi_e.shape or mask.shape != phi_h.shape:
        raise InputError(f"phi_h {phi_h.shape}, phi_e {phi_e.shape} and mask {mask.shape} must be equal 2D shapes",
                         source)
    if not np.isfinite(spacing) or spacing <= 0:
        raise InputError(f"grid spacing must be a positive number of nm, got {spacing}", source)
    if not mask.any():
        raise GridError("the nucleus mask is empty", source)
    for name, arr in (("phi_h", phi_h), ("phi_e", phi_e)):
        if not np.all(np.isfinite(arr[mask])):
            raise InputError(f"{name} has NaN or infinite values inside the nucleus mask", source)
    return phi_h, phi_e, mask, spacing, origin, source


def _check_mask_fits(mask, halo: int, source, method: str):
    # the fitted fields need a neighbourhood of the kernel's size inside the nucleus: demand at
    # least one pixel whose whole kernel footprint lies inside the mask
    from scipy import ndimage

    inner = ndimage.binary_erosion(mask, structure=np.ones((2 * halo + 1, 2 * halo + 1), bool))
    if not inner.any():
        raise GridError(f"nucleus mask ({int(mask.sum())} pixels) is too small for a mollifier kernel of "
                        f"half-width {halo} cells ({method}); use a finer grid or a smaller radius", source)
    return inner


# ---------------------------------------------------------------------------------------------
# derivatives -> residual


def _derivatives_from_layer(out: dict, index: int, spacing_um: float) -> FieldDerivatives:
    s = spacing_um
    return FieldDerivatives(out["u"][index], out[(1, 0)][index] / s, out[(0, 1)][index] / s,
                            out["lap"][index] / s ** 2, out["biharmonic"][index] / s ** 4)


def _mollifier(radius, kernel, boundary, mask=None):
    from .mollifier.layer import MollifierLayer

    return MollifierLayer(radius, orders=("u", (1, 0), (0, 1), "lap", "biharmonic"), ndim=2, kernel=kernel,
                          boundary=boundary, mask=mask)


def direct_rates(phi_h, phi_e, mask, spacing_um: float, radius: float = 3.0, kernel: str = "bump",
                 model: ChromatinModel = ChromatinModel()):
    """Closed-form rate from mollified derivatives of the data (numpy, float64).

    The fields are extended across the mask edge by point reflection (``boundary="mask"`` of
    the mollifier), so pixels within ``radius`` of the edge get biased derivatives.

    Returns
    -------
    rate, residual_fields : ndarray, tuple of FieldDerivatives
        ``rate`` is NaN outside the mask.
    """
    layer = _mollifier(radius, kernel, "mask", mask)
    with torch.no_grad():
        out = layer(torch.as_tensor(np.stack([phi_h, phi_e]), dtype=torch.float64))
    h = FieldDerivatives(*[v.numpy() for v in _derivatives_from_layer(out, 0, spacing_um)])
    e = FieldDerivatives(*[v.numpy() for v in _derivatives_from_layer(out, 1, spacing_um)])
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = rate_from_fields(h, e, model)
    lam = np.where(mask, lam, np.nan)
    return lam, (h, e)


# ---------------------------------------------------------------------------------------------
# the network fit


class _FieldNet(torch.nn.Module):
    """Backbone + affine output scaling: raw outputs O(1), fields at the data's level."""

    def __init__(self, backbone, centre, scale, lam0):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float64))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float64))
        self.lam0 = float(lam0)

    def forward(self, coords):
        raw = self.backbone(coords)
        fields = self.centre.to(raw.dtype) + self.scale.to(raw.dtype) * raw[:, :2]
        # softplus keeps lambda > 0; the offset starts it at the data's typical level
        lam = F.softplus(raw[:, 2:3] + self.lam0)
        return torch.cat([fields, lam], dim=1)


def _inverse_softplus(y: float) -> float:
    return float(y + math.log(-math.expm1(-y)))


def _fit_once(method, phi_h, phi_e, mask, spacing_um, opts, model, seed, device, dtype, progress, cancel,
              member, n_members, lam0):
    from .models import build_backbone, grid_coordinates

    seed_everything(seed)
    shape = phi_h.shape
    m = torch.as_tensor(mask, device=device)
    data = torch.as_tensor(np.stack([phi_h, phi_e]), dtype=dtype, device=device)
    centre = np.array([phi_h[mask].mean(), phi_e[mask].mean()])
    scale = np.maximum(np.array([phi_h[mask].std(), phi_e[mask].std()]), 1e-3 * np.abs(centre) + 1e-12)
    kw = {"width": opts["width"]}
    if opts["backbone"] == "mlp":
        kw["depth"] = opts["depth"]
    elif opts["backbone"] == "piratenet":
        kw.update(blocks=opts["blocks"], fourier_scale=opts["fourier_scale"])
    else:
        kw.update(depth=opts["depth"], fourier_scale=opts["fourier_scale"])
    backbone = build_backbone(opts["backbone"], 2, 3, **kw)
    net = _FieldNet(backbone, centre, scale, _inverse_softplus(lam0)).to(device=device, dtype=dtype)
    w_data = torch.as_tensor(1.0 / scale ** 2, dtype=dtype, device=device)[:, None]
    # residual scale: the size of each reaction term, so the weight is O(1) whatever the data
    r_scale = 2.0 * float(phi_h[mask].mean())
    n_in = float(mask.sum())

    if method == "pinn":
        layer = _mollifier(opts["radius"], opts["kernel"], "valid").to(device)
        pad = layer.halo[0]
        coords, _ = grid_coordinates(shape, pad=pad, device=device, dtype=dtype)
        full = tuple(n + 2 * pad for n in shape)

        def fields_and_rate():
            out = net(coords).T.reshape(3, *full)
            d = layer(out[:2])
            h = _derivatives_from_layer(d, 0, spacing_um)
            e = _derivatives_from_layer(d, 1, spacing_um)
            lam = out[2, pad:pad + shape[0], pad:pad + shape[1]]
            return h, e, lam
    else:
        coords, half = grid_coordinates(shape, pad=0, device=device, dtype=dtype)
        # d/d(um) = d/d(normalised) / (half-extent in cells * um per cell)
        to_um = 1.0 / (half * spacing_um)

        def fields_and_rate():
            return _autodiff_derivatives(net, coords, to_um, shape)

    def loss_fn():
        h, e, lam = fields_and_rate()
        misfit = torch.stack([h.value, e.value]) - data
        data_loss = ((misfit ** 2 * m) .sum(dim=(1, 2)) / n_in * w_data[:, 0]).sum()
        res = steady_state_residual(h, e, lam, model) / r_scale
        res_loss = (res ** 2 * m).sum() / n_in
        total = data_loss + opts["residual_weight"] * res_loss
        return total, {"data": data_loss.detach(), "residual": res_loss.detach()}

    def member_progress(done, total, msg):
        report(progress, member * total + done, n_members * total, msg)

    history = train(loss_fn, net.parameters(), iterations=opts["iterations"], optimizer=opts["optimizer"],
                    lr=opts["lr"], schedule=opts["schedule"], progress=member_progress if progress else None,
                    cancel=cancel, log_every=opts["log_every"],
                    message=f"{method} fit {member + 1}/{n_members}")
    h, e, lam = fields_and_rate()
    res = steady_state_residual(h, e, lam, model)
    as_np = (lambda t: t.detach().to("cpu", torch.float64).numpy())
    return as_np(lam), as_np(res), as_np(h.value), as_np(e.value), history


def _autodiff_derivatives(net, coords, to_um, shape):
    """Both fields (value, d/dy, d/dx, lap, bilap) and the rate by :mod:`chromflow.autodiff` (Taylor mode).

    The derivatives of the backbone's raw outputs are exact (forward jets); the fields are
    ``centre + scale * raw`` (so their derivatives scale by ``scale``) and the rate is
    ``softplus(raw + lam0)`` (value only), as in ``_FieldNet.forward``.
    """
    from .autodiff import derivatives

    d = derivatives(net.backbone, coords, order=4, channels=(0, 1))
    raw = d["u"]
    scale = net.scale.to(raw.dtype)
    fields = net.centre.to(raw.dtype) + scale * raw[:, :2]
    r = (lambda t: t.reshape(shape))
    out = [FieldDerivatives(r(fields[:, c]), r(d[(1, 0)][:, c] * scale[c]) * to_um,
                            r(d[(0, 1)][:, c] * scale[c]) * to_um, r(d["lap"][:, c] * scale[c]) * to_um ** 2,
                            r(d["biharmonic"][:, c] * scale[c]) * to_um ** 4) for c in range(2)]
    lam = F.softplus(raw[:, 2] + net.lam0).reshape(shape)
    return out[0], out[1], lam


# ---------------------------------------------------------------------------------------------
# public entry point


def infer_rates(fields, method: str = "pinn", device="auto", seed: int = 0, iterations: int | None = None,
                radius: float | None = None, backbone: str = "mlp", optimizer: str = "adam",
                ensemble: int | None = None, progress: ProgressCallback = None, cancel: CancelToken = None,
                model: ChromatinModel = ChromatinModel(), **options) -> RateMapResult:
    """Infer the epigenetic rate map ``lambda(y, x) = Gamma_me / Gamma_ac`` from chromatin fields.

    Parameters
    ----------
    fields : ChromatinFields
        ``phi_h``, ``phi_e`` (volume fractions on a ``(ny, nx)`` grid), ``mask`` (nucleus),
        ``spacing`` (nm per cell), ``origin`` (nm), ``source``.
    method : {"pinn", "direct", "autodiff"}
        Mollified physics-informed network (default), closed form on mollified data
        derivatives, or the same network with autograd derivatives (the paper's baseline).
    device : {"auto", "cpu", "cuda"} or torch.device
        ``"auto"`` takes CUDA when available. The direct method always runs on CPU.
    seed : int
        Seed of the first ensemble member (member ``k`` uses ``seed + k``).
    iterations : int, optional
        Optimiser steps per fit (default 800).
    radius : float, optional
        Mollifier support radius in grid cells (default 3). Larger smooths noise more and biases
        fine structure more; see docs/inference.md.
    backbone : {"mlp", "piratenet", "fourier"}
        Coordinate network.
    optimizer : {"adam", "soap"}
        Optimiser of :func:`chromflow.training.train`.
    ensemble : int, optional
        Number of fits with different seeds (default 1); their per-pixel standard deviation is
        the ``uncertainty`` map and their mean the ``rate``.
    progress, cancel
        The chromflow progress/cancel protocol.
    model : ChromatinModel
        Model parameters (``phi_max``, interface length in um).
    **options
        ``lr``, ``schedule``, ``residual_weight`` (weight of the normalised residual against the
        normalised data misfit), ``width``, ``depth`` (mlp, fourier), ``blocks`` (piratenet),
        ``fourier_scale``, ``kernel`` (mollifier profile), ``noise_resample`` (members > 0 fit
        the data plus Gaussian noise of the first fit's misfit level: a parametric bootstrap),
        ``log_every``, ``dtype`` ("float64" or "float32").

    Returns
    -------
    RateMapResult

    Raises
    ------
    ValueError
        Unknown method, device, backbone, optimizer or option.
    GridError
        Mask too small for the kernel.
    InputError
        Bad fields; non-positive ``phi_e`` inside the mask (direct).
    CancelledError
        ``cancel`` was set.

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> m = np.zeros((32, 32), bool); m[4:28, 4:28] = True
    >>> f = SimpleNamespace(phi_h=np.full((32, 32), 0.3), phi_e=np.full((32, 32), 0.2), mask=m,
    ...                     spacing=50.0, origin=(0.0, 0.0), source=None)
    >>> r = infer_rates(f, method="direct")
    >>> round(float(np.nanmedian(r.rate)), 9)  # uniform fields: lambda = phi_h / phi_e
    1.5
    """
    start = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    dev = resolve_device(device)
    phi_h, phi_e, mask, spacing, origin, source = _unpack(fields)
    spacing_um = spacing / 1000.0
    opts = dict(DEFAULTS[method])
    unknown = set(options) - set(opts) - {"radius", "kernel"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for method {method!r}; "
                         f"known: {sorted(set(opts) | {'radius', 'kernel'})}")
    opts.update(options)
    if radius is not None:
        opts["radius"] = float(radius)
    opts.setdefault("radius", DEFAULTS["direct"]["radius"])
    opts.setdefault("kernel", DEFAULTS["direct"]["kernel"])
    if iterations is not None:
        opts["iterations"] = int(iterations)
    if ensemble is not None:
        opts["ensemble"] = int(ensemble)
    opts.update(backbone=str(backbone).lower(), optimizer=str(optimizer).lower())
    from .models import BACKBONES
    from .training import OPTIMIZERS

    if opts["backbone"] not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    if opts["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    from .mollifier.kernels import halo as kernel_halo

    halo = kernel_halo(opts["radius"])
    settings = {"method": method, "seed": int(seed), "device": str(dev), **opts,
                "model": {"phi_max": model.phi_max, "length_um": model.length_um}, "spacing_nm": spacing}
    if method != "autodiff":
        _check_mask_fits(mask, halo, source, method)
    elif mask.sum() < 4:
        raise GridError(f"nucleus mask of {int(mask.sum())} pixels is too small to fit", source)
    check_cancel(cancel, "rate inference")

    if method == "direct" or method == "pinn":
        if np.any(phi_e[mask] <= 0) and method == "direct":
            raise InputError("phi_e must be > 0 everywhere inside the nucleus mask for the direct method "
                             "(lambda = ... / phi_e)", source)

    if method == "direct":
        report(progress, 0, 1, "direct rate estimate")
        lam, (h, e) = direct_rates(phi_h, phi_e, mask, spacing_um, opts["radius"], opts["kernel"], model)
        res = steady_state_residual(h, e, np.nan_to_num(lam), model)
        nan = np.full(mask.shape, np.nan)
        report(progress, 1, 1, "direct rate estimate")
        return RateMapResult(rate=lam, uncertainty=nan, residual=np.where(mask, res, np.nan),
                             phi_h=np.where(mask, h.value, np.nan), phi_e=np.where(mask, e.value, np.nan),
                             mask=mask, spacing=spacing, origin=origin, loss_history={},
                             settings=_jsonable(settings), timing=time.perf_counter() - start, device="cpu",
                             method=method, source=source)

    dtype = {"float64": torch.float64, "float32": torch.float32}.get(str(opts["dtype"]))
    if dtype is None:
        raise ValueError(f"dtype must be 'float64' or 'float32', got {opts['dtype']!r}")
    ratio = phi_h[mask] / np.maximum(phi_e[mask], 1e-6)
    # local reaction balance (lap mu averages out): lambda ~ phi_h / phi_e sets the starting level
    lam0 = float(np.clip(np.median(ratio), 1e-3, 1e3))
    n_members = max(int(opts["ensemble"]), 1)
    rates, results, first_history = [], None, None
    noise_sigma = None
    rng = np.random.default_rng(seed)
    for k in range(n_members):
        h_data, e_data = phi_h, phi_e
        if k > 0 and opts["noise_resample"] and noise_sigma is not None:
            h_data = phi_h + noise_sigma[0] * rng.standard_normal(phi_h.shape)
            e_data = phi_e + noise_sigma[1] * rng.standard_normal(phi_e.shape)
        lam, res, hf, ef, hist = _fit_once(method, h_data, e_data, mask, spacing_um, opts, model, seed + k, dev,
                                           dtype, progress, cancel, k, n_members, lam0)
        rates.append(lam)
        if k == 0:
            results, first_history = (res, hf, ef), hist
            noise_sigma = (np.std((phi_h - hf)[mask]), np.std((phi_e - ef)[mask]))
    stack = np.stack(rates)
    rate = stack.mean(axis=0)
    uncertainty = stack.std(axis=0, ddof=1) if n_members > 1 else np.full(mask.shape, np.nan)
    res, hf, ef = results
    if n_members > 1:
        # the residual of the reported (mean) rate with the first member's fields
        res = res + 2 * (rate - rates[0]) * ef
    out = (lambda a: np.where(mask, a, np.nan))
    settings["training"] = {"iterations_run": first_history.iterations, "stop_reason": first_history.stop_reason,
                            "final_loss": first_history.final_loss}
    return RateMapResult(rate=out(rate), uncertainty=out(uncertainty), residual=out(res), phi_h=out(hf),
                         phi_e=out(ef), mask=mask, spacing=spacing, origin=origin,
                         loss_history=first_history.losses, settings=_jsonable(settings),
                         timing=time.perf_counter() - start, device=str(dev), method=method, source=source)
