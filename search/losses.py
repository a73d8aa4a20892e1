"""Latency-aware objectives: the paper's, the official code's, and REINFORCE's reward.

* ``paper``      CE + λ2·E[LAT]   (λ1‖w‖² is the weight optimizer's weight decay)
* ``add#linear`` CE + λ·(E[LAT] − T)/T                     (official code; λ = 0.1)
* ``mul#log``    CE · α · (log E[LAT] / log T)^β           (official code; α = 0.2, β = 0.3), with the
  logs taken in a unit ``u`` below every latency the search can see: ``log(E/u) / log(T/u)``. The
  official formula is ``u`` = 1 ms, and that is what is used whenever the fastest network and T are
  above 1 ms; below (fast devices, small resolutions) the official form is NaN (log E < 0 under a
  fractional power), so :func:`mul_log_unit` picks a smaller ``u`` and the loss stays finite.
* ``add#abs``    CE + λ·|E[LAT] − T|/T  — ours, not in the paper: a two-sided penalty that steers
  E[LAT] to the target T instead of only pushing latency down.
* ``none``       CE only (latency ignored).

REINFORCE's reward is ``acc · (T / LAT)^w`` (official w = 0.1).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from latbench.errors import ConfigError

if TYPE_CHECKING:  # torch is only needed by callers that pass tensors (keeps `latbench --help` fast)
    import torch

LOSS_FORMS: tuple[str, ...] = ("paper", "add#linear", "mul#log", "add#abs", "none")
NEEDS_TARGET = frozenset({"add#linear", "mul#log", "add#abs"})
#: Default λ per form (λ2 for ``paper`` is per ms).
DEFAULT_LAMBDA = {"paper": 0.01, "add#linear": 0.1, "add#abs": 0.5, "mul#log": 0.0, "none": 0.0}


def check_form(form: str, target: float | None) -> None:
    """Fail with one clear line on an unknown form or a missing/invalid target."""
    if form not in LOSS_FORMS:
        raise ConfigError(f"unknown latency loss {form!r}; choose one of {', '.join(LOSS_FORMS)}")
    if form in NEEDS_TARGET:
        if target is None:
            raise ConfigError(f"latency loss {form} needs --target-latency T (ms)")
    if target is not None and target <= 0:
        raise ConfigError(f"--target-latency must be > 0 ms, got {target}")


def mul_log_unit(fastest_ms: float, target: float) -> float:
    """The unit (ms) of mul#log's logs: 1 ms (the official code) when the fastest network and the
    target are both above 1 ms, else half the smaller of them, so every log is positive."""
    low = min(fastest_ms, target)
    return 1.0 if low > 1.0 else low / 2.0


def latency_loss(ce: torch.Tensor, expected: torch.Tensor, form: str = "paper", lam: float | None = None,
                 target: float | None = None, mul_alpha: float = 0.2, mul_beta: float = 0.3,
                 mul_unit: float = 1.0) -> torch.Tensor:
    """The architecture objective from cross-entropy ``ce`` and expected latency ``expected`` (ms).

    ``mul_unit``: the unit of mul#log's logs (:func:`mul_log_unit`; 1 ms = the official formula)."""
    check_form(form, target)
    lam = DEFAULT_LAMBDA[form] if lam is None else lam
    if form == "none":
        return ce
    if form == "paper":
        return ce + lam * expected
    if form == "add#linear":
        return ce + lam * (expected - target) / target
    if form == "add#abs":
        return ce + lam * (expected - target).abs() / target
    assert target is not None
    ratio = (expected / mul_unit).log() / math.log(target / mul_unit)
    return mul_alpha * ce * ratio.clamp_min(1e-6) ** mul_beta


def reinforce_reward(acc: float, latency: float, target: float, w: float = 0.1) -> float:
    """``acc · (T / LAT)^w``."""
    return acc * (target / latency) ** w
