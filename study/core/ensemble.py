"""Several weight vectors of one architecture run as one network: the points of a path evaluated together.

A path profile evaluates the same architecture at 25+ points, and each point needs a BN recalibration pass over
the training set plus evaluation passes. Run one point at a time, a small net on a GPU spends its time launching
kernels, not computing. :class:`StackedModel` stacks the K points' parameters (and their K sets of BN running
statistics) along a leading axis and runs them with ``torch.func.vmap`` over ``functional_call``: every layer
becomes one batched kernel for all K points (a matmul becomes a batched matmul, a convolution a grouped one), so
one pass over the data recalibrates or evaluates all K points at once. No architecture needs code for this.

How BatchNorm behaves under ``vmap``: the K sets of running statistics are batched tensors, so each point
gets its own statistics (PyTorch's batch-norm batching rule updates batched buffers in place); recalibration runs
with ``momentum=1``, so after each batch they hold that batch's statistics per point, which
:class:`study.core.bn.PooledStatistics` pools exactly (weighted by counts) for all K at once.
``num_batches_tracked`` is shared and unbatched. Fixed buffers (W-Asym masks, FiGLU matrices, input normalisation)
are the architecture: shared, unbatched.

Results equal the one-point-at-a-time path up to float rounding (the kernels differ), which is why
:func:`study.core.evaluate.path_profile` uses this only when asked (``parallel_points > 1``; the CUDA default).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from study.core import bn
from study.core.data import Dataset


def _is_bn_statistic(name: str, bn_modules: set[str]) -> bool:
    module, _, leaf = name.rpartition(".")
    return module in bn_modules and leaf in ("running_mean", "running_var")


class StackedModel:
    """K points in ``model``'s weight space (``weights[i]``: a value for each parameter) run as one network."""

    def __init__(self, model: nn.Module, weights: Sequence[dict[str, Tensor]]):
        if not weights:
            raise ValueError("StackedModel needs at least one weight vector")
        self.model = copy.deepcopy(model)
        self.k = len(weights)
        names = [name for name, _ in self.model.named_parameters()]
        # Standard (NCHW) strides: vmap has no batching rule for some ops on channels_last weights
        # (as_strided_, reached from adaptive_avg_pool2d), and falls back to a slow loop over the K points.
        self.params = {name: torch.stack([w[name].detach().contiguous() for w in weights]) for name in names}
        bn_modules = {name for name, m in self.model.named_modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        self.statistics: dict[str, Tensor] = {}
        self.shared: dict[str, Tensor] = {}
        for name, buffer in self.model.named_buffers():
            if _is_bn_statistic(name, bn_modules):
                self.statistics[name] = buffer.detach().unsqueeze(0).repeat(self.k, *([1] * buffer.dim()))
            else:
                self.shared[name] = buffer
        self._forward = vmap(self._one, in_dims=(0, 0, None), randomness="error")

    def _one(self, params: dict[str, Tensor], statistics: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.model, (params, statistics, self.shared), (x,))

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """Logits of every point for the batch ``x``: shape ``[K, batch, classes]``, in the current mode."""
        return self._forward(self.params, self.statistics, x)

    @torch.no_grad()
    def recalibrate(self, inputs: Iterable[Tensor]) -> bool:
        """The BN policy of :func:`study.core.bn.recalibrate` for all K points in one pass over ``inputs``: each
        point's statistics become the exact mean and unbiased variance of its layers' inputs over the pass."""
        if not bn.has_batchnorm(self.model):
            self.model.eval()
            return False
        names = {module: name for name, module in self.model.named_modules()}
        with bn.batch_statistics(self.model) as pooled:
            prefixes = [f"{names[layer]}." if names[layer] else "" for layer in pooled.layers]
            buffers = [(self.statistics[f"{p}running_mean"], self.statistics[f"{p}running_var"]) for p in prefixes]
            for layer in pooled.layers:
                layer.num_batches_tracked.zero_()  # shared by the K points; their statistics are reset below
            for mean, var in buffers:
                mean.fill_(0.0)
                var.fill_(1.0)
            for batch in inputs:
                self(batch)  # momentum 1: each point's buffers now hold its statistics of this batch
                pooled.add(buffers)
            for (mean, var), stats in zip(buffers, pooled.result()):
                if stats is None:
                    mean.fill_(0.0)
                    var.fill_(1.0)
                else:
                    mean.copy_(stats[0])
                    var.copy_(stats[1])
        return True

    @torch.no_grad()
    def evaluate(self, data: Dataset, split: str, *, batch_size: int, max_samples: int | None = None) -> list[dict]:
        """:func:`study.core.evaluate.evaluate` (clean, eval mode) for each of the K points, in one pass."""
        n = data.size(split) if max_samples is None else min(max_samples, data.size(split))
        self.model.eval()
        loss_sum = torch.zeros(self.k, dtype=torch.float64, device=data.device)
        correct = torch.zeros(self.k, dtype=torch.float64, device=data.device)
        for start in range(0, n, batch_size):
            x, y = data.batch(split, slice(start, min(start + batch_size, n)))
            logits = self(x).float()  # [K, B, C]
            targets = y.expand(self.k, -1)
            loss_sum += F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").sum(dim=1).double()
            correct += (logits.argmax(dim=2) == targets).sum(dim=1).double()
        if n == 0:
            return [{"loss": float("nan"), "acc": float("nan"), "n": 0}] * self.k
        losses, corrects = torch.stack([loss_sum, correct]).tolist()  # the one host sync
        return [{"loss": loss / n, "acc": c / n, "n": n} for loss, c in zip(losses, corrects)]

    def point(self, i: int) -> nn.Module:
        """Point ``i`` as an ordinary module (its weights and BN statistics), e.g. for a PGD attack."""
        module = copy.deepcopy(self.model).eval()
        state = {**{k: v[i] for k, v in self.params.items()}, **{k: v[i] for k, v in self.statistics.items()}}
        with torch.no_grad():
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
                if name in state:
                    tensor.copy_(state[name])
        return module
