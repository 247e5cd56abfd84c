"""One trial: two endpoints, alignment, paths, profiles and barrier metrics. A pure function of its config.

Nothing here knows about Ray or MLflow: the study layer calls :func:`run` and forwards ``progress`` events.
Endpoints come from the content-addressed endpoint store when one is configured, so a study trains each
unique endpoint once however many pair trials use it.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import pandas as pd
import torch
from torch import nn

from study.core import align, bn, data as datasets, merging, metrics, models, plane
from study.core import permutation as P
from study.core import repair
from study.core.config import TrialConfig, parse
from study.core.evaluate import evaluate, path_profile
from study.core.paths import CurveModel, Path, curve_weight_decay, trainable_state
from study.common.seeding import stable_seed
from study.core.train import train

log = logging.getLogger(__name__)
Progress = Callable[[dict[str, Any]], None]


class Checkpoints(Protocol):
    """Where a trial keeps training state so a retried trial continues instead of starting over.

    The Ray layer implements it with Tune checkpoints; ``None`` (the default) keeps nothing."""

    def load(self, name: str) -> dict[str, Any] | None: ...

    def save(self, name: str, state: dict[str, Any]) -> None: ...


class StoredWeights(Protocol):
    state_dict: Mapping[str, torch.Tensor]
    metadata: dict[str, Any]


class EndpointCache(Protocol):
    """Where trained endpoints are kept so each is trained once (:class:`study.store.EndpointStore`).

    Passed in rather than imported: the core does not depend on how or where endpoints are stored."""

    def get_or_create(self, key: str, create: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]], *,
                      description: Mapping[str, Any]) -> tuple[StoredWeights, bool]: ...


def _training_hooks(checkpoints: Checkpoints | None, name: str) -> dict[str, Any]:
    """``resume``/``checkpoint`` arguments for :func:`study.core.train.train` under checkpoint name ``name``."""
    if checkpoints is None:
        return {}
    return {"resume": checkpoints.load(name), "checkpoint": lambda state: checkpoints.save(name, state)}


def resolve_device(name: str) -> torch.device:
    if os.environ.get("SYMSTUDY_DETERMINISTIC") == "1":  # bitwise-reproducible CUDA kernels, at a speed cost
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def load_data(cfg: TrialConfig, device: torch.device) -> datasets.Dataset:
    return datasets.load(cfg.data.name, data_root=cfg.data.data_root, download=cfg.data.download,
                         val_fraction=cfg.data.val_fraction, split_seed=cfg.data.split_seed, device=device,
                         **cfg.data.options)


def build_model(cfg: TrialConfig, data: datasets.Dataset, seed: int) -> nn.Module:
    m = cfg.model
    return models.build(m.arch, symmetry=m.symmetry, width=m.width, num_classes=data.num_classes,
                        in_shape=data.in_shape, seed=seed, mask_seed=m.mask_seed, mean=data.mean, std=data.std,
                        **m.options)


def _emit(progress: Progress | None, phase: str, **fields: Any) -> None:
    if progress is not None:
        progress({"phase": phase, **fields})


def endpoint(cfg: TrialConfig, data: datasets.Dataset, seed: int, device: torch.device,
             progress: Progress | None = None, checkpoints: Checkpoints | None = None,
             store: EndpointCache | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The trained endpoint for ``seed``: from the store if it is there, else trained (and stored)."""
    description, key = cfg.endpoint_description(seed), cfg.endpoint_key(seed)
    model = build_model(cfg, data, seed)

    def create() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        start = time.perf_counter()
        callback = lambda m: _emit(progress, "endpoint", seed=seed, **m)  # noqa: E731
        hooks = _training_hooks(checkpoints, f"endpoint-{key}")
        history = train(model, data, cfg.train, seed=seed, device=device, callback=callback, runtime=cfg.runtime,
                        **hooks).history
        return model.state_dict(), {"history": history, "seconds": time.perf_counter() - start,
                                    "params": models.count_parameters(model)}

    if store is None:
        _, metadata = create()
        return model.to(device).eval(), {**metadata, "cached": False, "key": key}
    stored, created = store.get_or_create(key, create, description=description)
    model.load_state_dict(stored.state_dict)
    return model.to(device).eval(), {**stored.metadata, "cached": not created, "key": key}


def endpoint_quality(acc_a: float, acc_b: float, threshold: float) -> dict[str, float]:
    """Endpoint quality, part of every result: ``endpoints/min_test_acc`` (the worse endpoint's test accuracy),
    ``endpoints/acc_threshold`` (``eval.min_endpoint_acc``, or its chance-relative default) and
    ``endpoints/under_trained`` (1 if an endpoint is below it, else 0): a low barrier between two bad models is
    not mode connectivity."""
    worst = min(acc_a, acc_b)
    return {"endpoints/min_test_acc": worst, "endpoints/acc_threshold": threshold,
            "endpoints/under_trained": float(worst < threshold)}


def _distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a))


def fit_curve(cfg: TrialConfig, base: nn.Module, theta_a: dict, theta_b: dict, data: datasets.Dataset,
              device: torch.device, progress: Progress | None = None, checkpoints: Checkpoints | None = None
              ) -> tuple[Path, list[dict]]:
    """Garipov et al.'s curve fitting with the ordinary training loop: bends trained, endpoints fixed.

    Weight decay follows the recipe's optimizer (:func:`study.core.paths.curve_weight_decay`): SGD adds the
    (wd/2)‖θ(t)‖² term with the optimizer's decay 0; AdamW decays the bends decoupled and adds no term (its
    ``train_objective`` is then the cross-entropy)."""
    assert cfg.curve is not None
    path = Path(theta_a, theta_b, kind=cfg.curve.kind, n_bends=cfg.curve.bends).to(device)
    seed = stable_seed("curve", cfg.seeds, cfg.curve.seed)
    recipe, l2 = curve_weight_decay(cfg.curve.train)
    curve = CurveModel(copy.deepcopy(base), path, weight_decay=l2 or 0.0, seed=seed)
    result = train(curve, data, recipe, seed=seed % (2**62), device=device,
                   extra_loss=curve.l2_penalty if l2 is not None else None, parameters=curve.trainable_parameters(),
                   before_step=curve.resample, validate=False, callback=lambda m: _emit(progress, "curve", **m),
                   runtime=cfg.runtime, **_training_hooks(checkpoints, "curve"))
    for epoch in result.history:
        epoch.setdefault("train_objective", epoch["train_loss"])
    return path, result.history


def merge_and_ensemble(cfg: TrialConfig, model_a: nn.Module, model_b: nn.Module, paths: Mapping[str, Path],
                       data: datasets.Dataset) -> dict[str, float]:
    """The endpoints' ensemble and every path's merged midpoint θ(½), clean and robust (:mod:`study.core.merging`).
    The ensemble uses B as trained: aligning it does not change its function."""
    common = {"attack": cfg.eval.attack, "robust_splits": cfg.eval.robust_splits, "batch_size": cfg.eval.batch_size,
              "max_samples": cfg.eval.max_samples, "seed": cfg.seeds[0]}
    out = merging.ensemble_metrics(model_a, model_b, data, **common)
    for name, path in paths.items():
        out.update(merging.merge_metrics(model_a, path, name, data, bn_samples=cfg.eval.bn_samples, **common))
    return out


def plane_of(cfg: TrialConfig, model_a: nn.Module, curve: Path, data: datasets.Dataset, device: torch.device,
             progress: Progress | None = None) -> pd.DataFrame:
    """The plane through θ_A, the curve's middle bend (``points[n // 2]``: the one bend of a 3-point curve)
    and θ_B (:func:`study.core.plane.plane_frame`), with the curve's projection for the plot."""
    assert cfg.eval.plane is not None and cfg.curve is not None
    points = curve.points()
    grid = cfg.eval.plane.grid
    return plane.plane_frame(
        model_a, points[0], points[-1], points[len(points) // 2], data, grid=grid, margin=cfg.eval.plane.margin,
        curve=curve.weights, batch_size=cfg.eval.batch_size, max_samples=cfg.eval.max_samples,
        parallel_points=cfg.runtime.points_together(device, grid * grid), bf16=cfg.eval.bf16,
        bn_samples=cfg.eval.bn_samples, channels_last=cfg.runtime.eval_channels_last(device, model_a),
        progress=lambda i, n: _emit(progress, "plane", point=i, points=n))


def run(config: Mapping[str, Any], progress: Progress | None = None, checkpoints: Checkpoints | None = None,
        store: EndpointCache | None = None) -> dict[str, Any]:
    """Run one trial; returns ``metrics`` (flat names), ``profiles`` (one DataFrame per path), ``alignment``
    diagnostics, ``endpoints`` info and ``timings`` (seconds per phase), and with ``eval.plane`` the ``plane``
    grid (a DataFrame, :func:`study.core.plane.plane_frame`). With ``checkpoints``, endpoint
    training and curve fitting save their state every epoch and a rerun continues from it; with ``store``
    (an :class:`study.store.EndpointStore`), endpoints are trained once and reused."""
    cfg = parse(config)  # every config error surfaces here, before data or compute
    device = resolve_device(cfg.device)
    with cfg.runtime.scope(device):  # CPU bf16 under the fast profile, for every phase's forward passes
        return _run(cfg, device, progress, checkpoints, store)


def _run(cfg: TrialConfig, device: torch.device, progress: Progress | None, checkpoints: Checkpoints | None,
         store: EndpointCache | None) -> dict[str, Any]:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    data = load_data(cfg, device)
    build_model(cfg, data, cfg.seeds[0])  # model options vs the data's shape, still before any training
    timings["setup"] = time.perf_counter() - clock

    clock = time.perf_counter()
    (model_a, info_a), (model_b, info_b) = (endpoint(cfg, data, s, device, progress, checkpoints, store)
                                            for s in cfg.seeds)
    timings["endpoints"] = time.perf_counter() - clock
    _emit(progress, "endpoints_ready", cached=[info_a["cached"], info_b["cached"]])

    clock = time.perf_counter()
    samples = min(cfg.align.samples, data.size("train"))
    inputs = data.batch("train", slice(0, samples))[0]
    whole_dataset = align.METHODS[cfg.align.method].inputs == "dataset"
    alignment = align.match(model_a, model_b, method=cfg.align.method, seed=cfg.align.seed,
                            data=data if whole_dataset else inputs, **cfg.align.options)
    # On W-Asym/FiGLU nets a permutation is not a symmetry: permuting B would make it a different, untrained
    # model. There alignment is a diagnostic (how close to identity is it?) and the paths use B as trained.
    applied = align.function_preserving(model_b)
    model_b_aligned = P.apply(model_b, alignment.perms) if applied else model_b
    timings["align"] = time.perf_counter() - clock

    theta_a, theta_b = trainable_state(model_a), trainable_state(model_b_aligned)
    out_metrics: dict[str, float] = {
        "dist/before_alignment": _distance(theta_a, trainable_state(model_b)),
        "dist/after_alignment": _distance(theta_a, theta_b),
        **{f"align/{k}": float(v) for k, v in alignment.diagnostics.items()},
        "align/applied": float(applied),
    }
    for name, model in (("a", model_a), ("b", model_b)):
        result = evaluate(model, data, "test", batch_size=cfg.eval.batch_size, max_samples=cfg.eval.max_samples)
        out_metrics[f"endpoint_{name}/test_acc"], out_metrics[f"endpoint_{name}/test_loss"] = (
            result["acc"], result["loss"])
    out_metrics.update(endpoint_quality(out_metrics["endpoint_a/test_acc"], out_metrics["endpoint_b/test_acc"],
                                        cfg.eval.endpoint_acc_threshold(data.num_classes)))
    if out_metrics["endpoints/under_trained"]:
        log.warning("under-trained endpoints: test accuracy %.3f / %.3f, below eval.min_endpoint_acc %.3f; their "
                    "barriers say little about connectivity", out_metrics["endpoint_a/test_acc"],
                    out_metrics["endpoint_b/test_acc"], out_metrics["endpoints/acc_threshold"])

    profiles: dict[str, pd.DataFrame] = {}
    paths: dict[str, Path] = {"linear": Path(theta_a, theta_b, kind="linear").to(device)}
    if cfg.curve is not None:
        clock = time.perf_counter()
        paths[cfg.curve.kind], curve_history = fit_curve(cfg, model_a, theta_a, theta_b, data, device, progress,
                                                         checkpoints)
        timings["curve"] = time.perf_counter() - clock
        out_metrics[f"curve/{cfg.curve.kind}/train_objective"] = curve_history[-1]["train_objective"]

    clock = time.perf_counter()
    ends: dict[float, dict[str, float]] = {}  # t = 0 and 1 are θ_A and θ_B on every path: evaluated once
    for name, path in paths.items():
        profiles[name] = path_profile(
            model_a, path, data, points=cfg.eval.points, attack=cfg.eval.attack, robust_splits=cfg.eval.robust_splits,
            batch_size=cfg.eval.batch_size, max_samples=cfg.eval.max_samples, seed=cfg.seeds[0],
            parallel_points=cfg.runtime.points_together(device, cfg.eval.points), bf16=cfg.eval.bf16,
            repair=cfg.eval.repair, shared_ends=ends, bn_samples=cfg.eval.bn_samples,
            channels_last=cfg.runtime.eval_channels_last(device, model_a),
            progress=lambda i, n, name=name: _emit(progress, "eval", path=name, point=i, points=n))
        out_metrics.update(metrics.summarize(profiles[name], name))
    if cfg.eval.merge:
        out_metrics.update(merge_and_ensemble(cfg, model_a, model_b, paths, data))
    timings["eval"] = time.perf_counter() - clock
    plane_grid = None
    if cfg.eval.plane is not None:
        clock = time.perf_counter()
        plane_grid = plane_of(cfg, model_a, paths[cfg.curve.kind], data, device, progress)
        timings["plane"] = time.perf_counter() - clock
    out_metrics.update({f"time/{k}": v for k, v in timings.items()})
    return {
        "metrics": out_metrics,
        "profiles": profiles,
        **({"plane": plane_grid} if plane_grid is not None else {}),
        "alignment": {"method": alignment.method, "applied": applied, **alignment.diagnostics},
        "endpoints": {"a": info_a, "b": info_b},
        "timings": timings,
        "bn_policy": (bn.policy(cfg.eval.bn_samples, data.size("train")) if bn.has_batchnorm(model_a)
                      else "none (no BatchNorm)"),
        "repair_policy": repair.POLICY if cfg.eval.repair else repair.NO_POLICY,
        "config": cfg.to_dict(),
    }
