"""Merging vs ensembling two endpoints (Git Re-Basin's model merging; Garipov et al.'s ensembles).

- **Ensemble**: the endpoints' *averaged softmax predictions* (Garipov et al.'s ensembles, Lakshminarayanan et
  al.): p(y|x) = ½(softmax f_A(x) + softmax f_B(x)); its loss is the NLL of that average and its accuracy the argmax
  of it. Each endpoint uses its own (trained) BN statistics. Aligning B does not change the ensemble (a
  permutation is function-preserving), so one ensemble serves every path. Robust: PGD against the ensemble
  itself (white box: the attack differentiates the averaged prediction).
- **Merge**: the single network θ(½) of a path: ½(θ_A + π(θ_B)) on the linear path (the merged model of Git
  Re-Basin) and the curve's point at t = ½ for a curve; evaluated after BN recalibration on clean training data
  (the path policy, :mod:`study.core.bn`), clean and, with an attack, robust.

Flat metric names (:func:`ensemble_metrics`, :func:`merge_metrics`): ``ensemble/{split}_{acc,loss}``,
``merge/{path}/{split}_{acc,loss}``, and with an attack ``robust/ensemble/...`` and ``robust/merge/{path}/...`` for
each robust split. Identical endpoints give ensemble = merge = endpoint (tests/test_merging.py).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study.core import bn
from study.core.attacks import AttackConfig
from study.core.data import Dataset
from study.core.evaluate import (
    EVAL_BATCH_SIZE,
    evaluate,
    load_weights,
    recalibration_batches,
)
from study.core.paths import Path

#: Splits the clean ensemble and merge numbers are measured on.
SPLITS = ("test",)


class ProbabilityEnsemble(nn.Module):
    """Log of the members' averaged softmax: cross-entropy of its output is the NLL of the averaged prediction
    (log_softmax of a log-probability vector is itself), so :func:`evaluate` and PGD treat it as one network."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        log_probs = torch.stack([F.log_softmax(m(x).float(), dim=-1) for m in self.members])
        return torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(len(self.members)),
                                                                          device=log_probs.device))


def _measure(model: nn.Module, prefix: str, data: Dataset, *, splits: Sequence[str], attack: AttackConfig | None,
             robust_splits: Sequence[str], batch_size: int, max_samples: int | None, seed: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for split in splits:
        result = evaluate(model, data, split, batch_size=batch_size, max_samples=max_samples)
        out[f"{prefix}/{split}_acc"], out[f"{prefix}/{split}_loss"] = result["acc"], result["loss"]
    if attack is not None and not attack.disabled:
        generator = torch.Generator(device=data.device).manual_seed(int(seed))
        for split in robust_splits:
            result = evaluate(model, data, split, batch_size=batch_size, attack=attack, generator=generator,
                              max_samples=max_samples)
            out[f"robust/{prefix}/{split}_acc"], out[f"robust/{prefix}/{split}_loss"] = result["acc"], result["loss"]
    return out


def ensemble_metrics(model_a: nn.Module, model_b: nn.Module, data: Dataset, *, splits: Sequence[str] = SPLITS,
                     attack: AttackConfig | None = None, robust_splits: Sequence[str] = ("test",),
                     batch_size: int = EVAL_BATCH_SIZE, max_samples: int | None = None,
                     seed: int = 0) -> dict[str, float]:
    """``ensemble/...`` metrics of the two endpoints' averaged softmax (the models are not modified)."""
    ensemble = ProbabilityEnsemble([copy.deepcopy(model_a), copy.deepcopy(model_b)]).to(data.device).eval()
    return _measure(ensemble, "ensemble", data, splits=splits, attack=attack, robust_splits=robust_splits,
                    batch_size=batch_size, max_samples=max_samples, seed=seed)


def merged_model(model: nn.Module, path: Path, data: Dataset, *, t: float = 0.5,
                 batch_size: int = EVAL_BATCH_SIZE, bn_samples: int | None = None) -> nn.Module:
    """A copy of ``model`` (architecture and fixed buffers) at the path's θ(t), BN recalibrated (on the first
    ``bn_samples`` training images with a budget, as the path's profile), in eval mode."""
    merged = copy.deepcopy(model).to(data.device)
    with torch.no_grad():
        load_weights(merged, {k: v.detach() for k, v in path.weights(t).items()})
    bn.recalibrate(merged, recalibration_batches(data, batch_size, bn_samples))
    return merged.eval()


def merge_metrics(model: nn.Module, path: Path, name: str, data: Dataset, *, splits: Sequence[str] = SPLITS,
                  attack: AttackConfig | None = None, robust_splits: Sequence[str] = ("test",),
                  batch_size: int = EVAL_BATCH_SIZE, max_samples: int | None = None,
                  seed: int = 0, bn_samples: int | None = None) -> dict[str, float]:
    """``merge/{name}/...`` metrics of the path's midpoint θ(½) (see the module docstring); ``bn_samples``: the
    BN policy's budget (:func:`study.core.evaluate.recalibration_batches`)."""
    merged = merged_model(model, path, data, batch_size=batch_size, bn_samples=bn_samples)
    return _measure(merged, f"merge/{name}", data, splits=splits, attack=attack, robust_splits=robust_splits,
                    batch_size=batch_size, max_samples=max_samples, seed=seed)


def metric_names(paths: Sequence[str], robust_splits: Sequence[str] = (), splits: Sequence[str] = SPLITS
                 ) -> set[str]:
    """Every name :func:`ensemble_metrics` and :func:`merge_metrics` report for ``paths`` (robust: when the
    evaluation has an attack, its robust splits)."""
    prefixes = ["ensemble", *(f"merge/{p}" for p in paths)]
    names = {f"{p}/{s}_{k}" for p in prefixes for s in splits for k in ("acc", "loss")}
    names |= {f"robust/{p}/{s}_{k}" for p in prefixes for s in robust_splits for k in ("acc", "loss")}
    return names


__all__ = ["ProbabilityEnsemble", "ensemble_metrics", "merged_model", "merge_metrics", "metric_names"]
