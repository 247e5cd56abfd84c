"""Beyond the anchors: STE matching and REPAIR measured on offline data, one claim each (run by bench/science.py).

    OMP_NUM_THREADS=1 python bench/science.py --claims ste_vs_weight repair_layernorm --pairs 5

Rows:

- ``ste_vs_weight``: Git Re-Basin's STE matching against weight and activation matching on the digits MLP;
  the verdict is the issue's criterion, STE's midpoint (t = ½) train loss ≤ weight matching's, mean over pairs.
- ``repair_layernorm`` / ``repair_nonorm``: REPAIR on and off for the weight-matched linear path of a LayerNorm
  MLP and of an MLP without normalisation; verdict: REPAIR lowers the mean linear test-loss barrier.
- ``repair_groupnorm_resnet``: the same for Lim et al.'s GroupNorm ResNet-20 (at a quarter width, on digits).
- ``repair_batchnorm``: the control: with BatchNorm the BN policy already renormalises every unit, so REPAIR
  should change the barrier little (verdict: by less than a quarter of it, or less than 0.01).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from claims import LINEAR_LOSS, Row, Settings, claim, merged, results, stats


def _midpoint_train_loss(result: Mapping[str, Any]) -> float:
    """Train loss of θ(½) on the linear path, from the trial's own profile (t = ½ is on every odd grid)."""
    profile = result["profiles"]["linear"]
    return float(profile.loc[(profile["t"] - 0.5).abs().idxmin(), "train_loss"])


def measure(settings: Settings, base: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]]
            ) -> dict[str, dict[str, list[float]]]:
    """``{quantity: {variant: [value per seed pair]}}`` for the linear barrier, the midpoint train loss and the
    alignment's seconds, from one trial per variant and seed pair."""
    got = results(settings, base, variants)
    return {"barrier": {k: [float(r["metrics"][LINEAR_LOSS]) for r in v] for k, v in got.items()},
            "midpoint": {k: [_midpoint_train_loss(r) for r in v] for k, v in got.items()},
            "seconds": {k: [float(r["metrics"]["align/seconds"]) for r in v] for k, v in got.items()}}


def _mlp(settings: Settings, norm: str = "layernorm", act: str = "gelu") -> dict[str, Any]:
    """Digits MLP, 3×128 units (3×64 with ``quick``), SGD as in ``searchspaces/beyond_anchors.yaml``."""
    return {"data": {"name": "digits"},
            "model": {"arch": "mlp", "width": 0.125 if settings.quick else 0.25, "options": {"norm": norm, "act": act}},
            "train": {"epochs": 4 if settings.quick else 8, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4,
                      "augment": False},
            "align": {"samples": 1000}, "eval": {"points": 9}}


@claim("ste_vs_weight")
def ste_vs_weight(settings: Settings) -> Row:
    """STE's midpoint loss against weight matching's (the issue's criterion), with the barriers of all three."""
    variants = {"activation": {"align": {"method": "activation"}}, "weight": {"align": {"method": "weight"}},
                "ste": {"align": {"method": "ste"}}}
    got = measure(settings, _mlp(settings), variants)
    values = {**{f"barrier/{k}": v for k, v in got["barrier"].items()},
              **{f"midpoint/{k}": got["midpoint"][k] for k in ("weight", "ste")},
              **{f"seconds/{k}": got["seconds"][k] for k in ("weight", "ste")}}
    m = {k: float(np.mean(v)) for k, v in values.items()}
    verdict = m["midpoint/ste"] <= m["midpoint/weight"]
    order = " < ".join(sorted(("activation", "weight", "ste"), key=lambda k: m[f"barrier/{k}"]))
    return Row("ste_vs_weight", "Ainsworth et al. 2023", "STE midpoint train loss ≤ weight matching's",
               stats(values), verdict, note=f"LayerNorm MLP on digits, linear test-loss barrier (chord) order: "
               f"{order}; midpoint = train loss at t = ½; STE defaults (100 Adam steps, lr 1e-2)", values=values)


def _repair_row(settings: Settings, name: str, base: Mapping[str, Any], what: str, expected: str,
                verdict: Callable[[float, float], bool]) -> Row:
    variants = {"plain": {"align": {"method": "weight"}},
                "repair": {"align": {"method": "weight"}, "eval": {"repair": True}}}
    got = measure(settings, base, variants)
    values = {f"barrier/{k}": v for k, v in got["barrier"].items()}
    plain, repaired = (float(np.mean(values[f"barrier/{k}"])) for k in ("plain", "repair"))
    return Row(name, "Jordan et al. 2023", expected, stats(values), verdict(plain, repaired),
               note=f"weight-matched {what} on digits, linear test-loss barrier (chord)", values=values)


@claim("repair_layernorm")
def repair_layernorm(settings: Settings) -> Row:
    return _repair_row(settings, "repair_layernorm", _mlp(settings, "layernorm", "gelu"), "LayerNorm MLP (GELU)",
                       "REPAIR lowers the aligned barrier", lambda plain, repaired: repaired < plain)


@claim("repair_nonorm")
def repair_nonorm(settings: Settings) -> Row:
    return _repair_row(settings, "repair_nonorm", _mlp(settings, "none", "relu"), "no-norm MLP (ReLU)",
                       "REPAIR lowers the aligned barrier", lambda plain, repaired: repaired < plain)


@claim("repair_groupnorm_resnet")
def repair_groupnorm_resnet(settings: Settings) -> Row:
    base = merged(_mlp(settings), {"model": {"arch": "resnet20", "options": {"norm": "groupnorm", "act": "relu"}}})
    return _repair_row(settings, "repair_groupnorm_resnet", base, "GroupNorm ResNet-20 ×0.25 (×0.125 quick)",
                       "REPAIR lowers the aligned barrier", lambda plain, repaired: repaired < plain)


@claim("repair_batchnorm")
def repair_batchnorm(settings: Settings) -> Row:
    return _repair_row(settings, "repair_batchnorm", _mlp(settings, "batchnorm", "relu"), "BatchNorm MLP (ReLU)",
                       "control: with BN recalibration REPAIR changes the barrier little",
                       lambda plain, repaired: abs(repaired - plain) < max(0.25 * plain, 0.01))
