"""No alignment: the identity permutations (the unaligned baseline every study compares against)."""

from __future__ import annotations


from torch import nn

from study.core import permutation as P
from study.core.align.base import Alignment


def no_alignment(model_a: nn.Module, model_b: nn.Module, *, seed: int = 0) -> Alignment:
    del model_b, seed  # the same call signature as every method
    spec = model_a.permutation_spec()  # type: ignore[operator]
    return Alignment(P.identity(spec.sizes(model_a.state_dict())), "none")
