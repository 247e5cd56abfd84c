"""Plain conv stacks (no skips): Tatro et al.'s TinyTen and VGG-11, described as data, built by one class."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from study.core.models.layers import AsymLayerDefault, InputNormalize, LayerFactory
from study.core.permutation import PermutationSpec, SpecBuilder


@dataclass(frozen=True)
class ConvBlock:
    """conv(k, stride, padding) → norm → act, optionally followed by a 2×2 max-pool."""

    channels: int
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    pool: bool = False


# TinyTen as in IBM/NeuronAlignment: 8 conv blocks 16-16-32-32-32-64-64-64, the 7th a 3×3 'valid' conv and
# the 8th a 1×1, conv biases on, Xavier-normal init, BN, ReLU, global average pool, linear (≈0.09M params).
TINYTEN = (
    ConvBlock(16), ConvBlock(16), ConvBlock(32, stride=2), ConvBlock(32), ConvBlock(32),
    ConvBlock(64, stride=2), ConvBlock(64, padding=0), ConvBlock(64, kernel=1, padding=0),
)
# VGG-11 ('A' configuration) with BN, as used for CIFAR: pools after blocks 1, 2, 4, 6, 8; GAP + linear head.
VGG11 = (
    ConvBlock(64, pool=True), ConvBlock(128, pool=True), ConvBlock(256), ConvBlock(256, pool=True),
    ConvBlock(512), ConvBlock(512, pool=True), ConvBlock(512), ConvBlock(512, pool=True),
)


# No public W-Asym values exist for these nets; chosen by a measured sweep (bench/wasym_sweep.py --grid tinyten,
# bench/RESULTS.md): TinyTen ×0.5 on digits, 8 SGD epochs, fraction × κ in {1/16, 1/8, 1/4} × {0.3, 1, 3}. 1/8 of
# every fan-in at κ = 1 kept test accuracy within 0.02 of the standard net (0.953 vs 0.971) with an unaligned
# barrier of 0.62 against 2.31; κ = 3 (ResNet-20's) halves the barrier again but costs 0.05–0.11 accuracy.
CONV_FRACTION, CONV_KAPPA = 1 / 8, 1.0
HEAD_FRACTION, HEAD_KAPPA = 1 / 8, 1.0  # the head's share as ResNet-20's (8 of 64)


def asym_groups(blocks: tuple[ConvBlock, ...]) -> dict[str, AsymLayerDefault]:
    """The same fraction of every conv's fan-in and κ for every block, and for the linear head."""
    groups = {f"conv{i}": AsymLayerDefault(CONV_FRACTION, CONV_KAPPA) for i in range(len(blocks))}
    groups["head"] = AsymLayerDefault(HEAD_FRACTION, HEAD_KAPPA)
    return groups


class ConvChain(nn.Module):
    """A chain of conv blocks; block i's channels carry permutation P_conv{i}.

    Works for any input size: a 'valid' conv or a pool that would shrink the map below 1 pixel is replaced by
    a 'same' conv / skipped, so the same architecture runs on 8×8 digits and 32×32 CIFAR.
    """

    def __init__(self, factory: LayerFactory, blocks: tuple[ConvBlock, ...], *, in_shape: tuple[int, ...],
                 num_classes: int, width: float, mean: tuple[float, ...], std: tuple[float, ...],
                 conv_bias: bool, xavier_init: bool):
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"conv nets need image input (C, H, W); got in_shape {tuple(in_shape)}")
        self.normalize = InputNormalize(mean, std, image=True)
        cin, size = in_shape[0], min(in_shape[1:])
        self.convs, self.norms, self.acts, self.pools = (nn.ModuleList() for _ in range(4))
        for i, block in enumerate(blocks):
            cout = max(1, round(block.channels * width))
            padding = block.padding if size + 2 * block.padding >= block.kernel else block.kernel // 2
            self.convs.append(factory.conv(cin, cout, block.kernel, group=f"conv{i}", stride=block.stride,
                                           padding=padding, bias=conv_bias))
            size = (size + 2 * padding - block.kernel) // block.stride + 1
            self.norms.append(factory.normalization(cout, image=True))
            self.acts.append(factory.activation(cout))
            pool = block.pool and size >= 2
            self.pools.append(nn.MaxPool2d(2) if pool else nn.Identity())
            size = size // 2 if pool else size
            cin = cout
        self.head = factory.linear(cin, num_classes, group="head")
        if xavier_init:
            self._xavier_init()

    def _xavier_init(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalize(x)
        for conv, norm, act, pool in zip(self.convs, self.norms, self.acts, self.pools):
            x = pool(act(norm(conv(x))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def permutation_spec(self) -> PermutationSpec:
        blocks = [(f"convs.{i}", f"norms.{i}", f"acts.{i}", f"P_conv{i}") for i in range(len(self.convs))]
        return SpecBuilder(self).chain(blocks, head="head")
