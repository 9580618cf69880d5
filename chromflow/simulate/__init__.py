"""Forward solvers and synthetic data with known answers.

A code path separate from the inverse solver (finite differences and sparse solves in float64),
so that tests of inference against these simulations mean something.

Examples
--------
>>> from chromflow.simulate import simulate_nucleus
>>> sim = simulate_nucleus(grid=64, n_localizations=5000, seed=0)   # doctest: +SKIP
>>> sim.rate, sim.phi_h, sim.localizations                          # doctest: +SKIP
"""
from .chromatin import (chromatin_residual, chromatin_steady_state, chromatin_step, masked_laplacian,
                        simulate_chromatin)
from .domains import SimulatedDomains, simulate_domains
from .heat import add_noise, steady_heat
from .langevin import langevin_sine_solution, langevin_solution, sine_rate
from .localizations import sample_localizations
from .sample import SimulatedNucleus, make_sample_data, simulate_nucleus
from .shapes import nucleus_mask, random_rate_map, random_total, smooth_random_field

__all__ = ["chromatin_steady_state", "simulate_chromatin", "chromatin_step", "chromatin_residual",
           "masked_laplacian", "nucleus_mask", "smooth_random_field", "random_rate_map", "random_total",
           "sample_localizations", "SimulatedNucleus", "simulate_nucleus", "make_sample_data", "langevin_solution", "SimulatedDomains", "simulate_domains",
           "langevin_sine_solution", "sine_rate", "steady_heat", "add_noise"]
