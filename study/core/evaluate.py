"""Loss and accuracy of a model on one split, clean or under a PGD attack.

One function serves both so that clean and robust numbers are computed the same way (same batching, same
reduction, same eval mode). Sums stay on the device and are read once at the end: evaluation runs dozens of
times per trial (every epoch, every point of a path), and a per-batch ``.item()`` would stall a GPU each batch.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study.core import bn
from study.core.repair import Repair, Statistics, interpolate
from study.core.runtime import mixed_precision
from study.core.attacks import AttackConfig, pgd
from study.core.data import Dataset
from study.core.ensemble import StackedModel
from study.core.paths import Path
from study.common.seeding import stable_seed

log = logging.getLogger(__name__)

# Inference batch: 256 is ~2.5x faster than 1024 for conv nets on CPU (cache-bound; measured with TinyTen on
# 32x32 inputs: 7.8k vs 3.0k images/s at 2 threads). On a GPU, stacked path points (study.core.ensemble) multiply
# the work per kernel instead; GPU figures for both are pending (bench/RESULTS.md).
EVAL_BATCH_SIZE = 256


def evaluate(
    model: nn.Module,
    data: Dataset,
    split: str,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    attack: AttackConfig | None = None,
    generator: torch.Generator | None = None,
    max_samples: int | None = None,
) -> dict:
    """``{"loss": mean cross-entropy, "acc": accuracy, "n": samples}`` of ``model`` on ``split`` in eval mode.

    With an enabled ``attack`` each batch is replaced by its PGD examples first (``generator`` seeds the random
    start). ``max_samples`` evaluates only the first samples of the split (a cheap, deterministic subset).
    The model's previous train/eval mode is restored. An empty split gives NaN loss and accuracy.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    n = data.size(split) if max_samples is None else min(max_samples, data.size(split))
    attacking = attack is not None and not attack.disabled
    was_training = model.training
    model.eval()
    try:
        loss_sum = torch.zeros((), device=data.device)
        correct = torch.zeros((), dtype=torch.int64, device=data.device)
        for start in range(0, n, batch_size):
            x, y = data.batch(split, slice(start, min(start + batch_size, n)))
            if attacking:
                x = pgd(model, x, y, attack, generator=generator)
            with torch.no_grad():
                logits = model(x).float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(dim=1) == y).sum()
    finally:
        model.train(was_training)
    if n == 0:
        return {"loss": float("nan"), "acc": float("nan"), "n": 0}
    totals = torch.stack([loss_sum.double(), correct.double()]).tolist()  # the one host sync
    return {"loss": totals[0] / n, "acc": totals[1] / n, "n": n}


def clean_batches(data: Dataset, split: str, batch_size: int, max_samples: int | None = None) -> Iterator[Tensor]:
    """Un-augmented inputs of ``split`` in order, one batch at a time (for BN recalibration)."""
    n = data.size(split) if max_samples is None else min(max_samples, data.size(split))
    for start in range(0, n, batch_size):
        yield data.batch(split, slice(start, min(start + batch_size, n)))[0]


def check_bn_samples(bn_samples: int | None) -> None:
    """``eval.bn_samples``: None (the whole training split) or an integer >= 1, else a ValueError."""
    if bn_samples is not None and (isinstance(bn_samples, bool) or not isinstance(bn_samples, int)
                                   or bn_samples < 1):
        raise ValueError(f"bn_samples must be None (the whole training split) or an integer >= 1, "
                         f"got {bn_samples!r}")


def recalibration_batches(data: Dataset, batch_size: int, bn_samples: int | None = None) -> Iterator[Tensor]:
    """The BN policy's pass (:mod:`study.core.bn`): clean training batches in stored order, the whole split or,
    with a budget ``bn_samples``, its first ``bn_samples`` images (the same ones at every point; a budget at
    least the split's size is the whole split)."""
    check_bn_samples(bn_samples)
    return clean_batches(data, "train", batch_size, max_samples=bn_samples)


def working_copy(model: nn.Module, device: torch.device, channels_last: bool = False) -> nn.Module:
    """The copy of ``model`` whose weights an evaluation of many points overwrites (``model`` stays as it is),
    on ``device``, in channels_last with ``channels_last`` (``Runtime.eval_channels_last``): ``load_weights``
    copies into the parameters in place and keeps their strides, so every point runs in that format."""
    model = copy.deepcopy(model).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def load_weights(model: nn.Module, weights: dict[str, Tensor]) -> None:
    """Copy interpolated parameters into ``model`` in place (buffers stay: they are the architecture)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(weights[name])


def path_profile(
    model: nn.Module,
    path: Path,
    data: Dataset,
    *,
    points: int = 25,
    splits: Sequence[str] = ("train", "test"),
    attack: AttackConfig | None = None,
    robust_splits: Sequence[str] = ("test",),
    batch_size: int = EVAL_BATCH_SIZE,
    max_samples: int | None = None,
    seed: int = 0,
    parallel_points: int = 1,
    bf16: bool = False,
    repair: bool = False,
    progress: Callable[[int, int], None] | None = None,
    shared_ends: dict[float, dict[str, float]] | None = None,
    bn_samples: int | None = None,
    channels_last: bool = False,
) -> pd.DataFrame:
    """Loss and accuracy at ``points`` uniformly spaced t along ``path``, one row per t.

    ``model`` supplies the architecture and its fixed buffers (it is copied, never modified). At each t the
    interpolated weights are loaded, BN statistics are recomputed on clean training data (the recorded policy,
    see :mod:`study.core.bn`), then each split is evaluated clean and, with an enabled ``attack``, under PGD
    (``robust_*`` columns). A robust split is also evaluated clean when ``splits`` lacks it, so every robust
    metric has its clean counterpart. ``segment_length`` is ‖θ(t_i) − θ(t_{i−1})‖ for arc-length-weighted metrics.
    ``bn_samples`` (``eval.bn_samples``): recalibrate on the first ``bn_samples`` clean training images instead
    of the whole split (None, the default; :func:`recalibration_batches`). ``channels_last``: points evaluated one
    at a time run in channels_last (``Runtime.eval_channels_last``: the same numbers to float rounding, faster
    for conv nets on CPU); stacked points run in NCHW either way.

    ``parallel_points=K > 1`` recalibrates and evaluates K points at a time as one vmapped network
    (:class:`study.core.ensemble.StackedModel`): the same numbers up to float rounding, with K times fewer kernel
    launches (the GPU default; one point at a time is faster on a CPU). A chunk that runs out of memory is
    retried with half as many points. Robust evaluation still attacks one point at a time. ``bf16`` autocasts
    the forward passes on CUDA (ignored elsewhere).

    ``repair`` applies REPAIR (:mod:`study.core.repair`) at every point after the BN policy: each spec'd
    nonlinearity's input gets the interpolation of the endpoints' (t = 0 and t = 1 of ``path``) per-channel mean
    and standard deviation, measured on the same clean training batches. Its corrections are hooks on one
    module, which the vmapped evaluator does not carry, so with ``repair`` the points run one at a time whatever
    ``parallel_points`` says.

    ``shared_ends``: the rows of t = 0 and t = 1 when another path between the same two endpoints has them
    (every path of a trial starts at θ_A and ends at θ_B, bit for bit), so they are evaluated once per trial, not
    once per path; an empty dict is filled. Robust evaluation draws each point's attack starts from its own
    generator (seeded by ``seed`` and the point's index), so a skipped point changes no other point's numbers.
    """
    if points < 3:
        raise ValueError(f"an evaluation grid needs at least 3 points, got {points}")
    if not isinstance(parallel_points, int) or parallel_points < 1:
        raise ValueError(f"parallel_points must be an integer >= 1, got {parallel_points!r}")
    check_bn_samples(bn_samples)
    model = working_copy(model, data.device, channels_last)
    if repair and parallel_points > 1:
        log.info("repair: evaluating path points one at a time (parallel_points=%d ignored)", parallel_points)
        parallel_points = 1
    corrector = None
    if repair:
        with mixed_precision(data.device, bf16):  # the endpoints' statistics with the same kernels as the points'
            corrector = _repair_endpoints(model, path, data, batch_size, bn_samples)
    attacking = attack is not None and not attack.disabled
    splits = list(dict.fromkeys([*splits, *(robust_splits if attacking else ())]))
    ts = torch.linspace(0.0, 1.0, points).tolist()
    ends = {} if shared_ends is None else shared_ends
    todo = [i for i, t in enumerate(ts) if t not in ends]
    rows: dict[int, dict[str, float]] = {i: {"t": t, **ends[t]} for i, t in enumerate(ts) if t in ends}
    first = 0
    while first < len(todo):
        chunk = todo[first:first + parallel_points]
        with torch.no_grad():
            weights = [{k: v.detach() for k, v in path.weights(ts[i]).items()} for i in chunk]
        with mixed_precision(data.device, bf16):
            try:
                clean, nets = _clean_results(model, weights, data, splits, batch_size, max_samples,
                                             None if corrector is None else (corrector[0], corrector[1](ts[chunk[0]])),
                                             bn_samples=bn_samples)
            except torch.cuda.OutOfMemoryError:
                if len(chunk) == 1:
                    raise
                parallel_points = (len(chunk) + 1) // 2  # fewer points at a time, same numbers: retry this chunk
                log.warning("out of memory evaluating %d path points together; retrying with %d", len(chunk),
                            parallel_points)
                del weights
                if data.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            for j, i in enumerate(chunk):
                row: dict[str, float] = {"t": ts[i]}
                for split in splits:
                    row[f"{split}_loss"], row[f"{split}_acc"] = clean[split][j]["loss"], clean[split][j]["acc"]
                if attacking:
                    generator = torch.Generator(device=data.device).manual_seed(stable_seed("robust-eval", seed, i))
                    for split in robust_splits:
                        result = evaluate(nets(j), data, split, batch_size=batch_size, attack=attack,
                                          generator=generator, max_samples=max_samples)
                        row[f"robust_{split}_loss"], row[f"robust_{split}_acc"] = result["loss"], result["acc"]
                rows[i] = row
                if ts[i] in (0.0, 1.0):
                    ends[ts[i]] = {k: v for k, v in row.items() if k != "t"}
                if progress is not None:
                    progress(len(rows), points)
        first += len(chunk)
    lengths = _segment_lengths(path, ts)
    return pd.DataFrame([{**rows[i], "segment_length": lengths[i]} for i in range(points)])


def _segment_lengths(path: Path, ts: Sequence[float]) -> list[float]:
    """‖θ(t_i) − θ(t_{i−1})‖ for each grid point (0 for the first), one point's weights in memory at a time."""
    lengths, previous = [], None
    with torch.no_grad():
        for t in ts:
            weights = {k: v.detach() for k, v in path.weights(t).items()}
            lengths.append(0.0 if previous is None else math.sqrt(
                sum(float((weights[k] - previous[k]).double().pow(2).sum()) for k in weights)))
            previous = weights
    return lengths


def _repair_endpoints(model: nn.Module, path: Path, data: Dataset, batch_size: int, bn_samples: int | None = None
                      ) -> tuple[Repair, Callable[[float], dict[str, Statistics]]]:
    """REPAIR's hooks on ``model`` and the targets at each t: the interpolated statistics of the path's two
    endpoints, each measured on clean training data after the BN policy (as the profile evaluates them, with
    its ``bn_samples`` budget; REPAIR's own statistics stay over the whole split)."""
    corrector = Repair(model)
    ends = []
    for t in (0.0, 1.0):
        with torch.no_grad():
            load_weights(model, {k: v.detach() for k, v in path.weights(t).items()})
        bn.recalibrate(model, recalibration_batches(data, batch_size, bn_samples))
        ends.append(corrector.measure(clean_batches(data, "train", batch_size)))
    return corrector, lambda t: interpolate(ends[0], ends[1], t)


def _clean_results(
    model: nn.Module, weights: list[dict[str, Tensor]], data: Dataset, splits: Sequence[str], batch_size: int,
    max_samples: int | None, repair: tuple[Repair, dict[str, Statistics]] | None = None, *,
    bn_samples: int | None = None,
) -> tuple[dict[str, list[dict]], Callable[[int], nn.Module]]:
    """Recalibrate BN at each weight vector and evaluate every split clean: ``{split: [result per vector]}``,
    and a function giving vector i's recalibrated network (for attacks). One vector runs as a plain module
    (bit-identical to the original one-point-at-a-time code), several as a :class:`StackedModel`. ``repair``
    (one vector only): the model's REPAIR hooks and this point's targets, fitted after the BN policy.
    ``bn_samples``: the BN policy's budget (:func:`recalibration_batches`), the same batches whether the vectors
    run one at a time or stacked."""
    if len(weights) == 1:
        load_weights(model, weights[0])
        if repair is not None:
            repair[0].clear()  # the BN policy sees the point's own activations
        bn.recalibrate(model, recalibration_batches(data, batch_size, bn_samples))
        if repair is not None:
            repair[0].fit(repair[1], lambda: clean_batches(data, "train", batch_size))
        clean = {split: [evaluate(model, data, split, batch_size=batch_size, max_samples=max_samples)]
                 for split in splits}
        return clean, lambda i: model
    if repair is not None:
        raise ValueError("REPAIR evaluates one path point at a time")
    stacked = StackedModel(model, weights)
    stacked.recalibrate(recalibration_batches(data, batch_size, bn_samples))
    clean = {split: stacked.evaluate(data, split, batch_size=batch_size, max_samples=max_samples)
             for split in splits}
    return clean, stacked.point
