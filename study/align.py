"""Alignment: permutations of model B's hidden units that bring it closest to model A (science.md §2).

Every method reads only the permutation spec, so it works for every architecture without special cases.
Returned permutations map B onto A: ``permutation.apply(model_b, alignment.perms)`` is B aligned to A.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from study import permutation as P
from study.data import Dataset
from study.models.layers import FiGLU, _WAsymMixin
from study.validation import unknown_choice

log = logging.getLogger(__name__)


@dataclass
class Alignment:
    """Permutations mapping B onto A plus what a researcher wants to log about how they were found."""

    perms: dict[str, Tensor]
    method: str
    diagnostics: dict[str, float] = field(default_factory=dict)


def function_preserving(model: nn.Module) -> bool:
    """False for W-Asym/FiGLU nets: their fixed tensors do not move with a permutation, so alignment there is a
    diagnostic (the recovered permutation should be near identity), not a symmetry."""
    return not any(isinstance(m, (_WAsymMixin, FiGLU)) for m in model.modules())


# --------------------------------------------------------------------------------------------------------
# Activation matching (Tatro et al. 2020; 'inner' is Ainsworth et al.'s variant)
# --------------------------------------------------------------------------------------------------------
class _Moments:
    """Streaming first and second moments of two activation sets: O(C²) memory whatever the data size."""

    def __init__(self) -> None:
        self.n = 0
        self.sum_a = self.sum_b = self.sum_aa = self.sum_bb = self.sum_ab = None  # type: ignore[assignment]

    def add(self, a: Tensor, b: Tensor) -> None:
        a, b = a.double(), b.double()
        if self.sum_ab is None:
            c = a.shape[1]
            zeros = lambda *s: torch.zeros(*s, dtype=torch.float64, device=a.device)  # noqa: E731
            self.sum_a, self.sum_b, self.sum_aa, self.sum_bb = zeros(c), zeros(c), zeros(c), zeros(c)
            self.sum_ab = zeros(c, c)
        self.n += a.shape[0]
        self.sum_a += a.sum(0)
        self.sum_b += b.sum(0)
        self.sum_aa += (a * a).sum(0)
        self.sum_bb += (b * b).sum(0)
        self.sum_ab += a.t() @ b

    def similarity(self, kind: str) -> Tensor:
        inner = self.sum_ab / self.n
        if kind == "inner":
            return inner
        mean_a, mean_b = self.sum_a / self.n, self.sum_b / self.n
        std_a = (self.sum_aa / self.n - mean_a**2).clamp_min(0).sqrt() + 1e-5
        std_b = (self.sum_bb / self.n - mean_b**2).clamp_min(0).sqrt() + 1e-5
        return (inner - mean_a[:, None] * mean_b[None, :]) / (std_a[:, None] * std_b[None, :])


def _as_samples(activation: Tensor) -> Tensor:
    """[N, C, *spatial] -> [N·spatial, C]: every spatial position of a conv map is a sample."""
    return activation.movedim(1, -1).reshape(-1, activation.shape[1])


@contextmanager
def _capture(model: nn.Module, names: list[str]) -> Iterator[dict[str, Tensor]]:
    store: dict[str, Tensor] = {}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, o.detach()))
               for n in names]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _solve(similarity: Tensor) -> Tensor:
    rows, cols = linear_sum_assignment(similarity.cpu().numpy(), maximize=True)
    assert np.array_equal(rows, np.arange(len(rows)))
    return torch.as_tensor(cols, dtype=torch.long)


def activation_matching(model_a: nn.Module, model_b: nn.Module, *, data: Tensor, seed: int = 0,
                        similarity: str = "pearson", batch_size: int = 500) -> Alignment:
    """Correlate post-nonlinearity activations on ``data``; a tied stream sums its correlation matrices."""
    if similarity not in ("pearson", "inner"):
        raise unknown_choice("similarity", similarity, ["pearson", "inner"])
    spec = model_a.permutation_spec()  # type: ignore[operator]
    points = [(p, name) for p, names in spec.activations.items() for name in names]
    moments = {point: _Moments() for point in points}
    names = [name for _, name in points]
    was_training = (model_a.training, model_b.training)
    model_a.eval(), model_b.eval()
    with torch.no_grad(), _capture(model_a, names) as acts_a, _capture(model_b, names) as acts_b:
        for start in range(0, len(data), batch_size):
            x = data[start:start + batch_size]
            model_a(x), model_b(x)
            for point in points:
                moments[point].add(_as_samples(acts_a[point[1]]), _as_samples(acts_b[point[1]]))
    model_a.train(was_training[0]), model_b.train(was_training[1])
    perms, before, after = {}, [], []
    for p in spec.activations:
        sims = [moments[(p, name)].similarity(similarity) for name in spec.activations[p]]
        perm = _solve(sum(sims))
        perms[p] = perm
        for sim in sims:
            before.append(sim.diagonal().mean().item())
            after.append(sim[torch.arange(len(perm)), perm.to(sim.device)].mean().item())
    key = "corr" if similarity == "pearson" else "inner"
    return Alignment(perms, "activation", {f"mean_{key}_before": float(np.mean(before)),
                                           f"mean_{key}_after": float(np.mean(after)),
                                           "alignment_samples": float(len(data))})


# --------------------------------------------------------------------------------------------------------
# Weight matching (Ainsworth et al. 2023, Git Re-Basin): data-free coordinate ascent over the spec
# --------------------------------------------------------------------------------------------------------
def _params(model: nn.Module, spec: P.PermutationSpec) -> dict[str, Tensor]:
    """Trainable tensors only: BN running statistics describe data, not the function's weights."""
    names = {n for n, _ in model.named_parameters()}
    state = model.state_dict()
    return {k: state[k].detach().double() for k in spec.axes if k in names}


def _permuted_except(spec: P.PermutationSpec, perms: Mapping[str, Tensor], key: str, tensor: Tensor,
                     skip_axis: int) -> Tensor:
    for axis, p in enumerate(spec.axes[key]):
        if p is not None and axis != skip_axis:
            tensor = tensor.index_select(axis, perms[p])
    return tensor


def _objective(spec: P.PermutationSpec, a: Mapping[str, Tensor], b: Mapping[str, Tensor],
               perms: Mapping[str, Tensor]) -> float:
    permuted = P.permute_state(b, P.PermutationSpec({k: spec.axes[k] for k in b}), perms)
    return float(sum((a[k] * permuted[k]).sum() for k in a))


def _weight_matching_once(spec: P.PermutationSpec, a: dict[str, Tensor], b: dict[str, Tensor],
                          sizes: Mapping[str, int], generator: torch.Generator,
                          max_sweeps: int) -> tuple[dict[str, Tensor], int]:
    perm_to_axes = {p: [(k, ax) for k, ax in places if k in a] for p, places in spec.perm_to_axes.items()}
    names = list(perm_to_axes)
    perms = P.identity(sizes, device=next(iter(a.values())).device)
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        improved = False
        for index in torch.randperm(len(names), generator=generator).tolist():
            p, n = names[index], sizes[names[index]]
            cost = torch.zeros(n, n, dtype=torch.float64, device=perms[p].device)
            for key, axis in perm_to_axes[p]:
                w_a = a[key].movedim(axis, 0).reshape(n, -1)
                w_b = _permuted_except(spec, perms, key, b[key], axis).movedim(axis, 0).reshape(n, -1)
                cost += w_a @ w_b.t()
            new = _solve(cost).to(perms[p].device)
            rows = torch.arange(n, device=cost.device)
            gain = cost[rows, new].sum() - cost[rows, perms[p]].sum()
            if gain > 1e-12:
                improved = True
                perms[p] = new
        if not improved:
            break
    return perms, sweeps


def weight_matching(model_a: nn.Module, model_b: nn.Module, *, seed: int = 0, max_sweeps: int = 100,
                    restarts: int = 1, data: Tensor | None = None) -> Alignment:
    """Coordinate ascent on Σ⟨θ_A, π(θ_B)⟩ in a seeded random order; keeps the best of ``restarts`` runs."""
    del data  # data-free by design; accepted so every method has the same call signature
    if max_sweeps < 1 or restarts < 1:
        raise ValueError(f"max_sweeps and restarts must be >= 1, got {max_sweeps}, {restarts}")
    spec = model_a.permutation_spec()  # type: ignore[operator]
    a, b = _params(model_a, spec), _params(model_b, spec)
    sizes = spec.sizes(model_a.state_dict())
    generator = torch.Generator().manual_seed(int(seed))
    best: tuple[float, dict[str, Tensor], int] | None = None
    for _ in range(restarts):
        perms, sweeps = _weight_matching_once(spec, a, b, sizes, generator, max_sweeps)
        objective = _objective(spec, a, b, perms)
        if best is None or objective > best[0]:
            best = (objective, perms, sweeps)
    assert best is not None
    objective, perms, sweeps = best
    return Alignment({p: v.cpu() for p, v in perms.items()}, "weight", {
        "objective": objective,
        "objective_identity": _objective(spec, a, b, P.identity(sizes, device=next(iter(a.values())).device)),
        "sweeps": float(sweeps),
    })


def no_alignment(model_a: nn.Module, model_b: nn.Module, **_: Any) -> Alignment:
    spec = model_a.permutation_spec()  # type: ignore[operator]
    return Alignment(P.identity(spec.sizes(model_a.state_dict())), "none")


def pam(model_a: nn.Module, model_b: nn.Module, **options: Any) -> Alignment:
    """PAM (Tatro et al. 2020): lives in :mod:`study.pam`, which builds on this module (hence the late import)."""
    from study.pam import pam as run_pam

    return run_pam(model_a, model_b, **options)


METHODS: dict[str, Callable[..., Alignment]] = {
    "none": no_alignment,
    "activation": activation_matching,
    "weight": weight_matching,
    "pam": pam,
}
NEEDS_DATA = {"activation"}  # methods given an input tensor (the alignment batch)
NEEDS_DATASET = {"pam"}  # methods given the whole study.data.Dataset (they train)


def match(model_a: nn.Module, model_b: nn.Module, *, method: str = "activation", data: Tensor | Dataset | None = None,
          seed: int = 0, **options: Any) -> Alignment:
    """Align B to A with ``method``; diagnostics include seconds and whether the result preserves B's function."""
    if method not in METHODS:
        raise unknown_choice("alignment method", method, list(METHODS))
    if method in NEEDS_DATA and data is None:
        raise ValueError(f"alignment method {method!r} needs data (an alignment batch of inputs)")
    if method in NEEDS_DATASET and not isinstance(data, Dataset):
        raise ValueError(f"alignment method {method!r} needs data (the whole Dataset), got {type(data).__name__}")
    shapes_a = {k: v.shape for k, v in model_a.state_dict().items()}
    shapes_b = {k: v.shape for k, v in model_b.state_dict().items()}
    if type(model_a) is not type(model_b) or shapes_a != shapes_b:
        raise ValueError("models to align must have the same architecture")
    start = time.perf_counter()
    kwargs: dict[str, Any] = dict(options)
    if method in NEEDS_DATA | NEEDS_DATASET:
        kwargs["data"] = data
    result = METHODS[method](model_a, model_b, seed=seed, **kwargs)
    result.diagnostics["seconds"] = time.perf_counter() - start
    result.diagnostics["function_preserving"] = float(function_preserving(model_b))
    result.diagnostics["identity_fraction"] = float(np.mean(
        [(v == torch.arange(len(v))).float().mean().item() for v in result.perms.values()]))
    if not function_preserving(model_b) and method != "none":
        log.info("alignment of an asymmetric network is a diagnostic: it does not preserve B's function")
    return result
