"""chromflow.autodiff: Taylor mode equals recursive reverse mode, and both equal closed forms."""
import math

import pytest
import torch

from chromflow.autodiff import (derivatives, default_method, recursive_derivatives, taylor_derivatives,
                                use_method)
from chromflow.models import MLP, build_backbone, grid_coordinates


def _net(name, in_features=2, out=3, seed=0, activation=None):
    torch.manual_seed(seed)
    kw = {"mlp": dict(width=16, depth=3), "fourier": dict(width=16, depth=2),
          "piratenet": dict(width=16, blocks=2)}[name]
    if activation:
        kw["activation"] = activation
    net = build_backbone(name, in_features, out, **kw).double()
    with torch.no_grad():  # PirateNet's skip weights start at 0: open them so the blocks count
        for p in net.parameters():
            if p.ndim == 0:
                p.fill_(0.4)
    return net


def _coords(shape=(9, 11)):
    return grid_coordinates(shape, dtype=torch.float64)[0]


def _close(a, b, tol=1e-12):
    scale = float(b.detach().abs().max()) or 1.0
    assert float((a - b).detach().abs().max()) <= tol * scale


@pytest.mark.parametrize("name", ["mlp", "fourier", "piratenet"])
@pytest.mark.parametrize("order", [1, 2, 4])
def test_taylor_equals_recursive_on_every_backbone(name, order):
    net, coords = _net(name), _coords()
    jet, rec = taylor_derivatives(net, coords, order), recursive_derivatives(net, coords, order)
    assert set(jet) == set(rec)
    expected = {"u", (1, 0), (0, 1)} | ({"lap"} if order >= 2 else set()) | ({"biharmonic"} if order == 4 else set())
    assert set(jet) == expected
    for key in rec:
        assert jet[key].shape == (coords.shape[0], 3)
        _close(jet[key], rec[key])


@pytest.mark.parametrize("activation", ["sin", "gelu", "silu", "softplus"])
def test_other_activations(activation):
    net, coords = _net("mlp", activation=activation), _coords((6, 7))
    jet, rec = taylor_derivatives(net, coords), recursive_derivatives(net, coords)
    for key in rec:
        _close(jet[key], rec[key], 1e-11)


def test_one_dimensional_jet():
    net = _net("mlp", in_features=1, out=2)
    t = torch.linspace(-1, 1, 13, dtype=torch.float64)[:, None]
    jet, rec = taylor_derivatives(net, t), recursive_derivatives(net, t)
    assert set(jet) == {"u", (1,), "lap", "biharmonic"}
    for key in rec:
        _close(jet[key], rec[key])


def test_closed_form_of_a_known_function():
    # a one-layer sine network u = sin(a y + b x + c): lap = -(a^2 + b^2) u, bilap = (a^2 + b^2)^2 u
    lin = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        lin.weight[:] = torch.tensor([[1.3, -0.7]], dtype=torch.float64)
        lin.bias[:] = 0.2
    from chromflow.models.backbones import _Sine

    net = torch.nn.Sequential(lin, _Sine())
    coords = _coords((5, 5))
    d = taylor_derivatives(net, coords)
    arg = coords @ lin.weight.T + lin.bias
    k2 = 1.3**2 + 0.7**2
    _close(d["u"], torch.sin(arg))
    _close(d[(1, 0)], 1.3 * torch.cos(arg))
    _close(d[(0, 1)], -0.7 * torch.cos(arg))
    _close(d["lap"], -k2 * torch.sin(arg))
    _close(d["biharmonic"], k2**2 * torch.sin(arg))


def test_parameter_gradients_agree():
    # what training needs: d(loss)/d(parameters) through the derivatives is the same
    grads = []
    for fn in (taylor_derivatives, recursive_derivatives):
        net, coords = _net("piratenet"), _coords((6, 6))
        d = fn(net, coords)
        loss = (d["biharmonic"] ** 2).mean() + (d["lap"] * d[(1, 0)]).mean() + d["u"].square().mean()
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    _close(grads[0], grads[1], 1e-11)


def test_method_switch_and_errors():
    net, coords = MLP(2, 1, width=4, depth=1).double(), _coords((3, 3))
    assert default_method() == "taylor"
    with use_method("recursive"):
        assert default_method() == "recursive"
        d = derivatives(net, coords)
        assert d["u"].grad_fn is not None
    assert default_method() == "taylor"
    with pytest.raises(ValueError, match="method must be"):
        derivatives(net, coords, method="finite")
    with pytest.raises(ValueError, match="order"):
        taylor_derivatives(net, coords, order=3)
    with pytest.raises(TypeError, match="no rule"):
        taylor_derivatives(torch.nn.Sequential(torch.nn.Linear(2, 1).double(), torch.nn.ReLU()), coords)
    with pytest.raises(ValueError, match="1D and 2D"):
        taylor_derivatives(MLP(3, 1, width=4, depth=1).double(), torch.zeros(4, 3, dtype=torch.float64))
    # 3D, order 2: the axes suffice
    net3 = MLP(3, 1, width=4, depth=1).double()
    x3 = torch.rand(5, 3, dtype=torch.float64)
    _close(taylor_derivatives(net3, x3, 2)["lap"], recursive_derivatives(net3, x3, 2)["lap"])
    assert not math.isnan(float(taylor_derivatives(net3, x3, 2)["lap"].sum()))


def test_recursive_channel_subset():
    net, coords = _net("mlp"), _coords((4, 5))
    full, sub = recursive_derivatives(net, coords), recursive_derivatives(net, coords, channels=(2, 0))
    assert sub["u"].shape[1] == 3 and sub["lap"].shape[1] == 2
    _close(sub["biharmonic"], full["biharmonic"][:, [2, 0]])


def test_recursive_matches_analytic_and_taylor_matches_finite_differences():
    # recursive: any module, here u = sin(1.3 y) cos(0.7 x)
    class Analytic(torch.nn.Module):
        def forward(self, c):
            return (torch.sin(1.3 * c[:, 0]) * torch.cos(0.7 * c[:, 1]))[:, None]

    c = _coords((5, 6))
    y, x = c[:, :1], c[:, 1:]
    d = recursive_derivatives(Analytic(), c)
    u = torch.sin(1.3 * y) * torch.cos(0.7 * x)
    k2 = 1.3**2 + 0.7**2
    _close(d[(1, 0)], 1.3 * torch.cos(1.3 * y) * torch.cos(0.7 * x))
    _close(d[(0, 1)], -0.7 * torch.sin(1.3 * y) * torch.sin(0.7 * x))
    _close(d["lap"], -k2 * u)
    _close(d["biharmonic"], k2**2 * u)
    # Taylor mode of a random network against finite differences (13-point biharmonic stencil)
    net = _net("mlp", out=1)
    pts = torch.tensor([[0.1, -0.2], [-0.4, 0.3], [0.25, 0.5]], dtype=torch.float64)
    d = taylor_derivatives(net, pts)
    h = 0.02

    def f(dy, dx):
        return net(pts + h * torch.tensor([dy, dx], dtype=torch.float64)).detach()

    lap_fd = (f(1, 0) + f(-1, 0) + f(0, 1) + f(0, -1) - 4 * f(0, 0)) / h**2
    bilap_fd = (20 * f(0, 0) - 8 * (f(1, 0) + f(-1, 0) + f(0, 1) + f(0, -1))
                + 2 * (f(1, 1) + f(1, -1) + f(-1, 1) + f(-1, -1))
                + f(2, 0) + f(-2, 0) + f(0, 2) + f(0, -2)) / h**4
    _close(d["lap"], lap_fd, 1e-3)
    _close(d["biharmonic"], bilap_fd, 1e-2)
