"""CIFAR ResNets (He et al. 2016): 3 stages of BasicBlocks, 16/32/64 channels × width.

Residual streams tie permutations: the stem output and every stage-1 block output share ``P_stream0`` (the
identity shortcut adds them), each later stage's block outputs and its shortcut conv share ``P_stream{s}``.
Each block's inner width has its own ``P_s{s}b{b}_inner``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from study.core.models.layers import AsymLayerDefault, InputNormalize, LayerFactory
from study.core.permutation import PermutationSpec, SpecBuilder

STAGE_CHANNELS = (16, 32, 64)

# Public W-Asym defaults for ResNet-20 with GroupNorm on CIFAR (docs/science.md, Symmetry removal); κ = 3
# everywhere; ResNet-32 reuses them. The public code fixes one count in every conv of a stage (stem 12 of 27,
# stage convs 36 / 54 / 72, shortcuts 6 / 8, linear 8 of 64), i.e. a per-stage fraction of out·k·k (1/4, 3/16, 1/8);
# kept as those fractions, they give exactly the public counts at width 1 and scale with width.
ASYM_GROUPS = {
    "stem": AsymLayerDefault.public(12, 27, 3.0),
    "stage1": AsymLayerDefault.public(36, 16 * 9, 3.0, per="out"),
    "stage2": AsymLayerDefault.public(54, 32 * 9, 3.0, per="out"),
    "stage2_shortcut": AsymLayerDefault.public(6, 32, 3.0, per="out"),
    "stage3": AsymLayerDefault.public(72, 64 * 9, 3.0, per="out"),
    "stage3_shortcut": AsymLayerDefault.public(8, 64, 3.0, per="out"),
    "head": AsymLayerDefault.public(8, 64, 3.0),
}


class BasicBlock(nn.Module):
    def __init__(self, factory: LayerFactory, cin: int, cout: int, stride: int, group: str):
        super().__init__()
        self.conv1 = factory.conv(cin, cout, 3, group=group, stride=stride, padding=1)
        self.norm1 = factory.normalization(cout, image=True)
        self.act1 = factory.activation(cout)
        self.conv2 = factory.conv(cout, cout, 3, group=group, padding=1)
        self.norm2 = factory.normalization(cout, image=True)
        self.has_shortcut = stride != 1 or cin != cout
        if self.has_shortcut:
            self.shortcut_conv = factory.conv(cin, cout, 1, group=f"{group}_shortcut", stride=stride)
            self.shortcut_norm = factory.normalization(cout, image=True)
        self.act_out = factory.activation(cout)

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        skip = self.shortcut_norm(self.shortcut_conv(x)) if self.has_shortcut else x
        return self.act_out(out + skip)


class ResNet(nn.Module):
    def __init__(self, factory: LayerFactory, *, blocks_per_stage: int, in_shape: tuple[int, ...],
                 num_classes: int, width: float, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"resnets need image input (C, H, W); got in_shape {tuple(in_shape)}")
        channels = [max(1, round(c * width)) for c in STAGE_CHANNELS]
        self.normalize = InputNormalize(mean, std, image=True)
        self.stem_conv = factory.conv(in_shape[0], channels[0], 3, group="stem", padding=1)
        self.stem_norm = factory.normalization(channels[0], image=True)
        self.stem_act = factory.activation(channels[0])
        self.stages = nn.ModuleList()
        cin = channels[0]
        for s, cout in enumerate(channels):
            stage = nn.ModuleList()
            for b in range(blocks_per_stage):
                stride = 2 if s > 0 and b == 0 else 1
                stage.append(BasicBlock(factory, cin, cout, stride, group=f"stage{s + 1}"))
                cin = cout
            self.stages.append(stage)
        self.head = factory.linear(cin, num_classes, group="head")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_act(self.stem_norm(self.stem_conv(self.normalize(x))))
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def permutation_spec(self) -> PermutationSpec:
        spec = SpecBuilder(self)
        stream = "P_stream0"
        spec.layer("stem_conv", stream, None).norm("stem_norm", stream).activation("stem_act", stream)
        for s, stage in enumerate(self.stages):
            for b, block in enumerate(stage):
                name, inner, out = f"stages.{s}.{b}", f"P_s{s}b{b}_inner", f"P_stream{s}"
                spec.layer(f"{name}.conv1", inner, stream).norm(f"{name}.norm1", inner)
                spec.activation(f"{name}.act1", inner)
                spec.layer(f"{name}.conv2", out, inner).norm(f"{name}.norm2", out)
                if block.has_shortcut:
                    spec.layer(f"{name}.shortcut_conv", out, stream).norm(f"{name}.shortcut_norm", out)
                spec.activation(f"{name}.act_out", out)
                stream = out
        return spec.layer("head", None, stream).build()
