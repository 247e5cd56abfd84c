"""Permutation specs: the one declarative description of an architecture's hidden-unit symmetries.

A spec says, for every state-dict tensor with a hidden-unit axis, which named permutation acts on which axis
(docs/science.md, Permutation symmetry and permutation specs; after Git Re-Basin). Each model produces its own
spec (``model.permutation_spec()``); every
algorithm reads it: applying a permutation, random permutations for tests, weight matching, activation
matching (``activations`` names the modules whose outputs carry each permutation on dim 1) and curve fitting.

Convention: ``perms[p]`` is an index tensor and permuting means ``new.index_select(axis, perms[p])``, i.e.
unit i of the result is unit ``perms[p][i]`` of the original. ``compose(first, second)`` equals applying
``first`` then ``second``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

Perms = dict[str, Tensor]

# Parameter/buffer names whose leading axis is the layer's output units (norm layers, biases) and names that
# are never permuted because they are not per-unit (BN's counter) or belong to the fixed architecture.
_UNIT_VECTORS = ("bias", "running_mean", "running_var")
_NOT_PERMUTED = ("num_batches_tracked", "asym_mask", "asym_fixed", "figlu_matrix")


@dataclass(frozen=True)
class PermutationSpec:
    """``axes``: state-dict key -> permutation name (or None) per axis; ``activations``: permutation name ->
    qualified module names whose output's dim 1 is permuted by it (used by activation matching)."""

    axes: Mapping[str, tuple[str | None, ...]]
    activations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def perm_to_axes(self) -> dict[str, list[tuple[str, int]]]:
        """Permutation name -> every (key, axis) it acts on, in spec order."""
        out: dict[str, list[tuple[str, int]]] = {}
        for key, perms in self.axes.items():
            for axis, p in enumerate(perms):
                if p is not None:
                    out.setdefault(p, []).append((key, axis))
        return out

    @property
    def names(self) -> list[str]:
        return list(self.perm_to_axes)

    def sizes(self, state: Mapping[str, Tensor]) -> dict[str, int]:
        """Size of each permutation, checking that every axis it acts on agrees."""
        sizes: dict[str, int] = {}
        for p, places in self.perm_to_axes.items():
            for key, axis in places:
                if key not in state:
                    raise KeyError(f"permutation spec names {key!r}, which the state dict does not have")
                n = int(state[key].shape[axis])
                if sizes.setdefault(p, n) != n:
                    raise ValueError(f"permutation {p!r} acts on axes of sizes {sizes[p]} and {n} ({key}[{axis}])")
        return sizes


class SpecBuilder:
    """Collects a spec from layer-level statements, reading parameter names off the modules themselves."""

    def __init__(self, model: nn.Module):
        self._modules = dict(model.named_modules())
        self.axes: dict[str, tuple[str | None, ...]] = {}
        self.activations: dict[str, list[str]] = {}

    def _entries(self, name: str) -> Iterable[tuple[str, Tensor]]:
        module = self._modules[name]
        prefix = f"{name}." if name else ""
        for key, tensor in module.state_dict(keep_vars=True).items():
            if "." not in key and key not in _NOT_PERMUTED:
                yield prefix + key, tensor

    def layer(self, name: str, out: str | None, inp: str | None) -> "SpecBuilder":
        """A linear or conv layer: weight axes (out, in, ...), bias on out."""
        for key, tensor in self._entries(name):
            if key.endswith(".weight"):
                self.axes[key] = (out, inp) + (None,) * (tensor.dim() - 2)
            else:
                self.axes[key] = (out,)
        return self

    def norm(self, name: str, perm: str | None) -> "SpecBuilder":
        """A norm layer (BN, LayerNorm, one-group GroupNorm) or Identity: every per-unit vector on ``perm``."""
        for key, _ in self._entries(name):
            self.axes[key] = (perm,)
        return self

    def activation(self, name: str, perm: str) -> "SpecBuilder":
        """Module ``name``'s output carries permutation ``perm`` on dim 1 (post-nonlinearity activations)."""
        self.activations.setdefault(perm, []).append(name)
        return self

    def build(self) -> PermutationSpec:
        return PermutationSpec(dict(self.axes), {p: tuple(v) for p, v in self.activations.items()})

    def chain(self, blocks: Iterable[tuple[str, str, str, str]], head: str) -> PermutationSpec:
        """A plain stack: each (layer, norm, activation, permutation) block feeds the next; ``head`` reads the
        last block's units and keeps its outputs (the classes) unpermuted."""
        previous = None
        for layer, norm, act, perm in blocks:
            self.layer(layer, perm, previous).norm(norm, perm).activation(act, perm)
            previous = perm
        return self.layer(head, None, previous).build()


def permute_state(state: Mapping[str, Tensor], spec: PermutationSpec, perms: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A new state dict with every spec'd axis permuted; other entries are shared, not copied."""
    missing = set(spec.names) - set(perms)
    if missing:
        raise KeyError(f"perms lack {sorted(missing)}")
    out = dict(state)
    for key, axis_perms in spec.axes.items():
        tensor = state[key]
        for axis, p in enumerate(axis_perms):
            if p is not None:
                tensor = tensor.index_select(axis, perms[p].to(tensor.device))
        out[key] = tensor
    return out


def apply(model: nn.Module, perms: Mapping[str, Tensor], spec: PermutationSpec | None = None) -> nn.Module:
    """A permuted deep copy of ``model``; for a standard network it computes the same function."""
    spec = spec if spec is not None else model.permutation_spec()  # type: ignore[operator]
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(permute_state(model.state_dict(), spec, perms))
    return permuted


def identity(sizes: Mapping[str, int], device: torch.device | str = "cpu") -> Perms:
    return {p: torch.arange(n, device=device) for p, n in sizes.items()}


def random(spec: PermutationSpec, generator: torch.Generator, sizes: Mapping[str, int] | None = None,
           model: nn.Module | None = None) -> Perms:
    """Uniformly random permutations for every name in ``spec``; sizes come from ``sizes`` or ``model``."""
    if sizes is None:
        if model is None:
            raise ValueError("random() needs sizes or a model to read them from")
        sizes = spec.sizes(model.state_dict())
    return {p: torch.randperm(sizes[p], generator=generator) for p in spec.names}


def inverse(perms: Mapping[str, Tensor]) -> Perms:
    return {p: torch.argsort(v) for p, v in perms.items()}


def compose(first: Mapping[str, Tensor], second: Mapping[str, Tensor]) -> Perms:
    """Permutations equal to applying ``first`` and then ``second``."""
    return {p: first[p][second[p]] for p in first}


def is_identity(perms: Mapping[str, Tensor]) -> bool:
    return all(bool(torch.equal(v, torch.arange(len(v), device=v.device))) for v in perms.values())
