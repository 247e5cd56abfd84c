"""How a trial uses its device: mixed precision, memory format, compilation, points evaluated together.

None of these change *what* is computed beyond float rounding, so they live in :class:`Runtime`, apart from the
training recipe: they are not part of an endpoint's identity, and a study can switch them without retraining
its stored endpoints. Their defaults are per device ("auto"), chosen from measurements recorded in
``bench/RESULTS.md``; on a CPU every default reproduces the plain fp32, one-point-at-a-time computation bit for
bit, so CPU results (and the test suite) do not depend on them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from study.common.validation import check_bool, check_choice, check_number

AUTO = "auto"
#: ``default``: every CPU default reproduces the plain fp32 computation bit for bit. ``fast``: also what measured
#: faster on CPU but changes results in the last bits (channels_last for conv nets, 1.11-1.25x in endpoint training;
#: torch.compile where the training is long enough to earn its compile time back). bench/RESULTS.md has both.
PROFILES = ("default", "fast")
#: Training images (epochs x train split) from which ``torch.compile`` pays for a conv net on CPU under the fast
#: profile: a cold inductor cache costs 29-37 s per architecture, earned back after ~3 epochs of 50k images
#: (TinyTen 1.21x, ResNet-20 1.35x per epoch once compiled; bench/RESULTS.md, 2026-11-23).
COMPILE_BREAK_EVEN_IMAGES = 150_000


def mixed_precision(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked; a no-op elsewhere (CPU bf16 is slow and changes results)."""
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _auto_or(name: str, check: Any, value: Any) -> None:
    """``check`` a setting that is not ``auto``, saying that ``auto`` is allowed too."""
    try:
        check(f"runtime.{name}", value)
    except ValueError as error:
        raise ValueError(f"{error} (or 'auto')") from None


@dataclass(frozen=True)
class Runtime:
    """Device-usage switches of a trial (``trial.runtime`` in a search space).

    - ``parallel_points``: path points recalibrated and evaluated together as one vmapped network
      (:mod:`study.core.ensemble`). ``auto``: a whole path at once on CUDA (one kernel launch per layer instead of
      25), 1 on CPU, where grouped convolutions are slower than 25 plain ones (bench/RESULTS.md).
    - ``channels_last``: NHWC memory format for conv nets, which bf16 tensor-core convolutions want.
      ``auto``: on for conv nets on CUDA, off on CPU.
    - ``compile``: ``torch.compile`` the model for endpoint training and curve fitting (evaluation is not
      compiled: its stacked network is rebuilt per path, so each path would compile again). ``auto``: off in
      the default profile: with a cold inductor cache it costs 30-40 s per architecture (later trials on the
      node hit the cache, ~1.5 s), which short trials do not earn back; and under PGD training, rounding
      differences flip signs of the attack's gradient, so a compiled run diverges from an eager one like two
      GPUs' runs would. The fast profile compiles conv nets whose training reaches
      :data:`COMPILE_BREAK_EVEN_IMAGES`.
    - ``profile``: ``default`` or ``fast`` (:data:`PROFILES`): which ``auto`` values apply. Explicit settings win.
    """

    parallel_points: int | str = AUTO
    channels_last: bool | str = AUTO
    compile: bool | str = AUTO
    profile: str = "default"

    def __post_init__(self) -> None:
        if self.parallel_points != AUTO:
            _auto_or("parallel_points", lambda w, v: check_number(w, v, integer=True, low=1), self.parallel_points)
        if self.channels_last != AUTO:
            _auto_or("channels_last", check_bool, self.channels_last)
        if self.compile != AUTO:
            _auto_or("compile", check_bool, self.compile)
        check_choice("runtime.profile", self.profile, PROFILES)

    @property
    def fast(self) -> bool:
        return self.profile == "fast"

    def points_together(self, device: torch.device, points: int) -> int:
        if self.parallel_points == AUTO:
            return points if device.type == "cuda" else 1
        return min(int(self.parallel_points), points)

    def use_channels_last(self, device: torch.device, model: nn.Module) -> bool:
        if self.channels_last == AUTO:
            return (device.type == "cuda" or self.fast) and has_convolutions(model)
        return bool(self.channels_last) and has_convolutions(model)

    def use_compile(self, model: nn.Module, images: int | None) -> bool:
        """Whether to compile ``model`` for a training run of ``images`` images (None: unknown)."""
        if self.compile != AUTO:
            return bool(self.compile)
        return self.fast and has_convolutions(model) and images is not None and images >= COMPILE_BREAK_EVEN_IMAGES

    def prepare(self, model: nn.Module, device: torch.device, images: int | None = None) -> nn.Module:
        """Move ``model`` to ``device`` in the chosen memory format (in place) and return what to call for
        its forward passes: ``model`` itself, or a compiled wrapper sharing its parameters. ``model`` stays
        uncompiled, so its state dict, hooks (activation alignment) and checkpoints are unaffected. ``images``:
        how many training images the forward passes will see (the compile break-even of the fast profile)."""
        model.to(device)
        if self.use_channels_last(device, model):
            model.to(memory_format=torch.channels_last)
        return torch.compile(model) if self.use_compile(model, images) else model


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
