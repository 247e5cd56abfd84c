"""PAM: proximal alternating minimisation of the loss along a curve over (permutations of B, curve).

Tatro et al. (2020) ask whether the permutation that correlation alignment finds is also the one that makes the
best curve between two networks. PAM answers it by minimising the expected training loss of a 3-bend Bezier
curve θ(t) = (1−t)²·θ_A + 2t(1−t)·φ + t²·π(θ_B) jointly over the middle bend φ and the permutations π of B,
alternating two blocks for ``rounds`` rounds (docs/science.md, Alignment: PAM):

1. **Curve step.** Fit φ between A and π(B) for ``curve_epochs`` epochs with the ordinary training loop
   (:func:`study.core.train.train` on a :class:`study.core.paths.CurveModel`, weight decay exactly as
   :func:`study.core.trial.fit_curve` treats it, :func:`study.core.paths.curve_weight_decay`). φ starts on the segment in round 1 and is
   carried over (warm start) to later rounds.
2. **Permutation step.** Every permutation p of the spec is relaxed to a doubly-stochastic matrix S_p,
   initialised at the one-hot matrix C_p of the current permutation (S[i, perm[i]] = 1, so soft-permuting with
   it is exactly ``index_select``). B's trainable parameters are soft-permuted generically from the spec (every
   axis carrying p is contracted with S_p). ``perm_steps`` projected-gradient steps of size ``perm_lr`` are
   taken on E_t[CE(f(x; θ(t)))] + (proximal/2)·Σ_p‖S_p − C_p‖², one minibatch and one t ~ U(0, 1) per step,
   θ(t) evaluated with ``torch.func.functional_call`` on a copy of A in train mode (BatchNorm uses the batch's
   statistics). After each step every S_p is projected back onto the Birkhoff polytope (see :func:`project`).
3. **Rounding.** Candidate permutation sets: (b) the previous permutations, (a) the LAP projection
   (``linear_sum_assignment`` maximising ⟨S_p, P⟩) of every S_p, (c) LAP projections of the step extrapolated
   along its own direction, C_p + λ·(S_p − C_p) for λ in :data:`EXTRAPOLATION`, and ``samples`` seeded
   perturb-and-MAP samples (see :func:`_sample`). The set with the lowest curve training loss on a fixed set of
   t values and fixed training batches wins; ties keep the earlier candidate, so the previous permutations are
   never given up for an equal loss (a perfect alignment stays).

Why the extrapolated candidates: a few dozen small projected steps move S only slightly off the vertex C, so
the plain LAP projection almost always returns the previous permutation, although the direction the step took
does carry the first-order information (on two MLPs the edge derivative G_ij + G_ji − G_ii − G_jj predicts the
loss change of swapping units i and j with correlation ~0.9 in the last hidden layer). Rounding further along
that direction is a line search over how far to trust the relaxed step, and costs only forward passes.

Only the permutations are returned: **the fitted curve is discarded**; a trial fits its own curve afterwards
from the returned permutations (with the trial's curve recipe), like for every other alignment method.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.func import functional_call

from study.core import permutation as P
from study.core.align.activation import activation_matching
from study.core.align.base import Alignment
from study.core.data import Dataset
from study.core.paths import CurveModel, Path, bezier_coefficients, curve_weight_decay, trainable_state
from study.common.seeding import stable_seed
from study.core.runtime import mixed_precision
from study.core.train import Recipe, train
from study.common.validation import check_number, unknown_choice

log = logging.getLogger(__name__)

INITS = ("identity", "activation")

# Birkhoff projection: clip to >= 0, floor at 1e-12 (so an all-zero row or column cannot divide by zero), then a
# fixed number of Sinkhorn row/column normalisations. Sinkhorn scaling is not the Euclidean projection, but it
# maps every positive matrix into the polytope (in the limit), leaves a permutation matrix where it is (up to
# the floor) and needs no inner solver. 50 iterations bring the matrices PAM produces (near a permutation, or
# dense) within 1e-5 of doubly stochastic; a fixed count keeps runs reproducible and their cost predictable.
# Caveat, measured on MLPs: because clipping keeps the positive part of every update and Sinkhorn rescales
# multiplicatively, noisy minibatch steps ratchet mass off the current vertex whatever the gradient's sign, so
# the relaxed loss can rise along the "descent"; the proximal term bounds how far that drift goes.
SINKHORN_ITERATIONS = 50
_FLOOR = 1e-12

# Rounding objective: the curve's training loss at these t (midpoint rule for E_t over U(0, 1)) on
# ``_EVAL_BATCHES`` fixed, un-augmented training batches (drawn once per run from the seed).
EVAL_T = (0.1, 0.3, 0.5, 0.7, 0.9)
# Rounding candidates along the permutation step: LAP(C + λ·(S − C)) for these λ (λ = 1 is LAP(S) itself).
EXTRAPOLATION = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
_EVAL_BATCHES = 4


# --------------------------------------------------------------------------------------------------------
# Doubly-stochastic relaxation
# --------------------------------------------------------------------------------------------------------
def one_hot(perm: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The permutation matrix S with S[i, perm[i]] = 1, so ``S @ x == x.index_select(0, perm)``."""
    n = len(perm)
    matrix = torch.zeros(n, n, dtype=dtype, device=perm.device)
    matrix[torch.arange(n, device=perm.device), perm] = 1.0
    return matrix


def sinkhorn(matrix: Tensor, iterations: int = SINKHORN_ITERATIONS) -> Tensor:
    """Alternately normalise rows and columns of a non-negative matrix ``iterations`` times."""
    matrix = matrix.clamp_min(_FLOOR)
    for _ in range(iterations):
        matrix = matrix / matrix.sum(dim=1, keepdim=True)
        matrix = matrix / matrix.sum(dim=0, keepdim=True)
    return matrix


def project(matrix: Tensor, iterations: int = SINKHORN_ITERATIONS) -> Tensor:
    """Back onto the Birkhoff polytope (approximately): clip to >= 0, then :func:`sinkhorn`."""
    return sinkhorn(matrix.clamp_min(0.0), iterations)


def soft_permute(state: Mapping[str, Tensor], spec: P.PermutationSpec,
                 matrices: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with every spec'd axis contracted with its (doubly-stochastic) matrix: along an axis carrying
    p, ``new = tensordot(S_p, old)`` over that axis. With one-hot S it equals :func:`permutation.permute_state`
    exactly. Keys of ``state`` the spec does not name pass through; keys of the spec missing from ``state``
    (e.g. buffers when only parameters are given) are ignored."""
    out = dict(state)
    for key, axis_perms in spec.axes.items():
        if key not in state:
            continue
        tensor = state[key]
        for axis, p in enumerate(axis_perms):
            if p is not None:
                moved = torch.tensordot(matrices[p].to(tensor.dtype), tensor.movedim(axis, 0), dims=1)
                tensor = moved.movedim(0, axis)
        out[key] = tensor
    return out


def lap(matrix: Tensor) -> Tensor:
    """The permutation maximising ⟨matrix, P⟩ (``scipy.optimize.linear_sum_assignment``)."""
    rows, cols = linear_sum_assignment(matrix.detach().double().cpu().numpy(), maximize=True)
    assert np.array_equal(rows, np.arange(len(rows)))
    return torch.as_tensor(cols, dtype=torch.long)


def _sample(matrix: Tensor, generator: torch.Generator, temperature: float) -> Tensor:
    """A perturbed rounding: LAP of log(S) + temperature·Gumbel noise (seeded).

    Perturb-and-MAP on log S favours permutations in proportion to how much mass S puts on them: while S is
    still (nearly) a permutation matrix the samples equal it, and where the permutation step has spread mass
    between units they explore those swaps. This replaces the Birkhoff-decomposition sampling of the paper's
    code (not copied, GPL) with a plain ``linear_sum_assignment``.
    """
    uniform = torch.rand(matrix.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    gumbel = -torch.log(-torch.log(uniform))
    return lap(matrix.detach().double().cpu().clamp_min(_FLOOR).log() + temperature * gumbel)


# --------------------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------------------
def _recipe(recipe: Mapping[str, Any] | None, curve_epochs: int, batch_size: int) -> Recipe:
    """The curve step's recipe: Recipe defaults, ``recipe``'s overrides, epochs and batch size from PAM's own
    options (naming them in ``recipe`` too would be ambiguous, so it is an error)."""
    recipe = dict(recipe or {})
    for key, option in (("epochs", "curve_epochs"), ("batch_size", "batch_size")):
        if key in recipe:
            raise ValueError(f"pam: set the curve step's {key} with the pam option {option!r}, not in recipe")
    return Recipe.from_dict({**recipe, "epochs": curve_epochs, "batch_size": batch_size})


def _bezier(a: Mapping[str, Tensor], bend: Mapping[str, Tensor], b: Mapping[str, Tensor],
            t: Tensor) -> dict[str, Tensor]:
    c = bezier_coefficients(t, 3)
    return {k: c[0] * a[k] + c[1] * bend[k] + c[2] * b[k] for k in a}


class _Objective:
    """Cross-entropy of the network at θ(t) (functional call on a copy of A, train mode: BN batch stats)."""

    def __init__(self, model_a: nn.Module, theta_a: dict[str, Tensor], device: torch.device, bf16: bool):
        self.base = copy.deepcopy(model_a).to(device).train()
        self.theta_a, self.device, self.bf16 = theta_a, device, bf16

    def __call__(self, bend: Mapping[str, Tensor], theta_b: Mapping[str, Tensor], t: Tensor, x: Tensor,
                 y: Tensor) -> Tensor:
        theta = _bezier(self.theta_a, bend, theta_b, t)
        with mixed_precision(self.device, self.bf16):
            logits = functional_call(self.base, theta, (x,)).float()
        return F.cross_entropy(logits, y)


def pam(model_a: nn.Module, model_b: nn.Module, *, data: Dataset, seed: int = 0, init: str = "activation",
        rounds: int = 2, curve_epochs: int = 2, perm_steps: int = 20, perm_lr: float = 0.1,
        proximal: float = 1.0, batch_size: int = 128, recipe: Mapping[str, Any] | None = None,
        init_samples: int = 1000, samples: int = 2, temperature: float = 1.0) -> Alignment:
    """Permutations of B found by PAM (see the module docstring), starting from ``init``.

    ``init``: "identity" or "activation" (activation matching on the first ``init_samples`` training inputs).
    ``recipe``: overrides of :class:`study.core.train.Recipe` for the curve step (epochs and batch size come from
    ``curve_epochs`` and ``batch_size``). ``samples`` perturbed roundings per round, Gumbel ``temperature``.
    Diagnostics: ``pam_rounds``; ``pam_loss_init`` (rounding objective, i.e. curve training loss, of the initial
    permutations with the first fitted curve) and ``pam_loss_final`` (of the returned permutations with the last
    fitted curve); ``pam_rounding_gain`` (summed over rounds: loss of the previous permutations minus loss of the
    chosen ones, same curve; > 0 exactly when a rounding changed something, so it separates what the
    permutation steps won from what the curve steps won); ``pam_changed_fraction`` (units whose assignment
    differs from the init); ``pam_rounds_changed``; ``pam_candidates`` (distinct candidate sets evaluated);
    ``pam_seconds_curve``/``pam_seconds_perm``; and activation matching's diagnostics when it is the init.
    The fitted curve is discarded; the trial fits its own from the returned permutations.
    """
    if init not in INITS:
        raise unknown_choice("pam init", init, INITS)
    for name, value in (("rounds", rounds), ("curve_epochs", curve_epochs), ("batch_size", batch_size),
                        ("init_samples", init_samples)):
        check_number(f"pam: {name}", value, integer=True, low=1)
    for name, value in (("perm_steps", perm_steps), ("samples", samples)):
        check_number(f"pam: {name}", value, integer=True, low=0)
    check_number("pam: perm_lr", perm_lr, low=0, low_open=True)
    check_number("pam: proximal", proximal, low=0)
    check_number("pam: temperature", temperature, low=0)
    if not isinstance(data, Dataset):
        raise ValueError(f"pam needs the whole Dataset as data, got {type(data).__name__}")
    curve_recipe = _recipe(recipe, curve_epochs, batch_size)

    device = data.device
    spec = model_a.permutation_spec()  # type: ignore[operator]
    sizes = spec.sizes(model_a.state_dict())
    theta_a = {k: v.to(device) for k, v in trainable_state(model_a).items()}
    params_b = {k: v.to(device) for k, v in trainable_state(model_b).items()}
    generator = torch.Generator().manual_seed(stable_seed("pam", seed) % 2**63)

    diagnostics: dict[str, float] = {}
    if init == "activation":
        inputs = data.batch("train", slice(0, min(init_samples, data.size("train"))))[0]
        start = activation_matching(model_a, model_b, data=inputs, seed=seed)
        perms = {p: v.cpu() for p, v in start.perms.items()}
        diagnostics.update(start.diagnostics)
    else:
        perms = P.identity(sizes)
    initial = dict(perms)

    objective = _Objective(model_a, theta_a, device, curve_recipe.bf16)
    n_train = data.size("train")
    eval_index = torch.randperm(n_train, generator=generator)[:_EVAL_BATCHES * batch_size].split(batch_size)
    eval_batches = [data.batch("train", index.to(device)) for index in eval_index]
    eval_t = [torch.tensor(t, device=device) for t in EVAL_T]

    @torch.no_grad()
    def rounding_loss(bend: Mapping[str, Tensor], candidate: Mapping[str, Tensor]) -> float:
        theta_b = P.permute_state(params_b, _param_spec(spec, params_b), candidate)
        total = sum(objective(bend, theta_b, t, x, y) for t in eval_t for x, y in eval_batches)
        return float(total) / (len(eval_t) * len(eval_batches))

    bend: dict[str, Tensor] | None = None
    loss_init = loss_final = float("nan")
    rounds_changed, evaluated, gain, seconds_curve, seconds_perm = 0, 0, 0.0, 0.0, 0.0
    for round_ in range(1, rounds + 1):
        clock = time.perf_counter()
        bend = _curve_step(model_a, theta_a, params_b, spec, perms, bend, data, curve_recipe,
                           stable_seed("pam-curve", seed, round_) % 2**62)
        seconds_curve += time.perf_counter() - clock

        clock = time.perf_counter()
        soft = _permutation_step(objective, spec, params_b, perms, bend, data, curve_recipe, generator,
                                 steps=perm_steps, lr=perm_lr, proximal=proximal, batch_size=batch_size)
        centre = {p: one_hot(v.to(device)) for p, v in perms.items()}
        candidates = [perms] + [{p: lap(centre[p] + step * (s - centre[p])) for p, s in soft.items()}
                                for step in (1.0, *EXTRAPOLATION)]
        candidates += [{p: _sample(s, generator, temperature) for p, s in soft.items()} for _ in range(samples)]
        losses: list[float] = []
        for candidate in candidates:
            seen = next((i for i, c in enumerate(candidates[:len(losses)]) if _equal(c, candidate)), None)
            losses.append(losses[seen] if seen is not None else rounding_loss(bend, candidate))
            evaluated += seen is None
        best = min(range(len(candidates)), key=lambda i: (losses[i], i))  # ties keep the earlier (previous)
        loss_final, gain = losses[best], gain + losses[0] - losses[best]
        if round_ == 1:
            loss_init = losses[0]
        if not _equal(candidates[best], perms):
            rounds_changed += 1
        perms = {p: v.clone() for p, v in candidates[best].items()}
        seconds_perm += time.perf_counter() - clock
        log.info("pam round %d/%d: candidate losses %s (kept, LAP, extrapolated, samples); chose %d", round_,
                 rounds, " ".join(f"{v:.4f}" for v in losses), best)

    units = sum(len(v) for v in perms.values())
    changed = sum(int((perms[p] != initial[p]).sum()) for p in perms)
    diagnostics.update({
        "pam_rounds": float(rounds),
        "pam_loss_init": loss_init,
        "pam_loss_final": loss_final,
        "pam_rounding_gain": gain,
        "pam_changed_fraction": changed / max(1, units),
        "pam_rounds_changed": float(rounds_changed),
        "pam_candidates": float(evaluated),
        "pam_seconds_curve": seconds_curve,
        "pam_seconds_perm": seconds_perm,
    })
    return Alignment(perms, "pam", diagnostics)


def _param_spec(spec: P.PermutationSpec, params: Mapping[str, Tensor]) -> P.PermutationSpec:
    return P.PermutationSpec({k: v for k, v in spec.axes.items() if k in params})


def _equal(first: Mapping[str, Tensor], second: Mapping[str, Tensor]) -> bool:
    return all(torch.equal(first[p], second[p]) for p in first)


def _curve_step(model_a: nn.Module, theta_a: dict[str, Tensor], params_b: dict[str, Tensor],
                spec: P.PermutationSpec, perms: Mapping[str, Tensor], bend: dict[str, Tensor] | None,
                data: Dataset, recipe: Recipe, seed: int) -> dict[str, Tensor]:
    """Fit the middle bend between A and π(B) with the ordinary training loop (as trial.fit_curve does)."""
    theta_b = P.permute_state(params_b, _param_spec(spec, params_b), perms)
    path = Path(theta_a, theta_b, kind="bezier", n_bends=3).to(data.device)
    if bend is not None:  # warm start from the previous round's bend
        with torch.no_grad():
            for key, value in path.points()[1].items():
                value.copy_(bend[key])
    optimizer_recipe, l2 = curve_weight_decay(recipe)  # SGD: the (wd/2)‖θ(t)‖² term; AdamW: decoupled decay
    curve = CurveModel(copy.deepcopy(model_a), path, weight_decay=l2 or 0.0, seed=seed)
    train(curve, data, optimizer_recipe, seed=seed, device=data.device,
          extra_loss=curve.l2_penalty if l2 is not None else None, parameters=curve.trainable_parameters(),
          before_step=curve.resample, validate=False)
    return {k: v.detach().clone() for k, v in path.points()[1].items()}


def _permutation_step(objective: _Objective, spec: P.PermutationSpec, params_b: dict[str, Tensor],
                      perms: Mapping[str, Tensor], bend: Mapping[str, Tensor], data: Dataset, recipe: Recipe,
                      generator: torch.Generator, *, steps: int, lr: float, proximal: float,
                      batch_size: int) -> dict[str, Tensor]:
    """Projected gradient descent on the relaxed permutations, from (and proximal to) the current ones."""
    device = data.device
    param_spec = _param_spec(spec, params_b)
    centre = {p: one_hot(v.to(device)) for p, v in perms.items()}
    soft = {p: s.clone().requires_grad_(True) for p, s in centre.items()}
    n_train = data.size("train")
    for _ in range(steps):
        index = torch.randperm(n_train, generator=generator)[:batch_size].to(device)
        x, y = data.batch("train", index, augment=recipe.augment, generator=generator)
        t = torch.rand((), generator=generator).to(device)
        loss = objective(bend, soft_permute(params_b, param_spec, soft), t, x, y)
        if proximal > 0:
            loss = loss + 0.5 * proximal * sum(((soft[p] - centre[p]) ** 2).sum() for p in soft)
        grads = torch.autograd.grad(loss, list(soft.values()))
        with torch.no_grad():
            soft = {p: project(s - lr * g).requires_grad_(True) for (p, s), g in zip(soft.items(), grads)}
    return {p: s.detach() for p, s in soft.items()}
