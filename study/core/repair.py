"""REPAIR (Jordan et al. 2023): renormalise the units of an interpolated network to the endpoints' statistics.

Averaging two aligned networks shrinks the spread of each hidden unit's pre-activation across inputs ("variance
collapse"): two units that are only partly correlated average to a unit with a smaller standard deviation, the
shrinkage compounds with depth, and the midpoint loses accuracy although every unit is matched. BatchNorm nets
undo this when their statistics are recalibrated (docs/science.md, BatchNorm policy); nets with LayerNorm,
GroupNorm or no norm cannot. REPAIR resets, at a point θ(t) of a path, the per-channel mean and standard
deviation of every corrected unit to the interpolation of the endpoints' values,

    μ_target(t) = (1 − t)·μ_A + t·μ_B,        σ_target(t) = (1 − t)·σ_A + t·σ_B,

by an affine map x ↦ (x − μ(t))·σ_target/σ(t) + μ_target per channel, where μ(t), σ(t) are the point's own
statistics. Statistics are taken over the **whole train split, clean and un-augmented** (as the BN policy's),
with the population standard deviation, every spatial position of a conv map counting as a sample.

Where: at the **input of every nonlinearity the permutation spec lists** (``spec.activations``), i.e. each hidden
unit's pre-activation after its linear/conv layer and its norm layer (after the residual sum in a ResNet block),
so the corrected units are exactly the units alignment matched, found from the spec alone. The corrections are
forward pre-hooks; no architecture needs code for them.

How: the corrections are fitted **one layer at a time in forward order**, each pass over the training data
measuring one layer with every earlier correction already in place (the pass stops at that layer), so each
layer's statistics are exact for the corrected network that is evaluated. A path from a model to itself is
therefore left unchanged (every correction is the identity up to float rounding). With BatchNorm, the BN policy
runs first (uncorrected); REPAIR then fixes what the nonlinearities see with BN statistics held.

Curves: the target interpolates the endpoints in the path parameter t (the bends are not trained networks and
have no statistics of their own to interpolate); Jordan et al. studied linear paths only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

POLICY = ("REPAIR (Jordan et al. 2023): per-channel mean and std of every spec'd nonlinearity's input reset to "
          "(1 - t) * endpoint A's + t * endpoint B's, statistics over one clean pass of the training data per "
          "corrected layer in forward order, after the BN policy")
NO_POLICY = "none"

# A channel whose standard deviation at θ(t) is below this is only shifted, not rescaled (a dead unit cannot be
# given back a spread by scaling, and dividing by ~0 would blow the rest of the net up).
_MIN_STD = 1e-8


@dataclass(frozen=True)
class Statistics:
    """Per-channel mean and population standard deviation (float64) of one layer's input."""

    mean: Tensor
    std: Tensor


def sites(model: nn.Module) -> list[str]:
    """The modules whose input gets corrected: every nonlinearity the permutation spec names, in spec order."""
    spec = model.permutation_spec()  # type: ignore[operator]
    return list(dict.fromkeys(name for names in spec.activations.values() for name in names))


class _Moments:
    """Streaming per-channel sums over batches, in float64."""

    def __init__(self) -> None:
        self.n, self.total, self.squares = 0, None, None  # type: ignore[var-annotated]

    def add(self, x: Tensor) -> None:
        flat = x.detach().movedim(1, -1).reshape(-1, x.shape[1]).double()
        total, squares = flat.sum(0), (flat * flat).sum(0)
        self.n += flat.shape[0]
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares

    def result(self) -> Statistics:
        if self.n == 0:
            raise RuntimeError("a corrected layer saw no input during the statistics pass")
        mean = self.total / self.n
        return Statistics(mean, (self.squares / self.n - mean * mean).clamp_min(0).sqrt())


class _Stop(Exception):
    """Raised by a measuring hook to end a pass once the layer it measures has seen its batch."""


class Repair:
    """Per-channel affine corrections at the inputs of ``model``'s spec'd nonlinearities (forward pre-hooks).

    The hooks stay installed for the model's life (call :meth:`remove` to take them off); with no correction
    fitted they pass inputs through untouched. :meth:`measure` reads the current statistics, :meth:`fit`
    fits the corrections of one point.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.names = sites(model)
        modules = dict(model.named_modules())
        self._scale: dict[str, Tensor] = {}
        self._shift: dict[str, Tensor] = {}
        self._measuring: dict[str, _Moments] = {}
        self._stop_after: str | None = None
        self._fired: list[str] = []
        self.order: list[str] = []  # forward order of the corrected layers, from the last :meth:`measure`
        self._handles = [modules[name].register_forward_pre_hook(self._hook(name)) for name in self.names]

    def _hook(self, name: str) -> Callable[[nn.Module, tuple], tuple | None]:
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            x = args[0]
            self._fired.append(name)
            if name in self._measuring:
                self._measuring[name].add(x)
                if name == self._stop_after:
                    raise _Stop
            if name not in self._scale:
                return None
            shape = (1, -1) + (1,) * (x.dim() - 2)
            scale = self._scale[name].to(x.dtype).view(shape)
            shift = self._shift[name].to(x.dtype).view(shape)
            return (x * scale + shift, *args[1:])
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        """Take every correction off (the model computes its own function again)."""
        self._scale.clear()
        self._shift.clear()

    @contextmanager
    def _pass(self, names: Iterable[str], stop_after: str | None = None) -> Iterator[dict[str, _Moments]]:
        self._measuring = {name: _Moments() for name in names}
        self._stop_after = stop_after
        try:
            yield self._measuring
        finally:
            self._measuring, self._stop_after = {}, None

    def _run(self, batches: Iterable[Tensor]) -> None:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for batch in batches:
                    try:
                        self.model(batch)
                    except _Stop:
                        pass
        finally:
            self.model.train(was_training)

    def measure(self, batches: Iterable[Tensor]) -> dict[str, Statistics]:
        """Statistics of every corrected layer's input under the current corrections, in one eval-mode pass;
        also records the order in which the layers run (forward order, used by :meth:`fit`)."""
        self._fired = []
        with self._pass(self.names) as moments:
            self._run(batches)
        self.order = list(dict.fromkeys(self._fired))
        return {name: moments[name].result() for name in self.names}

    def fit(self, targets: Mapping[str, Statistics], batches: Callable[[], Iterable[Tensor]]) -> None:
        """Corrections that give each layer's input the ``targets`` statistics, fitted layer by layer in forward
        order (``batches()`` yields the clean training inputs afresh for each pass)."""
        self.clear()
        for name in self.order or self.names:
            with self._pass([name], stop_after=name) as moments:
                self._run(batches())
            current, target = moments[name].result(), targets[name]
            live = current.std > _MIN_STD
            scale = torch.where(live, target.std / torch.where(live, current.std, 1.0), 1.0)
            self._scale[name] = scale.float()
            self._shift[name] = (target.mean - current.mean * scale).float()


def interpolate(first: Mapping[str, Statistics], second: Mapping[str, Statistics], t: float) -> dict[str, Statistics]:
    """(1 − t)·first + t·second for every layer's mean and standard deviation."""
    return {name: Statistics((1 - t) * first[name].mean + t * second[name].mean,
                             (1 - t) * first[name].std + t * second[name].std) for name in first}
