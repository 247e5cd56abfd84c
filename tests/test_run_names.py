"""Run names: readable, keyed by the factors, and distinct across every trial and endpoint of a study."""

from __future__ import annotations

import json
from pathlib import Path

from study.sweep import naming
from study.sweep.spec import Trial, parse_yaml, read_text, validate

ROOT = Path(__file__).resolve().parents[1]


def test_every_run_of_the_quickstart_has_its_own_readable_name():
    raw = parse_yaml(read_text(ROOT / "searchspaces" / "quickstart.yaml"))
    full = {k: v for k, v in raw.items() if k != "exclude"}  # the whole grid, every combination of the factors
    for document in (raw, full):
        spec = validate(document)
        trials = naming.trial_names(spec.trials)
        endpoints = naming.endpoint_names(spec.trials, spec.endpoints())
        assert len(trials) == len(spec.trials) and len(endpoints) == len(spec.endpoints())
        assert len(set(trials.values()) | set(endpoints.values())) == len(trials) + len(endpoints)
    assert len(trials) == 72  # the full grid: 2 seed pairs x 2 models x 3 symmetries x 3 alignments x 2 eps
    by_factors = {json.dumps(t.factors, sort_keys=True): trials[t.key] for t in spec.trials}
    chosen = {"seeds": [0, 1], "model": {"arch": "tinyten", "width": 0.5}, "model.symmetry": "w_asym",
              "align.method": "weight", "train.attack.eps": 0.0}
    assert by_factors[json.dumps(chosen, sort_keys=True)] == "tinyten·width=0.5·w_asym·align=weight·eps=0·s0-1"
    assert "endpoint·tinyten·width=0.5·w_asym·eps=0.03·s3" in endpoints.values()
    assert not any("align" in name for name in endpoints.values())  # alignment does not change an endpoint


def test_labels_are_the_shortest_tails_no_other_factor_shares():
    labels = naming.labels(["train.attack.eps", "eval.attack.eps", "align.method", "curve.kind", "train.lr"])
    assert labels == {"train.attack.eps": "train.attack.eps", "eval.attack.eps": "eval.attack.eps",
                      "align.method": "align", "curve.kind": "curve", "train.lr": "lr"}


def test_names_that_would_coincide_get_their_keys():
    trials = [Trial("aaaaaaaa11", {}, {"train.lr": 0.1}), Trial("bbbbbbbb22", {}, {"train.lr": "0.1"}),
              Trial("cccccccc33", {}, {"train.lr": 0.2})]
    names = naming.trial_names(trials)
    assert names["cccccccc33"] == "lr=0.2"
    assert names["aaaaaaaa11"] == "lr=0.1·aaaaaaaa" and names["bbbbbbbb22"] == "lr=0.1·bbbbbbbb"


def test_bundle_factors_are_named_by_their_settings():
    spec = validate({
        "name": "bundles", "trial": {"data": {"name": "digits"}, "train": {"epochs": 1}, "device": "cpu"},
        "factors": {"trial": [{"model": {"arch": "mlp", "width": 0.25}}, {"model": {"arch": "tinyten",
                                                                                     "width": 0.125}}],
                    "seeds": [[0, 1]]}})
    names = sorted(naming.trial_names(spec.trials).values())
    assert names == ["mlp·width=0.25·s0-1", "tinyten·width=0.125·s0-1"]
    assert naming.dirname("tinyten·width=0.125·s0-1", "pairs_0001") == "pairs_0001_tinyten_width=0.125_s0-1"
