"""Projected gradient descent (Madry et al. 2018) in [0, 1] pixel space.

Why pixel space: models carry their own input normalisation, so ``eps`` means the same thing (e.g. 8/255) for
every data set and architecture, and the box constraint [0, 1] is exact rather than a normalised approximation.

The attack is written to run inside a training step on a GPU: it never synchronises with the host (no
``.item()``, no Python branches on tensor values), takes gradients with respect to the perturbation only (so
parameter ``.grad`` is never touched), and does not let its forward passes leak into BatchNorm running
statistics when the caller has the model in train mode (Madry training attacks in train mode).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

NORMS = ("linf", "l2")
#: PGD steps per attack: every step is a forward and a backward pass per training batch; far beyond the
#: hundreds used by the strongest evaluations, more than 10,000 is a typo rather than a plan.
MAX_STEPS = 10_000

# Guards a per-sample division by a norm that can legitimately be 0 (zero gradient, zero perturbation).
_TINY = 1e-12


@dataclass(frozen=True)
class AttackConfig:
    """One PGD attack. ``eps == 0`` means "no attack" (clean training/evaluation).

    ``eps`` is in [0, 1] pixel units (L∞: per pixel; L2: Euclidean norm of the whole per-sample perturbation).
    ``alpha`` is the step size; ``None`` means ``eps / 4`` for both norms, which with the default 5 steps lets
    the iterate cross the ball a little more than once (Tatro et al. use eps=8/255, alpha=2/255, 5 steps).
    """

    eps: float = 0.0
    alpha: float | None = None
    steps: int = 5
    norm: str = "linf"
    random_start: bool = True

    def __post_init__(self) -> None:
        if not _is_real(self.eps) or not math.isfinite(self.eps) or self.eps < 0:
            raise ValueError(f"AttackConfig.eps must be a finite number >= 0 (pixel units), got {self.eps!r}")
        if self.alpha is not None and (not _is_real(self.alpha) or not math.isfinite(self.alpha) or self.alpha <= 0):
            raise ValueError(f"AttackConfig.alpha must be None (= eps/4) or a finite number > 0, got {self.alpha!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"AttackConfig.steps must be an integer >= 1 and <= {MAX_STEPS}, got {self.steps!r}")
        if self.norm not in NORMS:
            raise ValueError(f"AttackConfig.norm must be one of {', '.join(NORMS)}; got {self.norm!r}")
        if not isinstance(self.random_start, bool):
            raise ValueError(f"AttackConfig.random_start must be True or False, got {self.random_start!r}")
        # Stored as floats so that equal configs serialise (and hash) identically: eps=1 and eps=1.0 are one attack.
        object.__setattr__(self, "eps", float(self.eps))
        if self.alpha is not None:
            object.__setattr__(self, "alpha", float(self.alpha))

    @property
    def disabled(self) -> bool:
        """True when the attack is the identity (``eps == 0``), so callers can skip it entirely."""
        return self.eps == 0

    @property
    def step_size(self) -> float:
        """``alpha`` with its default (``eps / 4``) filled in."""
        return self.alpha if self.alpha is not None else self.eps / 4


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Let ``model`` run forward passes in whatever mode it is in without changing BatchNorm running statistics.

    Why not just switch to eval mode: Madry training attacks the model as it trains, i.e. with batch statistics;
    only the side effect on the running averages is unwanted (the attack's inputs are not the data distribution,
    and extra updates would make the statistics depend on the number of attack steps).

    Modules with an exponential average (``momentum`` set) get ``momentum = 0``, which makes the update the
    identity without copying the buffers; cumulative-average modules (``momentum=None``, used for exact BN
    recalibration) weight the new batch by ``1/num_batches_tracked``, so their buffers are saved and restored.
    ``num_batches_tracked`` is restored in both cases.
    """
    saved: list[tuple[_BatchNorm, float | None, dict[str, Tensor]]] = []
    for module in model.modules():
        if not isinstance(module, _BatchNorm) or not module.track_running_stats:
            continue
        names = ["num_batches_tracked"]
        if module.momentum is None:
            names += ["running_mean", "running_var"]
        buffers = {n: getattr(module, n).clone() for n in names if getattr(module, n, None) is not None}
        saved.append((module, module.momentum, buffers))
        if module.momentum is not None:
            module.momentum = 0.0
    try:
        yield model
    finally:
        for module, momentum, buffers in saved:
            module.momentum = momentum
            for name, value in buffers.items():
                getattr(module, name).copy_(value)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    config: AttackConfig,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Adversarial examples for ``(x, y)``: maximise cross-entropy within the eps-ball around ``x`` and [0, 1].

    The model's train/eval mode is left as the caller set it; BatchNorm running statistics are not updated.
    ``generator`` (on ``x``'s device) drives the random start, so a seeded generator gives a reproducible attack.
    Returns a detached tensor; with ``eps == 0`` that is ``x`` itself (no forward pass at all).
    """
    if config.disabled:
        return x.detach()
    x = x.detach()
    if config.random_start:
        delta = _project(_random_start(x, config, generator), x, config)
    else:
        delta = torch.zeros_like(x)
    with frozen_batchnorm_stats(model), torch.enable_grad():
        for _ in range(config.steps):
            delta.requires_grad_(True)
            # Summed, not averaged: each sample's gradient must not shrink with the batch size (it would
            # underflow under bf16 for big batches); the step direction is normalised anyway.
            loss = F.cross_entropy(model(x + delta).float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            delta = _project(delta.detach() + config.step_size * _ascent_direction(grad, config.norm), x, config)
    return (x + delta).clamp_(0.0, 1.0).detach()


def _per_sample_norm(t: Tensor) -> Tensor:
    """L2 norm of each sample, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _random_start(x: Tensor, config: AttackConfig, generator: torch.Generator | None) -> Tensor:
    """A perturbation drawn uniformly from the eps-ball (before clipping to [0, 1])."""
    if config.norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * config.eps
    # Uniform in the L2 ball: isotropic direction, radius eps * U^(1/d) (volume grows like r^d).
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / _per_sample_norm(direction).clamp_min(_TINY)
    d = x[0].numel()
    u = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
    return direction * (config.eps * u.pow(1.0 / d))


def _ascent_direction(grad: Tensor, norm: str) -> Tensor:
    """Steepest ascent direction of unit size in ``norm`` (signed gradient for L∞, normalised for L2)."""
    if norm == "linf":
        return grad.sign()
    return grad / _per_sample_norm(grad).clamp_min(_TINY)


def _project(delta: Tensor, x: Tensor, config: AttackConfig) -> Tensor:
    """Project onto the eps-ball, then onto the box ``0 <= x + delta <= 1``.

    The second projection only moves coordinates towards 0 (``x`` is inside the box), so it cannot leave the
    ball again: the result lies in the intersection for both norms.
    """
    if config.norm == "linf":
        delta = delta.clamp(-config.eps, config.eps)
    else:
        delta = delta * (config.eps / _per_sample_norm(delta).clamp_min(_TINY)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0) - x
