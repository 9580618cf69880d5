"""The training loop: convergence, schedules, early stopping, progress/cancel, determinism."""
import threading

import pytest
import torch

from chromflow.errors import CancelledError
from chromflow.training import TrainingHistory, resolve_device, seed_everything, train


def _quadratic(target):
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))

    def loss():
        diff = ((w - target) ** 2).sum()
        return diff, {"diff": diff.detach()}

    return w, loss


@pytest.mark.parametrize("optimizer", ["adam", "soap"])
def test_converges_to_known_minimum(optimizer):
    target = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    w, loss = _quadratic(target)
    hist = train(loss, [w], iterations=400, optimizer=optimizer, lr=0.05)
    assert torch.allclose(w.detach(), target, atol=1e-2)
    assert isinstance(hist, TrainingHistory)
    assert hist.iterations == 400 and hist.stop_reason == "iterations"
    assert len(hist.losses["total"]) == 400 and len(hist.losses["diff"]) == 400
    assert hist.losses["total"][-1] < 1e-3 * hist.losses["total"][0]
    assert hist.wall_time > 0


@pytest.mark.parametrize("schedule,last", [("cosine", 0.01), ("exponential", 0.01), (None, 1.0)])
def test_schedules_reach_final_fraction(schedule, last):
    w, loss = _quadratic(torch.ones(3, dtype=torch.float64))
    hist = train(loss, [w], iterations=50, lr=0.1, schedule=schedule, final_lr_fraction=0.01)
    assert hist.lr[0] == pytest.approx(0.1)
    assert hist.lr[-1] == pytest.approx(0.1 * last)
    assert all(a >= b - 1e-15 for a, b in zip(hist.lr, hist.lr[1:]))


def test_early_stopping_stops_on_plateau():
    p = torch.nn.Parameter(torch.zeros(1))
    # a loss with no dependence on the parameter never improves after the first iteration
    hist = train(lambda: ((p * 0).sum() + 1.0, {}), [p], iterations=1000, early_stopping=(10, 1e-6))
    assert hist.stop_reason == "early_stopping"
    assert hist.iterations == 11


def test_progress_and_cancel():
    w, loss = _quadratic(torch.ones(3, dtype=torch.float64))
    calls = []
    train(loss, [w], iterations=20, log_every=5, progress=lambda d, t, m: calls.append((d, t)))
    assert calls[0] == (0, 20) and calls[-1] == (20, 20)
    assert (5, 20) in calls and (15, 20) in calls

    event = threading.Event()
    count = {"n": 0}

    def stopping_loss():
        count["n"] += 1
        if count["n"] == 3:
            event.set()
        return loss()

    with pytest.raises(CancelledError):
        train(stopping_loss, [w], iterations=100, cancel=event)
    assert count["n"] == 3
    with pytest.raises(CancelledError):
        train(loss, [w], iterations=100, cancel=lambda: True)


def test_bit_reproducible_on_cpu():
    def run():
        seed_everything(7)
        net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        x = torch.rand(32, 2)
        y = torch.rand(32, 1)
        train(lambda: (((net(x) - y) ** 2).mean(), {}), net.parameters(), iterations=30, lr=1e-2)
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    assert torch.equal(run(), run())


def test_bad_arguments():
    w, loss = _quadratic(torch.ones(3))
    with pytest.raises(ValueError, match="adam"):
        train(loss, [w], iterations=5, optimizer="sgd")
    with pytest.raises(ValueError, match="cosine"):
        train(loss, [w], iterations=5, schedule="step")
    with pytest.raises(ValueError):
        train(loss, [w], iterations=0)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="auto"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_on_cuda():
    target = torch.tensor([1.0, -2.0, 0.5], device="cuda")
    w = torch.nn.Parameter(torch.zeros(3, device="cuda"))
    train(lambda: (((w - target) ** 2).sum(), {}), [w], iterations=300, lr=0.05)
    assert torch.allclose(w.detach(), target, atol=1e-2)


def test_set_threads_sets_and_restores():
    import torch

    from chromflow.training import set_threads

    before = torch.get_num_threads()
    try:
        assert set_threads(1) == before and torch.get_num_threads() == 1
        assert set_threads(None) == 1 and torch.get_num_threads() == 1
        set_threads("all")
        assert torch.get_num_threads() >= 1
        for bad in (0, -2, 1.5, "many"):
            with pytest.raises(ValueError, match="threads"):
                set_threads(bad)
    finally:
        torch.set_num_threads(before)


def test_adam_is_fused_unless_the_caller_asks_for_foreach():
    from chromflow.training import make_optimizer

    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2, dtype=torch.float64))]
    fused = make_optimizer("adam", iter(params), 0.1)   # a generator, as nn.Module.parameters() gives
    assert fused.defaults["fused"] is True and len(fused.param_groups[0]["params"]) == 2
    looped = make_optimizer("adam", params, 0.1, foreach=True)
    assert looped.defaults["foreach"] is True and not looped.defaults["fused"]
    # the fused update is the same Adam step: both move the parameters identically
    a = [torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))]
    b = [torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))]
    opts = [make_optimizer("adam", a, 0.1), make_optimizer("adam", b, 0.1, foreach=False)]
    for _ in range(5):
        for p, opt in zip((a[0], b[0]), opts):
            opt.zero_grad()
            (p ** 2).sum().backward()
            opt.step()
    assert torch.allclose(a[0], b[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_fused_adam_is_torch_adam_step_for_step(device):
    """FusedAdam runs torch's fused kernel with the same state as ``torch.optim.Adam(fused=True)``:
    the same parameters after every step, also when the learning rate changes between steps."""
    from chromflow.training import FusedAdam, make_optimizer

    for dtype in (torch.float32, torch.float64):
        gen = torch.Generator().manual_seed(3)
        start = [torch.randn(4, 3, dtype=dtype, generator=gen).to(device),
                 torch.randn(3, dtype=dtype, generator=gen).to(device)]
        ours = [torch.nn.Parameter(t.clone()) for t in start]
        ref = [torch.nn.Parameter(t.clone()) for t in start]
        opt_ours = make_optimizer("adam", ours, 0.05)
        assert isinstance(opt_ours, FusedAdam)
        opt_ref = torch.optim.Adam(ref, lr=0.05, fused=True)
        for it in range(40):
            for params, opt in ((ours, opt_ours), (ref, opt_ref)):
                for group in opt.param_groups:
                    group["lr"] = 0.05 * (1.0 - it / 50)
                opt.zero_grad(set_to_none=True)
                (torch.sin(params[0]).sum() * params[1].square().sum()).backward()
                opt.step()
            for a, b in zip(ours, ref):
                assert torch.equal(a, b)
    # mixed dtypes, or options, take torch's class
    mixed = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2, dtype=torch.float64))]
    assert isinstance(make_optimizer("adam", mixed, 0.1), torch.optim.Adam)
    assert isinstance(make_optimizer("adam", ours, 0.1, betas=(0.8, 0.99)), torch.optim.Adam)


def test_a_fit_does_not_import_the_compiler():
    """torch.optim's first use imports torch._dynamo (1.5-2.7 s per process here); a fit must not."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, chromflow as cf\n"
            "from types import SimpleNamespace\n"
            "m = np.zeros((24, 24), bool); m[4:20, 4:20] = True\n"
            "f = SimpleNamespace(phi_h=np.full((24, 24), 0.3), phi_e=np.full((24, 24), 0.2), mask=m, spacing=50.0,"
            " origin=(0.0, 0.0), source=None)\n"
            "cf.infer_rates(f, iterations=3, uncertainty=False)\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
