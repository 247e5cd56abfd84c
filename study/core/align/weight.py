"""Weight matching (Ainsworth et al. 2023, Git Re-Basin): data-free coordinate ascent over the spec.

Maximises Σ⟨θ_A, π(θ_B)⟩ over the permutations π: one group at a time, in a seeded random order, each solved as
a linear assignment with the other groups held fixed, until a full sweep improves nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from study.core import permutation as P
from study.core.align.base import Alignment, effective_state, solve_assignment


def _params(model: nn.Module, spec: P.PermutationSpec) -> dict[str, Tensor]:
    """Trainable tensors only: BN running statistics describe data, not the function's weights. W-Asym layers
    contribute their effective weights M ⊙ W + (1 − M) ⊙ κZ (weight matching there is a diagnostic: the fixed
    entries, shared by both endpoints, are what should pull it to the identity)."""
    names = {n for n, _ in model.named_parameters()}
    state = effective_state(model)
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
            new = solve_assignment(cost).to(perms[p].device)
            rows = torch.arange(n, device=cost.device)
            gain = cost[rows, new].sum() - cost[rows, perms[p]].sum()
            if gain > 1e-12:
                improved = True
                perms[p] = new
        if not improved:
            break
    return perms, sweeps


def weight_matching(model_a: nn.Module, model_b: nn.Module, *, seed: int = 0, max_sweeps: int = 100,
                    restarts: int = 1) -> Alignment:
    """Coordinate ascent on Σ⟨θ_A, π(θ_B)⟩ in a seeded random order; keeps the best of ``restarts`` runs."""
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
