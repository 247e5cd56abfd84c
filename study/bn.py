"""BatchNorm recalibration: the recorded policy for evaluating interpolated weights (science.md §4).

Running statistics at an interpolated θ(t) are meaningless (neither endpoint's statistics describe the
activations of the new weights), so before every evaluation they are reset and recomputed as an exact average
over one pass of clean, un-augmented training data (``momentum=None``), then the net is evaluated in eval mode.
Nets without BatchNorm (LayerNorm/GroupNorm/no norm) need nothing and are left untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

POLICY = "reset+exact-average over one clean pass of the training data, then eval mode"


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def has_batchnorm(model: nn.Module) -> bool:
    return bool(batchnorm_layers(model))


@contextmanager
def cumulative_statistics(model: nn.Module) -> Iterator[list[nn.modules.batchnorm._BatchNorm]]:
    """Train mode with ``momentum=None`` on every BN layer for the duration, so forward passes accumulate the
    exact average of their batch statistics; momenta restored and eval mode afterwards. Yields the BN layers
    (whose statistics the caller resets first)."""
    layers = batchnorm_layers(model)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = None
    model.train()
    try:
        yield layers
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.eval()


@torch.no_grad()
def recalibrate(model: nn.Module, inputs: Tensor | Iterable[Tensor], *, batch_size: int = 256) -> bool:
    """Recompute BN running statistics of ``model`` on ``inputs`` (floats in [0, 1], a tensor split into
    ``batch_size`` chunks or an iterable of batches, so big data sets need not be materialised as floats);
    True if the model had any BN.

    The model is left in eval mode. ``momentum=None`` makes PyTorch keep the cumulative average of the
    per-batch statistics, i.e. their exact mean over the pass (equal batches, so only a short last batch is
    weighted slightly more than its size).
    """
    if not has_batchnorm(model):
        model.eval()
        return False
    with cumulative_statistics(model) as layers:
        for layer in layers:
            layer.reset_running_stats()
        batches = inputs.split(batch_size) if isinstance(inputs, Tensor) else inputs
        for batch in batches:
            model(batch)
    return True
