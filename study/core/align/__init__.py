"""Alignment: permutations of model B's hidden units that bring it closest to model A.

One module per method; this package's registry (:data:`METHODS`) is the only place that names them, and
:func:`match` the one entry point. Every method reads only the permutation spec, so it works for every
architecture. Returned permutations map B onto A: ``permutation.apply(model_b, alignment.perms)`` is B aligned
to A. The algorithms and their sources are described in ``docs/science.md`` (Alignment).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from study.common.validation import did_you_mean, unknown_choice
from study.core.align import activation, none, pam, ste, weight
from study.core.align.base import Alignment, function_preserving, solve_assignment
from study.core.data import Dataset

log = logging.getLogger(__name__)

__all__ = ["Alignment", "Method", "METHODS", "match", "check_options", "function_preserving", "solve_assignment"]


@dataclass(frozen=True)
class Method:
    """An alignment method and what it is given: ``inputs`` (``None``, ``"batch"``: the alignment batch as one
    input tensor, or ``"dataset"``: the whole :class:`~study.core.data.Dataset`, for methods that train)."""

    run: Callable[..., Alignment]
    inputs: str | None = None

    def defaults(self) -> dict[str, Any]:
        """The keyword options a spec may set in ``align.options`` (everything but the models, data and seed),
        with their defaults."""
        parameters = inspect.signature(self.run).parameters.values()
        return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in ("data", "seed")}

    def options(self) -> list[str]:
        return list(self.defaults())


METHODS: dict[str, Method] = {
    "none": Method(none.no_alignment),
    "activation": Method(activation.activation_matching, inputs="batch"),
    "weight": Method(weight.weight_matching),
    "pam": Method(pam.pam, inputs="dataset"),
    "ste": Method(ste.ste_matching, inputs="dataset"),
}


def check_options(method: str, options: Mapping[str, Any]) -> None:
    """ValueError for a method that does not exist or an option it does not take (before any compute)."""
    if method not in METHODS:
        raise unknown_choice("alignment method", method, list(METHODS))
    allowed = METHODS[method].options()
    for key in options:
        if key not in allowed:
            raise ValueError(f"unknown option {key!r} of alignment method {method!r}{did_you_mean(key, allowed)}; "
                             f"allowed: {', '.join(allowed) or '(none)'}")


def match(model_a: nn.Module, model_b: nn.Module, *, method: str = "activation",
          data: Tensor | Dataset | None = None, seed: int = 0, **options: Any) -> Alignment:
    """Align B to A with ``method``; diagnostics include seconds and whether the result preserves B's function."""
    check_options(method, options)
    entry = METHODS[method]
    if entry.inputs == "batch" and not isinstance(data, Tensor):
        raise ValueError(f"alignment method {method!r} needs data (an alignment batch of inputs)")
    if entry.inputs == "dataset" and not isinstance(data, Dataset):
        raise ValueError(f"alignment method {method!r} needs data (the whole Dataset), got {type(data).__name__}")
    shapes_a = {k: v.shape for k, v in model_a.state_dict().items()}
    shapes_b = {k: v.shape for k, v in model_b.state_dict().items()}
    if type(model_a) is not type(model_b) or shapes_a != shapes_b:
        raise ValueError("models to align must have the same architecture")
    start = time.perf_counter()
    kwargs: dict[str, Any] = dict(options)
    if entry.inputs is not None:
        kwargs["data"] = data
    result = entry.run(model_a, model_b, seed=seed, **kwargs)
    result.diagnostics["seconds"] = time.perf_counter() - start
    result.diagnostics["function_preserving"] = float(function_preserving(model_b))
    result.diagnostics["identity_fraction"] = float(np.mean(
        [(v == torch.arange(len(v))).float().mean().item() for v in result.perms.values()]))
    if not function_preserving(model_b) and method != "none":
        log.info("alignment of an asymmetric network is a diagnostic: it does not preserve B's function")
    return result
