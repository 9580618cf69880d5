"""The physics-informed fit behind ``method="pinn"`` / ``"autodiff"``: :func:`fit_fields`.

Loss (per fit)::

    L = mean_fit cells[(u_h - d_h)^2 / var_h + (u_e - d_e)^2 / var_e]
        + w_r * mean_mask[(R(u_h, u_e, lambda) / r_scale)^2]

* the data term is weighted by each cell's noise variance (:mod:`chromflow.inverse.noise`), so
  it is ~1 per cell at the noise level whatever the counts;
* it runs over the *fit cells*: the nucleus minus its partial-volume edge band and minus a
  random 10 % of *held-out* cells;
* the residual ``R = lap(mu_d) + 2 (lambda phi_e - phi_h)`` runs over the whole nucleus: in the
  edge band the fields are unobserved but the physics still holds;
* the stopping point is chosen from the data: every ``check_every`` steps the noise-weighted
  misfit on the held-out cells is measured, the parameters with the lowest one are kept, and
  the fit stops once it has not improved for ``patience`` checks. Early stopping is the
  regulariser of a coordinate network (its spectral bias fits the smooth signal before the
  noise); held-out cells tell when the noise starts to be fitted.
"""
from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .._progress import check_cancel, report
from ..physics.chromatin import ChromatinModel, FieldDerivatives, steady_state_residual
from ..training import make_optimizer, seed_everything
from .direct import ORDERS, continue_nearest, derivatives_um, mollifier_layer

__all__ = ["FieldNet", "GridFields", "FitOutput", "fit_fields", "inverse_softplus", "StopSignal"]

_INIT_LOCK = threading.Lock()


class StopSignal:
    """Tells a following fit where to stop: at the step the leading fit chose (``stop_at``)."""

    def __init__(self):
        self.stop_at = None          # set once, by the leading fit (an int assignment is atomic)
        self.done = threading.Event()

    def set(self, iteration: int):
        self.stop_at = int(iteration)
        self.done.set()

    def abandon(self):
        """A fit that failed or was cancelled before choosing a step: let the other fit end
        (``stop_at = -1``); nothing when a step is set already."""
        if self.stop_at is None:
            self.set(-1)


#: with ``validate`` (a fit to one half of the data, checked against the other half) the step
#: chosen for the full data is this many times the half's best step: a half holds twice the
#: noise variance, so it starts to fit noise earlier. Chosen on the held-out simulator's
#: rendered tuning cases (seeds 100-101) among 1, 1.5, 2 and 3 (docs/inference.md, "Stopping")
VALIDATION_STEP_FACTOR = 2.0


def inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y`` (y > 0)."""
    return float(y + math.log(-math.expm1(-y)))


class FieldNet(torch.nn.Module):
    """Coordinate backbone + affine output scaling: ``coords -> (phi_h, phi_e, lambda)``.

    Raw outputs are O(1); the fields come out at the data's level and ``lambda`` through a
    softplus (kept > 0) started at the data's typical ``phi_h / phi_e``.
    """

    def __init__(self, backbone, centre, scale, lam0: float):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float64))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float64))
        self.lam_offset = inverse_softplus(lam0)

    def split(self, coords):
        """``(fields (N, 2), lambda (N,))``: the outputs apart, without the copy of a concatenation."""
        raw = self.backbone(coords)
        fields = self.centre.to(raw.dtype) + self.scale.to(raw.dtype) * raw[:, :2]
        return fields, F.softplus(raw[:, 2] + self.lam_offset)

    def forward(self, coords):
        fields, lam = self.split(coords)
        return torch.cat([fields, lam[:, None]], dim=1)


class GridFields(torch.nn.Module):
    """Free values on the grid (no network): ``g_h, g_e`` on the padded grid, ``lambda`` per cell.

    The alternative parametrisation to a coordinate network: as many parameters as cells, no
    spectral bias. The mollifier still makes the fields smooth and gives their derivatives;
    regularisation comes from the held-out stopping alone.
    """

    def __init__(self, start, shape, pad: int, centre, scale, lam0: float):
        super().__init__()
        centre = torch.as_tensor(centre, dtype=torch.float64)[:, None, None]
        scale = torch.as_tensor(scale, dtype=torch.float64)[:, None, None]
        self.register_buffer("centre", centre)
        self.register_buffer("scale", scale)
        self.g = torch.nn.Parameter((torch.as_tensor(start, dtype=torch.float64) - centre) / scale)
        self.s = torch.nn.Parameter(torch.zeros(shape, dtype=torch.float64))
        self.lam_offset = inverse_softplus(lam0)

    def forward(self):
        return self.centre + self.scale * self.g, F.softplus(self.s + self.lam_offset)


@dataclass
class FitOutput:
    """One fit: rate, residual, fitted fields (numpy, float64, NaN outside the nucleus), the loss
    history and the state."""

    rate: np.ndarray
    residual: np.ndarray
    phi_h: np.ndarray
    phi_e: np.ndarray
    losses: dict
    best_iteration: int
    iterations_run: int
    stop_reason: str
    held_out_misfit: float
    #: the rate the fitted fields imply in closed form, ``(u_h - lap(mu_d) / 2) / u_e`` =
    #: ``rate - residual / (2 u_e)``: the same fit read through its fields instead of its rate
    #: channel (see :func:`chromflow.inverse.closed_form_weight`)
    closed: np.ndarray = field(repr=False, default=None)
    state: dict = field(repr=False, default_factory=dict)
    #: iteration -> ``(2, n)`` tensor of ``rate`` and ``closed`` on the nucleus cells at that check
    #: (only with ``keep_checkpoints``); :meth:`checkpoint_maps` turns one into grids
    checkpoints: dict = field(repr=False, default_factory=dict)
    cells: np.ndarray = field(repr=False, default=None)

    def checkpoint_maps(self, iteration: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rate, closed)`` grids (NaN outside the nucleus) kept at a check."""
        values = self.checkpoints[iteration]
        return _on_grid(values[0], self.cells, self.rate.shape), _on_grid(values[1], self.cells, self.rate.shape)


def _padded_start(phi, region, pad):
    # nearest-region continuation of the data outside the region, then edge padding
    return np.pad(continue_nearest(phi, region), pad, mode="edge")


def fit_fields(method, data, weights, fit_cells, held_out, mask, spacing_um, opts, model: ChromatinModel,
               seed: int, device, dtype, progress=None, cancel=None, progress_span=(0, 1, 1),
               init_state=None, iterations=None, message="pinn fit", keep_checkpoints=False,
               stop_event=None, validate=None, follow=None) -> FitOutput:
    """Fit fields and rate to ``data`` (see the module docstring).

    Parameters
    ----------
    method : {"pinn", "autodiff"}
    data : (2, ny, nx) ndarray
        ``phi_h``, ``phi_e``.
    weights : (2, ny, nx) ndarray
        Inverse noise variance per cell and channel.
    fit_cells, held_out, mask : (ny, nx) bool ndarray
        Cells of the data term, of the stopping check, and of the residual.
    spacing_um : float
    opts : dict
        Settings of :data:`chromflow.inverse.DEFAULTS` merged with the user's.
    model : ChromatinModel
    seed : int
    device, dtype
    progress, cancel
        Progress protocol; ``progress_span = (start, total, steps)`` maps this fit's steps into
        a larger bar.
    init_state : dict, optional
        A previous fit's ``state`` to start from (warm start).
    iterations : int, optional
        Override ``opts["iterations"]``; with ``init_state`` the held-out stopping still runs.
    keep_checkpoints : bool
        Keep the rate map at every check (``FitOutput.checkpoints``), so that a companion fit
        run at the same time can be read at the step another fit chose.
    stop_event : StopSignal, optional
        Shared by two fits run at the same time: the leading one sets it to its chosen step;
        the following one stops once it has passed that step.
    validate : (2, ny, nx) ndarray, optional
        The other half of a split of the data (noise independent of ``data``'s): the step is
        :data:`VALIDATION_STEP_FACTOR` times the step of the least noise-weighted misfit to it
        on the fit cells (instead of the held-out cells' choice); the fit runs on to that step.
    follow : bool, optional
        Follow ``stop_event`` (default: when there are no held-out cells). A follower keeps its
        state at every check, waits for the leader and returns its state at the leader's step.
    """
    from ..models import build_backbone, grid_coordinates

    shape = data.shape[1:]
    iterations = int(opts["iterations"] if iterations is None else iterations)
    t = (lambda a: torch.as_tensor(a, dtype=dtype, device=device))
    # everything pointwise (data term, residual) runs on the nucleus cells only, as vectors
    cells = np.flatnonzero(mask)
    on_cells = (lambda a: np.asarray(a).reshape(*np.shape(a)[:-2], -1)[..., cells])
    d = t(on_cells(data))
    w = t(on_cells(weights))
    m_fit, m_hold = t(on_cells(fit_cells)), t(on_cells(held_out))
    n_fit = max(float(fit_cells.sum()), 1.0)
    n_hold = float(held_out.sum())
    n_res = float(mask.sum())
    region = fit_cells | held_out
    centre = np.array([data[0][region].mean(), data[1][region].mean()])
    scale = np.maximum(np.array([data[0][region].std(), data[1][region].std()]), 1e-3 * np.abs(centre) + 1e-12)
    ratio = data[0][region] / np.maximum(data[1][region], 1e-6)
    lam0 = float(np.clip(np.median(ratio), 1e-3, 1e3))
    # residual scale: the size of each reaction term, so w_r is O(1) whatever the data
    r_scale = 2.0 * float(data[0][region].mean())
    param = opts["backbone"]
    cells_t = torch.as_tensor(cells, device=device)

    # seeding and drawing the start are one step: fits run in parallel threads share torch's
    # global generator
    with _INIT_LOCK:
        seed_everything(seed)
        if method == "pinn":
            layer = mollifier_layer(opts["radius"], opts["kernel"], "valid").to(device)
            pad = layer.halo[0]
            full = tuple(n + 2 * pad for n in shape)

            def on_nucleus(dd, at=cells_t):
                # the layer's (2, ny, nx) outputs, gathered on the nucleus cells in one call
                stacked = torch.stack([dd[k] for k in ORDERS]).reshape(len(ORDERS) * 2, -1)
                v = stacked.index_select(1, at).unbind(0)
                return derivatives_um(v[0::2], spacing_um), derivatives_um(v[1::2], spacing_um)

            if param == "grid":
                start = np.stack([_padded_start(data[c], region, pad) for c in range(2)])
                net = GridFields(start, shape, pad, centre, scale, lam0).to(device=device, dtype=dtype)

                def fields_and_rate():
                    g, lam = net()
                    h, e = on_nucleus(layer(g))
                    return h, e, lam.reshape(-1).index_select(0, cells_t)
            else:
                net = _network(param, opts, centre, scale, lam0, build_backbone).to(device=device, dtype=dtype)
                coords, _ = grid_coordinates(shape, pad=pad, device=device, dtype=dtype)
                # the network is evaluated only where its values reach the nucleus: the mask
                # widened by the kernel's halo (about half of a typical grid); elsewhere the
                # padded grid holds a constant (finite) start value the loss never sees
                within = _within_halo(mask, pad)
                needed_np = np.flatnonzero(within)
                coords = coords.index_select(0, torch.as_tensor(needed_np, device=device))
                iy, ix = np.divmod(cells, shape[1])
                rate_rows = torch.as_tensor(np.searchsorted(needed_np, (iy + pad) * full[1] + ix + pad), device=device)
                background = torch.as_tensor([[centre[0]], [centre[1]]], dtype=dtype, device=device)
                # the convolutions run on the nucleus's bounding box (plus the halo) only: the
                # valid outputs there read exactly the same inputs as on the whole padded grid,
                # at ~40 % less work for a nucleus filling half the grid
                (y0, y1), (x0, x1) = [(int(a.min()), int(a.max()) + 1) for a in np.nonzero(within)]
                box = (y1 - y0, x1 - x0)
                needed = torch.as_tensor(np.flatnonzero(within[y0:y1, x0:x1]), device=device)
                # valid output (r, c) of the box is data cell (y0 + r, x0 + c)
                box_cells = torch.as_tensor((iy - y0) * (box[1] - 2 * pad) + ix - x0, device=device)
                n_box = box[0] * box[1]

                def fields_and_rate():
                    fields, lam = net.split(coords)
                    # (M, 2) fields on the needed cells -> (2, box), contiguous for the convolutions
                    g = background.expand(2, n_box).index_copy(1, needed, fields.T)
                    h, e = on_nucleus(layer(g.reshape(2, *box)), box_cells)
                    return h, e, lam.index_select(0, rate_rows)
        else:
            if param == "grid":
                raise ValueError("backbone='grid' needs the mollifier (method='pinn'): a grid has no autograd derivatives")
            from ..autodiff import derivatives

            net = _network(param, opts, centre, scale, lam0, build_backbone).to(device=device, dtype=dtype)
            coords, half = grid_coordinates(shape, pad=0, device=device, dtype=dtype)
            to_um = 1.0 / (half * spacing_um)
            # pointwise derivatives: the network is evaluated on the nucleus cells only
            coords = coords.index_select(0, cells_t)

            def fields_and_rate():
                # exact derivatives of the backbone's raw outputs (forward Taylor mode, the fastest
                # exact baseline); the fields are centre + scale * raw, the rate softplus(raw + offset)
                dv = derivatives(net.backbone, coords, order=4, channels=(0, 1))
                raw = dv["u"]
                sc = net.scale.to(raw.dtype)
                out = [FieldDerivatives(net.centre.to(raw.dtype)[c] + sc[c] * raw[:, c],
                                        dv[(1, 0)][:, c] * sc[c] * to_um, dv[(0, 1)][:, c] * sc[c] * to_um,
                                        dv["lap"][:, c] * sc[c] * to_um ** 2,
                                        dv["biharmonic"][:, c] * sc[c] * to_um ** 4) for c in range(2)]
                return out[0], out[1], F.softplus(raw[:, 2] + net.lam_offset)

    if init_state is not None:
        net.load_state_dict(init_state)

    def misfit(h, e, target=d):
        return (torch.stack([h.value, e.value]) - target) ** 2 * w

    follows = stop_event is not None and (not n_hold if follow is None else bool(follow))
    other_half = None if validate is None else t(on_cells(validate))
    chosen = None                 # with ``validate``: the step the full data will use

    params = [p for p in net.parameters() if p.requires_grad]
    opt = make_optimizer(opts["optimizer"], params, opts["lr"])
    check_every = max(int(opts["check_every"]), 1)
    patience = int(opts["patience"])
    start_step, total_steps, bar_total = progress_span
    losses = {"total": [], "data": [], "residual": [], "held_out": []}
    best = (math.inf, None, 0)
    since_best, stop_reason, it = 0, "iterations", 0
    checkpoints, states, held_at = {}, {}, {}
    for it in range(iterations):
        check_cancel(cancel, message)
        if follows and stop_event.stop_at is not None and it > stop_event.stop_at:
            stop_reason = "stopped with its companion fit"
            break
        if not follows and stop_event is not None and chosen is None and (stop_event.stop_at or 0) < 0:
            stop_reason = "its companion fit failed"
            break
        if chosen is not None and it > chosen:
            break
        frac = it / max(iterations, 1)
        lr = opts["lr"] * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        h, e, lam = fields_and_rate()
        mis = misfit(h, e)
        data_loss = (mis * m_fit).sum() / n_fit
        res = steady_state_residual(h, e, lam, model) / r_scale
        res_loss = (res ** 2).sum() / n_res
        total = data_loss + opts["residual_weight"] * res_loss
        if not torch.isfinite(total):
            raise FloatingPointError(f"{message}: loss became {float(total)} at iteration {it}; lower the "
                                     "learning rate")
        total.backward()
        opt.step()
        losses["total"].append(float(total.detach()))
        losses["data"].append(float(data_loss.detach()))
        losses["residual"].append(float(res_loss.detach()))
        at_check = it % check_every == 0 or it == iterations - 1
        if keep_checkpoints and at_check:
            # on the nucleus cells, in the fit's dtype (a grid is made only for the one read)
            checkpoints[it] = torch.stack([lam, _closed_form(lam, e, res * r_scale)]).detach().to("cpu")
        if n_hold and at_check:
            held_at[it] = float((mis.detach() * m_hold).sum() / n_hold)
            losses["held_out"].append(held_at[it])
        if (follows or other_half is not None) and at_check:
            states[it] = {k: x.detach().clone() for k, x in net.state_dict().items()}
        if at_check and not follows and chosen is None and (other_half is not None or n_hold):
            if other_half is None:
                crit = held_at[it]
            else:
                # misfit to the other half: its noise is independent of this fit's data
                crit = float((misfit(h, e, other_half).detach() * m_fit).sum() / n_fit)
                losses.setdefault("validation", []).append(crit)
            if crit < best[0]:
                snapshot = states[it] if it in states else {k: x.detach().clone() for k, x in net.state_dict().items()}
                best = (crit, snapshot, it)
                since_best = 0
            else:
                since_best += 1
                if patience and since_best >= patience:
                    if other_half is None:
                        stop_reason = "held-out misfit stopped improving"
                        break
                    stop_reason = "misfit to the other half stopped improving"
                    chosen = _validated_step(best[2], iterations, check_every)
                    if stop_event is not None:
                        stop_event.set(chosen)
                    if it >= chosen:
                        break
        if progress is not None and (it % max(int(opts["log_every"]), 1) == 0):
            report(progress, start_step + int(total_steps * frac), bar_total, message)
    if other_half is not None:
        # the full data's step; this fit is returned (and its checkpoints read) there too
        if chosen is None:
            chosen = _validated_step(best[2], iterations, check_every) if best[1] is not None else it
        chosen = min(chosen, it)
        best = (best[0], states.get(chosen), chosen)
        if stop_event is not None and stop_event.stop_at is None:
            stop_event.set(chosen)
    elif stop_event is not None and not follows:
        stop_event.set(best[2] if best[1] is not None else it)
    if follows:
        # the leader's step: wait for it, then take this fit's state there
        while not stop_event.done.wait(0.05):
            check_cancel(cancel, message)
        if stop_event.stop_at in states:
            best = (held_at.get(stop_event.stop_at, math.nan), states[stop_event.stop_at], stop_event.stop_at)
    iterations_run = it + 1
    if best[1] is not None:
        net.load_state_dict(best[1])
    with torch.no_grad() if method == "pinn" else contextlib.nullcontext():
        h, e, lam = fields_and_rate()
        res = steady_state_residual(h, e, lam, model)
    as_np = (lambda x: _on_grid(x.detach(), cells, shape))
    return FitOutput(rate=as_np(lam), residual=as_np(res), phi_h=as_np(h.value), phi_e=as_np(e.value),
                     closed=as_np(_closed_form(lam, e, res)), losses=losses, best_iteration=int(best[2]),
                     iterations_run=iterations_run, stop_reason=stop_reason, held_out_misfit=float(best[0]),
                     state={k: v.detach().clone() for k, v in net.state_dict().items()},
                     checkpoints=checkpoints, cells=cells)


def _validated_step(best_half_step: int, iterations: int, check_every: int) -> int:
    """:data:`VALIDATION_STEP_FACTOR` times the half's best step, on a check, within the budget."""
    step = int(round(VALIDATION_STEP_FACTOR * best_half_step / check_every)) * check_every
    return min(step, iterations - 1)


def _closed_form(lam, e, residual):
    """``(u_h - lap(mu_d) / 2) / u_e`` from the fitted rate, fields and residual (physical units):
    ``R = lap(mu_d) + 2 (lambda u_e - u_h)`` gives it as ``lambda - R / (2 u_e)``."""
    return lam - residual / (2.0 * e.value.clamp_min(1e-6))


def _on_grid(values: torch.Tensor, cells: np.ndarray, shape) -> np.ndarray:
    """Per-nucleus-cell values -> float64 grid, NaN outside the nucleus."""
    out = np.full(int(np.prod(shape)), np.nan)
    out[cells] = values.to("cpu", torch.float64).numpy()
    return out.reshape(shape)


def _within_halo(mask, pad: int) -> np.ndarray:
    """Cells of the ``pad``-padded grid within ``pad`` cells (square) of ``mask``: the cells a
    ``valid`` mollifier of halo ``pad`` reads to give values on the mask."""
    from scipy import ndimage

    padded = np.pad(np.asarray(mask, dtype=bool), pad)
    return ndimage.binary_dilation(padded, np.ones((2 * pad + 1,) * 2, dtype=bool)) if pad else padded


def _network(param, opts, centre, scale, lam0, build_backbone):
    kw = {"width": opts["width"]}
    if param == "mlp":
        kw["depth"] = opts["depth"]
    elif param == "piratenet":
        kw.update(blocks=opts["blocks"], fourier_scale=opts["fourier_scale"])
    else:
        kw.update(depth=opts["depth"], fourier_scale=opts["fourier_scale"])
    return FieldNet(build_backbone(param, 2, 3, **kw), centre, scale, lam0)
