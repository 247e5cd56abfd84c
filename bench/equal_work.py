"""The reference's pair trial, through symstudy's library: the unit of ``bench/suite.py --equal-work``.

Tatro et al.'s public code times one pair trial as: two endpoints trained for E epochs each, one activation
alignment on N training images, a 3-bend Bezier curve fitted for E epochs, and P points on that curve, each a
BatchNorm recalibration over the whole training set followed by one pass over the test set. ``trial.run`` does
more than that (the linear path too, the training split evaluated at every point, merge and ensemble metrics),
so comparing it with a baseline that does less would flatter neither. :func:`run` does exactly the reference's
work with the functions ``trial.run`` is made of (same endpoints, same alignment, same curve fitting, same
``path_profile``), so its seconds are the library's seconds for that work; ``bench/baseline_trial.py`` with
``equal_work=True`` does the same work the straightforward way.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from study.core import align, config as trial_config, trial
from study.core import permutation as P
from study.core.evaluate import evaluate, path_profile
from study.core.metrics import barrier_chord
from study.core.paths import trainable_state


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(config: dict[str, Any]) -> dict[str, Any]:
    """One equal-work pair trial for a ``trial.run``-style ``config`` (activation alignment, a Bezier curve):
    ``timings`` (seconds per phase: setup, endpoints, align, curve, eval) and ``metrics`` (endpoint test
    accuracies, the curve's test-loss barrier)."""
    cfg = trial_config.parse(config)
    assert cfg.curve is not None and cfg.curve.kind == "bezier", "the reference's trial fits a Bezier curve"
    device = trial.resolve_device(cfg.device)
    with cfg.runtime.scope(device):  # as trial.run: the runtime profile's CPU bf16, if it applies
        return _run(cfg, device)


def _run(cfg: trial_config.TrialConfig, device: torch.device) -> dict[str, Any]:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    data = trial.load_data(cfg, device)
    _sync(device)
    timings["setup"] = time.perf_counter() - clock

    clock = time.perf_counter()
    (model_a, _), (model_b, _) = (trial.endpoint(cfg, data, seed, device) for seed in cfg.seeds)
    _sync(device)
    timings["endpoints"] = time.perf_counter() - clock

    clock = time.perf_counter()
    inputs = data.batch("train", slice(0, min(cfg.align.samples, data.size("train"))))[0]
    alignment = align.match(model_a, model_b, method=cfg.align.method, seed=cfg.align.seed, data=inputs)
    model_b = P.apply(model_b, alignment.perms)
    _sync(device)
    timings["align"] = time.perf_counter() - clock

    clock = time.perf_counter()
    theta_a, theta_b = trainable_state(model_a), trainable_state(model_b)
    curve, _ = trial.fit_curve(cfg, model_a, theta_a, theta_b, data, device)
    _sync(device)
    timings["curve"] = time.perf_counter() - clock

    clock = time.perf_counter()
    profile = path_profile(model_a, curve, data, points=cfg.eval.points, splits=("test",),
                           batch_size=cfg.eval.batch_size, seed=cfg.seeds[0], bf16=cfg.eval.bf16,
                           parallel_points=cfg.runtime.points_together(device, cfg.eval.points),
                           channels_last=cfg.runtime.eval_channels_last(device, model_a))
    _sync(device)
    timings["eval"] = time.perf_counter() - clock
    metrics = {"barrier_chord/bezier/test_loss": barrier_chord(profile["t"].tolist(),
                                                               profile["test_loss"].tolist())}
    for name, model in (("a", model_a), ("b", model_b)):  # outside the timed phases, as in the baseline
        metrics[f"endpoint_{name}/test_acc"] = evaluate(model, data, "test", batch_size=cfg.eval.batch_size)["acc"]
    return {"timings": timings, "metrics": metrics}
