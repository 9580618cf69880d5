"""The training loop shared by every physics-informed fit, plus seeding and device choice.

:func:`train` minimises a loss closure over a list of parameters with Adam or SOAP, a learning
rate schedule, optional early stopping, and the chromflow progress/cancel protocol.
:func:`seed_everything` and :func:`resolve_device` are the one place where seeds and devices
are handled.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from ._progress import CancelToken, ProgressCallback, check_cancel, report

__all__ = ["train", "TrainingHistory", "seed_everything", "resolve_device", "make_optimizer", "FusedAdam",
           "OPTIMIZERS", "SCHEDULES", "set_threads"]

OPTIMIZERS = ("adam", "soap")
SCHEDULES = ("cosine", "exponential", None)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators (CPU and CUDA).

    Returns a :class:`torch.Generator` seeded the same way, for code that prefers a local one.
    On CPU, two runs after the same ``seed_everything(seed)`` give bit-identical results.

    Examples
    --------
    >>> _ = seed_everything(3); a = torch.rand(2)
    >>> _ = seed_everything(3); b = torch.rand(2)
    >>> bool(torch.equal(a, b))
    True
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def set_threads(threads) -> int:
    """Set the number of CPU threads torch uses for its operations; returns the previous number.

    Parameters
    ----------
    threads : int, "all" or None
        A positive count, ``"all"`` (every core this process may use), or None (leave torch's
        setting alone). On a machine shared with other jobs, fewer threads than cores is
        usually faster in wall time: see ``benchmarks/README.md`` ("Threads").

    Returns
    -------
    int
        The thread count before the call.

    Examples
    --------
    >>> before = set_threads(1)
    >>> torch.get_num_threads()
    1
    >>> _ = set_threads(before)
    """
    import os

    before = torch.get_num_threads()
    if threads is None:
        return before
    if isinstance(threads, str) and threads.lower() == "all":
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    else:
        try:
            n = int(threads)
        except (TypeError, ValueError):
            raise ValueError(f"threads must be a positive integer, 'all' or None, got {threads!r}") from None
        if n < 1 or n != threads and not isinstance(threads, str):
            raise ValueError(f"threads must be a positive integer, 'all' or None, got {threads!r}")
    torch.set_num_threads(n)
    return before


def resolve_device(device="auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a :class:`torch.device` into a device.

    ``"auto"`` picks CUDA when available, else CPU. Asking for CUDA without it raises
    ``ValueError``.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        dev = device
    elif device is None or (isinstance(device, str) and device.lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif isinstance(device, str) and (device.lower() == "cpu" or device.lower().startswith("cuda")):
        dev = torch.device(device.lower())
    else:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return dev


@dataclass
class TrainingHistory:
    """What happened during :func:`train`.

    Attributes
    ----------
    losses : dict of str -> list of float
        ``"total"`` and each component returned by the loss function, one value per iteration.
    iterations : int
        Iterations run.
    wall_time : float
        Seconds spent in the loop.
    stop_reason : str
        ``"iterations"`` (ran them all) or ``"early_stopping"``.
    lr : list of float
        Learning rate used at each iteration.
    """

    losses: dict = field(default_factory=dict)
    iterations: int = 0
    wall_time: float = 0.0
    stop_reason: str = "iterations"
    lr: list = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        """Total loss of the last iteration (NaN if none ran)."""
        total = self.losses.get("total", [])
        return float(total[-1]) if total else float("nan")

    def to_dict(self) -> dict:
        """JSON-able copy."""
        return {"losses": {k: list(map(float, v)) for k, v in self.losses.items()},
                "iterations": int(self.iterations), "wall_time": float(self.wall_time),
                "stop_reason": self.stop_reason, "lr": list(map(float, self.lr))}


class FusedAdam:
    """Adam with torch's fused kernel, without ``torch.optim.Optimizer``'s first-use cost.

    The same update as ``torch.optim.Adam(params, lr, fused=True)`` (same kernel, same state,
    tested step for step), for parameters of one device and dtype. Why not that class: its
    first use imports ``torch._dynamo``, a compiler chromflow never uses, which took 1.5-2.7 s
    of every fresh process here (a ``chromflow run`` of one nucleus is one process). The
    interface is the part of an optimiser the fits use: ``param_groups[i]["lr"]``,
    ``zero_grad()``, ``step()``.

    Parameters
    ----------
    params : list of Tensor
        Leaf tensors that require grad, all on one device with one floating dtype.
    lr : float
    betas : (float, float)
    eps : float

    Examples
    --------
    >>> w = torch.nn.Parameter(torch.tensor([3.0]))
    >>> opt = FusedAdam([w], lr=0.1)
    >>> for _ in range(200):
    ...     opt.zero_grad()
    ...     (w ** 2).sum().backward()
    ...     opt.step()
    >>> abs(float(w.detach())) < 1e-2
    True
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.param_groups = [{"params": self.params, "lr": float(lr)}]
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        # the kernel reads the step count from float32 tensors on the parameters' device
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    @staticmethod
    def supports(params) -> bool:
        """True when the fused kernel applies: one device (CPU or CUDA) and one floating dtype."""
        params = list(params)
        return (hasattr(torch, "_fused_adam_") and bool(params)
                and len({(p.device, p.dtype) for p in params}) == 1
                and params[0].device.type in ("cpu", "cuda") and params[0].is_floating_point())

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        with_grad = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not with_grad:
            return
        pick = (lambda xs: [xs[i] for i in with_grad])
        steps = pick(self.steps)
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(pick(self.params), [self.params[i].grad for i in with_grad], pick(self.exp_avgs),
                           pick(self.exp_avg_sqs), [], steps, amsgrad=False, lr=self.param_groups[0]["lr"],
                           beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0, eps=self.eps,
                           maximize=False, grad_scale=None, found_inf=None)


def make_optimizer(name: str, parameters, lr: float, **options):
    """Adam (:class:`FusedAdam`, else ``torch.optim.Adam``) or SOAP (``pytorch_optimizer.SOAP``).

    Adam with no options, on parameters of one device and dtype, is :class:`FusedAdam`: torch's
    fused update (for the default network's 8 tensors, 0.2 ms of a CPU step against 0.7 ms for
    the per-tensor loop) without ``torch.optim``'s import of ``torch._dynamo``. With options it
    is ``torch.optim.Adam`` (fused where it can be). SOAP (Shampoo-preconditioned Adam) defaults
    to no weight decay here: the PINN losses are not regularised that way.
    """
    key = str(name).lower()
    if key == "adam":
        parameters = list(parameters)
        if not options and FusedAdam.supports(parameters):
            return FusedAdam(parameters, lr=lr)
        if "foreach" not in options and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                            for p in parameters):
            options.setdefault("fused", True)
        return torch.optim.Adam(parameters, lr=lr, **options)
    if key == "soap":
        from pytorch_optimizer import SOAP

        options.setdefault("weight_decay", 0.0)
        return SOAP(parameters, lr=lr, **options)
    raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")


def _schedule_factor(schedule, it: int, iterations: int, final_fraction: float) -> float:
    # multiplicative factor on the base learning rate at iteration `it`, decaying to final_fraction
    if schedule is None:
        return 1.0
    t = it / max(iterations - 1, 1)
    if schedule == "cosine":
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "exponential":
        return final_fraction ** t
    raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")


def train(loss_fn: Callable[[], tuple], parameters: Iterable[torch.nn.Parameter], iterations: int = 1000,
          optimizer: str = "adam", lr: float = 1e-3, schedule: str | None = "cosine", final_lr_fraction: float = 0.01,
          early_stopping: tuple | None = None, progress: ProgressCallback = None, cancel: CancelToken = None,
          log_every: int = 25, grad_clip: float | None = None, optimizer_options: dict | None = None,
          message: str = "training") -> TrainingHistory:
    """Minimise ``loss_fn()`` over ``parameters``.

    Parameters
    ----------
    loss_fn : callable
        Called with no arguments each iteration; returns ``(total_loss, components)`` where
        ``total_loss`` is a scalar tensor to minimise and ``components`` a dict of name -> float
        or scalar tensor (logged, not differentiated).
    parameters : iterable of Parameter
        What to optimise.
    iterations : int
        Maximum number of optimiser steps.
    optimizer : {"adam", "soap"}
        Adam, or SOAP (Adam in the eigenbasis of Shampoo's preconditioner; often converges in
        fewer steps on stiff PINN losses, at a higher cost per step).
    lr : float
        Base learning rate.
    schedule : {"cosine", "exponential", None}
        Decay of the learning rate from ``lr`` to ``lr * final_lr_fraction`` over ``iterations``.
    final_lr_fraction : float
        Learning rate at the end, as a fraction of ``lr``.
    early_stopping : (patience, min_delta), optional
        Stop when the total loss has not decreased by more than ``min_delta`` *relative* to the
        best so far (``loss < best * (1 - min_delta)``) for ``patience`` iterations.
    progress : callable, optional
        ``progress(done, total, message)``, called every ``log_every`` iterations and at the end.
    cancel : callable or threading.Event, optional
        Checked every iteration; raises :class:`chromflow.errors.CancelledError` when set.
    log_every : int
        How often to report progress.
    grad_clip : float, optional
        Clip the global gradient norm to this value.
    optimizer_options : dict, optional
        Extra keyword arguments for the optimiser.
    message : str
        Text passed to ``progress``.

    Returns
    -------
    TrainingHistory

    Examples
    --------
    >>> w = torch.nn.Parameter(torch.tensor([3.0]))
    >>> hist = train(lambda: ((w ** 2).sum(), {}), [w], iterations=200, lr=0.1)
    >>> abs(float(w.detach())) < 1e-2, hist.iterations
    (True, 200)
    """
    iterations = int(iterations)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters were given")
    opt = make_optimizer(optimizer, params, lr, **(optimizer_options or {}))
    history = TrainingHistory(losses={"total": []})
    best, since_best = math.inf, 0
    start = time.perf_counter()
    report(progress, 0, iterations, message)
    for it in range(iterations):
        check_cancel(cancel, message)
        current_lr = lr * _schedule_factor(schedule, it, iterations, final_lr_fraction)
        for group in opt.param_groups:
            group["lr"] = current_lr
        opt.zero_grad(set_to_none=True)
        total, components = loss_fn()
        if not torch.isfinite(total):
            raise FloatingPointError(f"{message}: loss became {float(total)} at iteration {it}; "
                                     "lower the learning rate")
        total.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        value = float(total.detach())
        history.losses["total"].append(value)
        for name, comp in components.items():
            history.losses.setdefault(name, []).append(float(comp.detach() if torch.is_tensor(comp) else comp))
        history.lr.append(current_lr)
        history.iterations = it + 1
        if (it + 1) % max(int(log_every), 1) == 0 and it + 1 < iterations:
            report(progress, it + 1, iterations, message)
        if early_stopping is not None:
            patience, min_delta = early_stopping
            if value < best * (1 - min_delta) if best < math.inf else True:
                best, since_best = value, 0
            else:
                since_best += 1
                if since_best >= patience:
                    history.stop_reason = "early_stopping"
                    break
    history.wall_time = time.perf_counter() - start
    report(progress, iterations, iterations, message)
    return history
