"""Readable, unique names for a study's runs: ``tinyten·w_asym·align=weight·eps=0·s0-1`` for a pair trial,
``endpoint·tinyten·w_asym·eps=0·s0`` for an endpoint.

A name lists the trial's factor values in the spec's order, seeds last. Values that name themselves
(architectures, symmetries, data sets) stand alone; the others are ``label=value``, the label being the shortest
tail of the factor's path that no other factor shares (``eps`` for ``train.attack.eps``; ``align`` for
``align.method``, whose last part says nothing). Two trials whose names would still coincide (values that print
alike) get the first characters of their keys appended, so every name in a study is distinct. MLflow, Tune's
trial names and the console all use these names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from study.core import config as trial_config

SEP = "·"
ENDPOINT_PREFIX = "endpoint"
#: Factor paths whose values name themselves (``tinyten`` rather than ``arch=tinyten``).
SELF_NAMING = frozenset(("model.arch", "model.symmetry", "data.name"))
#: Last path parts that say nothing on their own: the label is the part before (``align`` for ``align.method``).
GENERIC = frozenset(("method", "kind", "name", "type"))
SEEDS = "seeds"
ROOT_BUNDLE = "trial"
#: Sections whose settings decide an endpoint (its store description: data, model, training recipe, seed).
ENDPOINT_SECTIONS = ("data.", "model.", "train.")
MAX_NAME = 200


def render(value: Any) -> str:
    """A factor value as it reads in a run name: ``0`` for 0.0, ``0.03``, ``true``, ``0-1`` for ``[0, 1]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str)) for v in value):
        return "-".join(render(v) for v in value)
    if isinstance(value, (str, int)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def leaves(path: str, value: Any) -> list[tuple[str, Any]]:
    """A factor's (path, value) pairs, mapping values spread into their leaves (``trial`` bundles lose their
    prefix: ``{model: {arch: vgg11}}`` gives ``model.arch``)."""
    if isinstance(value, Mapping) and value:
        out: list[tuple[str, Any]] = []
        for key, child in value.items():
            out.extend(leaves(str(key) if path == ROOT_BUNDLE else f"{path}.{key}", child))
        return out
    return [(path, value)]


def _candidates(path: str) -> list[str]:
    parts = path.split(".")
    tails = [".".join(parts[-n:]) for n in range(1, len(parts) + 1)]
    if len(parts) > 1 and parts[-1] in GENERIC:
        tails[0] = parts[-2]  # align.method -> align
    return tails


def labels(paths: Iterable[str]) -> dict[str, str]:
    """Each path's label: its shortest tail that labels no other path."""
    paths = list(dict.fromkeys(paths))
    candidates = {p: _candidates(p) for p in paths}
    out: dict[str, str] = {}
    for path in paths:
        others = {c for q in paths if q != path for c in candidates[q]}
        out[path] = next((c for c in candidates[path] if c not in others), path)
    return out


def _seed_part(value: Any) -> str:
    return "s" + render(value)


def compose(factors: Mapping[str, Any], names: Mapping[str, str], *, endpoint_seed: int | None = None) -> str:
    """The name of one trial from its factor values (``names``: :func:`labels` of the study's paths).

    With ``endpoint_seed``: the name of that endpoint, from the factors that decide endpoints only."""
    parts: list[str] = []
    seeds: str | None = None
    for path, value in factors.items():
        for leaf, item in leaves(path, value):
            if leaf == SEEDS:
                seeds = _seed_part(item)
                continue
            if endpoint_seed is not None and not leaf.startswith(ENDPOINT_SECTIONS):
                continue
            text = render(item)
            parts.append(text if leaf in SELF_NAMING else f"{names.get(leaf, leaf)}={text}")
    if endpoint_seed is not None:
        parts = [ENDPOINT_PREFIX, *parts, f"s{endpoint_seed}"]
    elif seeds is not None:
        parts.append(seeds)
    return SEP.join(parts)[:MAX_NAME] if parts else ""


def _paths(factor_sets: Iterable[Mapping[str, Any]]) -> list[str]:
    paths: list[str] = []
    for factors in factor_sets:
        for path, value in factors.items():
            paths.extend(leaf for leaf, _ in leaves(path, value))
    return paths


def _distinct(named: Sequence[tuple[str, str]]) -> dict[str, str]:
    """(key, name) pairs -> key: name, names that coincide (or are empty) made distinct by their key."""
    counts: dict[str, int] = {}
    for _, name in named:
        counts[name] = counts.get(name, 0) + 1
    out = {}
    for key, name in named:
        out[key] = name if name and counts[name] == 1 else (f"{name}{SEP}{key[:8]}" if name else key)
    return out


def trial_names(trials: Sequence[Any]) -> dict[str, str]:
    """Trial key -> run name for every trial of a grid (each with ``key`` and ``factors``)."""
    names = labels(_paths(t.factors for t in trials))
    return _distinct([(t.key, compose(t.factors, names)) for t in trials])


_CACHE: dict[tuple[int, str, str], dict[str, str]] = {}


def trial_name(trials: Sequence[Any], item: Any) -> str:
    """The run name of ``item``: its name in the grid ``trials`` if it is one of them, else (an Optuna trial)
    one composed from its own factors. The grid's names are computed once per process."""
    if trials:
        ident = (len(trials), trials[0].key, trials[-1].key)
        if ident not in _CACHE:
            _CACHE.clear()
            _CACHE[ident] = trial_names(trials)
        if item.key in _CACHE[ident]:
            return _CACHE[ident][item.key]
    return compose(item.factors, labels(_paths([item.factors]))) or item.key


def endpoint_factors(trials: Sequence[Any], endpoints: Mapping[str, tuple[Mapping[str, Any], int]]
                     ) -> dict[str, dict[str, Any]]:
    """Endpoint key -> the factor values that decide it (leaf paths under ``data``, ``model``, ``train``, from
    the first trial that needs it) and its ``seed``."""
    first: dict[str, Mapping[str, Any]] = {}
    for t in trials:
        parsed = trial_config.parse(t.config)
        for seed in parsed.seeds:
            first.setdefault(parsed.endpoint_key(seed), t.factors)
    out: dict[str, dict[str, Any]] = {}
    for key, (_, seed) in endpoints.items():
        chosen = {leaf: value for path, v in first.get(key, {}).items() for leaf, value in leaves(path, v)
                  if leaf.startswith(ENDPOINT_SECTIONS)}
        out[key] = {**chosen, "seed": int(seed)}
    return out


def endpoint_names(trials: Sequence[Any], endpoints: Mapping[str, tuple[Mapping[str, Any], int]],
                   factors: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, str]:
    """Endpoint key -> run name for the unique endpoints of a grid (``StudySpec.endpoints()``): each named after
    the factors of the first trial that needs it (``factors``: :func:`endpoint_factors`, if already known)."""
    names = labels(_paths(t.factors for t in trials))
    factors = factors if factors is not None else endpoint_factors(trials, endpoints)
    named = []
    for key, (_, seed) in endpoints.items():
        chosen = {k: v for k, v in factors.get(key, {}).items() if k != "seed"}
        named.append((key, compose(chosen, names, endpoint_seed=seed)))
    return _distinct(named)


def endpoint_fallback_name(description: Mapping[str, Any], key: str) -> str:
    """The name of a stored endpoint no spec names (from its store description)."""
    model = description.get("model", {})
    return SEP.join([ENDPOINT_PREFIX, str(model.get("arch")), str(model.get("symmetry")),
                     f"s{description.get('seed')}", key[:8]])


_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]+")


def dirname(name: str, prefix: str, limit: int = 100) -> str:
    """A file-system-safe folder name for a Tune trial (``pairs_0003_tinyten_w_asym_align=weight``)."""
    return f"{prefix}_{_UNSAFE.sub('_', name)}"[:limit].rstrip("_")
