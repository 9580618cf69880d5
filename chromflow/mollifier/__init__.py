"""Mollifier layers: derivatives of a grid field by convolution with analytic kernel derivatives.

``d^k (g * eta_delta) = g * d^k eta_delta`` with a compactly supported smooth kernel ``eta``
(Bhartari, Vinayak & Shenoy, "Mollifier Layers", arXiv 2505.11682). The cost does not depend on
the derivative order or on the network that produced ``g``.

Examples
--------
>>> import torch
>>> from chromflow.mollifier import derivative, MollifierLayer
>>> u = torch.rand(1, 1, 48, 48, dtype=torch.float64)
>>> derivative(u, "biharmonic", radius=6).shape
torch.Size([1, 1, 48, 48])
>>> MollifierLayer(radius=6)(u)["lap"].shape   # boundary="valid": 48 - 2 * 7
torch.Size([1, 1, 34, 34])
"""
from .kernels import KERNELS, halo, kernel_1d, kernel_moments, profile, profile_derivative
from .layer import BOUNDARIES, METHODS, MollifierLayer, derivative, expand_order, gradient, mask_extension_indices, valid_shape

__all__ = ["derivative", "gradient", "MollifierLayer", "kernel_1d", "kernel_moments", "halo", "valid_shape",
           "expand_order", "mask_extension_indices", "profile", "profile_derivative", "KERNELS", "BOUNDARIES",
           "METHODS"]
