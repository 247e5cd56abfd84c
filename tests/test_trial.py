"""A whole trial on small offline data: config errors early, store reuse, and the science at small scale."""

from __future__ import annotations

import copy

import pytest
import torch

from study.core import data as datasets
from study.core import metrics, models, trial
from study.core.config import ConfigError, parse
from study.core.evaluate import path_profile
from study.core.paths import CurveModel, Path, trainable_state
from study.store import EndpointStore

# Small, fast and still meaningful: MLP 3×128 on sklearn's digits, 12 epochs (~1 s per endpoint on 2 cores).
BASE = {
    "data": {"name": "digits"},
    "model": {"arch": "mlp", "width": 0.25, "options": {"norm": "none", "act": "relu"}},
    "train": {"epochs": 12, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4, "augment": False},
    "seeds": [0, 1],
    "align": {"method": "none"},
    "eval": {"points": 9},
    "device": "cpu",
}


def _config(**overrides) -> dict:
    config = copy.deepcopy(BASE)
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


@pytest.mark.parametrize("override, message", [
    ({"align": {"method": "activaton"}}, r"trial.align: unknown alignment method 'activaton' \(did you mean 'activation'\?\)"),
    ({"curve": {"kind": "bezier", "bends": 2}}, r"trial.curve: bends must be an integer >= 3"),
    ({"eval": {"points": 2}}, r"trial.eval: points must be an integer >= 3"),
    ({"eval": {"attack": {"eps": -0.1}}}, r"trial.eval.attack: .*eps must be a finite number >= 0"),
    ({"model": {"arch": "resnet-20"}}, r"trial.model: unknown architecture 'resnet-20' \(did you mean 'resnet20'\?\)"),
    ({"model": {"arch": "mlp", "symmetry": "wasym"}}, r"trial.model: unknown symmetry 'wasym'"),
    ({"train": {"lr": -1}}, r"trial.train: Recipe.lr must be a number"),
    ({"trian": {}}, r"trial: unknown key 'trian' \(did you mean 'train'\?\)"),
    ({"seeds": [3, 3]}, r"trial.seeds must differ"),
    ({"curve": {"kind": "bezier", "train": {"epocs": 3}}}, r"trial.curve.train: .*'epocs' \(did you mean 'epochs'\?\)"),
])
def test_bad_configs_fail_before_any_training(monkeypatch, override, message):
    monkeypatch.setattr(trial, "train", lambda *a, **k: pytest.fail("trained despite a bad config"))
    with pytest.raises(ConfigError, match=message):
        trial.run(_config(**override))


def test_model_option_that_does_not_fit_the_data_fails_before_training(monkeypatch):
    monkeypatch.setattr(trial, "train", lambda *a, **k: pytest.fail("trained despite a bad config"))
    config = _config(model={"arch": "mlp", "symmetry": "w_asym", "options": {"n_fix": 64}})
    with pytest.raises(ValueError, match="n_fix=64 .* fan-in 64"):
        trial.run(config)


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="download"):
        trial.run(_config(data={"name": "cifar10", "data_root": str(tmp_path)}))


def test_barrier_of_a_model_with_itself_is_zero(digits):
    model = models.build("tinyten", num_classes=10, in_shape=digits.in_shape, mean=digits.mean, std=digits.std,
                         width=0.5, seed=0)
    theta = trainable_state(model)
    profile = path_profile(model, Path(theta, theta), digits, points=5)
    summary = metrics.summarize(profile, "linear")
    for key, value in summary.items():
        if key.startswith("barrier_"):
            assert abs(value) <= 1e-6, key
    assert summary["path_length/linear"] == 0.0
    assert profile["test_acc"].nunique() == 1


def test_curve_endpoints_reproduce_endpoint_predictions_after_bn_recalibration(digits):
    a = models.build("tinyten", num_classes=10, in_shape=digits.in_shape, width=0.5, seed=0)
    b = models.build("tinyten", num_classes=10, in_shape=digits.in_shape, width=0.5, seed=1)
    curve = Path(trainable_state(a), trainable_state(b), kind="bezier", n_bends=3)
    with torch.no_grad():
        for p in curve.parameters():
            p.add_(0.01 * torch.randn_like(p))
    profile = path_profile(a, curve, digits, points=3, splits=("test",))
    for model, t_index in ((a, 0), (b, -1)):
        reference = copy.deepcopy(model)
        from study.core import bn
        from study.core.evaluate import EVAL_BATCH_SIZE, clean_batches, evaluate
        bn.recalibrate(reference, clean_batches(digits, "train", EVAL_BATCH_SIZE))
        expected = evaluate(reference, digits, "test")
        assert profile["test_loss"].iloc[t_index] == pytest.approx(expected["loss"], rel=1e-5)
        assert profile["test_acc"].iloc[t_index] == pytest.approx(expected["acc"])


def test_store_reuses_endpoints_across_trials_and_processes(tmp_path, monkeypatch):
    calls = []
    real_train = trial.train

    def counting_train(model, *args, **kwargs):
        if not isinstance(model, CurveModel):
            calls.append(kwargs["seed"])
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(trial, "train", counting_train)
    config = _config(train={**BASE["train"], "epochs": 2})
    store = EndpointStore(tmp_path / "endpoints")
    first = trial.run(config, store=store)
    assert sorted(calls) == [0, 1]
    second = trial.run(_config(**{**config, "align": {"method": "weight"}}), store=EndpointStore(store.root))
    assert sorted(calls) == [0, 1]  # nothing retrained
    assert second["endpoints"]["a"]["cached"] and not first["endpoints"]["a"]["cached"]
    assert second["metrics"]["endpoint_a/test_acc"] == first["metrics"]["endpoint_a/test_acc"]
    third = trial.run(_config(**{**config, "seeds": [1, 2]}), store=store)
    assert sorted(calls) == [0, 1, 2]
    assert third["metrics"]["endpoint_a/test_acc"] == first["metrics"]["endpoint_b/test_acc"]


def test_trial_result_has_the_documented_shape():
    result = trial.run(_config(train={**BASE["train"], "epochs": 1}, align={"method": "activation", "samples": 200},
                               eval={"points": 5, "attack": {"eps": 0.05, "steps": 2}},
                               curve={"kind": "polychain", "bends": 3, "train": {"epochs": 1, "batch_size": 64}}))
    m = result["metrics"]
    for key in ("barrier_chord/linear/test_loss", "barrier_mean/polychain/train_error", "acc_min/polychain/test",
                "acc_avg/linear/test", "robust/barrier_chord/linear/test_loss", "robust/acc_min/polychain/test",
                "dist/before_alignment", "dist/after_alignment", "align/mean_corr_after", "time/endpoints",
                "path_length/polychain"):
        assert key in m, key
    assert list(result["profiles"]) == ["linear", "polychain"]
    assert len(result["profiles"]["linear"]) == 5
    assert set(result["timings"]) == {"setup", "endpoints", "align", "curve", "eval"}


@pytest.mark.slow
def test_science_alignment_and_curves_lower_the_barrier(tmp_path):
    """Standard MLPs on digits: aligned linear barrier < unaligned; a trained Bezier curve < the linear path."""
    store = EndpointStore(tmp_path / "endpoints")
    curve = {"kind": "bezier", "bends": 3, "train": {"epochs": 12, "batch_size": 64, "lr": 0.05, "augment": False}}
    unaligned = trial.run(_config(curve=curve), store=store)["metrics"]
    aligned = trial.run(_config(align={"method": "activation"}), store=store)["metrics"]
    weight = trial.run(_config(align={"method": "weight"}), store=store)["metrics"]
    key = "barrier_chord/linear/test_loss"
    print(f"\nunaligned {unaligned[key]:.4f} activation {aligned[key]:.4f} weight {weight[key]:.4f} "
          f"bezier {unaligned['barrier_chord/bezier/test_loss']:.4f} "
          f"endpoint acc {unaligned['endpoint_a/test_acc']:.3f}/{unaligned['endpoint_b/test_acc']:.3f}")
    assert unaligned["endpoint_a/test_acc"] > 0.9 and unaligned["endpoint_b/test_acc"] > 0.9
    assert aligned[key] < 0.7 * unaligned[key]
    assert weight[key] < 0.7 * unaligned[key]
    assert unaligned["barrier_chord/bezier/test_loss"] < 0.5 * unaligned[key]
    assert aligned["dist/after_alignment"] < aligned["dist/before_alignment"]


def test_interrupted_curve_fit_resumes_from_its_checkpoint_with_the_same_result():
    config = _config(train={**BASE["train"], "epochs": 2},
                     curve={"kind": "bezier", "train": {"epochs": 3, "batch_size": 64, "augment": False}})
    straight = trial.run(config)

    class Crash(Exception):
        pass

    class MemoryCheckpoints:
        def __init__(self):
            self.states, self.saves = {}, []

        def load(self, name):
            return self.states.get(name)

        def save(self, name, state):
            self.states[name] = copy.deepcopy(state)
            self.saves.append((name, state["epoch"]))
            if name == "curve" and state["epoch"] == 2 and len(self.saves) < 10:
                raise Crash

    checkpoints = MemoryCheckpoints()
    with pytest.raises(Crash):
        trial.run(config, checkpoints=checkpoints)
    curve_epochs = []
    resumed = trial.run(config, checkpoints=checkpoints,
                        progress=lambda e: curve_epochs.append(e["epoch"]) if e["phase"] == "curve" else None)
    assert curve_epochs == [3]  # only the missing epoch was trained again
    for key in ("barrier_chord/bezier/test_loss", "acc_min/bezier/test", "path_length/bezier"):
        assert resumed["metrics"][key] == straight["metrics"][key], key


def test_adversarial_curve_fitting_attacks_theta_t_and_reports_robust_barriers():
    result = trial.run(_config(train={**BASE["train"], "epochs": 2, "attack": {"eps": 0.05, "steps": 2}},
                               curve={"kind": "bezier", "train": {"epochs": 2, "batch_size": 64, "augment": False,
                                                                  "attack": {"eps": 0.05, "steps": 2}}},
                               eval={"points": 5, "attack": {"eps": 0.05, "steps": 3}}))
    m = result["metrics"]
    profile = result["profiles"]["bezier"]
    assert (profile["robust_test_loss"] > profile["test_loss"]).all()  # the attack hurts at every t
    assert m["robust/barrier_chord/bezier/test_loss"] < m["robust/barrier_chord/linear/test_loss"]
    assert result["config"]["curve"]["train"]["attack"]["eps"] == 0.05


# --- nets where a permutation is not a symmetry ------------------------------------------------------------------
# LayerNorm, not BASE's norm-free net: a W-Asym MLP without normalisation starts with logits of std ~70 on digits
# (the fixed entries κZ add up layer after layer) and diverges at lr 0.05. No BatchNorm either, so the path at
# t=1 is endpoint B exactly (no recalibration in between).
TINY = {"train": {**BASE["train"], "epochs": 2}, "eval": {"points": 3}, "align": {"method": "weight"},
        "model": {"arch": "mlp", "width": 0.25, "options": {"norm": "layernorm", "act": "relu"}}}


@pytest.mark.parametrize("symmetry", ["w_asym", "sigma_asym"])
def test_alignment_on_an_asymmetric_pair_is_a_diagnostic_and_the_paths_use_b_as_trained(symmetry):
    config = _config(**{**TINY, "model": {**TINY["model"], "symmetry": symmetry}})
    result = trial.run(config)
    m, linear = result["metrics"], result["profiles"]["linear"]
    assert m["align/applied"] == 0.0 and result["alignment"]["applied"] is False
    assert m["align/function_preserving"] == 0.0
    assert m["dist/after_alignment"] == m["dist/before_alignment"] > 0
    assert linear["t"].iloc[-1] == 1.0
    assert linear["test_loss"].iloc[-1] == pytest.approx(m["endpoint_b/test_loss"], rel=1e-6)
    assert linear["test_acc"].iloc[-1] == pytest.approx(m["endpoint_b/test_acc"])
    assert linear["test_loss"].iloc[0] == pytest.approx(m["endpoint_a/test_loss"], rel=1e-6)


def test_alignment_on_a_standard_pair_is_applied():
    result = trial.run(_config(**TINY))
    m = result["metrics"]
    assert m["align/applied"] == 1.0 and result["alignment"]["applied"] is True
    assert m["dist/after_alignment"] < m["dist/before_alignment"]
    # aligned B computes the same function as B: the path still ends at B's test loss
    assert result["profiles"]["linear"]["test_loss"].iloc[-1] == pytest.approx(m["endpoint_b/test_loss"], rel=1e-5)


# --- alignment options are checked with the config ---------------------------------------------------------------
def test_a_misspelt_alignment_option_fails_at_parse_with_a_suggestion(monkeypatch):
    bad = _config(align={"method": "weight", "options": {"max_sweep": 3}})
    with pytest.raises(ConfigError, match=r"trial\.align: .*'max_sweep'.*did you mean 'max_sweeps'\?"):
        parse(bad)
    assert parse(_config(align={"method": "weight", "options": {"max_sweeps": 3}})).align.options == {"max_sweeps": 3}
    monkeypatch.setattr(trial, "train", lambda *a, **k: pytest.fail("trained despite a bad alignment option"))
    monkeypatch.setattr(trial, "load_data", lambda *a, **k: pytest.fail("loaded data despite a bad config"))
    with pytest.raises(ConfigError, match="max_sweep"):
        trial.run(bad)
