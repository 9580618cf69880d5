"""Mollifier kernels and derivatives against analytic answers."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from chromflow.errors import GridError, InputError
from chromflow.mollifier import (MollifierLayer, derivative, gradient, halo, kernel_1d, kernel_moments,
                                 profile, valid_shape)
from chromflow.mollifier.kernels import profile_integral

F64 = torch.float64


def grid(*sizes, spacing=1.0, dtype=F64, centre=True):
    """Coordinates (one tensor per axis), centred on the grid so polynomials stay small."""
    spacing = spacing if isinstance(spacing, tuple) else (spacing,) * len(sizes)
    axes = [(torch.arange(n, dtype=dtype) - ((n - 1) / 2 if centre else 0)) * h for n, h in zip(sizes, spacing)]
    return torch.meshgrid(*axes, indexing="ij")


def mollified_cos_factor(w, radius, kernel="bump"):
    """Continuous Fourier factor: (cos(w .) * eta_radius)(x) = factor * cos(w x) (eta even)."""
    z = profile_integral(kernel)
    val, _ = integrate.quad(lambda s: float(profile(kernel, s)) * math.cos(w * radius * s), -1, 1,
                            epsabs=1e-14, epsrel=1e-13, limit=200)
    return val / z


# ---------------------------------------------------------------------------------------------
# kernels


@pytest.mark.parametrize("kernel", ["bump", "polynomial", "gaussian"])
@pytest.mark.parametrize("radius", [3, 4.5, 8, 13, 20])
def test_moments_1d_exact(kernel, radius):
    """Order-k kernel maps x^k/k! to 1 and lower powers to 0, at every radius users use."""
    for k in range(5):
        m = kernel_moments(kernel_1d(k, radius, kernel=kernel), 4)
        target = np.zeros(k + 1)
        target[k] = 1.0
        np.testing.assert_allclose(m[: k + 1], target, atol=1e-9)


def test_analytic_sampling_needs_many_samples():
    """Raw analytic samples of the bump's 4th derivative are wrong at radius 8, right at ~100."""
    coarse = kernel_moments(kernel_1d(4, 8, discretization="analytic"))
    assert abs(coarse[4] - 1) > 0.1
    fine = kernel_moments(kernel_1d(2, 80, discretization="analytic"))
    np.testing.assert_allclose(fine[:3], [0, 0, 1], atol=1e-6)


def test_kernel_symmetry_and_physical_scaling():
    for k in range(5):
        kern = kernel_1d(k, 6)
        np.testing.assert_allclose(kern, (-1) ** k * kern[::-1], atol=1e-15)
        # radius in nm with 50 nm cells = 6 cells; derivative per nm^k
        np.testing.assert_allclose(kernel_1d(k, 300.0, spacing=50.0), kern / 50.0**k, rtol=1e-12)
    assert halo(6) == 7 and kernel_1d(0, 6).size == 15
    np.testing.assert_allclose(kernel_1d(0, 6).sum(), 1.0, rtol=1e-15)


def test_bump_profile_derivatives_match_finite_differences():
    s = np.linspace(-0.9, 0.9, 41)
    eps = 1e-5
    from chromflow.mollifier import profile_derivative
    for kernel in ("bump", "polynomial", "gaussian"):
        for k in range(4):
            fd = (profile_derivative(kernel, k, s + eps) - profile_derivative(kernel, k, s - eps)) / (2 * eps)
            exact = profile_derivative(kernel, k + 1, s)
            np.testing.assert_allclose(fd, exact, rtol=1e-5, atol=1e-6 * np.abs(exact).max())


# ---------------------------------------------------------------------------------------------
# polynomials: exact in 1D, 2D, 3D


@pytest.mark.parametrize("method", ["direct", "fft", "matmul"])
def test_polynomial_moments_2d(method):
    y, x = grid(40, 44)
    checks = [
        ((2, 2), x**2 * y**2 / 4, 1.0),
        ((1, 0), 3 * y + x, 3.0),
        ((1, 1), x * y, 1.0),
        ((0, 3), x**3 / 6 + y**2, 1.0),
        ("lap", (x**2 + y**2) / 2 + x * y, 2.0),
        ("biharmonic", (x**4 + y**4) / 24 + x**2 * y**2 / 4 + x**3, 4.0),
        ("u", 2 * x - y + 5, None),
    ]
    for order, field, value in checks:
        out = derivative(field, order, radius=5, boundary="valid", method=method)
        assert out.shape == valid_shape((40, 44), 5)
        want = field[6:-6, 6:-6] if value is None else torch.full_like(out, value)
        torch.testing.assert_close(out, want, rtol=0, atol=1e-9)


def test_polynomial_1d_and_3d():
    x = torch.arange(50, dtype=F64) - 25
    for k in range(5):
        lower = 0.3 * x ** (k - 1) if k else 0.0  # lower powers must give exactly 0
        out = derivative(x**k / math.factorial(k) + lower, k, radius=6, boundary="valid")
        torch.testing.assert_close(out, torch.ones_like(out), rtol=0, atol=1e-8)
    z, y, x = grid(20, 22, 24)
    lap = derivative(x**2 + 2 * y**2 + 3 * z**2 + x * y * z, "lap", radius=3, boundary="valid", ndim=3)
    assert lap.shape == (12, 14, 16)
    torch.testing.assert_close(lap, torch.full_like(lap, 12.0), rtol=0, atol=1e-9)
    bih = derivative(x**2 * z**2, "biharmonic", radius=3, boundary="valid", ndim=3)
    torch.testing.assert_close(bih, torch.full_like(bih, 8.0), rtol=0, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# smooth fields: discretisation error falls with h, bias with delta^2


def test_refinement_at_fixed_delta_converges_to_mollified_derivative():
    """Fixed physical delta, finer grid: error against g * d^2 eta (continuous) falls ~h^2."""
    w, delta, length = 2.0, 0.6, 6.0
    factor = mollified_cos_factor(w, delta)
    errors = []
    for h in (0.1, 0.05, 0.025):
        n = int(round(length / h)) + 1
        x = torch.arange(n, dtype=F64) * h
        d2 = derivative(torch.cos(w * x), 2, radius=delta, spacing=h, boundary="valid")
        hw = halo(delta / h)
        want = -(w**2) * factor * torch.cos(w * x[hw:-hw])
        errors.append(float((d2 - want).abs().max()))
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(rates > 1.8), (errors, rates)


def test_bias_falls_like_delta_squared():
    """Fine grid: error against the true derivative of the raw field ~ delta^2 (even kernel)."""
    h, w = 0.01, 1.5
    x = torch.arange(1201, dtype=F64) * h
    f = torch.sin(w * x)
    deltas = np.array([0.1, 0.2, 0.4])
    errors = []
    for delta in deltas:
        d4 = derivative(f, 4, radius=float(delta), spacing=h, boundary="valid")
        hw = halo(delta / h)
        errors.append(float((d4 - w**4 * f[hw:-hw]).abs().max()))
    slope = np.polyfit(np.log(deltas), np.log(errors), 1)[0]
    assert 1.8 < slope < 2.2, (errors, slope)


def test_gaussian_blob_derivatives_2d():
    """Mixed, lap and biharmonic of a Gaussian: continuous mollified truth is separable."""
    n, h, s = 161, 0.025, 0.6
    y, x = grid(n, n, spacing=h)
    field = torch.exp(-(x**2 + y**2) / (2 * s**2))
    gx = torch.exp(-x[0] ** 2 / (2 * s**2))

    def d1(k, t):  # 1D derivatives of exp(-t^2/2s^2)
        g = torch.exp(-t**2 / (2 * s**2))
        return {0: g, 2: (t**2 / s**4 - 1 / s**2) * g, 4: (t**4 / s**8 - 6 * t**2 / s**6 + 3 / s**4) * g}[k]

    t = x[0]
    truth = {
        (2, 2): d1(2, t)[:, None] * d1(2, t)[None, :],
        "lap": d1(2, t)[:, None] * d1(0, t)[None, :] + d1(0, t)[:, None] * d1(2, t)[None, :],
        "biharmonic": (d1(4, t)[:, None] * d1(0, t)[None, :] + d1(0, t)[:, None] * d1(4, t)[None, :]
                       + 2 * d1(2, t)[:, None] * d1(2, t)[None, :]),
    }
    assert torch.allclose(gx, d1(0, t))
    layer = MollifierLayer(radius=0.1, orders=list(truth), spacing=h, boundary="reflect")
    out = layer(field)
    inner = slice(layer.halo[0], -layer.halo[0])  # reflect is only exact for even fields at the edge
    for key, want in truth.items():
        # the mollifier's bias, ~ (delta / s)^2, dominates
        rel = float((out[key] - want)[inner, inner].abs().max() / want.abs().max())
        assert rel < 0.05, (key, rel)


# ---------------------------------------------------------------------------------------------
# methods, dtypes, shapes


@pytest.mark.parametrize("other", ["fft", "matmul"])
def test_methods_agree_with_direct_all_orders(other):
    """FFT and the banded-matrix products give the convolutions' values in 1D, 2D and 3D."""
    g = torch.randn(2, 3, 40, 37, dtype=F64, generator=torch.Generator().manual_seed(0))
    orders = ["u", "lap", "biharmonic", (1, 0), (0, 1), (3, 1), (2, 2), (0, 4)]
    for boundary in ("valid", "reflect", "zeros"):
        a = MollifierLayer(6, orders, boundary=boundary, method="direct")(g)
        b = MollifierLayer(6, orders, boundary=boundary, method=other)(g)
        for key in orders:
            assert b[key].shape == a[key].shape
            torch.testing.assert_close(b[key], a[key], rtol=1e-10, atol=1e-10)
    g3 = torch.randn(2, 12, 14, 16, dtype=F64, generator=torch.Generator().manual_seed(7))
    orders3 = ["lap", "biharmonic", (1, 0, 2), "u"]
    for boundary in ("reflect", "valid"):
        kw = dict(ndim=3, spacing=(1, 1.5, 1), boundary=boundary)
        a = MollifierLayer((2.5, 3, 2), orders3, method="direct", **kw)(g3)
        b = MollifierLayer((2.5, 3, 2), orders3, method=other, **kw)(g3)
        for key in orders3:
            torch.testing.assert_close(b[key], a[key], rtol=1e-10, atol=1e-10)
    g1 = g3[0, 0, 0]
    for k in range(5):
        torch.testing.assert_close(derivative(g1, k, 3, method=other), derivative(g1, k, 3, method="direct"))


def test_auto_takes_matmul_on_small_cpu_grids_only():
    from chromflow.mollifier import layer as L

    plan = L._cached_plan(("u", "lap"), 2, (3.0, 3.0), (1.0, 1.0), "bump", "auto")
    assert plan.pick_method("auto", "cpu", (136, 136)) == "matmul"
    assert plan.pick_method("auto", "cpu", (136, L.MATMUL_MAX_SIZE + 1)) == "direct"
    assert plan.pick_method("auto", "cuda", (136, 136)) == "direct"
    wide = L._cached_plan(("u",), 2, (30.0, 30.0), (1.0, 1.0), "bump", "auto")
    assert wide.pick_method("auto", "cpu", (136, 136)) == "fft"
    # the matrices are built once per axis length, dtype and device
    m1 = plan.band_matrix(1, 40, torch.float32, "cpu")
    assert plan.band_matrix(1, 40, torch.float32, "cpu") is m1
    assert m1.shape == (len(plan.axis_orders[1]), 40, 40 - plan.widths[1] + 1)


def test_float32_matches_float64():
    g = torch.randn(1, 1, 48, 48, dtype=F64, generator=torch.Generator().manual_seed(1))
    for method in ("direct", "fft", "matmul"):
        a = derivative(g, "biharmonic", 5, method=method)
        b = derivative(g.float(), "biharmonic", 5, method=method)
        assert b.dtype == torch.float32
        torch.testing.assert_close(b.double(), a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))


def test_layer_matches_derivative_and_has_no_parameters():
    g = torch.randn(3, 2, 30, 34, dtype=F64, generator=torch.Generator().manual_seed(2))
    orders = ("u", "lap", "biharmonic", (1, 0), (0, 1))
    layer = MollifierLayer(4, orders)
    assert list(layer.parameters()) == []
    out = layer(g)
    assert layer.halo == (5, 5)
    for key in orders:
        assert out[key].shape == (3, 2, 20, 24)
        torch.testing.assert_close(out[key], derivative(g, key, 4, boundary="valid"), rtol=1e-12, atol=1e-12)
    dy, dx = layer.gradient(g)
    torch.testing.assert_close(dy, out[(1, 0)])
    torch.testing.assert_close(dx, out[(0, 1)])
    dy2, dx2 = MollifierLayer(4, ("lap",)).gradient(g)  # through a gradient sub-layer
    torch.testing.assert_close(dy2, out[(1, 0)])
    torch.testing.assert_close(dx2, out[(0, 1)])
    # spatial-only input
    assert MollifierLayer(4, ("lap",))(g[0, 0])["lap"].shape == (20, 24)


def test_space_time_anisotropic():
    """u(t, x) = exp(-t) cos(w x) on a (t, x) grid with different spacing and radius per axis."""
    dt, dx, w = 0.01, 0.05, 1.2
    t, x = grid(121, 161, spacing=(dt, dx), centre=False)
    u = torch.exp(-t) * torch.cos(w * x)
    rt, rx = 0.08, 0.5
    layer = MollifierLayer((rt, rx), orders=[(1, 0), (0, 2), "u"], spacing=(dt, dx), boundary="valid")
    out = layer(u)
    ht, hx = layer.halo
    assert (ht, hx) == (halo(8), halo(10))
    tc, xc = t[ht:-ht, hx:-hx], x[ht:-ht, hx:-hx]
    # mollified truth: exp(-t) has a (symmetric-kernel) factor of its own; compute by quadrature
    z = profile_integral("bump")
    ft = integrate.quad(lambda s: float(profile("bump", s)) * math.exp(-rt * s), -1, 1, epsabs=1e-14)[0] / z
    fx = mollified_cos_factor(w, rx)
    u_t = -ft * fx * torch.exp(-tc) * torch.cos(w * xc)
    u_xx = -(w**2) * ft * fx * torch.exp(-tc) * torch.cos(w * xc)
    assert float((out[(1, 0)] - u_t).abs().max()) < 2e-4
    assert float((out[(0, 2)] - u_xx).abs().max()) < 2e-3


# ---------------------------------------------------------------------------------------------
# boundaries


def test_reflect_exact_for_symmetric_fields_and_interior():
    """cos with extrema on the edge pixels is its own mirror image: exact up to the edge."""
    n = 65
    y, x = grid(n, n, centre=False)
    w = 2 * math.pi / (n - 1)
    f = torch.cos(w * x) * torch.cos(w * y)
    factor = mollified_cos_factor(w, 6.0)
    lap = derivative(f, "lap", radius=6, boundary="reflect")
    want = -2 * w**2 * factor**2 * f
    # difference kernels: h^2 discretisation error on top of the continuous mollifier
    assert float((lap - want).abs().max()) < 1e-3 * float(want.abs().max()) + 1e-4
    # away from edges reflect equals valid
    g = torch.randn(40, 40, dtype=F64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(derivative(g, (1, 2), 4, boundary="reflect")[5:-5, 5:-5],
                               derivative(g, (1, 2), 4, boundary="valid"))


def test_mask_rectangle_linear_exact_to_the_edge():
    y, x = grid(40, 40)
    mask = np.zeros((40, 40), bool)
    mask[8:30, 10:33] = True
    f = 2 * x - 3 * y + 1
    dy, dx = gradient(f, 4, boundary="mask", mask=mask)
    torch.testing.assert_close(dy[mask], torch.full((mask.sum(),), -3.0, dtype=F64))
    torch.testing.assert_close(dx[mask], torch.full((mask.sum(),), 2.0, dtype=F64))
    assert float(dx[~mask].abs().max()) == 0.0
    u = derivative(f, "u", 4, boundary="mask", mask=mask)
    torch.testing.assert_close(u[mask], f[torch.as_tensor(mask)])


def test_mask_disk_polynomial_extension_exact_to_the_edge():
    """Extension of degree m is exact for degree-m polynomials on a convex domain."""
    n, radius = 64, 5
    y, x = grid(n, n)
    mask = (x**2 + y**2 <= 24**2).numpy()
    quadratic = (x**2 + y**2) / 2 + x * y / 4 + 0.3 * x  # lap = 2
    cubic = x**3 / 6 + x * y**2 / 2  # lap = 2 x
    m = torch.as_tensor(mask)
    for degree in (1, 2, 3):
        lap = derivative(quadratic, "lap", radius, boundary="mask", mask=mask, mask_degree=degree)
        err = (lap - 2)[m].abs()
        interior = torch.as_tensor((x**2 + y**2).sqrt().numpy() <= 24 - halo(radius) - 1)[m]
        assert float(err[interior].max()) < 1e-10  # unaffected by the boundary at all
        assert (float(err.max()) < 1e-10) == (degree >= 2), (degree, float(err.max()))
        lap3 = derivative(cubic, "lap", radius, boundary="mask", mask=mask, mask_degree=degree)
        assert (float((lap3 - 2 * x)[m].abs().max()) < 1e-9) == (degree == 3)
        assert float(lap[~m].abs().max()) == 0.0
    # the layer precomputes the same extension
    layer = MollifierLayer(radius, ["lap", (1, 0)], boundary="mask", mask=mask)
    torch.testing.assert_close(layer(quadratic)["lap"], derivative(quadratic, "lap", radius, boundary="mask", mask=mask))
    dy, dx = layer.gradient(quadratic)
    torch.testing.assert_close(dy[m], (y + x / 4)[m])
    torch.testing.assert_close(dx[m], (x + y / 4 + 0.3)[m])


def test_mask_3d_ball():
    z, y, x = grid(22, 22, 22)
    ball = (x**2 + y**2 + z**2 <= 8.5**2).numpy()
    field = x**2 - y * z + 0.5 * z**2  # lap = 3
    lap = derivative(field, "lap", 2.5, boundary="mask", mask=ball, ndim=3)
    torch.testing.assert_close(lap[torch.as_tensor(ball)], torch.full((int(ball.sum()),), 3.0, dtype=F64))


# ---------------------------------------------------------------------------------------------
# noise, autograd, errors, device


def test_noise_robust_fourth_derivative():
    """d4 of a noisy sine: mollifier error far below a 5-point finite difference."""
    h, w = 0.02, 2.0
    x = torch.arange(600, dtype=F64) * h
    rng = torch.Generator().manual_seed(4)
    f = torch.sin(w * x) + 1e-4 * torch.randn(x.shape, dtype=F64, generator=rng)
    d4 = derivative(f, 4, radius=0.6, spacing=h, boundary="valid")
    hw = halo(0.6 / h)
    mol_err = float((d4 - w**4 * torch.sin(w * x[hw:-hw])).abs().max())
    fd = (f[:-4] - 4 * f[1:-3] + 6 * f[2:-2] - 4 * f[3:-1] + f[4:]) / h**4
    fd_err = float((fd - w**4 * torch.sin(w * x[2:-2])).abs().max())
    assert mol_err < 0.01 * fd_err, (mol_err, fd_err)
    assert mol_err < 0.5 * w**4  # FD error is ~300x the signal here


@pytest.mark.parametrize("method", ["direct", "fft", "matmul"])
@pytest.mark.parametrize("boundary", ["valid", "reflect", "mask"])
def test_gradcheck(method, boundary):
    mask = np.ones((8, 9), bool)
    mask[0, :] = mask[:, -1] = False
    g = torch.randn(8, 9, dtype=F64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    layer = MollifierLayer(2.0, ("u", "lap", (1, 1)), boundary=boundary, method=method,
                           mask=mask if boundary == "mask" else None)
    assert torch.autograd.gradcheck(lambda t: tuple(layer(t).values()), (g,), fast_mode=True)


def test_grid_errors():
    with pytest.raises(GridError, match="too coarse"):
        derivative(torch.zeros(50), 1, radius=1.5)
    with pytest.raises(GridError, match="too coarse"):
        derivative(torch.zeros(50, 50), "lap", radius=80.0, spacing=50.0)
    with pytest.raises(GridError, match=r"\(12, 40\)"):
        derivative(torch.zeros(12, 40), "lap", radius=5, boundary="valid")
    with pytest.raises(GridError, match="reflect"):
        derivative(torch.zeros(5, 40), "lap", radius=5, boundary="reflect")
    with pytest.raises(InputError):
        derivative(torch.zeros(40, 40), (5, 0), radius=5)
    with pytest.raises(InputError):
        derivative(torch.zeros(40, 40), "curl", radius=5)
    with pytest.raises(InputError):
        derivative(torch.zeros(40, 40), 2, radius=5, ndim=2)
    with pytest.raises(InputError, match="mask"):
        derivative(torch.zeros(40, 40), "lap", radius=5, boundary="mask", mask=np.ones((30, 30), bool))
    with pytest.raises(GridError):
        derivative(torch.zeros(40, 40), "lap", radius=5, boundary="mask", mask=np.zeros((40, 40), bool))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.randn(2, 1, 64, 64, dtype=F64, generator=torch.Generator().manual_seed(6))
    mask = np.zeros((64, 64), bool)
    mask[10:50, 12:55] = True
    for boundary in ("valid", "reflect", "mask"):
        for method in ("direct", "fft", "matmul"):
            layer = MollifierLayer(6, ("u", "lap", "biharmonic"), boundary=boundary, method=method,
                                   mask=mask if boundary == "mask" else None)
            cpu = layer(g)
            gpu = layer.cuda()(g.cuda())
            for key in cpu:
                assert gpu[key].device.type == "cuda"
                torch.testing.assert_close(gpu[key].cpu(), cpu[key], rtol=1e-9, atol=1e-9)
    x = g.float().cuda().requires_grad_()
    derivative(x, "biharmonic", 6).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_matches_autodiff_of_a_coordinate_network():
    """Mollified derivatives of a smooth network on a grid agree with its autograd derivatives
    (same axis order: coordinate columns (y, x) <-> array axes (y, x)), up to the delta^2 bias."""
    from chromflow.models import MLP, grid_coordinates

    torch.manual_seed(0)
    net = MLP(2, 1, width=16, depth=2).double()
    shape, radius = (72, 80), 3.0
    layer = MollifierLayer(radius, ["u", (1, 0), (0, 1), (1, 1), "lap", "biharmonic"])
    coords, scale = grid_coordinates(shape, pad=layer.halo[0], dtype=F64)
    spacing = 1.0 / (max(shape) / 2 - 0.5 + layer.halo[0])  # normalised units per cell
    layer = MollifierLayer(radius * spacing, layer.orders, spacing=spacing)
    full = tuple(n + 2 * layer.halo[0] for n in shape)
    out = layer(net(coords).reshape(full))
    h = layer.halo[0]
    # the same points as the valid output: the padded grid's coordinates, cropped
    inner = coords.reshape(*full, 2)[h:-h, h:-h].reshape(-1, 2).clone().requires_grad_(True)
    u = net(inner)[:, 0]

    def grad(f):
        return torch.autograd.grad(f.sum(), inner, create_graph=True)[0]

    du = grad(u)
    uyy_uyx = grad(du[:, 0])
    uxx = grad(du[:, 1])[:, 1]
    lap = uyy_uyx[:, 0] + uxx
    bih = grad(grad(lap)[:, 0])[:, 0] + grad(grad(lap)[:, 1])[:, 1]
    truth = {"u": u, (1, 0): du[:, 0], (0, 1): du[:, 1], (1, 1): uyy_uyx[:, 1], "lap": lap, "biharmonic": bih}
    errors = {}
    for key, want in truth.items():
        want = want.detach().reshape(shape)
        errors[key] = float((out[key].detach() - want).abs().max() / want.abs().max())
    assert max(errors.values()) < 0.02, errors
