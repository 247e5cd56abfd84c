"""Straight-through-estimator (STE) matching (Ainsworth et al. 2023, Git Re-Basin, their third method).

Weight matching maximises a proxy (the inner product of the weights); activation matching another (the
correlation of the units). STE matching optimises what a linear path actually needs, the loss of the midpoint
θ(½) = ½(θ_A + π(θ_B)), over the permutations π, which are discrete. It keeps a *relaxed* weight vector θ̃ (one
tensor per spec'd parameter of B) and, at every step,

1. **projects** θ̃ onto the orbit of θ_B: π = argmax_π ⟨θ̃, π(θ_B)⟩, the weight-matching problem with θ̃ in
   A's place, solved by the same coordinate ascent over the spec's groups (one LAP per group,
   ``scipy.optimize.linear_sum_assignment``), warm-started from the previous step's π;
2. **evaluates** the midpoint with the hard π(θ_B) in the forward pass, and passes the gradient with respect to
   π(θ_B) straight through to θ̃ (value π(θ_B), gradient identity: ``hard + θ̃ − stop_gradient(θ̃)``);
3. takes an Adam step on θ̃ (lr ``lr``) on the cross-entropy of one training minibatch.

θ̃ starts at the weight-matching solution π_wm(θ_B) (``weight_init``; ``False`` starts from θ_B, i.e. the
identity), so step 1 first returns π_wm. Every ``eval_every`` steps (and after the last) the current hard π is a
candidate; the one with the lowest midpoint loss on ``eval_batches`` fixed, un-augmented training batches wins,
ties keeping the earlier candidate, so the result is never worse than the start on that objective (the start is
the first candidate). BN layers use batch statistics (train mode) throughout, as PAM's objectives do.

Only the permutation spec is read, so every architecture works. The returned permutations map B onto A like
every method's. Diagnostics are flat floats (they become MLflow metrics ``align/<name>``): the midpoint losses
of the start and of the result, the first and last minibatch objectives, how many units changed and how many
candidates were evaluated; the full history goes to the log.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from study.common.seeding import stable_seed
from study.common.validation import check_bool, check_number
from study.core import permutation as P
from study.core.align.base import Alignment, solve_assignment
from study.core.align.weight import weight_matching
from study.core.data import Dataset
from study.core.paths import trainable_state

log = logging.getLogger(__name__)

# The projection's coordinate ascent stops after a sweep that gains no more than this (weight matching's rule).
_GAIN_TOLERANCE = 1e-12


def _project(spec: P.PermutationSpec, relaxed: Mapping[str, Tensor], b: Mapping[str, Tensor],
             perms: dict[str, Tensor], max_sweeps: int) -> dict[str, Tensor]:
    """argmax_π ⟨relaxed, π(b)⟩ by coordinate ascent over the groups from ``perms`` (a warm start), in float64.

    The same cost as weight matching (docs/science.md, Weight matching) with ``relaxed`` in A's place; the
    groups are visited in spec order, so the projection is deterministic."""
    perms = dict(perms)
    places = {p: [(k, ax) for k, ax in where if k in relaxed] for p, where in spec.perm_to_axes.items()}
    for _ in range(max_sweeps):
        improved = False
        for p, where in places.items():
            n = len(perms[p])
            cost = torch.zeros(n, n, dtype=torch.float64, device=perms[p].device)
            for key, axis in where:
                other = b[key]
                for ax, q in enumerate(spec.axes[key]):
                    if q is not None and ax != axis:
                        other = other.index_select(ax, perms[q])
                cost += relaxed[key].double().movedim(axis, 0).reshape(n, -1) @ \
                    other.double().movedim(axis, 0).reshape(n, -1).t()
            new = solve_assignment(cost).to(perms[p].device)
            rows = torch.arange(n, device=cost.device)
            if cost[rows, new].sum() - cost[rows, perms[p]].sum() > _GAIN_TOLERANCE:
                perms[p], improved = new, True
        if not improved:
            break
    return perms


class _Midpoint:
    """Cross-entropy of the network at ½(θ_A + θ) for a parameter dict θ of B (functional call on a copy of
    A in train mode, so BN uses batch statistics; parameters outside the spec are B's own)."""

    def __init__(self, model_a: nn.Module, theta_a: dict[str, Tensor], theta_b: dict[str, Tensor],
                 device: torch.device):
        self.base = copy.deepcopy(model_a).to(device).train()
        for parameter in self.base.parameters():
            parameter.requires_grad_(False)
        self.theta_a, self.theta_b = theta_a, theta_b

    def __call__(self, permuted: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        theta = {k: 0.5 * (a + permuted.get(k, self.theta_b[k])) for k, a in self.theta_a.items()}
        return F.cross_entropy(functional_call(self.base, theta, (x,)).float(), y)


def ste_matching(model_a: nn.Module, model_b: nn.Module, *, data: Dataset, seed: int = 0, steps: int = 100,
                 lr: float = 1e-2, batch_size: int = 128, eval_every: int = 10, eval_batches: int = 4,
                 weight_init: bool = True, max_sweeps: int = 100) -> Alignment:
    """Permutations of B that minimise the midpoint loss, learnt with the straight-through estimator.

    ``steps`` Adam steps of size ``lr`` on ``batch_size`` training examples each (drawn from a generator seeded
    by ``seed``); a candidate every ``eval_every`` steps, scored on ``eval_batches`` fixed training batches;
    ``weight_init`` starts from weight matching (``max_sweeps`` also bounds each projection's ascent).
    Diagnostics: ``ste_steps``, ``ste_loss_init`` / ``ste_loss_final`` (midpoint loss of the start and of the
    result on the fixed batches), ``ste_objective_first`` / ``ste_objective_last`` (minibatch objective of the
    first step and the mean of the last ``eval_every`` steps), ``ste_changed_fraction`` (units assigned
    differently from the start), ``ste_candidates`` (distinct candidates scored), ``ste_seconds_project``, and
    weight matching's own diagnostics when it is the start.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every),
                        ("eval_batches", eval_batches), ("max_sweeps", max_sweeps)):
        check_number(f"ste: {name}", value, integer=True, low=1)
    check_number("ste: lr", lr, low=0)
    check_bool("ste: weight_init", weight_init)
    if not isinstance(data, Dataset):
        raise ValueError(f"ste needs the whole Dataset as data, got {type(data).__name__}")

    device = data.device
    spec = model_a.permutation_spec()  # type: ignore[operator]
    theta_a = {k: v.to(device) for k, v in trainable_state(model_a).items()}
    theta_b = {k: v.to(device) for k, v in trainable_state(model_b).items()}
    spec_b = P.PermutationSpec({k: spec.axes[k] for k in spec.axes if k in theta_b})
    generator = torch.Generator().manual_seed(stable_seed("ste", seed) % 2**63)

    diagnostics: dict[str, float] = {}
    if weight_init:
        start = weight_matching(model_a, model_b, seed=seed, max_sweeps=max_sweeps)
        perms = {p: v.to(device) for p, v in start.perms.items()}
        diagnostics.update(start.diagnostics)
    else:
        perms = P.identity(spec.sizes(model_a.state_dict()), device=device)
    initial = {p: v.clone() for p, v in perms.items()}

    def permuted_b(candidate: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v for k, v in P.permute_state(theta_b, spec_b, candidate).items() if k in spec_b.axes}

    midpoint = _Midpoint(model_a, theta_a, theta_b, device)
    n_train = data.size("train")
    eval_index = torch.randperm(n_train, generator=generator)[:eval_batches * batch_size].split(batch_size)
    fixed = [data.batch("train", index.to(device)) for index in eval_index]

    @torch.no_grad()
    def score(candidate: Mapping[str, Tensor]) -> float:
        hard = permuted_b(candidate)
        return float(sum(midpoint(hard, x, y) for x, y in fixed)) / len(fixed)

    relaxed = {k: v.detach().clone().requires_grad_(True) for k, v in permuted_b(perms).items()}
    optimizer = torch.optim.Adam(list(relaxed.values()), lr=lr)
    best_loss = loss_init = score(perms)
    best, scored, history = initial, [initial], []
    seconds_project = 0.0
    for step in range(1, steps + 1):
        clock = time.perf_counter()
        with torch.no_grad():
            perms = _project(spec_b, relaxed, theta_b, perms, max_sweeps)
        seconds_project += time.perf_counter() - clock
        hard = permuted_b(perms)
        straight_through = {k: hard[k] + (relaxed[k] - relaxed[k].detach()) for k in relaxed}
        index = torch.randperm(n_train, generator=generator)[:batch_size].to(device)
        x, y = data.batch("train", index)
        loss = midpoint(straight_through, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
        if step % eval_every == 0 or step == steps:
            if not any(_equal(perms, c) for c in scored):
                scored.append({p: v.clone() for p, v in perms.items()})
                loss_now = score(perms)
                if loss_now < best_loss:  # ties keep the earlier candidate
                    best, best_loss = scored[-1], loss_now
            log.info("ste step %d/%d: minibatch midpoint loss %.4f, best candidate %.4f", step, steps,
                     history[-1], best_loss)
    with torch.no_grad():  # the last projection (after the last step) is a candidate too
        perms = _project(spec_b, relaxed, theta_b, perms, max_sweeps)
    if not any(_equal(perms, c) for c in scored):
        scored.append(perms)
        loss_now = score(perms)
        if loss_now < best_loss:
            best, best_loss = perms, loss_now

    units = sum(len(v) for v in best.values())
    changed = sum(int((best[p] != initial[p]).sum()) for p in best)
    diagnostics.update({
        "ste_steps": float(steps),
        "ste_loss_init": loss_init,
        "ste_loss_final": best_loss,
        "ste_objective_first": history[0],
        "ste_objective_last": sum(history[-eval_every:]) / len(history[-eval_every:]),
        "ste_changed_fraction": changed / max(1, units),
        "ste_candidates": float(len(scored)),
        "ste_seconds_project": seconds_project,
    })
    return Alignment({p: v.cpu() for p, v in best.items()}, "ste", diagnostics)


def _equal(first: Mapping[str, Tensor], second: Mapping[str, Tensor]) -> bool:
    return all(torch.equal(first[p], second[p]) for p in first)
