"""Study specs: a YAML file describing a grid (or an Optuna search) of trials, validated before any compute.

Format (see ``searchspaces/quickstart.yaml``)::

    name: quickstart                 # the study's folder name under --out
    trial: {...}                     # the fixed part of every trial's config (see study.core.config)
    factors:                         # grid: dotted trial-config path -> list of values
      seeds: [[0, 1], [2, 3]]
      model.arch: [mlp, tinyten]
      align.method: [none, activation, weight]
      model:                         # a mapping value is merged into that subtree ("bundle" of settings)
        - {symmetry: standard}
        - {symmetry: w_asym, options: {n_fix: 8}}
      trial:                         # bundles across sections: merged into the whole trial config
        - {model: {arch: mlp}, data: {name: mnist}}
        - {model: {arch: resnet20}, data: {name: cifar10}}
    resources: {cpu: 1, gpu: 0}      # per trial; gpu may be fractional (0.25 -> four trials share a GPU)
    execution: {max_failures: 2, max_concurrent: null}
    search: grid                     # or optuna (then an `optuna:` section)

Every problem is reported at once, each naming its YAML path, so a user fixes the file in one go.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from study.core import config as trial_config
from study.common.errors import ConfigError, SpecError
from study.common.identity import content_key
from study.common.validation import did_you_mean

SEARCHES = ("grid", "optuna")
OPTUNA_DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
TOP_LEVEL = ("name", "description", "trial", "factors", "resources", "execution", "search", "optuna")
ROOT_BUNDLE = "trial"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class Execution:
    max_failures: int = 2
    max_concurrent: int | None = None


@dataclass(frozen=True)
class OptunaSettings:
    metric: str
    mode: str
    samples: int
    space: dict[str, dict[str, Any]]
    seed: int = 0
    repeat_seeds: tuple[tuple[int, int], ...] = ((0, 1),)


@dataclass(frozen=True)
class Trial:
    """One pair trial: its full config dict, the factor values that produced it and a stable key."""

    key: str
    config: dict[str, Any]
    factors: dict[str, Any]


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    base: dict[str, Any]
    factors: dict[str, list[Any]]
    resources: Resources
    execution: Execution
    search: str
    optuna: OptunaSettings | None
    trials: tuple[Trial, ...] = field(default_factory=tuple)
    source: dict[str, Any] = field(default_factory=dict)

    def endpoints(self) -> dict[str, tuple[dict[str, Any], int]]:
        """Unique endpoints of the grid: store key -> (trial config that needs it, seed)."""
        unique: dict[str, tuple[dict[str, Any], int]] = {}
        for trial in self.trials:
            parsed = trial_config.parse(trial.config)
            for seed in parsed.seeds:
                unique.setdefault(parsed.endpoint_key(seed), (trial.config, seed))
        return unique


# ----------------------------------------------------------------------------------------------------------------
# Dotted paths into the trial config
# ----------------------------------------------------------------------------------------------------------------
def _known_paths() -> list[str]:
    """Every settable dotted path of a trial config (for did-you-mean on factor keys)."""
    out: list[str] = []
    sections = {"data": trial_config.DataConfig, "model": trial_config.ModelConfig, "align": trial_config.AlignConfig,
                "curve": trial_config.CurveConfig, "eval": trial_config.EvalConfig, "runtime": trial_config.Runtime}
    from study.core.attacks import AttackConfig
    from study.core.train import Recipe

    for name in ("seeds", "device"):
        out.append(name)
    for section, cls in {**sections, "train": Recipe}.items():
        out.append(section)
        out.extend(f"{section}.{f.name}" for f in fields(cls))
    out.extend(f"train.attack.{f.name}" for f in fields(AttackConfig))
    out.extend(f"eval.attack.{f.name}" for f in fields(AttackConfig))
    out.extend(f"curve.train.{f.name}" for f in fields(Recipe))
    out.extend(f"curve.train.attack.{f.name}" for f in fields(AttackConfig))
    out.append(ROOT_BUNDLE)
    return out


def _is_open_path(path: str) -> bool:
    """Paths below free-form option dicts (``model.options.n_fix``) are checked when the config is parsed."""
    return any(path.startswith(prefix) for prefix in ("model.options.", "data.options.", "align.options."))


def set_path(config: dict[str, Any], path: str, value: Any) -> None:
    """Assign ``value`` at dotted ``path``; a mapping value is merged into an existing mapping there.

    The path ``trial`` is the whole trial config: its values are bundles spanning sections (an architecture
    with its data set, say)."""
    if path == ROOT_BUNDLE:
        if not isinstance(value, Mapping):
            raise ConfigError(f"factor {ROOT_BUNDLE!r} takes mappings of trial settings, got {value!r}")
        _deep_merge(config, value)
        return
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
        merged = copy.deepcopy(node[leaf])
        _deep_merge(merged, value)
        node[leaf] = merged
    else:
        node[leaf] = copy.deepcopy(value)


def _deep_merge(target: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def trial_key(config: Mapping[str, Any]) -> str:
    """Stable id of a trial config (:meth:`TrialConfig.identity` of its parsed, defaults-filled form), used as
    the MLflow run's ``trial_key`` tag and the name of its artifact folder. Hashed like an endpoint's key
    (:func:`study.common.identity.content_key`), so a value JSON cannot hold exactly is an error, not a string."""
    return content_key({"kind": "trial", "config": trial_config.parse(config).identity()})


# ----------------------------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------------------------
def load(path: str | Path) -> StudySpec:
    """Read and validate a spec file; raises :class:`SpecError` listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"{path}: no such spec file"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SpecError([f"{path}: not valid YAML: {error}"]) from None
    return validate(raw, source=str(path))


def _section(raw: Mapping[str, Any], key: str, cls: type, problems: list[str]) -> Any:
    value = raw.get(key) or {}
    if not isinstance(value, Mapping):
        problems.append(f"{key}: must be a mapping, got {value!r}")
        return cls()
    allowed = [f.name for f in fields(cls)]
    unknown = [k for k in value if k not in allowed]
    for k in unknown:
        problems.append(f"{key}.{k}: unknown key{did_you_mean(k, allowed)}; allowed: {', '.join(allowed)}")
    try:
        return cls(**{k: v for k, v in value.items() if k in allowed})
    except TypeError as error:
        problems.append(f"{key}: {error}")
        return cls()


def _check_resources(resources: Resources, problems: list[str]) -> None:
    for name in ("cpu", "gpu"):
        value = getattr(resources, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            problems.append(f"resources.{name}: must be a number >= 0, got {value!r}")
    if isinstance(resources.cpu, (int, float)) and resources.cpu == 0 and resources.gpu == 0:
        problems.append("resources: a trial needs cpu > 0 or gpu > 0")
    gpu = resources.gpu
    if isinstance(gpu, (int, float)) and gpu > 1 and gpu != int(gpu):
        problems.append(f"resources.gpu: above 1 it must be a whole number of GPUs, got {gpu}")


def _check_execution(execution: Execution, problems: list[str]) -> None:
    if not isinstance(execution.max_failures, int) or isinstance(execution.max_failures, bool) \
            or execution.max_failures < 0:
        problems.append(f"execution.max_failures: must be an integer >= 0, got {execution.max_failures!r}")
    mc = execution.max_concurrent
    if mc is not None and (not isinstance(mc, int) or isinstance(mc, bool) or mc < 1):
        problems.append(f"execution.max_concurrent: must be null or an integer >= 1, got {mc!r}")


def _grid(base: dict[str, Any], factors: dict[str, list[Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    keys = list(factors)
    combos = []
    for values in itertools.product(*(factors[k] for k in keys)):
        config = copy.deepcopy(base)
        chosen = dict(zip(keys, values))
        for key, value in chosen.items():
            set_path(config, key, value)
        combos.append((config, chosen))
    return combos


def _check_factors(raw: Any, problems: list[str]) -> dict[str, list[Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"factors: must be a mapping of dotted trial paths to lists of values, got {raw!r}")
        return {}
    known = _known_paths()
    factors: dict[str, list[Any]] = {}
    for key, values in raw.items():
        if not isinstance(key, str) or (key not in known and not _is_open_path(key)):
            problems.append(f"factors.{key}: unknown trial setting{did_you_mean(key, known)}")
            continue
        if not isinstance(values, list):
            problems.append(f"factors.{key}: must be a list of values, got {values!r}")
            continue
        if not values:
            problems.append(f"factors.{key}: empty list (a factor needs at least one value)")
            continue
        factors[key] = values
    return factors


def _describe(chosen: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in chosen.items()) or "(no factors)"


def validate(raw: Any, *, source: str = "<spec>") -> StudySpec:
    """Validate a loaded YAML document; expands the grid and parses every trial config (no compute)."""
    if not isinstance(raw, Mapping):
        raise SpecError([f"{source}: a study spec is a mapping with at least 'name' and 'trial', got {raw!r}"])
    problems: list[str] = []
    for key in raw:
        if key not in TOP_LEVEL:
            problems.append(f"{key}: unknown top-level key{did_you_mean(key, TOP_LEVEL)}; "
                            f"allowed: {', '.join(TOP_LEVEL)}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        problems.append(f"name: must be 1-64 letters, digits, '_', '-', '.', starting with a letter or digit; "
                        f"got {name!r}")
    base = raw.get("trial") or {}
    if not isinstance(base, Mapping):
        problems.append(f"trial: must be a mapping (the fixed part of every trial's config), got {base!r}")
        base = {}
    factors = _check_factors(raw.get("factors"), problems)
    resources = _section(raw, "resources", Resources, problems)
    _check_resources(resources, problems)
    execution = _section(raw, "execution", Execution, problems)
    _check_execution(execution, problems)
    search = raw.get("search", "grid")
    if search not in SEARCHES:
        problems.append(f"search: unknown search {search!r}{did_you_mean(search, SEARCHES)}; allowed: grid, optuna")
    optuna = _check_optuna(raw.get("optuna"), search, factors, problems) if search in SEARCHES else None

    trials: list[Trial] = []
    if not problems:
        combos = _grid(dict(base), factors)
        failures: dict[str, list[str]] = {}  # message -> combinations that hit it
        seen: dict[str, str] = {}
        for config, chosen in combos:
            try:
                key = trial_key(config)
            except ConfigError as error:
                failures.setdefault(str(error), []).append(_describe(chosen))
                continue
            if key in seen:
                problems.append(f"factors: combinations ({seen[key]}) and ({_describe(chosen)}) give the same trial")
                continue
            seen[key] = _describe(chosen)
            trials.append(Trial(key, config, chosen))
        for message, where in failures.items():
            if len(where) == len(combos):  # independent of the factors: the fixed part is wrong
                problems.append(f"trial: {message}")
            else:
                more = f" and {len(where) - 1} more combination(s)" if len(where) > 1 else ""
                problems.append(f"factors ({where[0]}{more}): {message}")
        if len(problems) > 20:
            problems = problems[:20] + [f"... and {len(problems) - 20} more problems"]
    if problems:
        raise SpecError(problems)
    return StudySpec(name=name, description=str(raw.get("description", "")), base=dict(base), factors=factors,
                     resources=resources, execution=execution, search=search, optuna=optuna,
                     trials=tuple(trials), source=dict(raw))


def _check_optuna(raw: Any, search: str, factors: Mapping[str, Any], problems: list[str]) -> OptunaSettings | None:
    if search != "optuna":
        if raw is not None:
            problems.append("optuna: only used with 'search: optuna'")
        return None
    if not isinstance(raw, Mapping):
        problems.append("optuna: 'search: optuna' needs an optuna section with metric, mode, samples and space")
        return None
    allowed = [f.name for f in fields(OptunaSettings)]
    for key in raw:
        if key not in allowed:
            problems.append(f"optuna.{key}: unknown key{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}")
    for key in ("metric", "mode", "samples", "space"):
        if key not in raw:
            problems.append(f"optuna.{key}: required")
    if raw.get("mode") not in (None, "min", "max"):
        problems.append(f"optuna.mode: must be min or max, got {raw.get('mode')!r}")
    samples = raw.get("samples")
    if samples is not None and (not isinstance(samples, int) or isinstance(samples, bool) or samples < 1):
        problems.append(f"optuna.samples: must be an integer >= 1, got {samples!r}")
    space = raw.get("space") or {}
    known = _known_paths()
    if not isinstance(space, Mapping) or not space:
        problems.append("optuna.space: must be a non-empty mapping of dotted trial paths to distributions")
        space = {}
    for key, dist in space.items():
        where = f"optuna.space.{key}"
        if key not in known and not _is_open_path(key):
            problems.append(f"{where}: unknown trial setting{did_you_mean(key, known)}")
        if not isinstance(dist, Mapping) or dist.get("type") not in OPTUNA_DISTRIBUTIONS:
            problems.append(f"{where}: must be a mapping with type one of {', '.join(OPTUNA_DISTRIBUTIONS)}")
            continue
        if dist["type"] == "choice":
            if not isinstance(dist.get("values"), list) or not dist["values"]:
                problems.append(f"{where}.values: a non-empty list is required for type choice")
        else:
            low, high = dist.get("low"), dist.get("high")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
                problems.append(f"{where}: needs numbers low < high, got low={low!r}, high={high!r}")
            elif dist["type"] == "loguniform" and low <= 0:
                problems.append(f"{where}.low: must be > 0 for loguniform, got {low!r}")
        if key in factors:
            problems.append(f"{where}: also a grid factor; a setting is either searched or swept, not both")
    repeat = raw.get("repeat_seeds", [[0, 1]])
    if not isinstance(repeat, list) or not repeat or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(s, int) for s in p) and p[0] != p[1]
            for p in repeat):
        problems.append(f"optuna.repeat_seeds: must be a list of distinct-seed pairs like [[0, 1], [2, 3]], got {repeat!r}")
        repeat = [[0, 1]]
    if factors:
        problems.append("factors: not used with 'search: optuna' (put fixed values under trial:, searched ones under "
                        "optuna.space)")
    if any(p.startswith("optuna.") and "required" in p for p in problems):
        return None
    return OptunaSettings(metric=str(raw.get("metric")), mode=str(raw.get("mode")), samples=int(samples or 1),
                          space=dict(space), seed=int(raw.get("seed", 0)),
                          repeat_seeds=tuple(tuple(p) for p in repeat))


def preflight(spec: StudySpec, *, local: bool) -> list[str]:
    """Problems that depend on this machine, checked before Ray starts: missing data roots, and (for a local
    run) resources no trial could ever get, which would otherwise leave trials PENDING forever."""
    import os

    import torch

    problems: list[str] = []
    configs = [t.config for t in spec.trials] or [spec.base]
    for config in configs:
        data = config.get("data", {})
        root = data.get("data_root")
        if root and not data.get("download", False) and not Path(root).expanduser().is_dir():
            problem = (f"trial.data.data_root: {root} does not exist here (put the {data.get('name')} data set "
                       f"there, fix the path, or set download: true)")
            if problem not in problems:
                problems.append(problem)
    if local:
        cpus = os.cpu_count() or 1
        if spec.resources.cpu > cpus:
            problems.append(f"resources.cpu: {spec.resources.cpu} per trial, but this machine has {cpus} CPUs "
                            f"(no trial could start; lower it or run on a cluster with --address)")
        gpus = torch.cuda.device_count()
        if spec.resources.gpu > gpus:
            problems.append(f"resources.gpu: {spec.resources.gpu} per trial, but this machine has {gpus} GPU(s) "
                            f"(set gpu: 0 and device: cpu, or run on a cluster with --address)")
        if gpus == 0 and any(str(c.get("device", "auto")).startswith("cuda") for c in configs):
            problems.append("trial.device: cuda requested, but this machine has no GPU (use device: auto or cpu)")
    return problems
