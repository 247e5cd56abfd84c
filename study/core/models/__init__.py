"""Model registry: one entry per architecture, one ``build`` for all of them.

Each entry declares its options, its W-Asym layer groups and how to construct it; the model itself provides
its permutation spec. Nothing outside ``study/models`` branches on the architecture name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from study.core.models import convchain, mlp, resnet
from study.core.models.layers import (
    AsymLayerDefault,
    LayerFactory,
    count_parameters,
    init_fixed_buffers,
)
from study.common.validation import unknown_choice
from study.core.permutation import PermutationSpec

SYMMETRY_OPTIONS = ("n_fix", "kappa", "figlu_scale")


@dataclass(frozen=True)
class Architecture:
    """How to build one architecture: its constructor, its tunable options and their defaults."""

    construct: Callable[..., nn.Module]
    asym_groups: Callable[[Mapping[str, Any]], dict[str, AsymLayerDefault]]
    options: Mapping[str, Any]  # option name -> default
    choices: Mapping[str, tuple[str, ...]]  # options restricted to a set of values


_CONV_OPTIONS = {"act": "relu", "norm": "batchnorm"}
_CONV_CHOICES = {"act": ("relu", "gelu"), "norm": ("batchnorm", "layernorm", "groupnorm", "none")}

ARCHITECTURES: dict[str, Architecture] = {
    "mlp": Architecture(
        construct=mlp.MLP,
        asym_groups=lambda o: mlp.asym_groups(o["depth"]),
        options={"depth": 3, "hidden": 512, "act": "gelu", "norm": "layernorm"},
        choices={"act": ("relu", "gelu"), "norm": ("layernorm", "batchnorm", "none")},
    ),
    "tinyten": Architecture(
        construct=partial(convchain.ConvChain, blocks=convchain.TINYTEN, conv_bias=True, xavier_init=True),
        asym_groups=lambda o: convchain.asym_groups(convchain.TINYTEN),
        options=dict(_CONV_OPTIONS), choices=_CONV_CHOICES,
    ),
    "vgg11": Architecture(
        construct=partial(convchain.ConvChain, blocks=convchain.VGG11, conv_bias=False, xavier_init=False),
        asym_groups=lambda o: convchain.asym_groups(convchain.VGG11),
        options=dict(_CONV_OPTIONS), choices=_CONV_CHOICES,
    ),
    "resnet20": Architecture(
        construct=partial(resnet.ResNet, blocks_per_stage=3),
        asym_groups=lambda o: dict(resnet.ASYM_GROUPS),
        options=dict(_CONV_OPTIONS), choices={**_CONV_CHOICES, "norm": ("batchnorm", "groupnorm")},
    ),
    "resnet32": Architecture(
        construct=partial(resnet.ResNet, blocks_per_stage=5),
        asym_groups=lambda o: dict(resnet.ASYM_GROUPS),
        options=dict(_CONV_OPTIONS), choices={**_CONV_CHOICES, "norm": ("batchnorm", "groupnorm")},
    ),
}


def available() -> list[str]:
    return list(ARCHITECTURES)


def resolve_options(arch: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture options with defaults filled in; unknown names and values are errors (before compute)."""
    if arch not in ARCHITECTURES:
        raise unknown_choice("architecture", arch, available())
    entry = ARCHITECTURES[arch]
    resolved = dict(entry.options)
    for key, value in options.items():
        if key in SYMMETRY_OPTIONS:
            continue
        if key not in entry.options:
            raise unknown_choice(f"option for {arch}", key, [*entry.options, *SYMMETRY_OPTIONS])
        if key in entry.choices and value not in entry.choices[key]:
            raise unknown_choice(f"{key} for {arch}", value, entry.choices[key])
        resolved[key] = value
    return resolved


def build(
    arch: str,
    *,
    symmetry: str = "standard",
    width: float = 1.0,
    num_classes: int,
    in_shape: tuple[int, ...],
    seed: int = 0,
    mask_seed: int = 0,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    **options: Any,
) -> nn.Module:
    """Build ``arch`` with trainable weights from ``seed`` and fixed (W-Asym/FiGLU) tensors from ``mask_seed``.

    ``mean``/``std`` (per input channel) make the model normalise [0, 1] inputs itself. Symmetry options
    (``n_fix``, ``kappa``: a number or a dict per layer group; ``figlu_scale``) go to the symmetry method.
    """
    resolved = resolve_options(arch, options)
    entry = ARCHITECTURES[arch]
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    in_shape = tuple(int(s) for s in in_shape)
    channels = in_shape[0] if len(in_shape) == 3 else 1
    mean = tuple(mean) if mean is not None else (0.0,) * channels
    std = tuple(std) if std is not None else (1.0,) * channels
    factory = LayerFactory(
        symmetry=symmetry,
        groups=entry.asym_groups(resolved),
        act=resolved.pop("act", "relu"),
        norm=resolved.pop("norm", "batchnorm"),
        n_fix=options.get("n_fix"),
        kappa=options.get("kappa"),
        figlu_scale=float(options.get("figlu_scale", 1.0)),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = entry.construct(factory, in_shape=in_shape, num_classes=num_classes, width=width,
                                mean=mean, std=std, **resolved)
    init_fixed_buffers(model, mask_seed)
    return model


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The model's own declarative permutation spec."""
    return model.permutation_spec()  # type: ignore[operator]


__all__ = ["ARCHITECTURES", "available", "build", "count_parameters", "permutation_spec", "resolve_options"]
