"""Paths between two models in weight space: linear, Bezier and polygonal chains (docs/science.md, Paths).

A path is a set of points θ_0 = θ_A, θ_1..θ_{n-2} (bends), θ_{n-1} = θ_B and a coefficient function c(t), so
θ(t) = Σ_j c_j(t) θ_j. Only trainable parameters are interpolated; buffers (W-Asym masks, FiGLU matrices,
input normalisation) are the architecture and stay fixed along the whole path, and BN running statistics are
recomputed at each evaluated t. The network is evaluated at θ(t) with ``torch.func.functional_call``, so no
architecture needs a second "curve" version of itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from study.common.validation import unknown_choice


def bezier_coefficients(t: Tensor, n_points: int) -> Tensor:
    """Bernstein basis: c_j(t) = C(n−1, j) t^j (1−t)^(n−1−j)."""
    j = torch.arange(n_points, dtype=t.dtype, device=t.device)
    binom = torch.tensor([math.comb(n_points - 1, k) for k in range(n_points)], dtype=t.dtype, device=t.device)
    return binom * t**j * (1 - t) ** (n_points - 1 - j)


def polychain_coefficients(t: Tensor, n_points: int) -> Tensor:
    """Piecewise-linear 'hat' functions through equally spaced bends."""
    segments = n_points - 1
    position = t * segments
    j = torch.arange(n_points, dtype=t.dtype, device=t.device)
    return (1 - (position - j).abs()).clamp_min(0)


COEFFICIENTS: dict[str, Callable[[Tensor, int], Tensor]] = {
    "linear": polychain_coefficients,  # the two-point polygonal chain is the straight segment
    "bezier": bezier_coefficients,
    "polychain": polychain_coefficients,
}


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """The tensors a path interpolates: the model's parameters, detached."""
    return {name: p.detach() for name, p in model.named_parameters()}


class Path(nn.Module):
    """θ(t) between two endpoints; inner bends are ``nn.Parameter``s (initialised on the segment).

    ``kind='linear'`` has no bends. ``n_bends`` counts all points including the endpoints (Garipov et al.'s
    convention: a 3-bend Bezier curve has one trainable middle point).
    """

    def __init__(self, theta_a: Mapping[str, Tensor], theta_b: Mapping[str, Tensor], *, kind: str = "linear",
                 n_bends: int = 3):
        super().__init__()
        if kind not in COEFFICIENTS:
            raise unknown_choice("path kind", kind, list(COEFFICIENTS))
        if kind != "linear" and n_bends < 3:
            raise ValueError(f"a {kind} curve needs n_bends >= 3 (endpoints included), got {n_bends}")
        if set(theta_a) != set(theta_b):
            raise ValueError("endpoints must have the same parameter names")
        self.kind, self.names = kind, list(theta_a)
        self.n_points = 2 if kind == "linear" else n_bends
        self._a = {k: v.detach().clone() for k, v in theta_a.items()}
        self._b = {k: v.detach().clone() for k, v in theta_b.items()}
        self.bends = nn.ModuleList()
        for j in range(1, self.n_points - 1):
            s = j / (self.n_points - 1)
            self.bends.append(nn.ParameterDict(
                {_safe(k): nn.Parameter((1 - s) * self._a[k] + s * self._b[k]) for k in self.names}))

    def _apply(self, fn, recurse=True):  # keep the endpoint tensors on the same device/dtype as the bends
        super()._apply(fn, recurse)
        self._a = {k: fn(v) for k, v in self._a.items()}
        self._b = {k: fn(v) for k, v in self._b.items()}
        return self

    def points(self) -> list[dict[str, Tensor]]:
        inner = [{k: bend[_safe(k)] for k in self.names} for bend in self.bends]
        return [self._a, *inner, self._b]

    def coefficients(self, t: float | Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float32, device=next(iter(self._a.values())).device)
        return COEFFICIENTS[self.kind](t, self.n_points)

    def weights(self, t: float | Tensor) -> dict[str, Tensor]:
        """θ(t) for every interpolated tensor; differentiable w.r.t. the bends."""
        coeffs = self.coefficients(t)
        points = self.points()
        return {k: sum(coeffs[j] * points[j][k] for j in range(self.n_points)) for k in self.names}


def _safe(name: str) -> str:
    """ParameterDict keys cannot contain dots."""
    return name.replace(".", "__")


R = TypeVar("R")

#: Optimizers whose curve fitting uses Garipov et al.'s coupled (wd/2)‖θ(t)‖² term; every other one (AdamW)
#: decays the trainable bends decoupled, with its own ``weight_decay``.
COUPLED_L2_OPTIMIZERS = ("sgd",)


def curve_weight_decay(recipe: R) -> tuple[R, float | None]:
    """How weight decay acts when a curve is fitted with ``recipe`` (a :class:`study.core.train.Recipe`).

    Returns ``(recipe for the optimizer, l2)``: the recipe's optimizer decides, as for endpoints.
    - SGD: Garipov et al.'s loss term (l2/2)‖θ(t)‖² on the sampled point (``l2`` = the recipe's weight decay,
      :meth:`CurveModel.l2_penalty`) and the optimizer's own weight decay 0;
    - AdamW: no loss term (``l2`` is ``None``; an L2 term inside Adam would be coupled, scaled by Adam's
      per-coordinate step sizes), the recipe unchanged, so AdamW decays the trainable bends decoupled.
    """
    rec: Any = recipe
    if rec.optimizer in COUPLED_L2_OPTIMIZERS:
        return dataclasses.replace(rec, weight_decay=0.0), float(rec.weight_decay)
    return recipe, None


class CurveModel(nn.Module):
    """The network evaluated at θ(t) of a path, for curve fitting with the ordinary training loop.

    One t ~ U(0, 1) is drawn per minibatch by :meth:`resample` (called by the training loop before each
    step), so an adversarial attack on the batch attacks the same θ(t) it trains. :meth:`l2_penalty` is the
    (wd/2)‖θ(t)‖² term of Garipov et al. (the optimiser's own weight decay must then be 0); which of the two
    weight decays a fit uses is :func:`curve_weight_decay`'s decision.
    """

    def __init__(self, base: nn.Module, path: Path, *, weight_decay: float, seed: int):
        super().__init__()
        self.base, self.path, self.weight_decay = base, path, float(weight_decay)
        for p in self.base.parameters():
            p.requires_grad_(False)
        device = next(iter(path._a.values())).device
        self._generator = torch.Generator(device=device).manual_seed(int(seed))
        self.t = torch.tensor(0.5, device=device)
        self._theta: dict[str, Tensor] | None = None

    def get_extra_state(self) -> dict[str, Tensor]:
        """The t sampler's state travels with ``state_dict`` so a resumed curve fit draws the same t."""
        return {"generator": self._generator.get_state(), "t": self.t}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self._generator.set_state(state["generator"].cpu())
        self.t = state["t"].to(self.t.device)

    def resample(self) -> None:
        self.t = torch.rand((), generator=self._generator, device=self.t.device)
        self._theta = None

    def forward(self, x: Tensor) -> Tensor:
        self._theta = self.path.weights(self.t)
        return functional_call(self.base, self._theta, (x,))

    def l2_penalty(self) -> Tensor:
        theta = self._theta if self._theta is not None else self.path.weights(self.t)
        return 0.5 * self.weight_decay * sum((v * v).sum() for v in theta.values())

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.path.parameters())
