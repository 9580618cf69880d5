"""Coordinate networks: ``coords (N, in_features) -> fields (N, out_features)``.

Three backbones, all interchangeable:

* :class:`MLP` — the plain tanh multilayer perceptron of the original PINN papers (the
  "PINN" backbone of the Mollifier-Layers paper).
* :class:`PirateNet` — residual gated blocks on a random Fourier-feature embedding with an
  adaptive skip weight ``alpha`` initialised at 0, so that at initialisation the network is a
  linear model of the embedding and depth is switched on as training needs it
  (Wang, Li, Chen & Perdikaris, "PirateNets", 2024).
* :class:`FourierMLP` — random Fourier features followed by an MLP (Tancik et al. 2020). Chosen
  as the third backbone over a transformer-style PINN because it is the simplest cure for the
  spectral bias of a plain MLP, costs the same per point, and keeps every backbone a pointwise
  function of the coordinates (which the autodiff comparison requires).

Random parts (weights, Fourier frequencies) are drawn from torch's global generator: call
:func:`chromflow.training.seed_everything` first for reproducible networks.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MLP", "PirateNet", "FourierMLP", "FourierFeatures", "build_backbone", "BACKBONES"]

class _TanhBySigmoid(torch.autograd.Function):
    """``tanh(x) = 2 sigmoid(2x) - 1``, backward ``g (1 - y^2)`` from the saved output."""

    @staticmethod
    def forward(ctx, x):
        y = torch.sigmoid(2.0 * x).mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


class Tanh(nn.Tanh):
    """``nn.Tanh`` computed through the sigmoid on CPU.

    torch's CPU ``tanh`` kernel took 3-4 ns per element here against ~1 for ``sigmoid``; the
    tanh layers were the largest single cost of a default fit (forward + backward of a 32-wide
    tanh layer on 8000 points: 1.3 ms with ``torch.tanh``, 0.7-0.85 ms this way; agreement to
    3e-16 in float64, 2e-7 in float32). On other devices it is ``torch.tanh``. It stays an
    ``nn.Tanh`` for everything that dispatches on the type (e.g. the Taylor-mode jets of
    :mod:`chromflow.autodiff`).
    """

    def forward(self, x):
        if x.device.type != "cpu":
            return torch.tanh(x)
        return _TanhBySigmoid.apply(x)


_ACTIVATIONS = {"tanh": Tanh, "sin": None, "gelu": nn.GELU, "silu": nn.SiLU, "softplus": nn.Softplus}


class _Sine(nn.Module):
    def forward(self, x):
        return torch.sin(x)


def _activation(name: str) -> nn.Module:
    if name == "sin":
        return _Sine()
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}") from None


def _xavier(linear: nn.Linear) -> nn.Linear:
    # Glorot-normal weights and zero biases: the usual PINN initialisation for tanh networks
    nn.init.xavier_normal_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class FourierFeatures(nn.Module):
    """Random Fourier-feature embedding ``x -> [cos(2 pi B x), sin(2 pi B x)]``.

    Parameters
    ----------
    in_features : int
        Number of input coordinates.
    n_frequencies : int
        Number of random frequencies; the output has ``2 * n_frequencies`` features.
    scale : float
        Standard deviation of the entries of ``B`` (cycles per unit of the normalised
        coordinate). Coordinates from :func:`grid_coordinates` span about [-1, 1], so
        ``scale=1`` resolves features down to roughly a quarter of the domain and larger
        scales resolve finer detail (at the risk of noisy fits).

    Examples
    --------
    >>> import torch
    >>> emb = FourierFeatures(2, 8, scale=1.0)
    >>> emb(torch.zeros(5, 2)).shape
    torch.Size([5, 16])
    """

    def __init__(self, in_features: int, n_frequencies: int, scale: float = 1.0):
        super().__init__()
        if n_frequencies < 1:
            raise ValueError(f"n_frequencies must be >= 1, got {n_frequencies}")
        self.register_buffer("frequencies", torch.randn(in_features, n_frequencies) * float(scale))
        self.out_features = 2 * n_frequencies

    def forward(self, x):
        proj = 2 * math.pi * (x @ self.frequencies.to(x.dtype))
        return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1)


class MLP(nn.Module):
    """Fully connected network ``coords -> fields`` (the classic PINN backbone).

    Parameters
    ----------
    in_features, out_features : int
        Number of coordinates in and of field channels out.
    width : int
        Neurons per hidden layer.
    depth : int
        Number of hidden layers.
    activation : {"tanh", "sin", "gelu", "silu", "softplus"}
        Smooth activations only: the autodiff path differentiates the network 4 times.

    Examples
    --------
    >>> import torch
    >>> net = MLP(2, 3, width=16, depth=2)
    >>> net(torch.rand(10, 2)).shape
    torch.Size([10, 3])
    """

    def __init__(self, in_features: int = 2, out_features: int = 1, width: int = 64, depth: int = 4,
                 activation: str = "tanh"):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
        layers: list[nn.Module] = []
        n_in = in_features
        for _ in range(depth):
            layers += [_xavier(nn.Linear(n_in, width)), _activation(activation)]
            n_in = width
        layers.append(_xavier(nn.Linear(n_in, out_features)))
        self.net = nn.Sequential(*layers)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x):
        return self.net(x)


class FourierMLP(nn.Module):
    """Random Fourier features followed by an :class:`MLP`.

    Parameters
    ----------
    in_features, out_features, width, depth, activation
        As for :class:`MLP` (``depth`` hidden layers after the embedding).
    fourier_features : int, optional
        Number of random frequencies (default ``width // 2``).
    fourier_scale : float
        Spread of the frequencies, see :class:`FourierFeatures`.

    Examples
    --------
    >>> import torch
    >>> net = FourierMLP(2, 1, width=16, depth=2)
    >>> net(torch.rand(4, 2)).shape
    torch.Size([4, 1])
    """

    def __init__(self, in_features: int = 2, out_features: int = 1, width: int = 64, depth: int = 3,
                 activation: str = "tanh", fourier_features: int | None = None, fourier_scale: float = 1.0):
        super().__init__()
        n_freq = fourier_features or max(width // 2, 1)
        self.embedding = FourierFeatures(in_features, n_freq, fourier_scale)
        self.mlp = MLP(self.embedding.out_features, out_features, width, depth, activation)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x):
        return self.mlp(self.embedding(x))


class _PirateBlock(nn.Module):
    """One PirateNet block: two gated layers and a dense layer, mixed in by ``alpha`` (init 0)."""

    def __init__(self, width: int, activation: str):
        super().__init__()
        self.dense1 = _xavier(nn.Linear(width, width))
        self.dense2 = _xavier(nn.Linear(width, width))
        self.dense3 = _xavier(nn.Linear(width, width))
        self.act = _activation(activation)
        # alpha = 0: the block starts as the identity, so a deep net starts as a shallow one
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x, u, v):
        f = self.act(self.dense1(x))
        z = f * u + (1 - f) * v
        g = self.act(self.dense2(z))
        z = g * u + (1 - g) * v
        h = self.act(self.dense3(z))
        return self.alpha * h + (1 - self.alpha) * x


class PirateNet(nn.Module):
    """Physics-informed residual adaptive network (PirateNet, Wang et al. 2024).

    ``x -> Phi(x)`` (random Fourier features), gates ``U = act(W_u Phi)``, ``V = act(W_v Phi)``,
    then ``blocks`` residual gated blocks whose skip weights ``alpha`` start at 0, and a linear
    read-out. At initialisation the output is therefore a linear function of the embedding.

    Parameters
    ----------
    in_features, out_features : int
        Coordinates in, field channels out.
    width : int
        Hidden width (the embedding is projected to it when ``2 * fourier_features != width``).
    blocks : int
        Number of residual gated blocks (each has 3 dense layers).
    fourier_features : int, optional
        Number of random frequencies (default ``width // 2``).
    fourier_scale : float
        Spread of the frequencies, see :class:`FourierFeatures`.
    activation : str
        Hidden activation (tanh in the paper).

    Examples
    --------
    >>> import torch
    >>> net = PirateNet(2, 2, width=16, blocks=2)
    >>> net(torch.rand(3, 2)).shape
    torch.Size([3, 2])
    """

    def __init__(self, in_features: int = 2, out_features: int = 1, width: int = 64, blocks: int = 3,
                 fourier_features: int | None = None, fourier_scale: float = 1.0, activation: str = "tanh"):
        super().__init__()
        n_freq = fourier_features or max(width // 2, 1)
        self.embedding = FourierFeatures(in_features, n_freq, fourier_scale)
        emb = self.embedding.out_features
        self.project = None if emb == width else _xavier(nn.Linear(emb, width))
        self.gate_u = _xavier(nn.Linear(width, width))
        self.gate_v = _xavier(nn.Linear(width, width))
        self.act = _activation(activation)
        self.blocks = nn.ModuleList([_PirateBlock(width, activation) for _ in range(blocks)])
        self.readout = _xavier(nn.Linear(width, out_features))
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x):
        phi = self.embedding(x)
        if self.project is not None:
            phi = self.project(phi)
        u, v = self.act(self.gate_u(phi)), self.act(self.gate_v(phi))
        h = phi
        for block in self.blocks:
            h = block(h, u, v)
        return self.readout(h)


BACKBONES = {"mlp": MLP, "piratenet": PirateNet, "fourier": FourierMLP}


def build_backbone(name: str, in_features: int = 2, out_features: int = 1, **kwargs) -> nn.Module:
    """Make a backbone by name.

    Parameters
    ----------
    name : {"mlp", "piratenet", "fourier"}
        Which network.
    in_features, out_features : int
        Coordinates in, field channels out.
    **kwargs
        Passed to the class (``width``, ``depth``/``blocks``, ``fourier_scale``, ...).

    Examples
    --------
    >>> net = build_backbone("piratenet", 2, 3, width=16, blocks=1)
    >>> type(net).__name__
    'PirateNet'
    """
    key = str(name).lower()
    if key not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {name!r}")
    return BACKBONES[key](in_features=in_features, out_features=out_features, **kwargs)
