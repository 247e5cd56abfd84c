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
        - {model: {width: 1.0}, data: {name: mnist}}
        - {model: {width: 0.5}, data: {name: cifar10}}
    exclude:                         # grid points to leave out: each entry drops the trials whose config
      - {model.symmetry: [w_asym], align.method: [activation, weight]}   # has all its paths at listed values
    resources: {cpu: 1, gpu: 0}      # per trial; gpu may be fractional (0.25 -> four trials share a GPU)
    execution: {max_failures: 2, max_concurrent: null}
    search: grid                     # or optuna (then an `optuna:` section)

Each setting is set in one place: a factor may not set what ``trial:`` fixes or what another factor sets
(``model.arch`` and a ``model`` bundle with an ``arch``), since one of the two would silently win.

Every problem is reported at once, each naming its YAML path, so a user fixes the file in one go.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from study.core import config as trial_config
from study.core import data as datasets
from study.core import merging, metrics, models
from study.core.attacks import AttackConfig
from study.core.train import Recipe
from study.common.errors import ConfigError, SpecError
from study.common.identity import content_key
from study.common.validation import SEED_LIMIT, check_number, check_seed, did_you_mean, unknown_name

SEARCHES = ("grid", "optuna")
OPTUNA_DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
TOP_LEVEL = ("name", "description", "trial", "factors", "exclude", "resources", "execution", "search", "optuna")
ROOT_BUNDLE = "trial"
#: Matched with ``fullmatch``, and ``\Z`` rather than ``$`` (which also matches before a trailing newline).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
MAX_SPEC_BYTES = 2**20  # a spec is a page of YAML; a larger file is something else
MAX_SPEC_VALUES = 10**6  # values in a spec with its YAML aliases expanded
#: Pair trials in one grid: each trains up to two endpoints and evaluates paths; 100,000 of them is beyond any
#: study (and expanding more would take the validation itself minutes).
MAX_TRIALS = 100_000
MAX_OPTUNA_SAMPLES = 100_000  # suggestions of one Optuna search (each one is a pair trial per seed pair)
OPTUNA_SEED_LIMIT = 2**32  # TPESampler seeds numpy's RandomState, which takes 32 bits
MAX_CPU, MAX_GPU = 65_536, 1024  # per trial: more than any single node has (a trial runs on one node)
#: Trainable parameters of one network: training it keeps weights, gradients and optimizer state (12+ bytes
#: each), 384 GiB at this size, more than any single device holds.
MAX_PARAMETERS = 2**35


#: Input shape and number of classes of the data sets read from disk, known without loading them (the model
#: built for each trial config is checked against them: an explicit n_fix above a layer's fan-in, a conv net on
#: flat input). Generated sets (``synthetic``) take theirs from their options.
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
class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"line {line}: duplicate key {key!r} (first on line {first}); YAML would silently keep "
                         f"the last one")


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice (plain PyYAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: explicit keys may override
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1, first[key])
                first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str = "<spec>") -> Any:
    """The YAML document in ``text`` (duplicate keys refused); :class:`SpecError` naming ``source`` if it is not
    one. Long parser messages are cut to their first line (where and what), so the error stays one line."""
    try:
        document = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
        if _too_many_values(document, MAX_SPEC_VALUES):
            problem = (f"{source}: more than {MAX_SPEC_VALUES} values once YAML aliases are expanded (an alias "
                       f"bomb, or not a study spec)")
            raise SpecError([problem])
        return document
    except _DuplicateKey as error:
        raise SpecError([f"{source}: {error}"]) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SpecError([f"{source}: not valid YAML{where}: {problem}"]) from None
    except RecursionError:
        raise SpecError([f"{source}: not valid YAML: nested too deeply"]) from None


def _too_many_values(document: Any, limit: int) -> bool:
    """Whether ``document`` holds more than ``limit`` values counting every alias expansion (YAML anchors share
    one object, so a small file can stand for billions of values that messages and hashing would expand)."""
    count, stack = 0, [document]
    while stack:
        value = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(value, Mapping):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def read_text(path: str | Path) -> str:
    """A spec file's text; :class:`SpecError` for a missing, unreadable, oversized or non-UTF-8 file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"{path}: no such spec file"])
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SpecError([f"{path}: cannot read the spec file ({error.strerror or error})"]) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError([f"{path}: {len(data)} bytes, too large for a study spec (at most {MAX_SPEC_BYTES})"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        problem = (f"{path}: not a UTF-8 text file (byte {error.start} cannot be decoded; a study spec is YAML "
                   f"saved as UTF-8)")
        raise SpecError([problem]) from None
    if "\0" in text:  # valid UTF-8 but binary, or UTF-16 without a byte-order mark
        raise SpecError([f"{path}: not a UTF-8 text file (it holds NUL bytes; a study spec is YAML saved as UTF-8)"])
    return text.removeprefix("\ufeff")


def load(path: str | Path) -> StudySpec:
    """Read and validate a spec file; raises :class:`SpecError` listing every problem."""
    path = Path(path)
    return validate(parse_yaml(read_text(path), str(path)), source=str(path))


def _section(raw: Mapping[str, Any], key: str, cls: type, problems: list[str]) -> Any:
    value = raw.get(key)
    value = {} if value is None else value
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_resources(resources: Resources, problems: list[str]) -> None:
    valid = True
    for name, high in (("cpu", MAX_CPU), ("gpu", MAX_GPU)):
        value = getattr(resources, name)
        if not _is_number(value) or not 0 <= value <= high:
            problems.append(f"resources.{name}: must be a number >= 0 and <= {high} (per trial), got {value!r}")
            valid = False
    if not valid:
        return
    if resources.cpu == 0 and resources.gpu == 0:
        problems.append("resources: a trial needs cpu > 0 or gpu > 0")
    gpu = resources.gpu
    if gpu > 1 and gpu != int(gpu):
        problems.append(f"resources.gpu: above 1 it must be a whole number of GPUs, got {gpu}")


def _check_execution(execution: Execution, problems: list[str]) -> None:
    mf = execution.max_failures
    if not isinstance(mf, int) or isinstance(mf, bool) or not 0 <= mf <= 1000:
        problems.append(f"execution.max_failures: must be an integer >= 0 and <= 1000 (retries of a failed trial), "
                        f"got {mf!r}")
    mc = execution.max_concurrent
    if mc is not None and (not isinstance(mc, int) or isinstance(mc, bool) or not 1 <= mc <= 100_000):
        problems.append(f"execution.max_concurrent: must be null or an integer >= 1 and <= 100000, got {mc!r}")


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
        if key == ROOT_BUNDLE and not all(isinstance(v, Mapping) for v in values):
            problems.append(f"factors.{key}: takes mappings of trial settings (bundles spanning sections), got "
                            f"{values!r}")
            continue
        factors[key] = values
    return factors


_UNSET = object()


def get_path(config: Mapping[str, Any], path: str) -> Any:
    """The value at dotted ``path`` of a (merged, not yet parsed) trial config, or ``_UNSET``."""
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _UNSET
        node = node[part]
    return node


def _check_exclude(raw: Any, factors: Mapping[str, list[Any]], problems: list[str]) -> list[dict[str, list[Any]]]:
    """``exclude:`` a list of mappings ``{dotted path: [values]}``; a grid point is left out when its trial config
    has, at every path of one entry, one of that entry's values. Why: crossing every factor spends trials on
    combinations a study does not want (aligning nets that have no permutation symmetry, say), and listing the
    wanted combinations by hand as bundles gets long and error-prone."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(e, Mapping) and e for e in raw):
        problems.append(f"exclude: must be a list of non-empty mappings {{dotted trial path: [values]}}, got {raw!r}")
        return []
    known, entries = _known_paths(), []
    for i, entry in enumerate(raw):
        clean: dict[str, list[Any]] = {}
        for path, values in entry.items():
            if not isinstance(path, str) or path == ROOT_BUNDLE or (path not in known and not _is_open_path(path)):
                problems.append(f"exclude[{i}].{path}: unknown trial setting{did_you_mean(str(path), known)}")
                continue
            clean[path] = list(values) if isinstance(values, list) else [values]
        if len(clean) == len(entry):
            entries.append(clean)
    if entries and not factors:
        problems.append("exclude: leaves out grid points, but there are no factors (no grid)")
    return entries


def _excluded(config: Mapping[str, Any], entries: list[dict[str, list[Any]]]) -> int | None:
    """Index of the first ``exclude`` entry that matches ``config``, or None."""
    for i, entry in enumerate(entries):
        if all(get_path(config, path) in values for path, values in entry.items()):
            return i
    return None


def _leaves(prefix: str, value: Any) -> list[str]:
    """The dotted paths a value assigned at ``prefix`` sets (a mapping is merged, so it sets its leaves)."""
    if isinstance(value, Mapping) and value:
        out: list[str] = []
        for key, child in value.items():
            out += _leaves(f"{prefix}.{key}" if prefix else str(key), child)
        return out
    return [prefix] if prefix else []


def _related(a: str, b: str) -> bool:
    """True when setting one path changes the other (equal, or one is a section of the other)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _check_overlaps(base: Mapping[str, Any], factors: Mapping[str, list[Any]], problems: list[str]) -> None:
    """A setting is set in one place: two factors setting it (``model.arch`` and a ``model`` bundle with an
    ``arch``) would depend on the order of the keys, and a factor over a fixed ``trial:`` value silently
    replaces it."""
    fixed = _leaves("", base)
    sets: dict[str, list[str]] = {}
    for key, values in factors.items():
        prefix = "" if key == ROOT_BUNDLE else key
        sets[key] = list(dict.fromkeys(leaf for value in values for leaf in _leaves(prefix, value)))
    keys = list(sets)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            clash = next(((x, y) for x in sets[a] for y in sets[b] if _related(x, y)), None)
            if clash is not None:
                problems.append(f"factors.{a} and factors.{b}: both set {min(clash, key=len)} (a setting is swept by "
                                f"one factor only: put its values in one of them)")
        clash = next(((x, y) for x in sets[a] for y in fixed if _related(x, y)), None)
        if clash is not None:
            problems.append(f"factors.{a}: sets {clash[0]}, which trial.{clash[1]} also fixes (a setting is either "
                            f"fixed under trial: or swept as a factor, not both)")


def _data_shape(data: Any) -> tuple[tuple[int, ...], int] | None:
    """(input shape, classes) of a parsed data config without loading it (the data set registry knows)."""
    try:
        return datasets.shape_of(data.name, data.options)
    except (KeyError, ValueError, TypeError):
        return None


def _model_problem(parsed: Any, cache: dict[str, str | None]) -> str | None:
    """Why the trial's model cannot be built for its data (an explicit n_fix at or above a layer's fan-in, a conv
    net on flat input, more than MAX_PARAMETERS weights), or None. The model is built on PyTorch's ``meta``
    device (shapes only, no memory, no compute), once per distinct model and data shape."""
    shape = _data_shape(parsed.data)
    if shape is None:
        return None
    m = parsed.model
    key = json.dumps([m.arch, m.width, m.symmetry, m.options, shape], sort_keys=True, default=repr)
    if key not in cache:

        in_shape, classes = shape
        where = f"data set {parsed.data.name!r}, input shape {in_shape}"
        try:
            with torch.device("meta"):
                net = models.build(m.arch, symmetry=m.symmetry, width=m.width, num_classes=classes, in_shape=in_shape,
                                   **m.options)
            count = sum(p.numel() for p in net.parameters())
            cache[key] = None if count <= MAX_PARAMETERS else (
                f"trial.model: {m.arch} at width {m.width} has {count:.3g} parameters on {where}, more than the "
                f"{MAX_PARAMETERS:.3g} one device could train (lower width or options)")
        except (ValueError, TypeError) as error:
            cache[key] = f"trial.model: {error} ({where})"
    return cache[key]


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
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        problems.append(f"name: must be 1-64 letters, digits, '_', '-', '.', starting with a letter or digit; "
                        f"got {name!r}")
    description = raw.get("description", "")
    if description is not None and not isinstance(description, str):
        problems.append(f"description: must be text, got {description!r}")
    base = raw.get("trial")
    if "trial" not in raw:
        problems.append("trial: required (the fixed part of every trial's config, e.g. trial: {data: {name: "
                        "digits}})")
        base = {}
    elif not isinstance(base, Mapping):
        problems.append(f"trial: must be a mapping (the fixed part of every trial's config), got {base!r}")
        base = {}
    factors = _check_factors(raw.get("factors"), problems)
    exclude = _check_exclude(raw.get("exclude"), factors, problems)
    conflicts: list[str] = []  # reported with the trials' own problems: expanding the grid still works
    if factors:
        _check_overlaps(base, factors, conflicts)
        size = math.prod(len(v) for v in factors.values())
        if size > MAX_TRIALS:
            problems.append(f"factors: the grid has {size} combinations, more than the {MAX_TRIALS} pair trials "
                            f"any study could run (fewer levels, or search: optuna)")
    resources = _section(raw, "resources", Resources, problems)
    _check_resources(resources, problems)
    execution = _section(raw, "execution", Execution, problems)
    _check_execution(execution, problems)
    search = raw.get("search", "grid")
    if not isinstance(search, str) or search not in SEARCHES:
        problems.append(f"search: unknown search {search!r}{did_you_mean(search, SEARCHES)}; allowed: grid, optuna")
    optuna = _check_optuna(raw.get("optuna"), search, factors, problems) if search in SEARCHES else None
    if exclude and search == "optuna":
        problems.append("exclude: only applies to a grid (search: grid); an Optuna search samples its own points")

    trials: list[Trial] = []
    if not problems:
        combos = _grid(dict(base), factors)
        hits = [0] * len(exclude)
        kept = []
        for config, chosen in combos:
            entry = _excluded(config, exclude)
            if entry is None:
                kept.append((config, chosen))
            else:
                hits[entry] += 1
        for i, count in enumerate(hits):
            if count == 0:  # a typo in a value, or a value no factor takes: it would silently do nothing
                values = "; ".join(f"{path} in {values}" for path, values in exclude[i].items())
                problems.append(f"exclude[{i}]: matches no grid point ({values}); check its values against the "
                                f"factors' levels")
        if exclude and not kept:
            problems.append("exclude: leaves out every grid point")
        combos = kept
        failures: dict[str, list[str]] = {}  # message -> combinations that hit it
        seen: dict[str, str] = {}
        models_checked: dict[str, str | None] = {}
        for config, chosen in combos:
            try:
                key = trial_key(config)
                problem = _model_problem(trial_config.parse(config), models_checked)
            except (ConfigError, TypeError) as error:  # TypeError: a value JSON cannot hold (a YAML date, say)
                problem = str(error)
            if problem is not None:
                failures.setdefault(problem, []).append(_describe(chosen))
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
        if not problems and optuna is not None:
            _check_optuna_trials(dict(base), optuna, problems, models_checked)
    problems = conflicts + problems
    if len(problems) > 20:
        problems = problems[:20] + [f"... and {len(problems) - 20} more problems"]
    if problems:
        raise SpecError(problems)
    return StudySpec(name=name, description=str(description or ""), base=dict(base), factors=factors,
                     resources=resources, execution=execution, search=search, optuna=optuna,
                     trials=tuple(trials), source=dict(raw))


def _check_optuna(raw: Any, search: str, factors: Mapping[str, Any], problems: list[str]) -> OptunaSettings | None:
    """The ``optuna`` section's shape; its values against the trial config are checked by
    :func:`_check_optuna_trials` once the fixed part of the config is known to be valid."""
    if search != "optuna":
        if raw is not None:
            problems.append("optuna: only used with 'search: optuna'")
        return None
    if not isinstance(raw, Mapping):
        problems.append("optuna: 'search: optuna' needs an optuna section with metric, mode, samples and space")
        return None
    count = len(problems)
    allowed = [f.name for f in fields(OptunaSettings)]
    for key in raw:
        if key not in allowed:
            problems.append(f"optuna.{key}: unknown key{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}")
    for key in ("metric", "mode", "samples", "space"):
        if key not in raw:
            problems.append(f"optuna.{key}: required")
    metric = raw.get("metric")
    if "metric" in raw and (not isinstance(metric, str) or not metric):
        problems.append(f"optuna.metric: must be the name of a metric a trial reports, got {metric!r}")
    mode = raw.get("mode")
    if "mode" in raw and (not isinstance(mode, str) or mode not in ("min", "max")):
        problems.append(f"optuna.mode: must be min or max, got {mode!r}{did_you_mean(mode, ('min', 'max'))}")
    samples = raw.get("samples")
    if "samples" in raw and (not isinstance(samples, int) or isinstance(samples, bool)
                             or not 1 <= samples <= MAX_OPTUNA_SAMPLES):
        problems.append(f"optuna.samples: must be an integer >= 1 and <= {MAX_OPTUNA_SAMPLES}, got {samples!r}")
    seed = raw.get("seed", 0)
    try:
        check_seed("optuna.seed", seed, limit=OPTUNA_SEED_LIMIT, limit_text="2**32")
    except ValueError as error:
        problems.append(f"{error} (TPE seeds numpy, which takes 32 bits)")
    space = raw.get("space")
    known = _known_paths()
    if "space" in raw and (not isinstance(space, Mapping) or not space):
        problems.append("optuna.space: must be a non-empty mapping of dotted trial paths to distributions")
    space = space if isinstance(space, Mapping) else {}
    for key, dist in space.items():
        where = f"optuna.space.{key}"
        if not isinstance(key, str) or (key not in known and not _is_open_path(key)):
            problems.append(f"{where}: unknown trial setting{did_you_mean(key, known)}")
            continue
        if key == "seeds":
            problems.append(f"{where}: seeds are not searched; list the seed pairs in optuna.repeat_seeds")
        if key in factors:
            problems.append(f"{where}: also a grid factor; a setting is either searched or swept, not both")
        for other in space:
            if isinstance(other, str) and other != key and other.startswith(key + "."):
                problems.append(f"{where} and optuna.space.{other}: both set {other} (search one of them)")
        _check_distribution(where, dist, problems)
    repeat = raw.get("repeat_seeds", [[0, 1]])
    if not isinstance(repeat, list) or not repeat or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(s, int) and not isinstance(s, bool)
                                                        and 0 <= s < SEED_LIMIT for s in p) and p[0] != p[1]
            for p in repeat):
        problems.append(f"optuna.repeat_seeds: must be a list of pairs of distinct seeds in [0, 2**63) like "
                        f"[[0, 1], [2, 3]], got {repeat!r}")
        repeat = [[0, 1]]
    elif len({tuple(p) for p in repeat}) != len(repeat):
        problems.append(f"optuna.repeat_seeds: a seed pair is listed twice in {repeat!r}")
    if factors:
        problems.append("factors: not used with 'search: optuna' (put fixed values under trial:, searched ones under "
                        "optuna.space)")
    if len(problems) > count:
        return None
    return OptunaSettings(metric=metric, mode=mode, samples=samples, space=dict(space), seed=int(seed),
                          repeat_seeds=tuple(tuple(p) for p in repeat))


#: Keys of each distribution type in ``optuna.space``.
_DISTRIBUTION_KEYS = {"uniform": ("type", "low", "high"), "loguniform": ("type", "low", "high"),
                      "int": ("type", "low", "high"), "choice": ("type", "values")}


def _check_distribution(where: str, dist: Any, problems: list[str]) -> None:
    kind = dist.get("type") if isinstance(dist, Mapping) else None
    if not isinstance(kind, str) or kind not in OPTUNA_DISTRIBUTIONS:
        problems.append(f"{where}: must be a mapping with type one of {', '.join(OPTUNA_DISTRIBUTIONS)}, got {dist!r}"
                        f"{did_you_mean(kind, OPTUNA_DISTRIBUTIONS) if isinstance(kind, str) else ''}")
        return
    allowed = _DISTRIBUTION_KEYS[kind]
    for key in dist:
        if key not in allowed:
            problems.append(f"{where}.{key}: unknown key for type {kind}{did_you_mean(key, allowed)}; "
                            f"allowed: {', '.join(allowed)}")
    if kind == "choice":
        values = dist.get("values")
        if not isinstance(values, list) or not values:
            problems.append(f"{where}.values: a non-empty list is required for type choice")
            return
        for value in values:  # Optuna's CategoricalDistribution holds only these
            if value is not None and not isinstance(value, (bool, int, float, str)):
                problems.append(f"{where}.values: a choice must be a number, text, true/false or null, got {value!r}")
                return
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{where}.values: a choice must be finite, got {value!r}")
                return
        if len({json.dumps(v) for v in values}) != len(values):
            problems.append(f"{where}.values: a choice is listed twice in {values!r}")
        return
    low, high = dist.get("low"), dist.get("high")
    integer = kind == "int"
    for bound, value in (("low", low), ("high", high)):
        try:
            check_number(f"{where}.{bound}", value, integer=integer)
        except ValueError as error:
            problems.append(f"{error}{' (type int needs integer bounds)' if integer else ''}")
            return
    if low >= high:
        problems.append(f"{where}: needs low < high, got low={low!r}, high={high!r}")
    elif kind == "loguniform" and low <= 0:
        problems.append(f"{where}.low: must be > 0 for loguniform, got {low!r}")


def _space_values(dist: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The values of a distribution that stand for all it can suggest: its bounds (as the type it suggests:
    floats for uniform and loguniform, so an integer setting is refused), or every choice."""
    if dist["type"] == "choice":
        return [(f"values[{i}]", v) for i, v in enumerate(dist["values"])]
    convert = int if dist["type"] == "int" else float
    return [("low", convert(dist["low"])), ("high", convert(dist["high"]))]


def reported_metrics(parsed: Any) -> set[str]:
    """The metric names :func:`study.core.trial.run` reports for a parsed trial config (its ``metrics``): the
    path summaries (:func:`study.core.metrics.summarize` of the linear path and the curve, clean splits plus
    robust ones under an evaluation attack), distances, endpoint accuracies, curve objective and timings.
    ``align/`` diagnostics depend on the method and are matched by prefix."""

    names = {"dist/before_alignment", "dist/after_alignment", "align/applied", "align/seconds",
             "align/function_preserving", *(f"time/{k}" for k in ("setup", "endpoints", "align", "eval")),
             *(f"endpoint_{e}/test_{k}" for e in "ab" for k in ("acc", "loss"))}
    paths = ["linear"]
    if parsed.curve is not None:
        paths.append(parsed.curve.kind)
        names |= {"time/curve", f"curve/{parsed.curve.kind}/train_objective"}
    robust = tuple(parsed.eval.robust_splits) if parsed.eval.attack is not None else ()
    clean = list(dict.fromkeys([*metrics.PROFILE_SPLITS, *robust]))
    for path in paths:
        names |= set(metrics.metric_names(path, clean, robust))
    names |= {"endpoints/min_test_acc", "endpoints/acc_threshold", "endpoints/under_trained"}
    if parsed.eval.merge:
        names |= merging.metric_names(paths, robust)
    if parsed.eval.plane is not None:
        names.add("time/plane")
    return names


def _check_optuna_trials(base: dict[str, Any], settings: OptunaSettings, problems: list[str],
                         models_checked: dict[str, str | None]) -> None:
    """Each searched setting at its bounds (or each choice) must give a valid trial, and every such trial must
    report ``optuna.metric``: otherwise the search fails after Ray started, or optimises nothing."""
    seeds = list(settings.repeat_seeds[0])
    reported: set[str] | None = None
    configs = [("", None, None)] + [(key, label, value) for key, dist in settings.space.items()
                                    for label, value in _space_values(dist)]
    for key, label, value in configs:
        config = copy.deepcopy(base)
        try:
            if key:
                set_path(config, key, value)
            config["seeds"] = seeds
            trial_key(config)
            parsed = trial_config.parse(config)
            problem = _model_problem(parsed, models_checked)
        except (ConfigError, TypeError) as error:
            problem, parsed = str(error), None
        if problem is not None:
            where = f"optuna.space.{key}: {label}={value!r}" if key else "trial"
            problems.append(f"{where} gives a trial that cannot run: {problem}")
            continue
        names = reported_metrics(parsed)
        reported = names if reported is None else reported & names
    if problems or reported is None:
        return
    metric = settings.metric
    if metric not in reported and not (metric.startswith("align/") and len(metric) > len("align/")):
        problems.append(f"optuna.metric: {unknown_name('metric', metric, sorted(reported))} (metrics every trial "
                        f"of this search reports)")


def preflight(spec: StudySpec, *, local: bool) -> list[str]:
    """Problems that depend on this machine, checked before Ray starts: missing data roots, and (for a local
    run) resources no trial could ever get, which would otherwise leave trials PENDING forever."""

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


# ----------------------------------------------------------------------------------------------------------------
# Command-line overrides
# ----------------------------------------------------------------------------------------------------------------
#: Spec sections whose keys are dotted paths themselves (``factors: {model.arch: [...]}``): an override names one
#: of their keys whole (``factors.model.arch=[mlp]``).
_DOTTED_SECTIONS = ("factors", "optuna.space")


def apply_overrides(raw: Any, overrides: list[str]) -> Any:
    """The spec document ``raw`` with dotted ``key=value`` overrides merged in (OmegaConf's dotlist grammar:
    ``trial.train.epochs=2``, ``factors.seeds=[[0,1],[2,3]]``, ``name=quick``). A key that does not start with a
    top-level spec key is a trial setting: ``train.epochs=2`` is ``trial.train.epochs=2``. The result is
    validated like any spec, so a misspelt key gets the same did-you-mean message as in the file."""
    if not overrides:
        return raw
    from omegaconf import OmegaConf  # imported here: only commands given overrides need it
    from omegaconf.errors import OmegaConfBaseException

    document = copy.deepcopy(dict(raw)) if isinstance(raw, Mapping) else {}
    problems: list[str] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or key.startswith(".") or key.endswith(".") or ".." in key:
            problems.append(f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. trial.train.epochs=2")
            continue
        if key.split(".")[0] not in TOP_LEVEL:
            key = f"{ROOT_BUNDLE}.{key}"
        try:
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]))["value"]
        except OmegaConfBaseException as error:
            problems.append(f"override {item!r}: cannot read the value ({str(error).splitlines()[0]})")
            continue
        section = next((s for s in _DOTTED_SECTIONS if key.startswith(s + ".")), None)
        if section is not None:  # the rest of the key is one (dotted) key of that section
            node: Any = document
            for part in section.split("."):
                node = node.setdefault(part, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                problems.append(f"override {item!r}: {section} is not a mapping in the spec")
                continue
            node[key[len(section) + 1:]] = value
            continue
        top, _, rest = key.partition(".")
        if not rest:
            document[top] = value
            continue
        base = document.get(top)
        if base is None:
            base = {}
        if not isinstance(base, Mapping):
            problems.append(f"override {item!r}: {top} is not a mapping in the spec")
            continue
        try:
            merged = OmegaConf.merge(OmegaConf.create(dict(base)), OmegaConf.from_dotlist([f"{rest}={text}"]))
            document[top] = OmegaConf.to_container(merged, resolve=False)
        except OmegaConfBaseException as error:
            problems.append(f"override {item!r}: {str(error).splitlines()[0]}")
    if problems:
        raise SpecError(problems)
    return document
