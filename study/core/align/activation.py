"""Activation matching (Tatro et al. 2020; the ``inner`` similarity is Ainsworth et al.'s variant).

Post-nonlinearity activations of A and B on the same inputs are correlated unit by unit, and each permutation
group is solved as a linear assignment that maximises the summed correlation; a group that ties several layers
(a residual stream) sums their correlation matrices. Each batch's moments are computed in float32 and added to
float64 totals, so memory is O(C²) and rounding does not grow with the data size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from study.common.validation import unknown_choice
from study.core.align.base import Alignment, solve_assignment

SIMILARITIES = ("pearson", "inner")


class _Moments:
    """Streaming first and second moments of two activation sets: O(C²) memory whatever the data size."""

    def __init__(self) -> None:
        self.n = 0
        self.sum_a = self.sum_b = self.sum_aa = self.sum_bb = self.sum_ab = None  # type: ignore[assignment]

    def add(self, a: Tensor, b: Tensor) -> None:
        """One batch's products in the activations' own precision (float32: the reference's, and 1.3-2× faster
        than float64 on CPU), each batch's sums added to float64 totals, so rounding does not grow with the data
        size; the permutations equal a float64 computation's (tests/test_align.py)."""
        a, b = a.float(), b.float()
        if self.sum_ab is None:
            c = a.shape[1]
            zeros = lambda *s: torch.zeros(*s, dtype=torch.float64, device=a.device)  # noqa: E731
            self.sum_a, self.sum_b, self.sum_aa, self.sum_bb = zeros(c), zeros(c), zeros(c), zeros(c)
            self.sum_ab = zeros(c, c)
        self.n += a.shape[0]
        self.sum_a += a.sum(0).double()
        self.sum_b += b.sum(0).double()
        self.sum_aa += (a * a).sum(0).double()
        self.sum_bb += (b * b).sum(0).double()
        self.sum_ab += (a.t() @ b).double()

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


def activation_matching(model_a: nn.Module, model_b: nn.Module, *, data: Tensor, seed: int = 0,
                        similarity: str = "pearson", batch_size: int = 500) -> Alignment:
    """Correlate post-nonlinearity activations on ``data``; a tied stream sums its correlation matrices."""
    if similarity not in SIMILARITIES:
        raise unknown_choice("similarity", similarity, SIMILARITIES)
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
        perm = solve_assignment(sum(sims))
        perms[p] = perm
        for sim in sims:
            before.append(sim.diagonal().mean().item())
            after.append(sim[torch.arange(len(perm)), perm.to(sim.device)].mean().item())
    key = "corr" if similarity == "pearson" else "inner"
    return Alignment(perms, "activation", {f"mean_{key}_before": float(np.mean(before)),
                                           f"mean_{key}_after": float(np.mean(after)),
                                           "alignment_samples": float(len(data))})
