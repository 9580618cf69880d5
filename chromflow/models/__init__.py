"""Backbone networks (coordinate networks) and helpers to evaluate them on grids.

Every backbone maps ``coords (N, in_features) -> (N, out_features)`` and is used the same way by
the autodiff path (coordinates with ``requires_grad``) and the mollifier path
(:func:`evaluate_on_grid`, then a mollifier layer on the grid output).

Examples
--------
>>> from chromflow.models import build_backbone, evaluate_on_grid
>>> net = build_backbone("mlp", 2, 3, width=16, depth=2)
>>> evaluate_on_grid(net, (8, 8), pad=1).shape
torch.Size([3, 10, 10])
"""
from .backbones import BACKBONES, MLP, FourierFeatures, FourierMLP, PirateNet, build_backbone
from .grid import evaluate_on_grid, grid_coordinates

__all__ = ["MLP", "PirateNet", "FourierMLP", "FourierFeatures", "BACKBONES", "build_backbone",
           "grid_coordinates", "evaluate_on_grid"]
