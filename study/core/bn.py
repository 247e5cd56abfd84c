"""BatchNorm recalibration: the recorded policy for evaluating interpolated weights (docs/science.md, BatchNorm policy).

Running statistics at an interpolated θ(t) are meaningless (neither endpoint's statistics describe the
activations of the new weights), so before every evaluation they are reset and recomputed over one pass of
clean, un-augmented training data, then the net is evaluated in eval mode. Nets without BatchNorm
(LayerNorm/GroupNorm/no norm) need nothing and are left untouched. ``eval.bn_samples`` (default None: the whole
split) limits the pass to the first N clean training images, the same ones at every point (:func:`policy`).

What "exact" means here: each BN layer's ``running_mean``/``running_var`` become the mean and the *unbiased*
variance (divisor M − 1) of that layer's input over all M = samples × positions of the pass, exactly as if the
whole pass were one batch: the value PyTorch itself stores in ``running_var`` (unbiased) and divides by in eval
mode. The pass runs in train mode, batch by batch, so each layer's input is what it is when every upstream BN
normalises its batch by that batch's statistics (the usual recalibration; anything else needs a pass per layer).

Why not PyTorch's ``momentum=None``: it averages the per-batch statistics with *equal* weights, so a short last
batch (13 of 1,293 digits training images at batch 256) counts as much as a full one, and the average of
per-batch variances misses the spread of the batch means. Here every batch's mean and unbiased variance are read
from the running buffers (``momentum=1`` makes them exactly that batch's statistics, from PyTorch's own kernel)
and pooled weighted by their counts (Chan et al.'s parallel update, in float64), which also works for the K
stacked points of :class:`study.core.ensemble.StackedModel` (their buffers carry a leading K axis).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

_POLICY = ("reset + exact mean and unbiased variance of each BN input over one clean train-mode pass of {data}, "
           "then eval mode")
#: The default policy, recorded as a trial's ``bn_policy``: the whole training split (Garipov et al.).
POLICY = _POLICY.format(data="the training data")


def policy(bn_samples: int | None, n_train: int) -> str:
    """The policy string a trial records as ``bn_policy`` for ``eval.bn_samples`` on a training split of
    ``n_train`` samples: :data:`POLICY` without a budget or with one that covers the split (the same pass),
    else the same words over "the first ``bn_samples`` training images", so every logged number says which
    statistics it was evaluated with."""
    if bn_samples is None or bn_samples >= n_train:
        return POLICY
    return _POLICY.format(data=f"the first {bn_samples} training images (of {n_train}; eval.bn_samples)")


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def has_batchnorm(model: nn.Module) -> bool:
    return bool(batchnorm_layers(model))


class PooledStatistics:
    """Exact per-channel mean and unbiased variance of every BN layer's input, pooled over batches.

    Made by :func:`batch_statistics`; after each forward pass call :meth:`add` with each layer's running buffers
    (which then hold that batch's statistics), at the end :meth:`result`. Buffers may have a leading K axis
    (stacked points); the per-channel counts come from the layers' inputs and are the same for all K points.
    """

    def __init__(self, layers: Sequence[nn.modules.batchnorm._BatchNorm]):
        self.layers = list(layers)
        self._counts: dict[nn.Module, list[int]] = {layer: [] for layer in self.layers}
        self._n = [0] * len(self.layers)
        self._mean: list[Tensor | None] = [None] * len(self.layers)
        self._m2: list[Tensor | None] = [None] * len(self.layers)

    def _record(self, layer: nn.Module, args: tuple) -> None:  # forward pre-hook: values per channel this batch
        x = args[0]
        self._counts[layer].append(x.numel() // x.shape[1])  # under vmap: the shape of one point's input

    @torch.no_grad()
    def add(self, buffers: Sequence[tuple[Tensor, Tensor]]) -> None:
        """Pool this batch: ``buffers[i]`` = layer i's (running_mean, running_var), i.e. the batch's mean and
        unbiased variance (momentum 1)."""
        for i, (layer, (mean_b, var_b)) in enumerate(zip(self.layers, buffers)):
            counts = self._counts[layer]
            if not counts:
                continue  # the layer was not used by this forward pass
            if len(counts) > 1:
                raise RuntimeError("a BatchNorm module ran more than once in one forward pass; its per-batch "
                                   "statistics cannot be recovered from its running buffers")
            n_b = counts.pop()
            mean_b = mean_b.double()
            m2_b = var_b.double() * (n_b - 1)
            n = self._n[i]
            if n == 0:
                self._mean[i], self._m2[i] = mean_b.clone(), m2_b
            else:
                total = n + n_b
                delta = mean_b - self._mean[i]
                self._mean[i].add_(delta, alpha=n_b / total)
                self._m2[i].add_(m2_b).addcmul_(delta, delta, value=n * n_b / total)
            self._n[i] += n_b

    def result(self) -> list[tuple[Tensor, Tensor] | None]:
        """(mean, unbiased variance) in float64 per layer, ``None`` for a layer that saw no input."""
        return [None if n == 0 else (mean, m2 / max(n - 1, 1))
                for n, mean, m2 in zip(self._n, self._mean, self._m2)]


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[PooledStatistics]:
    """Train mode with ``momentum=1`` on every BN layer for the duration, so after each forward pass a layer's
    running buffers hold exactly that batch's mean and unbiased variance; yields the :class:`PooledStatistics`
    that pools them (the caller calls ``add`` after each pass and writes ``result()`` back). Momenta, hooks
    and eval mode are restored afterwards."""
    layers = [layer for layer in batchnorm_layers(model) if layer.track_running_stats]
    pooled = PooledStatistics(layers)
    momenta = [layer.momentum for layer in layers]
    hooks = [layer.register_forward_pre_hook(pooled._record) for layer in layers]
    for layer in layers:
        layer.momentum = 1.0
    model.train()
    try:
        yield pooled
    finally:
        for hook in hooks:
            hook.remove()
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.eval()


@torch.no_grad()
def recalibrate(model: nn.Module, inputs: Tensor | Iterable[Tensor], *, batch_size: int = 256) -> bool:
    """Recompute BN running statistics of ``model`` on ``inputs`` (floats in [0, 1], a tensor split into
    ``batch_size`` chunks or an iterable of batches, so big data sets need not be materialised as floats);
    True if the model had any BN.

    The model is left in eval mode, each BN layer with the exact mean and unbiased variance of its input over
    the whole pass (see the module docstring), whatever the batch sizes, and ``num_batches_tracked`` = the
    number of batches.
    """
    if not has_batchnorm(model):
        model.eval()
        return False
    with batch_statistics(model) as pooled:
        for layer in pooled.layers:
            layer.reset_running_stats()
        batches = inputs.split(batch_size) if isinstance(inputs, Tensor) else inputs
        for batch in batches:
            model(batch)
            pooled.add([(layer.running_mean, layer.running_var) for layer in pooled.layers])
        for layer, stats in zip(pooled.layers, pooled.result()):
            if stats is None:
                layer.reset_running_stats()
            else:
                layer.running_mean.copy_(stats[0])
                layer.running_var.copy_(stats[1])
    return True
