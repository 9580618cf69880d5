"""Backbones: shapes, grid coordinates, identical use by autodiff and grid evaluation."""
import numpy as np
import pytest
import torch

from chromflow.models import (MLP, FourierMLP, PirateNet, build_backbone, evaluate_on_grid,
                              grid_coordinates)
from chromflow.training import seed_everything

NAMES = ["mlp", "piratenet", "fourier"]


def test_grid_coordinates_layout_and_scale():
    coords, scale = grid_coordinates((4, 6), spacing=2.5, pad=1)
    assert coords.shape == (6 * 8, 2)
    # half-extent of the padded x axis: (6 - 1) / 2 + 1 = 3.5 cells
    assert scale == pytest.approx(2.5 * 3.5)
    grid = coords.reshape(6, 8, 2)
    # x varies along the last axis, y along the first; one cell = 1 / 3.5 normalised units
    assert torch.allclose(grid[0, 1:, 1] - grid[0, :-1, 1], torch.full((7,), 1 / 3.5, dtype=coords.dtype))
    assert torch.allclose(grid[1:, 0, 0] - grid[:-1, 0, 0], torch.full((5,), 1 / 3.5, dtype=coords.dtype))
    assert float(grid[..., 1].min()) == pytest.approx(-1.0) and float(grid[..., 1].max()) == pytest.approx(1.0)
    # centre of the unpadded grid is the origin of the normalised coordinates
    assert float(grid[1:-1, 1:-1].mean(dim=(0, 1)).abs().max()) < 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_backbones_shapes_and_factory(name):
    seed_everything(0)
    net = build_backbone(name, 2, 3, width=16)
    out = net(torch.rand(7, 2))
    assert out.shape == (7, 3)
    assert isinstance(net, {"mlp": MLP, "piratenet": PirateNet, "fourier": FourierMLP}[name])


def test_factory_rejects_unknown_name():
    with pytest.raises(ValueError, match="mlp"):
        build_backbone("resnet", 2, 1)


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_on_grid_matches_pointwise(name):
    seed_everything(1)
    net = build_backbone(name, 2, 2, width=8).double()
    field = evaluate_on_grid(net, (5, 7), pad=2)
    coords, _ = grid_coordinates((5, 7), pad=2, dtype=torch.float64)
    assert field.shape == (2, 9, 11)
    expected = net(coords).T.reshape(2, 9, 11)
    assert torch.equal(field, expected)
    # grid cell (i, j) of the padded grid is coordinate row i * 11 + j
    assert torch.allclose(field[:, 3, 4], net(coords[3 * 11 + 4][None])[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_autodiff_gradient_matches_finite_difference(name):
    """The same network is differentiable w.r.t. coordinates (the autodiff path)."""
    seed_everything(2)
    net = build_backbone(name, 2, 1, width=8).double()
    x = torch.tensor([[0.1, -0.3]], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(net(x).sum(), x)
    grad = grad.detach()
    eps = 1e-6
    for k in range(2):
        e = torch.zeros(1, 2, dtype=torch.float64)
        e[0, k] = eps
        fd = (net(x.detach() + e) - net(x.detach() - e)) / (2 * eps)
        assert float(grad[0, k]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_piratenet_starts_as_linear_model_of_embedding():
    seed_everything(3)
    net = PirateNet(2, 1, width=8, blocks=2).double()
    assert all(float(b.alpha) == 0 for b in net.blocks)
    x = torch.rand(20, 2, dtype=torch.float64)
    # alpha = 0: the blocks are identities, so the output is readout(embedding(x))
    expected = net.readout(net.embedding(x))
    assert torch.allclose(net(x), expected, atol=1e-14)


def test_same_seed_same_network():
    seed_everything(5)
    a = build_backbone("piratenet", 2, 1, width=8)(torch.ones(1, 2))
    seed_everything(5)
    b = build_backbone("piratenet", 2, 1, width=8)(torch.ones(1, 2))
    assert torch.equal(a, b)


def test_fourier_features_fit_oscillation_better_than_plain_mlp():
    """Random Fourier features overcome the spectral bias of a tanh MLP on a 3-cycle sine."""
    from chromflow.training import train

    x = torch.linspace(-1, 1, 128, dtype=torch.float64)[:, None]
    y = torch.sin(3 * np.pi * x)
    errors = {}
    for name, kw in [("mlp", {"depth": 2}), ("fourier", {"depth": 2, "fourier_scale": 2.0})]:
        seed_everything(0)
        net = build_backbone(name, 1, 1, width=32, **kw).double()
        train(lambda: (((net(x) - y) ** 2).mean(), {}), net.parameters(), iterations=300, lr=5e-3)
        errors[name] = float(((net(x) - y) ** 2).mean())
    assert errors["fourier"] < 1e-3
    assert errors["fourier"] < 0.2 * errors["mlp"]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-14), (torch.float32, 1e-6)])
def test_tanh_by_sigmoid_matches_torch_tanh_and_its_gradient(dtype, tol):
    from chromflow.models.backbones import Tanh

    x = torch.linspace(-12, 12, 2001, dtype=dtype, requires_grad=True)
    y = Tanh()(x)
    assert torch.allclose(y, torch.tanh(x.detach()), atol=tol, rtol=0)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(g, 1 - torch.tanh(x.detach()) ** 2, atol=tol, rtol=0)
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(Tanh(), (x[::97].detach().clone().requires_grad_(),))
