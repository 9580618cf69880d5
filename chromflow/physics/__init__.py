"""PDE residuals, written once on fields and their derivatives.

The same formula serves the mollifier PINN, the autodiff PINN and the direct inversion: the
caller supplies the derivatives (from mollifier kernels, recursive autograd or finite
differences) and the residual module only does the algebra. Every function works on numpy arrays
and torch tensors alike.
"""
from .chromatin import ChromatinModel, FieldDerivatives, bulk_potential, chemical_potential_laplacian, steady_state_residual, rate_from_fields
from .heat import heat_rate, steady_heat_residual
from .langevin import langevin_rate, langevin_residual

__all__ = ["ChromatinModel", "FieldDerivatives", "bulk_potential", "chemical_potential_laplacian",
           "steady_state_residual", "rate_from_fields",
           "langevin_residual", "langevin_rate", "steady_heat_residual", "heat_rate"]
