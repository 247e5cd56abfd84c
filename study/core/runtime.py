"""How a trial uses its device: mixed precision, memory format, compilation, points evaluated together.

None of these change *what* is computed beyond float rounding, so they live in :class:`Runtime`, apart from the
training recipe: they are not part of an endpoint's identity, and a study can switch them without retraining
its stored endpoints. Their defaults are per device ("auto"), chosen from measurements recorded in
``bench/RESULTS.md``. On a CPU the defaults train bit for bit as the plain fp32 NCHW computation (rounding in
training is not harmless: SGD turns a last-bit difference into other endpoints), and evaluate conv nets in
channels_last, which only re-rounds a forward pass: clean barriers agree with the NCHW evaluation to ~3e-7
and robust (PGD) ones to ~2e-5, below anything printed, and evaluation runs 1.3-1.6x faster (bench/RESULTS.md,
2026-12-02 evening).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from study.common.validation import check_bool, check_choice, check_number

logger = logging.getLogger(__name__)

AUTO = "auto"
#: ``default``: every CPU default reproduces the plain fp32 computation bit for bit. ``fast``: also what measured
#: faster on CPU but changes results: channels_last for conv nets, torch.compile where the training is long enough
#: to earn its compile time back, and bf16 autocast on CPUs with native bf16 (AMX or AVX512-BF16), the one switch
#: that pays a lot on a CPU (bench/RESULTS.md has all three, and what they do to barriers).
PROFILES = ("default", "fast")
#: Training images (epochs x train split) from which ``torch.compile`` pays for a conv net on CPU under the fast
#: profile: a cold inductor cache costs 29-37 s per architecture, earned back after ~3 epochs of 50k images
#: (TinyTen 1.21x, ResNet-20 1.35x per epoch once compiled; bench/RESULTS.md, 2026-11-23).
COMPILE_BREAK_EVEN_IMAGES = 150_000


#: Whether bf16 autocast is allowed on the CPU in this context (set by :meth:`Runtime.scope`). A context variable
#: rather than an argument: the decision is trial-wide (``trial.runtime``), while the forward passes that honour
#: it sit in the training loop, the evaluators, the plane and the merges, whose signatures know only ``bf16``.
_CPU_BF16: ContextVar[bool] = ContextVar("symstudy_cpu_bf16", default=False)
#: ``cpu_bf16: eval``: bf16 in evaluation only (endpoints and curves trained in fp32); ``channels_last: eval``:
#: channels_last in evaluation only (endpoints and curves trained in NCHW).
CPU_BF16_EVAL = EVAL_ONLY = "eval"


def mixed_precision(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast of forward passes when ``bf16`` is asked: always on CUDA; on a CPU only inside a
    :meth:`Runtime.scope` that allows it (the fast profile on a CPU with native bf16), since elsewhere CPU bf16
    is slow and it always changes results."""
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    if bf16 and device.type == "cpu" and _CPU_BF16.get():
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX-BF16 or AVX512-BF16), where oneDNN's bf16 kernels run
    2-4x faster than fp32 (bench/RESULTS.md); elsewhere they are emulated and slower."""
    probe = getattr(torch._C, "_cpu", None)
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(probe, name, None)
        if check is not None and check():
            return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


#: Said when an explicit ``cpu_bf16`` runs on a CPU that emulates bf16 (:meth:`Runtime.emulates_cpu_bf16`): by
#: each worker process once, and by a study's driver on the console before compute.
EMULATED_BF16_WARNING = ("trial.runtime.cpu_bf16 is set, but this CPU has no native bf16 (AMX-BF16 or "
                         "AVX512-BF16): bf16 is emulated and several times slower than fp32 here; use cpu_bf16: "
                         "auto to decide per CPU")


@functools.cache
def _warn_emulated_bf16() -> None:
    """Once per process: an explicit ``cpu_bf16`` on a CPU that emulates bf16 is honoured (a user may want bf16
    numbers anywhere), but it is several times slower than fp32 there (bench/RESULTS.md measures it on an AVX2-only
    AMD EPYC), which nobody asking for speed expects."""
    logger.warning("%s", EMULATED_BF16_WARNING)


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
    - ``channels_last``: NHWC memory format for conv nets, which bf16 tensor-core convolutions and oneDNN's fp32
      CPU kernels want: ``true`` in training and evaluation, ``eval`` in evaluation only (BN recalibration and
      every pass at path and plane points), ``false`` nowhere. ``auto``: ``true`` for conv nets on CUDA and in the
      fast profile; ``eval`` on a CPU in the default profile: evaluation 1.3-1.6x faster with the same numbers to
      float rounding, while training stays NCHW, bit for bit what it was (in training the re-rounding would
      train other endpoints). Stacked points (``parallel_points`` > 1) run in NCHW whatever this says.
    - ``compile``: ``torch.compile`` the model for endpoint training and curve fitting (evaluation is not
      compiled: its stacked network is rebuilt per path, so each path would compile again). ``auto``: off in
      the default profile: with a cold inductor cache it costs 30-40 s per architecture (later trials on the
      node hit the cache, ~1.5 s), which short trials do not earn back; and under PGD training, rounding
      differences flip signs of the attack's gradient, so a compiled run diverges from an eager one like two
      GPUs' runs would. The fast profile compiles conv nets whose training reaches
      :data:`COMPILE_BREAK_EVEN_IMAGES`.
    - ``cpu_bf16``: bf16 autocast of forward passes on a CPU, where the recipe's and ``eval``'s ``bf16`` ask for
      it: ``true`` in training and evaluation (BN recalibration, every split's pass), ``eval`` in evaluation only,
      ``false`` nowhere. ``auto``: ``true`` in the fast profile when the CPU has native bf16
      (:func:`cpu_has_native_bf16`), else ``false``. Training with it is not a rounding detail: it trains other
      endpoints (bench/RESULTS.md measures how far barriers move: within the seed-pair spread, not within 1e-3),
      so it is for exploring, and a table's numbers should come from one setting. ``eval`` keeps the endpoints
      and curves of fp32 and moves barriers by at most 2e-3 (same measurement).
    - ``profile``: ``default`` or ``fast`` (:data:`PROFILES`): which ``auto`` values apply. Explicit settings win.
    """

    parallel_points: int | str = AUTO
    channels_last: bool | str = AUTO
    compile: bool | str = AUTO
    cpu_bf16: bool | str = AUTO
    profile: str = "default"

    def __post_init__(self) -> None:
        if self.parallel_points != AUTO:
            _auto_or("parallel_points", lambda w, v: check_number(w, v, integer=True, low=1), self.parallel_points)
        if self.channels_last not in (AUTO, EVAL_ONLY):
            try:
                check_bool("runtime.channels_last", self.channels_last)
            except ValueError as error:
                raise ValueError(f"{error} (or 'eval': evaluation only, or 'auto')") from None
        if self.compile != AUTO:
            _auto_or("compile", check_bool, self.compile)
        if self.cpu_bf16 not in (AUTO, CPU_BF16_EVAL):
            try:
                check_bool("runtime.cpu_bf16", self.cpu_bf16)
            except ValueError as error:
                raise ValueError(f"{error} (or 'eval': evaluation only, or 'auto')") from None
        check_choice("runtime.profile", self.profile, PROFILES)

    @property
    def fast(self) -> bool:
        return self.profile == "fast"

    def points_together(self, device: torch.device, points: int) -> int:
        if self.parallel_points == AUTO:
            return points if device.type == "cuda" else 1
        return min(int(self.parallel_points), points)

    def use_channels_last(self, device: torch.device, model: nn.Module) -> bool:
        """Whether ``model`` trains in channels_last on ``device``."""
        if self.channels_last == AUTO:
            return (device.type == "cuda" or self.fast) and has_convolutions(model)
        return self.channels_last is True and has_convolutions(model)

    def eval_channels_last(self, device: torch.device, model: nn.Module) -> bool:
        """Whether ``model``'s evaluation passes (BN recalibration, clean and robust passes at path and plane
        points) run in channels_last on ``device``: ``auto`` on every device for conv nets (on a CPU it is the
        default profile's one speed-up that keeps the numbers, see the class docstring)."""
        if self.channels_last == AUTO:
            return has_convolutions(model)
        return self.channels_last in (True, EVAL_ONLY) and has_convolutions(model)

    def use_compile(self, model: nn.Module, images: int | None) -> bool:
        """Whether to compile ``model`` for a training run of ``images`` images (None: unknown)."""
        if self.compile != AUTO:
            return bool(self.compile)
        return self.fast and has_convolutions(model) and images is not None and images >= COMPILE_BREAK_EVEN_IMAGES

    def _cpu_bf16_setting(self) -> bool | str:
        """``cpu_bf16`` with ``auto`` resolved by the profile alone (True / "eval" / False): declared intent, not
        this machine's capability, so keys agree across a cluster's nodes."""
        if self.cpu_bf16 == AUTO:
            return self.fast
        return self.cpu_bf16

    def identity(self, *, training: bool = False) -> dict[str, Any]:
        """The part of the runtime that changes results by more than rounding, for trial keys (and with
        ``training``, endpoint keys): empty unless CPU bf16 may apply there, so default keys stay what they were
        and a bf16 endpoint or result is never served to an fp32 trial, nor the other way round."""
        setting = self._cpu_bf16_setting()
        if setting is True or (setting == CPU_BF16_EVAL and not training):
            return {"cpu_bf16": setting}
        return {}

    def emulates_cpu_bf16(self, device: torch.device) -> bool:
        """Whether ``cpu_bf16`` is set explicitly (``true`` or ``eval``; ``auto`` decides per CPU) for ``device``, a
        CPU without native bf16: honoured, but slower than fp32 (:data:`EMULATED_BF16_WARNING`)."""
        return device.type == "cpu" and self.cpu_bf16 in (True, CPU_BF16_EVAL) and not cpu_has_native_bf16()

    def use_cpu_bf16(self, device: torch.device, *, training: bool = False) -> bool:
        """Whether forward passes on ``device`` autocast to bf16: in training (``training``) or evaluation."""
        if device.type != "cpu":
            return False
        if self.emulates_cpu_bf16(device):
            _warn_emulated_bf16()
        setting = self._cpu_bf16_setting()
        if self.cpu_bf16 == AUTO:
            setting = setting and cpu_has_native_bf16()
        return setting is True or (setting == CPU_BF16_EVAL and not training)

    @contextlib.contextmanager
    def scope(self, device: torch.device, *, training: bool = False) -> Iterator[None]:
        """The context a trial's forward passes run in (``training``: the training loop's): it allows CPU bf16
        autocast when :meth:`use_cpu_bf16` says so (:func:`mixed_precision` reads it), and restores the
        caller's setting on exit."""
        token = _CPU_BF16.set(self.use_cpu_bf16(device, training=training))
        try:
            yield
        finally:
            _CPU_BF16.reset(token)

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
