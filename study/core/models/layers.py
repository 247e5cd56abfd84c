"""Building blocks shared by every architecture, including the two ways of removing permutation symmetry.

Architectures never construct ``nn.Linear``/``nn.Conv2d``/activations/norms directly: they ask a
:class:`LayerFactory`, which knows the symmetry method. That keeps symmetry removal in one place
(docs/science.md, Symmetry removal) and lets every architecture support ``standard``, ``w_asym`` and
``sigma_asym`` for free.

Fixed tensors (W-Asym mask M and values κZ, the FiGLU matrix F) are persistent buffers, so checkpoints are
self-describing, and they are drawn after construction from ``mask_seed`` and the module's qualified name
(see :func:`init_fixed_buffers`), never from the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study.common.seeding import generator as seeded_generator
from study.common.validation import unknown_choice


class InputNormalize(nn.Module):
    """(x - mean) / std per channel inside the model, so attacks and data live in [0, 1] pixel space."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], image: bool):
        super().__init__()
        shape = (1, -1, 1, 1) if image else (1, -1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


# --------------------------------------------------------------------------------------------------------
# W-Asymmetric layers (Lim et al. 2024): W_eff = M ⊙ W + (1 − M) ⊙ κZ, with n_fix fixed entries per output row.
# --------------------------------------------------------------------------------------------------------
class WAsymLayer:
    """Shared fixed-entry logic for W-Asym Linear and Conv2d.

    The raw trainable ``weight`` is zeroed at fixed positions; its gradient there is zero by construction
    (it is multiplied by M = 0), so momentum and (decoupled or coupled) weight decay keep it at exactly 0.
    That keeps ‖θ_A − θ_B‖ and weight matching free of meaningless entries.
    """

    weight: nn.Parameter
    asym_mask: Tensor
    asym_fixed: Tensor
    n_fix: int
    kappa: float

    def _register_asym(self, n_fix: int, kappa: float) -> None:
        fan_in = self.weight[0].numel()
        if not 0 <= n_fix < fan_in:
            raise ValueError(f"n_fix={n_fix} must satisfy 0 <= n_fix < fan-in {fan_in} of this layer")
        self.n_fix, self.kappa = int(n_fix), float(kappa)
        self.register_buffer("asym_mask", torch.ones_like(self.weight))  # type: ignore[attr-defined]
        self.register_buffer("asym_fixed", torch.zeros_like(self.weight))  # type: ignore[attr-defined]

    def init_fixed(self, gen: torch.Generator) -> None:
        """Draw the fixed positions (exactly n_fix per output row) and the values κZ from ``gen``."""
        rows, fan_in = self.weight.shape[0], self.weight[0].numel()
        order = torch.rand(rows, fan_in, generator=gen).argsort(dim=1)
        mask = torch.ones(rows, fan_in)
        mask.scatter_(1, order[:, : self.n_fix], 0.0)
        z = torch.randn(rows, fan_in, generator=gen)
        with torch.no_grad():
            self.asym_mask.copy_(mask.view_as(self.weight))
            self.asym_fixed.copy_(((1.0 - mask) * self.kappa * z).view_as(self.weight))
            self.weight.mul_(self.asym_mask)

    def effective_weight(self) -> Tensor:
        return self.weight * self.asym_mask + self.asym_fixed

    def fixed_count(self) -> int:
        return int(self.weight.shape[0] * self.n_fix)


class WAsymLinear(WAsymLayer, nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, n_fix: int, kappa: float):
        super().__init__(in_features, out_features, bias=bias)
        self._register_asym(n_fix, kappa)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_fix={self.n_fix}, kappa={self.kappa}"


class WAsymConv2d(WAsymLayer, nn.Conv2d):
    def __init__(self, *args: object, n_fix: int, kappa: float, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._register_asym(n_fix, kappa)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_fix={self.n_fix}, kappa={self.kappa}"


# --------------------------------------------------------------------------------------------------------
# σ-Asymmetric nonlinearity (FiGLU): σ(x) = sigmoid(F x) ⊙ x with a fixed random F (1×1 conv for images).
# --------------------------------------------------------------------------------------------------------
class FiGLU(nn.Module):
    """Fixed-gate GLU. F ~ scale · N(0, 1)/√C mixes channels, so no channel permutation commutes with it."""

    def __init__(self, channels: int, scale: float = 1.0):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"figlu_scale must be > 0, got {scale}")
        self.channels, self.scale = channels, float(scale)
        self.register_buffer("figlu_matrix", torch.zeros(channels, channels))

    def init_fixed(self, gen: torch.Generator) -> None:
        z = torch.randn(self.channels, self.channels, generator=gen)
        self.figlu_matrix.copy_(z * self.scale / math.sqrt(self.channels))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            gate = x @ self.figlu_matrix.t()
        else:
            gate = F.conv2d(x, self.figlu_matrix[:, :, None, None])
        return torch.sigmoid(gate) * x

    def fixed_count(self) -> int:
        return self.figlu_matrix.numel()

    def extra_repr(self) -> str:
        return f"channels={self.channels}, scale={self.scale}"


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


def _batchnorm(channels: int, image: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if image else nn.BatchNorm1d(channels)


def _layernorm(channels: int, image: bool) -> nn.Module:
    # For images: normalise over (C, H, W) jointly, i.e. GroupNorm with one group; permutation-equivariant.
    return nn.GroupNorm(1, channels) if image else nn.LayerNorm(channels)


def _groupnorm(channels: int, image: bool) -> nn.Module:
    # One group: any channel permutation is a symmetry. With G > 1 groups only group-preserving permutations
    # are, which the permutation specs do not describe, so symstudy uses G = 1.
    return nn.GroupNorm(1, channels)


NORMS: dict[str, Callable[[int, bool], nn.Module]] = {
    "batchnorm": _batchnorm,
    "layernorm": _layernorm,
    "groupnorm": _groupnorm,
    "none": lambda channels, image: nn.Identity(),
}


# --------------------------------------------------------------------------------------------------------
# Symmetry methods: a registry; each says how to make a linear layer, a conv layer and a nonlinearity.
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AsymLayerDefault:
    """Default W-Asym setting of one layer group: the **fraction** of each row's entries that is fixed, and κ.

    A layer of the group fixes ``round(fraction × basis)`` entries per output row, at least 1 and at most
    fan-in − 1, where the basis is the layer's fan-in (``per="fan_in"``, in·k·k) or its out·k·k
    (``per="out"``: Lim et al.'s ResNet code fixes one count in every conv of a stage, i.e. this fraction of the
    stage's regular conv fan-in, also in the stage's first conv and shortcut whose fan-in is half of it).
    Fractions scale with the input size and the width, so a small input (mnist1d's 40 features, digits' 8×8)
    fixes as large a share as the public code does on MNIST, not a clipped half of it.
    """

    fraction: float
    kappa: float
    per: str = "fan_in"

    def __post_init__(self) -> None:
        if not 0 <= self.fraction < 1:
            raise ValueError(f"W-Asym default fraction must be in [0, 1), got {self.fraction}")
        if self.per not in ("fan_in", "out"):
            raise unknown_choice("W-Asym default basis", self.per, ["fan_in", "out"])

    @classmethod
    def public(cls, n_fix: int, basis: int, kappa: float, per: str = "fan_in") -> "AsymLayerDefault":
        """The public code's ``n_fix`` for a layer whose basis (fan-in, or out·k·k) was ``basis``."""
        return cls(n_fix / basis, kappa, per)

    def n_fix(self, fan_in: int, out_size: int) -> int:
        """Fixed entries per row of a layer with ``fan_in`` inputs per row and ``out_size`` = out·k·k."""
        if fan_in < 2 or self.fraction == 0:
            return 0
        basis = fan_in if self.per == "fan_in" else out_size
        return min(fan_in - 1, max(1, math.floor(self.fraction * basis + 0.5)))  # round half up


@dataclass
class LayerFactory:
    """Makes layers for one model according to its symmetry method and options.

    ``groups`` names the architecture's W-Asym layer groups with their defaults (fractions: the public code's
    where they exist, docs/science.md#symmetry-removal); ``n_fix``/``kappa`` override them with a number for
    all groups or a dict per group. An explicit n_fix must satisfy 0 <= n_fix < fan-in (else an error); a
    default is a fraction of each layer's fan-in (:class:`AsymLayerDefault`), so it always fits.
    """

    symmetry: str
    groups: Mapping[str, AsymLayerDefault]
    act: str = "relu"
    norm: str = "batchnorm"
    n_fix: int | Mapping[str, int] | None = None
    kappa: float | Mapping[str, float] | None = None
    figlu_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.symmetry not in SYMMETRIES:
            raise unknown_choice("symmetry", self.symmetry, list(SYMMETRIES))
        if self.act not in ACTIVATIONS:
            raise unknown_choice("activation", self.act, list(ACTIVATIONS))
        if self.norm not in NORMS:
            raise unknown_choice("norm", self.norm, list(NORMS))
        for name, value in (("n_fix", self.n_fix), ("kappa", self.kappa)):
            if isinstance(value, Mapping):
                for group in value:
                    if group not in self.groups:
                        raise unknown_choice(f"{name} layer group", group, list(self.groups))
        if self.symmetry != "w_asym" and (self.n_fix is not None or self.kappa is not None):
            raise ValueError(f"n_fix/kappa only apply to symmetry='w_asym', not {self.symmetry!r}")
        if self.symmetry != "sigma_asym" and self.figlu_scale != 1.0:
            raise ValueError(f"figlu_scale only applies to symmetry='sigma_asym', not {self.symmetry!r}")
        if self.figlu_scale <= 0:
            raise ValueError(f"figlu_scale must be > 0, got {self.figlu_scale}")

    def asym_setting(self, group: str, fan_in: int, out_size: int | None = None) -> tuple[int, float]:
        """(n_fix, κ) for a layer of ``group`` with ``fan_in`` inputs per row and ``out_size`` = out·k·k."""
        if group not in self.groups:
            raise unknown_choice("layer group", group, list(self.groups))
        default = self.groups[group]
        explicit = self.n_fix[group] if isinstance(self.n_fix, Mapping) and group in self.n_fix else (
            self.n_fix if isinstance(self.n_fix, int) else None)
        if explicit is not None:
            if not 0 <= explicit < fan_in:
                raise ValueError(
                    f"n_fix={explicit} for layer group {group!r} must satisfy 0 <= n_fix < fan-in {fan_in}")
            n_fix = explicit
        else:
            n_fix = default.n_fix(fan_in, fan_in if out_size is None else out_size)
        kappa = self.kappa[group] if isinstance(self.kappa, Mapping) and group in self.kappa else (
            self.kappa if isinstance(self.kappa, (int, float)) else default.kappa)
        if kappa < 0:
            raise ValueError(f"kappa={kappa} for layer group {group!r} must be >= 0")
        return n_fix, float(kappa)

    def linear(self, in_features: int, out_features: int, *, group: str, bias: bool = True) -> nn.Module:
        return SYMMETRIES[self.symmetry].linear(self, in_features, out_features, group, bias)

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, *, group: str, stride: int = 1,
             padding: int = 0, bias: bool = False) -> nn.Module:
        return SYMMETRIES[self.symmetry].conv(
            self, in_channels, out_channels, kernel_size, group, stride, padding, bias)

    def activation(self, channels: int) -> nn.Module:
        return SYMMETRIES[self.symmetry].activation(self, channels)

    def normalization(self, channels: int, *, image: bool) -> nn.Module:
        return NORMS[self.norm](channels, image)


class Standard:
    """Plain layers: every hidden-unit permutation is a symmetry."""

    @staticmethod
    def linear(f: LayerFactory, fan_in: int, out: int, group: str, bias: bool) -> nn.Module:
        return nn.Linear(fan_in, out, bias=bias)

    @staticmethod
    def conv(f: LayerFactory, cin: int, cout: int, k: int, group: str, stride: int, padding: int,
             bias: bool) -> nn.Module:
        return nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=bias)

    @staticmethod
    def activation(f: LayerFactory, channels: int) -> nn.Module:
        return ACTIVATIONS[f.act]()


class WAsym(Standard):
    """Fixed, untrained weight entries in every linear and conv layer (output layer included)."""

    @staticmethod
    def linear(f: LayerFactory, fan_in: int, out: int, group: str, bias: bool) -> nn.Module:
        n_fix, kappa = f.asym_setting(group, fan_in, out)
        return WAsymLinear(fan_in, out, bias=bias, n_fix=n_fix, kappa=kappa)

    @staticmethod
    def conv(f: LayerFactory, cin: int, cout: int, k: int, group: str, stride: int, padding: int,
             bias: bool) -> nn.Module:
        n_fix, kappa = f.asym_setting(group, cin * k * k, cout * k * k)
        return WAsymConv2d(cin, cout, k, stride=stride, padding=padding, bias=bias, n_fix=n_fix, kappa=kappa)


class SigmaAsym(Standard):
    """FiGLU at every hidden nonlinearity; linear and conv layers stay standard."""

    @staticmethod
    def activation(f: LayerFactory, channels: int) -> nn.Module:
        return FiGLU(channels, f.figlu_scale)


SYMMETRIES: dict[str, type[Standard]] = {"standard": Standard, "w_asym": WAsym, "sigma_asym": SigmaAsym}


def init_fixed_buffers(model: nn.Module, mask_seed: int) -> None:
    """Draw every fixed tensor from ``(mask_seed, module name)`` so a pair of networks shares them exactly."""
    for name, module in model.named_modules():
        if hasattr(module, "init_fixed"):
            module.init_fixed(seeded_generator("symstudy-fixed", int(mask_seed), name))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable vs fixed parameter counts; W-Asym fixed entries and FiGLU matrices count as fixed."""
    fixed = sum(m.fixed_count() for m in model.modules() if hasattr(m, "fixed_count"))
    asym_entries = sum(m.fixed_count() for m in model.modules() if isinstance(m, WAsymLayer))
    total_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": total_params - asym_entries, "fixed": fixed, "total": total_params - asym_entries + fixed}
