"""The paper's benchmark tasks: residuals, simulated data, autodiff/mollifier agreement, tiny fits, the table script."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from chromflow.physics import heat_rate, langevin_rate, langevin_residual, steady_heat_residual

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import _tasks  # noqa: E402
import paper_table  # noqa: E402


@pytest.fixture
def one_thread():
    # the machine's cores are shared: one thread avoids oversubscription, and is restored after
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# residuals on known solutions


@pytest.mark.parametrize("xp", ["numpy", "torch"])
def test_langevin_residual_zero_on_exact_solution(xp):
    t = np.linspace(0.0, 3.0, 50)
    u, u_t, lam = np.sin(t), np.cos(t), np.cos(t) - np.sin(t)  # sin solves u' = u + (cos - sin)
    if xp == "torch":
        u, u_t, lam = (torch.as_tensor(a) for a in (u, u_t, lam))
    assert np.allclose(np.asarray(langevin_residual(u, u_t, lam)), 0.0, atol=1e-14)
    assert np.allclose(np.asarray(langevin_rate(u, u_t)), np.asarray(lam), atol=1e-14)
    # a wrong forcing leaves exactly the difference
    assert np.allclose(np.asarray(langevin_residual(u, u_t, lam + 0.5)), -0.5)


@pytest.mark.parametrize("xp", ["numpy", "torch"])
def test_heat_residual_zero_on_manufactured_solution(xp):
    s = np.linspace(0.0, 1.0, 17)
    y, x = np.meshgrid(s, s, indexing="ij")
    lap_u = -2 * np.pi**2 * np.sin(np.pi * x) * np.sin(np.pi * y) - 1.0  # of sin sin/(1) - (x^2+y^2)/4
    lam = 1.0 + x * y
    m = -lam * lap_u
    if xp == "torch":
        lap_u, lam, m = (torch.as_tensor(a) for a in (lap_u, lam, m))
    assert np.allclose(np.asarray(steady_heat_residual(lap_u, lam, m)), 0.0, atol=1e-12)
    assert np.allclose(np.asarray(heat_rate(lap_u, m)), np.asarray(lam), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# simulated data carry the known parameter


def test_langevin_data_satisfy_the_equation():
    data = _tasks.make_data("langevin", grid=400, noise=0.0)
    t = np.arange(400) * data.spacing
    u = data.arrays["clean"]
    u_t = np.gradient(u, data.spacing, edge_order=2)  # 2nd-order differences
    lam = langevin_rate(u, u_t)
    assert np.allclose(lam[1:-1], _tasks.langevin_rate_truth(t)[1:-1], atol=5e-3)
    assert np.array_equal(data.observed, u)


def test_heat_data_satisfy_the_equation_and_noise_level():
    data = _tasks.make_data("heat", grid=40, noise=0.05, seed=3)
    u, h = data.arrays["clean"], data.spacing
    lap = (u[2:, 1:-1] + u[:-2, 1:-1] + u[1:-1, 2:] + u[1:-1, :-2] - 4 * u[1:-1, 1:-1]) / h**2
    res = steady_heat_residual(lap, data.truth[1:-1, 1:-1], data.arrays["source"][1:-1, 1:-1])
    assert np.abs(res).max() < 1e-8 * np.abs(data.arrays["source"]).max()
    assert np.isnan(data.truth[0]).all() and np.isfinite(data.truth[1:-1, 1:-1]).all()
    rel = np.std(data.observed - u) / np.std(u)
    assert 0.04 < rel < 0.06


def test_taskdata_round_trip(tmp_path):
    data = _tasks.make_data("heat", grid=12, noise=0.01, seed=1)
    data.save(tmp_path / "d.npz")
    back = _tasks.TaskData.load(tmp_path / "d.npz")
    assert back.task == "heat" and back.noise == 0.01 and back.seed == 1 and back.spacing == data.spacing
    np.testing.assert_array_equal(back.observed, data.observed)
    np.testing.assert_array_equal(back.truth, data.truth)
    np.testing.assert_array_equal(back.arrays["source"], data.arrays["source"])


def test_score_known_values():
    truth = np.array([1.0, 2.0, 3.0, np.nan])
    corr, rmse = _tasks.score(2 * truth + 1, truth)
    assert corr == pytest.approx(1.0) and rmse == pytest.approx(np.sqrt(np.mean([4, 9, 16])))
    corr, _ = _tasks.score(-truth, truth)
    assert corr == pytest.approx(-1.0)


# ---------------------------------------------------------------------------------------------
# autodiff and mollifier derivatives of the same network agree


@pytest.mark.parametrize("shape, order, radius_cells, tol", [((400,), 1, 4.0, 1e-3), ((64, 64), "lap", 3.0, 1e-2)])
def test_autodiff_and_mollifier_agree_on_the_same_network(one_thread, shape, order, radius_cells, tol):
    from chromflow.models import build_backbone
    from chromflow.training import seed_everything

    seed_everything(0)
    net = build_backbone("mlp", len(shape), 2, width=32, depth=3).double()
    problem = _tasks.PinnProblem(shape, 0.01, radius_cells, order, u_mean=0.5, u_std=2.0, dtype=torch.float64)
    u_a, d_a, lam_a = (v.detach() for v in problem.fields(net, "autodiff"))
    u_m, d_m, lam_m = (v.detach() for v in problem.fields(net, "mollifier"))
    assert u_a.shape == u_m.shape == d_a.shape == d_m.shape == shape
    # mollification bias is O(delta^2): small for a smooth network on a fine grid
    assert float((u_a - u_m).abs().max() / u_a.abs().max()) < tol / 5
    assert float((d_a - d_m).abs().max() / d_a.abs().max()) < tol
    assert torch.equal(lam_a, lam_m)  # lambda is the same channel at the same points
    assert float(d_a.abs().max()) > 1e-2  # a non-trivial derivative was compared


# ---------------------------------------------------------------------------------------------
# tiny fits recover the parameter


@pytest.mark.parametrize("mode", ["autodiff", "mollifier"])
def test_langevin_fit_recovers_forcing(one_thread, mode):
    data = _tasks.make_data("langevin", grid=96, noise=0.01, seed=0)
    result = _tasks.fit(data, "mlp", mode, iterations=300, seed=0)
    corr, rmse = _tasks.score(result.rate, data.truth)
    assert result.iterations == 300 and result.rate.shape == (96,)
    assert corr > 0.8, corr  # an untrained network gives ~0; longer runs reach higher


def test_heat_fit_recovers_conductivity(one_thread):
    data = _tasks.make_data("heat", grid=16, noise=0.0, seed=0)
    # 400 steps sat at the edge (corr 0.806 with torch.tanh, 0.785 with the sigmoid form: the
    # same function to 3e-16, another rounding path); at 600 both are past 0.95
    result = _tasks.fit(data, "mlp", "mollifier", iterations=600, seed=0)
    corr, _ = _tasks.score(result.rate, data.truth)
    assert np.all(result.rate > 0)  # the conductivity is kept positive
    assert corr > 0.8, corr


def test_chromatin_fit_through_infer_rates(one_thread):
    pytest.importorskip("chromflow.inverse")
    data = _tasks.make_data("chromatin", grid=32, noise=0.0, seed=0)
    result = _tasks.fit(data, "mlp", "mollifier", iterations=150, seed=0)
    corr, _ = _tasks.score(result.rate, data.truth)
    assert np.isnan(result.rate[~data.arrays["mask"]]).all()
    assert corr > 0.8, corr


# ---------------------------------------------------------------------------------------------
# the table script


def test_ratios_and_markdown():
    rows = [dict(task="heat", backbone="mlp", noise=0.0, mode="autodiff", ms_per_iter=30.0, peak_mb=100.0, corr=0.5),
            dict(task="heat", backbone="mlp", noise=0.0, mode="mollifier", ms_per_iter=3.0, peak_mb=4.0, corr=0.9)]
    (r,) = paper_table.ratios(rows)
    assert r["speedup_per_iter"] == pytest.approx(10.0) and r["memory_ratio"] == pytest.approx(25.0)
    assert r["order"] == 2
    table = paper_table.markdown(rows, ["task", "mode", "corr"])
    lines = table.splitlines()
    assert lines[0] == "| task | mode | corr |" and len(lines) == 4 and "| heat | mollifier | 0.9 |" in lines


def test_paper_table_end_to_end(tmp_path, capsys):
    out = tmp_path / "table.csv"
    rc = paper_table.main(["--tasks", "langevin", "--backbones", "mlp", "--noise", "0", "--iterations", "12",
                           "--grid", "48", "--device", "cpu", "--threads", "1", "--out", str(out)])
    assert rc == 0
    import pandas as pd

    df = pd.read_csv(out)
    assert list(df["mode"]) == ["autodiff", "mollifier"] and (df["iterations"] == 12).all()
    assert (df["time_s"] > 0).all() and df["peak_mb"].notna().all() and df["corr"].notna().all()
    assert np.allclose(df["ms_per_iter"], 1e3 * df["time_s"] / 12)
    printed = capsys.readouterr().out
    assert "| langevin | 1 | mlp |" in printed and "speedup_per_iter" in printed


def test_cpu_tensor_peak_reads_the_bytes_tensors_held_at_once():
    """Known answer: 8 MiB held with 4 MiB on top of it, then both freed: the peak is 12 MiB,
    whatever the process held before the block."""
    keep = torch.ones(2**20)                              # held before: not counted
    with paper_table.CpuTensorPeak() as peak:
        a = torch.empty(2 * 2**20, dtype=torch.float32)   # 8 MiB
        b = torch.empty(2**20, dtype=torch.float32)       # 4 MiB more
        del a, b
        c = torch.empty(2**20, dtype=torch.float32)       # 4 MiB, after the frees
        del c
    assert peak.mb == pytest.approx(12.0, abs=0.1)
    assert keep.numel() == 2**20


def test_chromatin_step_rounds_take_medians_and_ratios_within_each_round():
    """--rounds: the table's row is the median over rounds; each round's ratios use its own
    mollifier run (a drift between rounds cancels); a failed round is left out."""
    import chromatin_step as cs

    def row(mode, ms, mb, tensor=float("nan")):
        return {"mode": mode, "ms_per_step": ms, "peak_mb": mb, "saved_mb": 1.0, "total_s": 1.0, "tensor_mb": tensor}

    runs = [[row("mollifier", 30.0, 60.0, 15.0), row("autodiff", 600.0, 900.0, 520.0)],
            [row("autodiff", 800.0, 950.0), row("mollifier", 40.0, 70.0)],       # a slower phase
            [row("mollifier", 35.0, 65.0), {"mode": "autodiff", "error": "killed"}]]
    rows = {r["mode"]: r for r in cs.combine_rounds(runs, ["mollifier", "autodiff"])}
    assert rows["mollifier"]["ms_per_step"] == 35.0 and rows["autodiff"]["ms_per_step"] == 700.0
    assert rows["mollifier"]["tensor_mb"] == 15.0 and rows["autodiff"]["tensor_mb"] == 520.0
    ratios = cs.round_ratios(runs)
    assert ratios[0]["autodiff"][:2] == (20.0, 15.0) and ratios[1]["autodiff"][:2] == (20.0, 950.0 / 70.0)
    assert "autodiff" not in ratios[2] and ratios[2]["mollifier"][2] == 35.0


def test_calibrate_uncertainty_zone_table_finds_each_zones_floor(tmp_path):
    """Saved parts whose errors are Gaussian with a known sd per zone: the rule (most cases in
    0.80-0.95, then nearest to 0.875) picks, per zone, the floor whose interval covers 87.5 %."""
    import calibrate_uncertainty as cu
    from scipy.stats import norm

    yy, xx = np.mgrid[:70, :70]
    cells = (yy - 35) ** 2 + (xx - 35) ** 2 <= 33 ** 2             # 50 nm cells: 1.65 um radius
    from chromflow.inverse.result import edge_bias_zone

    zone = edge_bias_zone(cells, 50.0)
    z = norm.ppf(0.5 + 0.875 / 2)
    # sd such that 1.645 sqrt(1 + g^2) covers 87.5 %: g = 1 deep, g = 2 in the zone
    sd = np.where(zone, cu.Z90 * np.sqrt(5.0) / z, cu.Z90 * np.sqrt(2.0) / z)
    for seed in (0, 1):
        err = sd * np.random.default_rng(seed).standard_normal(cells.shape)
        np.savez(tmp_path / f"case_s{seed}.npz", rate=np.where(cells, 1.0 + err, np.nan), truth=np.where(cells, 1.0, np.nan),
                 cells=cells, noise_var=np.ones(cells.shape), excess=np.zeros(cells.shape))
    chosen = cu.zone_table(tmp_path)
    assert chosen["deep"][1] == 1.0 and chosen["edge zone"][1] == 2.0
    # the same errors with the ratio mix's shift (1 per cell) in the error model: the floors left
    # to find are those of the rest, 0 deep (1 + 0 + 1 = 2) and sqrt(2) -> none; 1.5 in the zone
    # (1 + 2.25 + 1 = 4.25)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    sd = np.where(zone, cu.Z90 * np.sqrt(4.25) / z, cu.Z90 * np.sqrt(2.0) / z)
    for seed in (0, 1):
        err = sd * np.random.default_rng(seed).standard_normal(cells.shape)
        np.savez(mixed / f"case_s{seed}.npz", rate=np.where(cells, 1.0 + err, np.nan), truth=np.where(cells, 1.0, np.nan),
                 cells=cells, noise_var=np.ones(cells.shape), excess=np.zeros(cells.shape), mix_shift=np.ones(cells.shape))
    chosen = cu.zone_table(mixed)
    assert chosen["deep"][1] == 0.0 and chosen["edge zone"][1] == 1.5


def test_calibrate_uncertainty_reads_the_mix_shift_of_older_saves():
    """Cases saved before 0.9 hold the ratio and the weight: the shift ``w (ratio - net)`` is
    recovered from the mixed map ``net + w (ratio - net)``; none where the ratio is implausible."""
    import calibrate_uncertainty as cu

    net = np.array([[1.0, 2.0], [0.5, 3.0]])
    ratio = np.array([[1.5, 1.0], [np.nan, 1e6]])
    w = 0.4
    rate = np.where(np.isfinite(ratio) & (ratio < 1e2), net + w * (np.nan_to_num(ratio) - net), net)
    saved = dict(rate=rate, ratio=ratio, ratio_weight=np.array(w), noise_var=np.ones((2, 2)))
    assert np.allclose(cu._shift(saved), [[0.2, -0.4], [0.0, 0.0]], rtol=0, atol=1e-12)
    assert not cu._shift(dict(saved, ratio_weight=np.array(0.0))).any()
    assert not cu._shift(dict(noise_var=np.ones((2, 2)), rate=rate)).any()
