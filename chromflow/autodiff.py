"""Exact derivatives of coordinate networks: Taylor mode (the baseline) and recursive reverse mode.

The autodiff side of the Mollifier-Layers comparison needs, for a pointwise network
``u(coords)``, the value, the first derivatives, the Laplacian and the biharmonic at every
point, differentiable with respect to the network's parameters. Two exact methods are here:

:func:`taylor_derivatives` (forward Taylor mode, "jets"; the default and the baseline)
    One forward pass propagates, through every layer, the first ``order`` derivatives of the
    hidden state along a few fixed directions ``v`` (the Taylor coefficients of
    ``t -> net(x + t v)``). Mixed derivatives come from directional ones: with the three
    directions at 0, 60 and 120 degrees, ``sum_j D_j^2 = (3/2) lap`` and
    ``sum_j D_j^4 = (9/8) lap^2`` exactly (the 2nd and 4th powers of ``cos`` averaged over three
    equally spaced angles are isotropic). So the biharmonic costs 3 directions x 4 orders = 12
    extra streams of the hidden state in one pass, instead of 12 nested backward passes.
:func:`recursive_derivatives` (reverse mode; the second, labelled baseline)
    Repeated :func:`torch.autograd.grad` with ``create_graph=True``: ``grad u``, then the
    gradient of each needed component, and so on (6 nested passes per output channel for the
    biharmonic). This is how PINN codes usually do it and how chromflow did it before.

Both return the same dictionary (keys as :class:`chromflow.mollifier.MollifierLayer`):
``"u"`` the value; ``(1, 0)``, ``(0, 1)`` (2D) or ``(1,)`` (1D) the first derivatives;
``"lap"`` the Laplacian (``u''`` in 1D); ``"biharmonic"`` (``order=4``). Each entry has the
network output's shape ``(N, C)``. Derivatives are with respect to the coordinates as given
(e.g. the normalised ones of :func:`chromflow.models.grid_coordinates`); rescale them by the
caller's length unit. They agree to ~1e-13 relative in float64 (``tests/test_autodiff.py``).

Taylor mode understands the chromflow backbones (:class:`~chromflow.models.MLP`,
:class:`~chromflow.models.FourierMLP`, :class:`~chromflow.models.PirateNet`) and anything built
from ``nn.Sequential``, ``nn.Linear``, :class:`~chromflow.models.FourierFeatures` and
elementwise activations (tanh and sin in closed form; GELU, SiLU, Softplus through their
autograd derivatives). Other modules raise ``TypeError``; use the recursive method for them.

Examples
--------
>>> import torch
>>> from chromflow.models import MLP, grid_coordinates
>>> torch.manual_seed(0); net = MLP(2, 1, width=8, depth=2).double()  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> coords, _ = grid_coordinates((5, 5), dtype=torch.float64)
>>> jet = taylor_derivatives(net, coords)
>>> rec = recursive_derivatives(net, coords)
>>> sorted(map(str, jet))
['(0, 1)', '(1, 0)', 'biharmonic', 'lap', 'u']
>>> bool(torch.allclose(jet["biharmonic"], rec["biharmonic"], rtol=1e-10, atol=1e-12))
True
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["taylor_derivatives", "recursive_derivatives", "derivatives", "METHODS", "use_method",
           "default_method", "Jet", "jet_forward"]

METHODS = ("taylor", "recursive")
_DEFAULT = ["taylor"]


def default_method() -> str:
    """The method :func:`derivatives` uses when none is given (``"taylor"`` unless changed by :func:`use_method`)."""
    return _DEFAULT[0]


@contextlib.contextmanager
def use_method(method: str):
    """Within the ``with`` block, :func:`derivatives` (and so ``infer_rates(method="autodiff")``) uses ``method``.

    For benchmarks that race the recursive baseline through the product's own code path.

    Examples
    --------
    >>> with use_method("recursive"):
    ...     default_method()
    'recursive'
    >>> default_method()
    'taylor'
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    old = _DEFAULT[0]
    _DEFAULT[0] = method
    try:
        yield
    finally:
        _DEFAULT[0] = old


def derivatives(model, coords, order: int = 4, method: str | None = None, channels=None) -> dict:
    """Value and derivatives of ``model(coords)``: :func:`taylor_derivatives` or :func:`recursive_derivatives`.

    ``method=None`` takes :func:`default_method`. ``channels`` (recursive only; Taylor mode
    differentiates all outputs in the same pass): output channels whose derivatives are needed.
    """
    method = method or default_method()
    if method == "taylor":
        return taylor_derivatives(model, coords, order)
    if method == "recursive":
        return recursive_derivatives(model, coords, order, channels)
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")


# ---------------------------------------------------------------------------------------------
# jets


@dataclass
class Jet:
    """A batch of values with their derivatives along ``D`` directions up to order ``K``.

    Attributes
    ----------
    value : Tensor (..., F)
        The function's value.
    coeffs : Tensor (K, D, ..., F)
        ``coeffs[k - 1, d]`` is the ``k``-th derivative of ``t -> f(x + t v_d)`` at ``t = 0``.
    """

    value: torch.Tensor
    coeffs: torch.Tensor

    @property
    def order(self) -> int:
        return self.coeffs.shape[0]

    def linear(self, weight, bias=None) -> "Jet":
        """``x @ weight.T + bias``: one matrix product for the value and one for all coefficients."""
        return Jet(nn.functional.linear(self.value, weight, bias), self.coeffs @ weight.T)

    def __add__(self, other):
        if isinstance(other, Jet):
            return Jet(self.value + other.value, self.coeffs + other.coeffs)
        return Jet(self.value + other, self.coeffs)

    __radd__ = __add__

    def __sub__(self, other):
        if isinstance(other, Jet):
            return Jet(self.value - other.value, self.coeffs - other.coeffs)
        return Jet(self.value - other, self.coeffs)

    def __rsub__(self, other):  # other - self, other a constant
        return Jet(other - self.value, -self.coeffs)

    def __neg__(self):
        return Jet(-self.value, -self.coeffs)

    def __mul__(self, other):
        if not isinstance(other, Jet):  # constant (tensor broadcasting over the value, or scalar)
            return Jet(self.value * other, self.coeffs * other)
        # Leibniz: (ab)^(k) = sum_i C(k, i) a^(i) b^(k-i)
        a = [self.value] + list(self.coeffs)
        b = [other.value] + list(other.coeffs)
        out = []
        for k in range(1, self.order + 1):
            term = a[0] * b[k] + a[k] * b[0]
            for i in range(1, k):
                term = term + math.comb(k, i) * (a[i] * b[k - i])
            out.append(term)
        return Jet(self.value * other.value, torch.stack(out))

    __rmul__ = __mul__

    def map(self, derivs) -> "Jet":
        """``f(self)`` given ``derivs = [f(x), f'(x), ..., f^(K)(x)]`` at the value (Faa di Bruno)."""
        c = self.coeffs
        K = self.order
        x1 = c[0]
        out = [derivs[1] * x1]
        if K >= 2:
            x2 = c[1]
            x1s = x1 * x1
            out.append(derivs[2] * x1s + derivs[1] * x2)
        if K >= 3:
            x3 = c[2]
            out.append(derivs[3] * x1s * x1 + 3 * derivs[2] * x1 * x2 + derivs[1] * x3)
        if K >= 4:
            x4 = c[3]
            out.append(derivs[4] * x1s * x1s + 6 * derivs[3] * x1s * x2
                       + derivs[2] * (4 * x1 * x3 + 3 * x2 * x2) + derivs[1] * x4)
        if K > 4:
            raise ValueError(f"jets are implemented up to order 4, got {K}")
        return Jet(derivs[0], torch.stack(out))

    def cat(self, others, dim=-1) -> "Jet":
        """Concatenate jets along the feature dimension."""
        jets = [self, *others]
        return Jet(torch.cat([j.value for j in jets], dim=dim), torch.cat([j.coeffs for j in jets], dim=dim))


def _tanh_derivs(x, K, t=None):
    # t: tanh(x) as the network's own module computes it (chromflow's Tanh goes through the
    # sigmoid on CPU), so the jet differentiates exactly the function the network evaluates
    t = torch.tanh(x) if t is None else t
    d1 = 1 - t * t
    out = [t, d1]
    if K >= 2:
        out.append(-2 * t * d1)
    if K >= 3:
        out.append(-2 * d1 * (1 - 3 * t * t))
    if K >= 4:
        out.append(8 * t * d1 * (2 - 3 * t * t))
    return out


def _sin_derivs(x, K, phase=0):
    # d^k/dx^k sin(x) = sin(x + k pi / 2): the cycle sin, cos, -sin, -cos
    s, c = torch.sin(x), torch.cos(x)
    cycle = [s, c, -s, -c]
    return [cycle[(k + phase) % 4] for k in range(K + 1)]


def _autograd_derivs(fn, x, K):
    # derivatives of an elementwise function by autograd on the elementwise graph (exact; the
    # sum's gradient is the elementwise derivative because f acts pointwise)
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        out = [fn(xg)]
        for _ in range(K):
            (g,) = torch.autograd.grad(out[-1].sum(), xg, create_graph=True)
            out.append(g)
    return out


def _activation(module, jet: Jet) -> Jet:
    from .models.backbones import _Sine

    K = jet.order
    if isinstance(module, nn.Tanh):
        return jet.map(_tanh_derivs(jet.value, K, module(jet.value)))
    if isinstance(module, _Sine):
        return jet.map(_sin_derivs(jet.value, K))
    if isinstance(module, (nn.GELU, nn.SiLU, nn.Softplus)):
        return jet.map(_autograd_derivs(module, jet.value, K))
    raise TypeError(f"Taylor mode has no rule for {type(module).__name__}; use method='recursive'")


def jet_forward(module: nn.Module, jet: Jet) -> Jet:
    """Push a :class:`Jet` through a chromflow backbone (or a supported layer).

    Raises
    ------
    TypeError
        For a module with no Taylor-mode rule.
    """
    from .models.backbones import MLP, FourierFeatures, FourierMLP, PirateNet, _PirateBlock

    if isinstance(module, nn.Linear):
        return jet.linear(module.weight, module.bias)
    if isinstance(module, nn.Sequential):
        for layer in module:
            jet = jet_forward(layer, jet)
        return jet
    if isinstance(module, MLP):
        return jet_forward(module.net, jet)
    if isinstance(module, FourierMLP):
        return jet_forward(module.mlp, jet_forward(module.embedding, jet))
    if isinstance(module, FourierFeatures):
        proj = jet.linear(2 * math.pi * module.frequencies.to(jet.value.dtype).T)
        K = jet.order
        cos = proj.map(_sin_derivs(proj.value, K, phase=1))  # cos = sin(. + pi/2)
        sin = proj.map(_sin_derivs(proj.value, K))
        return cos.cat([sin])
    if isinstance(module, PirateNet):
        phi = jet_forward(module.embedding, jet)
        if module.project is not None:
            phi = jet_forward(module.project, phi)
        u = _activation(module.act, jet_forward(module.gate_u, phi))
        v = _activation(module.act, jet_forward(module.gate_v, phi))
        h = phi
        for block in module.blocks:
            h = _pirate_block(block, h, u, v)
        return jet_forward(module.readout, h)
    if isinstance(module, _PirateBlock):
        raise TypeError("a PirateNet block needs its gates: push the whole PirateNet")
    return _activation(module, jet)


def _pirate_block(block, x: Jet, u: Jet, v: Jet) -> Jet:
    # z = f u + (1 - f) v = v + f (u - v): one jet product instead of two
    diff = u - v
    f = _activation(block.act, jet_forward(block.dense1, x))
    z = v + f * diff
    g = _activation(block.act, jet_forward(block.dense2, z))
    z = v + g * diff
    h = _activation(block.act, jet_forward(block.dense3, z))
    return x + (h - x) * block.alpha


def _directions(ndim: int, order: int, dtype, device):
    """Directions ``(D, ndim)`` and the linear maps from directional to wanted derivatives."""
    if ndim == 1:
        return torch.ones(1, 1, dtype=dtype, device=device)
    if order <= 2:  # the axes: first derivatives and the Laplacian directly
        return torch.eye(ndim, dtype=dtype, device=device)
    if ndim != 2:
        raise ValueError(f"Taylor mode handles order {order} in 1D and 2D only (got {ndim}D); "
                         "use method='recursive'")
    angles = torch.tensor([0.0, math.pi / 3, 2 * math.pi / 3], dtype=torch.float64)
    return torch.stack([torch.cos(angles), torch.sin(angles)], dim=1).to(dtype=dtype, device=device)


def _check_coords(coords, order):
    if coords.ndim != 2:
        raise ValueError(f"coords must be (N, ndim), got shape {tuple(coords.shape)}")
    if order not in (1, 2, 4):
        raise ValueError(f"order must be 1, 2 or 4, got {order}")


def taylor_derivatives(model: nn.Module, coords: torch.Tensor, order: int = 4) -> dict:
    """Value and derivatives of a pointwise coordinate network by forward Taylor mode.

    Parameters
    ----------
    model : nn.Module
        A chromflow backbone (or a network of supported layers, see the module docstring)
        mapping ``(N, ndim)`` to ``(N, C)``.
    coords : Tensor (N, ndim)
        Points (ndim 1 or 2 for ``order=4``, any for ``order <= 2``).
    order : {1, 2, 4}
        Highest derivative wanted: 1 gives the gradient, 2 adds the Laplacian, 4 the biharmonic.

    Returns
    -------
    dict
        ``"u"``; one first derivative per axis, keyed by its multi-index (``(1, 0)``, ``(0, 1)``
        in 2D, ``(1,)`` in 1D); ``"lap"`` (order >= 2); ``"biharmonic"`` (order 4). Each
        ``(N, C)``, differentiable with respect to the model's parameters.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(2, 1)
    >>> d = taylor_derivatives(lin, torch.zeros(3, 2))
    >>> bool(torch.allclose(d[(0, 1)][:, 0], lin.weight[0, 1].expand(3)))
    True
    """
    _check_coords(coords, order)
    n, ndim = coords.shape
    K = 4 if order == 4 else order
    dirs = _directions(ndim, order, coords.dtype, coords.device)          # (D, ndim)
    coeffs = torch.zeros((K, dirs.shape[0], n, ndim), dtype=coords.dtype, device=coords.device)
    coeffs[0] = dirs[:, None, :]                                           # d/dt (x + t v) = v
    out = jet_forward(model, Jet(coords, coeffs))
    c = out.coeffs                                                         # (K, D, N, C)
    result = {"u": out.value}
    axes = [tuple(int(i == a) for i in range(ndim)) for a in range(ndim)]
    if ndim == 1 or dirs.shape[0] == ndim:  # the directions are the axes
        for a, key in enumerate(axes):
            result[key] = c[0, a]
        if K >= 2:
            result["lap"] = c[1].sum(dim=0)
    else:  # 0, 60, 120 degrees: v1 + v2 = (0, sqrt 3), v1 - v2 = (1, 0)
        result[axes[0]] = c[0, 1] - c[0, 2]
        result[axes[1]] = (c[0, 1] + c[0, 2]) / math.sqrt(3.0)
        result["lap"] = c[1].sum(dim=0) * (2.0 / 3.0)
    if order == 4:
        result["biharmonic"] = c[3].sum(dim=0) * (1.0 if ndim == 1 else 8.0 / 9.0)
    return result


# ---------------------------------------------------------------------------------------------
# the recursive reverse-mode baseline


def recursive_derivatives(model: nn.Module, coords: torch.Tensor, order: int = 4, channels=None) -> dict:
    """The same derivatives as :func:`taylor_derivatives` by nested ``torch.autograd.grad``.

    Per output channel: the gradient (1 backward pass), each second derivative (``ndim``
    passes), and for ``order=4`` the gradient of the Laplacian and the second derivatives of it
    (``2 ndim`` more passes), every pass with ``create_graph=True``. Works for any pointwise
    network. Returns the dictionary of :func:`taylor_derivatives`; with ``channels`` (a sequence
    of output indices) only those channels are differentiated and the derivative entries have
    ``len(channels)`` columns in that order (``"u"`` keeps every channel).
    """
    _check_coords(coords, order)
    ndim = coords.shape[1]
    x = coords.detach().requires_grad_(True)
    with torch.enable_grad():
        u = model(x)

        def grad(f):
            (g,) = torch.autograd.grad(f.sum(), x, create_graph=True)
            return g

        axes = [tuple(int(i == a) for i in range(ndim)) for a in range(ndim)]
        per_channel = []
        for ch in (range(u.shape[1]) if channels is None else channels):
            g = grad(u[:, ch])
            d = {key: g[:, a] for a, key in enumerate(axes)}
            if order >= 2:
                lap = sum(grad(g[:, a])[:, a] for a in range(ndim))
                d["lap"] = lap
                if order == 4:
                    gl = grad(lap)
                    d["biharmonic"] = sum(grad(gl[:, a])[:, a] for a in range(ndim))
            per_channel.append(d)
    result = {"u": u}
    for key in per_channel[0]:
        result[key] = torch.stack([d[key] for d in per_channel], dim=1)
    return result
