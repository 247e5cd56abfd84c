"""What every alignment method shares: the result type, the assignment solver and the symmetry test.

Every method reads only the permutation spec, so it works for every architecture without special cases.
Returned permutations map B onto A: ``permutation.apply(model_b, alignment.perms)`` is B aligned to A.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from study.core.models.layers import FiGLU, WAsymLayer


@dataclass
class Alignment:
    """Permutations mapping B onto A plus what a researcher wants to log about how they were found."""

    perms: dict[str, Tensor]
    method: str
    diagnostics: dict[str, float] = field(default_factory=dict)


def function_preserving(model: nn.Module) -> bool:
    """False for W-Asym/FiGLU nets: their fixed tensors do not move with a permutation, so alignment there is a
    diagnostic (the recovered permutation should be near identity), not a symmetry."""
    return not any(isinstance(m, (WAsymLayer, FiGLU)) for m in model.modules())


def effective_state(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with every W-Asym layer's ``weight`` replaced by the weight it computes with,
    W_eff = M ⊙ W + (1 − M) ⊙ κZ (the raw weight is 0 at the fixed positions, so weight-based diagnostics on
    raw weights would see neither the fixed entries nor the asymmetry they create). Other entries unchanged."""
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if isinstance(module, WAsymLayer):
            state[f"{name}.weight" if name else "weight"] = module.effective_weight().detach()
    return state


def solve_assignment(similarity: Tensor) -> Tensor:
    """The permutation maximising the total similarity (Hungarian/LAP, scipy): ``perm[i]`` is B's unit for A's i."""
    rows, cols = linear_sum_assignment(similarity.cpu().numpy(), maximize=True)
    assert np.array_equal(rows, np.arange(len(rows)))
    return torch.as_tensor(cols, dtype=torch.long)
