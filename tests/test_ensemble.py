"""Path points evaluated together (study.core.ensemble) and the runtime switches (study.core.runtime).

The property that matters: running K points as one vmapped network gives each point the numbers it gets on its
own (same BN statistics, losses, accuracies, robust numbers) for every architecture family and symmetry, so the
GPU default can differ from the CPU default without changing any result beyond float rounding.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from study.core import bn, data as datasets, models, trial
from study.core.runtime import Runtime
from study.core.config import ConfigError, parse
from study.core.attacks import AttackConfig
from study.core.ensemble import StackedModel
from study.core.evaluate import clean_batches, evaluate, load_weights, path_profile
from study.core.paths import Path, trainable_state
from study.core.train import Recipe, train

SHAPE = (3, 8, 8)


@pytest.fixture(scope="module")
def images():
    return datasets.load("synthetic", in_shape=SHAPE, n_train=160, n_test=48, val_fraction=0.0)


def _pair(arch: str, data: datasets.Dataset, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two different nets; BN running statistics made non-trivial so recalibration visibly replaces them."""
    nets = []
    for seed in (0, 1):
        net = models.build(arch, num_classes=data.num_classes, in_shape=data.in_shape, seed=seed, mean=data.mean,
                           std=data.std, **kwargs)
        for layer in bn.batchnorm_layers(net):
            layer.running_mean.normal_(0, 1)
            layer.running_var.uniform_(0.5, 2.0)
        nets.append(net.eval())
    return nets[0], nets[1]


CASES = [
    ("mlp", {"width": 0.125}),
    ("mlp", {"width": 0.125, "symmetry": "w_asym"}),
    ("tinyten", {"width": 0.25}),
    ("tinyten", {"width": 0.25, "symmetry": "sigma_asym"}),
    ("resnet20", {"width": 0.5, "symmetry": "w_asym"}),
    ("resnet20", {"width": 0.5, "norm": "groupnorm"}),
]


@pytest.mark.parametrize("arch, kwargs", CASES, ids=[f"{a}-{'-'.join(map(str, k.values()))}" for a, k in CASES])
def test_stacked_points_match_one_point_at_a_time(images, arch, kwargs):
    a, b = _pair(arch, images, **kwargs)
    path = Path(trainable_state(a), trainable_state(b))
    ts = [0.0, 0.3, 0.7, 1.0]
    weights = [{k: v.detach() for k, v in path.weights(t).items()} for t in ts]
    stacked = StackedModel(a, weights)
    had_bn = stacked.recalibrate(clean_batches(images, "train", 64))
    assert had_bn == bn.has_batchnorm(a)
    together = stacked.evaluate(images, "test", batch_size=20)
    x = images.batch("test")[0]
    logits = stacked(x)
    for i, w in enumerate(weights):
        alone = copy.deepcopy(a)
        load_weights(alone, w)
        bn.recalibrate(alone, clean_batches(images, "train", 64))
        expected = evaluate(alone, images, "test", batch_size=20)
        assert together[i]["n"] == expected["n"] == images.size("test")
        assert together[i]["loss"] == pytest.approx(expected["loss"], rel=1e-5, abs=1e-6)
        assert together[i]["acc"] == pytest.approx(expected["acc"], abs=1e-9)
        with torch.no_grad():
            torch.testing.assert_close(logits[i], alone(x), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(stacked.point(i)(x), alone(x), rtol=1e-4, atol=1e-5)
        for (name, mine), theirs in zip(stacked.point(i).named_buffers(), alone.buffers()):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5, msg=name)


def test_each_point_keeps_its_own_bn_statistics(images):
    a, b = _pair("tinyten", images, width=0.25)
    path = Path(trainable_state(a), trainable_state(b))
    stacked = StackedModel(a, [path.weights(0.0), path.weights(1.0)])
    stacked.recalibrate(clean_batches(images, "train", 64))
    means = [bn.batchnorm_layers(stacked.point(i))[-1].running_mean for i in (0, 1)]
    assert not torch.allclose(means[0], means[1])  # different weights, different activations, different stats


def test_recalibration_replaces_the_statistics_it_was_given(images):
    a, b = _pair("resnet20", images, width=0.5)
    stacked = StackedModel(a, [trainable_state(a)])
    stacked.recalibrate(clean_batches(images, "train", 64))
    stacked.recalibrate(clean_batches(images, "train", 64))  # twice: a second pass must not accumulate onto the first
    alone = copy.deepcopy(a)
    bn.recalibrate(alone, clean_batches(images, "train", 64))
    for mine, theirs in zip(bn.batchnorm_layers(stacked.point(0)), bn.batchnorm_layers(alone)):
        torch.testing.assert_close(mine.running_var, theirs.running_var, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("parallel", [2, 4, 9])
def test_path_profile_is_the_same_whatever_the_points_evaluated_together(images, parallel):
    a, b = _pair("tinyten", images, width=0.25)
    path = Path(trainable_state(a), trainable_state(b), kind="bezier", n_bends=3)
    attack = AttackConfig(eps=0.03, steps=2)
    kwargs = dict(points=9, attack=attack, batch_size=32, seed=5)
    reference = path_profile(a, path, images, **kwargs)
    together = path_profile(a, path, images, parallel_points=parallel, **kwargs)
    assert list(together.columns) == list(reference.columns)
    assert "robust_test_acc" in together.columns
    # robust numbers too: the attack's random starts are drawn in the same order of t
    torch.testing.assert_close(torch.tensor(together.to_numpy()), torch.tensor(reference.to_numpy()),
                               rtol=1e-4, atol=1e-5)


def test_path_profile_rejects_a_bad_parallel_points(images):
    a, b = _pair("mlp", images, width=0.125)
    with pytest.raises(ValueError, match="parallel_points must be an integer >= 1"):
        path_profile(a, Path(trainable_state(a), trainable_state(b)), images, points=3, parallel_points=0)


# --- runtime switches ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime, message", [
    ({"parallel_points": 0}, r"trial.runtime: runtime.parallel_points must be an integer in \[1, inf\), got 0 \(or 'auto'\)"),
    ({"parallel_points": "all"}, r"runtime.parallel_points must be an integer in \[1, inf\), got 'all' \(str\).* \(or 'auto'\)"),
    ({"channels_last": "yes"}, r"runtime.channels_last must be true or false, got 'yes' \(or 'eval': evaluation only, or 'auto'\)"),
    ({"compile": "sometimes"}, r"runtime.compile must be true or false, got 'sometimes' \(or 'auto'\)"),
    ({"profile": "fastest"}, r"runtime.profile must be one of default, fast; got 'fastest' \(did you mean 'fast'\?\)"),
    ({"paralel_points": 4}, r"trial.runtime: unknown key 'paralel_points' \(did you mean 'parallel_points'\?\)"),
])
def test_bad_runtime_fails_at_parse(runtime, message):
    with pytest.raises(ConfigError, match=message):
        parse({"runtime": runtime})


def test_runtime_defaults_are_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    conv = models.build("tinyten", num_classes=10, in_shape=SHAPE, seed=0, width=0.25)
    mlp = models.build("mlp", num_classes=10, in_shape=SHAPE, seed=0, width=0.125)
    default = parse({}).runtime
    assert (default.points_together(cpu, 25), default.points_together(cuda, 25)) == (1, 25)
    assert Runtime(parallel_points=8).points_together(cpu, 5) == 5
    assert (default.use_channels_last(cpu, conv), default.use_channels_last(cuda, conv)) == (False, True)
    assert not default.use_channels_last(cuda, mlp)  # no convolutions, nothing to reformat
    assert Runtime(channels_last=True).use_channels_last(cpu, conv)
    # Evaluation: channels_last for conv nets on every device by default (on a CPU the one default speed-up that
    # keeps the numbers); "eval" asks for it in evaluation only, false nowhere.
    assert default.eval_channels_last(cpu, conv) and default.eval_channels_last(cuda, conv)
    assert not default.eval_channels_last(cpu, mlp)
    only_eval = Runtime(channels_last="eval")
    assert only_eval.eval_channels_last(cpu, conv) and not only_eval.use_channels_last(cuda, conv)
    assert not Runtime(channels_last=False).eval_channels_last(cpu, conv)


@pytest.mark.parametrize("arch, kwargs", [("tinyten", {"width": 0.25}), ("resnet20", {"width": 0.5, "symmetry": "w_asym"})])
def test_channels_last_evaluation_gives_the_nchw_numbers_up_to_rounding(images, arch, kwargs):
    """The default CPU evaluation of conv nets (channels_last) against the plain NCHW one, same endpoints, same
    path: every loss and accuracy of the profile agrees to float rounding (relative 1e-5: these untrained nets have
    losses ~11; trained ones measured |diff| <= 3e-7), and the
    passes really ran in channels_last (a hook on the first conv sees its weights in that format)."""
    a, b = _pair(arch, images, **kwargs)
    path = Path(trainable_state(a), trainable_state(b), kind="linear")
    formats: list[bool] = []
    first_conv = next(m for m in a.modules() if isinstance(m, torch.nn.Conv2d))
    hook = first_conv.register_forward_pre_hook(
        lambda m, args: formats.append(m.weight.is_contiguous(memory_format=torch.channels_last)
                                       and not m.weight.is_contiguous()))
    nchw = path_profile(a, path, images, points=5)
    assert formats and not any(formats)
    formats.clear()
    nhwc = path_profile(a, path, images, points=5, channels_last=True)
    hook.remove()
    assert formats and all(formats)
    assert all(p.is_contiguous() for p in a.parameters())  # the caller's model is not reformatted
    pd.testing.assert_frame_equal(nhwc, nchw, check_exact=False, rtol=1e-5, atol=1e-6)


def test_default_cpu_trial_trains_in_nchw_and_only_evaluates_in_channels_last():
    """The default profile's channels_last is evaluation-only on a CPU: the endpoints and the curve train bit for
    bit as with channels_last off (their test losses, evaluated the same way, are equal), and every barrier
    agrees to rounding. (Training in channels_last would move the barrier by ~1e-3 here: the test above.)"""
    default, plain = _digits_trial({}), _digits_trial({"channels_last": False})
    for name in ("endpoint_a/test_loss", "endpoint_b/test_loss", "dist/after_alignment"):
        assert default[name] == plain[name], name
    for name in plain:
        if not name.startswith("time/") and not name.endswith("seconds"):
            assert default[name] == pytest.approx(plain[name], rel=1e-5, abs=1e-6), name


def test_fast_profile_turns_on_what_pays_on_cpu_and_explicit_settings_win():
    from study.core.runtime import COMPILE_BREAK_EVEN_IMAGES

    cpu = torch.device("cpu")
    conv = models.build("tinyten", num_classes=10, in_shape=SHAPE, seed=0, width=0.25)
    mlp = models.build("mlp", num_classes=10, in_shape=SHAPE, seed=0, width=0.125)
    fast, default = Runtime(profile="fast"), Runtime()
    assert fast.use_channels_last(cpu, conv) and not default.use_channels_last(cpu, conv)
    assert not fast.use_channels_last(cpu, mlp)
    assert fast.use_compile(conv, COMPILE_BREAK_EVEN_IMAGES) and not fast.use_compile(conv, COMPILE_BREAK_EVEN_IMAGES - 1)
    assert not fast.use_compile(mlp, 10 * COMPILE_BREAK_EVEN_IMAGES) and not fast.use_compile(conv, None)
    assert not default.use_compile(conv, 10 * COMPILE_BREAK_EVEN_IMAGES)
    assert not Runtime(profile="fast", channels_last=False, compile=False).use_channels_last(cpu, conv)
    assert not Runtime(profile="fast", compile=False).use_compile(conv, 10 * COMPILE_BREAK_EVEN_IMAGES)


def _digits_trial(runtime: dict, width: float = 0.25, epochs: int = 2) -> dict:
    from study.core import trial

    base = {"data": {"name": "digits"}, "model": {"arch": "tinyten", "width": width}, "seeds": [0, 1],
            "train": {"epochs": epochs, "batch_size": 64, "augment": False}, "align": {"method": "activation"},
            "eval": {"points": 3}, "device": "cpu"}
    return trial.run({**base, "runtime": runtime})["metrics"]


def test_channels_last_trial_matches_the_default_one_up_to_rounding():
    """channels_last changes the last bits of every step; after two epochs that moves the loss barrier by
    <1% and flips at most a prediction or two of the 360 test digits. (The accuracy at the barrier's peak, a
    net near chance, is not compared: it swings by several points under any rounding change, e.g. with
    OMP_NUM_THREADS=1.)"""
    plain, fast = _digits_trial({}), _digits_trial({"profile": "fast", "cpu_bf16": False})
    assert fast["barrier_chord/linear/test_loss"] == pytest.approx(plain["barrier_chord/linear/test_loss"], rel=0.01)
    for name in ("endpoint_a/test_acc", "endpoint_b/test_acc"):
        assert abs(fast[name] - plain[name]) <= 2 / 360 + 1e-9, name


def test_a_cpu_bf16_trial_trains_endpoints_as_good():
    """CPU bf16 (forced on, so this runs on any CPU) trains other endpoints, not broken ones: their test
    accuracy is within 3 points of fp32's (bench/RESULTS.md measures how far barriers move on the quickstart)."""
    plain, bf16 = _digits_trial({}, 0.5, 6), _digits_trial({"cpu_bf16": True}, 0.5, 6)
    assert bf16["endpoint_a/test_loss"] != plain["endpoint_a/test_loss"]  # it really ran in bf16
    for name in ("endpoint_a/test_acc", "endpoint_b/test_acc"):
        assert abs(bf16[name] - plain[name]) <= 0.03, (name, bf16[name], plain[name])


def test_cpu_bf16_evaluation_of_a_path_agrees_with_fp32_on_the_same_endpoints():
    """The evaluation side alone: the same two fp32 endpoints, the same linear path, BN recalibrated and evaluated
    in bf16 vs fp32. Every point's loss agrees to bf16's precision (a few %), the barrier stays where it is (a
    broken bf16 pass, e.g. interpolated weights rounded or BN statistics mis-pooled, flattens it)."""
    from study.core import trial
    from study.core.evaluate import path_profile
    from study.core.paths import Path, trainable_state

    cfg = parse({"data": {"name": "digits"}, "model": {"arch": "tinyten", "width": 0.25},
                 "train": {"epochs": 2, "batch_size": 64, "augment": False}, "device": "cpu"})
    cpu = torch.device("cpu")
    data = trial.load_data(cfg, cpu)
    (a, _), (b, _) = (trial.endpoint(cfg, data, seed, cpu) for seed in (0, 1))
    path = Path(trainable_state(a), trainable_state(b), kind="linear")
    fp32 = path_profile(a, path, data, points=5, bf16=True)            # bf16 asked, but no scope: fp32
    with Runtime(cpu_bf16=True).scope(cpu):
        bf16 = path_profile(a, path, data, points=5, bf16=True)
    assert not bf16["test_loss"].equals(fp32["test_loss"])
    for split in ("train", "test"):
        assert (bf16[f"{split}_loss"] - fp32[f"{split}_loss"]).abs().max() <= 0.02 + 0.03 * fp32[f"{split}_loss"].max()
    assert fp32["test_loss"].iloc[2] > 2 * fp32["test_loss"].iloc[[0, -1]].max()  # a real barrier to keep
    assert bf16["test_loss"].iloc[2] > 2 * bf16["test_loss"].iloc[[0, -1]].max()


def test_cpu_bf16_autocasts_only_inside_a_scope_that_allows_it():
    from study.core.runtime import mixed_precision

    cpu, layer, x = torch.device("cpu"), torch.nn.Linear(4, 3), torch.randn(2, 4)

    def dtype() -> torch.dtype:
        with mixed_precision(cpu, True):
            return layer(x).dtype

    assert dtype() == torch.float32                                    # no scope: CPU stays fp32
    with Runtime(cpu_bf16=True).scope(cpu):
        assert dtype() == torch.bfloat16
        with mixed_precision(cpu, False):
            assert layer(x).dtype == torch.float32                     # bf16: false in a recipe still wins
        with Runtime().scope(cpu):
            assert dtype() == torch.float32                            # a nested default trial is fp32
        assert dtype() == torch.bfloat16                               # ... and the outer setting comes back
    assert dtype() == torch.float32
    assert not Runtime(cpu_bf16=True).use_cpu_bf16(torch.device("cuda"))  # CUDA has its own bf16 switch


def test_runtime_identity_keeps_default_keys_and_separates_cpu_bf16_results():
    plain = parse({})
    rounding_only = [parse({"runtime": r}) for r in ({"parallel_points": 4, "channels_last": True},
                                                      {"profile": "fast", "cpu_bf16": False})]
    for cfg in rounding_only:
        assert cfg.endpoint_key(0) == plain.endpoint_key(0) and cfg.identity() == plain.identity()
    for runtime in ({"profile": "fast"}, {"cpu_bf16": True}):
        other = parse({"runtime": runtime})
        assert other.endpoint_key(0) != plain.endpoint_key(0) and other.identity() != plain.identity()
    evaluation_only = parse({"runtime": {"cpu_bf16": "eval"}})   # fp32 endpoints, bf16 evaluation: a new result
    assert evaluation_only.endpoint_key(0) == plain.endpoint_key(0) and evaluation_only.identity() != plain.identity()
    assert "runtime" not in plain.endpoint_description(0)             # every existing key is unchanged


def test_cpu_bf16_eval_autocasts_evaluation_but_not_training():
    from study.core.runtime import mixed_precision

    cpu, layer, x = torch.device("cpu"), torch.nn.Linear(4, 3), torch.randn(2, 4)
    runtime = Runtime(cpu_bf16="eval")
    assert runtime.use_cpu_bf16(cpu) and not runtime.use_cpu_bf16(cpu, training=True)
    with runtime.scope(cpu):
        with mixed_precision(cpu, True):
            assert layer(x).dtype == torch.bfloat16
        with runtime.scope(cpu, training=True), mixed_precision(cpu, True):
            assert layer(x).dtype == torch.float32
    with pytest.raises(ConfigError, match=r"runtime.cpu_bf16 must be true or false, got 'evaluation' \(or 'eval'"):
        parse({"runtime": {"cpu_bf16": "evaluation"}})


def test_forcing_cpu_bf16_on_a_cpu_that_emulates_it_is_honoured_with_one_warning(monkeypatch, caplog):
    from study.core import runtime as runtime_module

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime_module, "cpu_has_native_bf16", lambda: False)
    runtime_module._warn_emulated_bf16.cache_clear()
    with caplog.at_level("WARNING", logger=runtime_module.__name__):
        assert not Runtime(profile="fast").use_cpu_bf16(cpu)              # auto decides per CPU: off, silently
        assert not caplog.records
        assert Runtime(cpu_bf16=True).use_cpu_bf16(cpu) and Runtime(cpu_bf16="eval").use_cpu_bf16(cpu)
    warnings = [r for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warnings) == 1, caplog.text                                    # once per process, not per pass
    runtime_module._warn_emulated_bf16.cache_clear()


def _train_digits(runtime: Runtime, arch: str = "tinyten") -> tuple[torch.nn.Module, list[dict]]:
    data = datasets.load("synthetic", in_shape=SHAPE, n_train=128, n_test=32, val_fraction=0.25)
    model = models.build(arch, num_classes=10, in_shape=SHAPE, seed=0, width=0.25, mean=data.mean, std=data.std)
    result = train(model, data, Recipe(epochs=2, batch_size=32, augment=False), seed=3, runtime=runtime)
    return model, result.history


def test_channels_last_trains_the_same_model_up_to_rounding():
    plain, plain_history = _train_digits(Runtime())
    nhwc, nhwc_history = _train_digits(Runtime(channels_last=True))
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in nhwc.parameters())
    assert list(plain.state_dict()) == list(nhwc.state_dict())
    for (name, p), q in zip(plain.state_dict().items(), nhwc.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4, msg=name)
    assert nhwc_history[-1]["val_loss"] == pytest.approx(plain_history[-1]["val_loss"], rel=1e-3)


def test_compiled_training_matches_eager_and_keeps_parameter_names(monkeypatch):
    """Runtime(compile=True) trains through a torch.compile wrapper that shares the model's parameters: the
    forward passes really go through compiled graphs, and the stored state (names and values) is the eager one.

    torch.compile is pointed at the ``aot_eager`` backend here (Dynamo capture and AOT autograd, no Inductor
    code generation): what this test checks is our wiring, not Inductor's kernels, and a cold Inductor cache
    would cost 20-40 s for that."""
    real_compile = torch.compile
    compiled_calls, graphs = [], []

    def counting_aot_eager(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.backends.registry.lookup_backend("aot_eager")(gm, example_inputs)

    def compile_for_test(model, **kwargs):
        compiled_calls.append(model)
        return real_compile(model, **{**kwargs, "backend": counting_aot_eager})

    monkeypatch.setattr(torch, "compile", compile_for_test)
    torch._dynamo.reset()
    eager, eager_history = _train_digits(Runtime(), arch="mlp")
    assert not compiled_calls and not graphs
    compiled, compiled_history = _train_digits(Runtime(compile=True), arch="mlp")
    torch._dynamo.reset()
    assert compiled_calls == [compiled] and graphs  # the model was compiled and its graphs were run
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no "_orig_mod." prefixes in stores
    for (name, p), q in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    assert compiled_history[-1]["train_loss"] == pytest.approx(eager_history[-1]["train_loss"], rel=1e-4)


def test_trial_with_points_evaluated_together_reports_the_same_barriers():
    config = {"data": {"name": "digits"}, "model": {"arch": "mlp", "width": 0.125},
              "train": {"epochs": 3, "batch_size": 64, "augment": False}, "seeds": [0, 1],
              "align": {"method": "activation", "samples": 200}, "eval": {"points": 5}, "device": "cpu"}
    one = trial.run(config)["metrics"]
    together = trial.run({**config, "runtime": {"parallel_points": 5}})["metrics"]
    keys = [k for k in one if not k.startswith("time/") and not k.endswith("seconds")]
    assert keys == [k for k in together if not k.startswith("time/") and not k.endswith("seconds")]
    for key in keys:
        assert together[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key


def test_runtime_does_not_change_a_trial_key_but_eval_precision_does():
    from study.sweep.spec import trial_key

    base = {"model": {"arch": "mlp"}, "device": "cpu"}
    assert trial_key({**base, "runtime": {"parallel_points": 3, "compile": True}}) == trial_key(base)
    assert trial_key({**base, "eval": {"bf16": False}}) != trial_key(base)


def test_points_that_do_not_fit_in_memory_together_are_retried_in_smaller_chunks(images, monkeypatch, caplog):
    import study.core.ensemble

    a, b = _pair("tinyten", images, width=0.25)
    path = Path(trainable_state(a), trainable_state(b))
    reference = path_profile(a, path, images, points=7, batch_size=32)
    sizes = []
    original = study.core.ensemble.StackedModel.recalibrate

    def recalibrate_fitting_two(self, inputs):
        sizes.append(self.k)
        if self.k > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, inputs)

    monkeypatch.setattr(study.core.ensemble.StackedModel, "recalibrate", recalibrate_fitting_two)
    with caplog.at_level("WARNING"):
        together = path_profile(a, path, images, points=7, batch_size=32, parallel_points=7)
    assert sizes == [7, 4, 2, 2, 2]  # halved until it fits, then kept (the 7th point runs alone, unstacked)
    assert "retrying with 4" in caplog.text and "retrying with 2" in caplog.text
    torch.testing.assert_close(torch.tensor(together.to_numpy()), torch.tensor(reference.to_numpy()),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("symmetry", ["standard", "w_asym"])
def test_stacked_points_run_under_bf16_autocast_and_from_channels_last_weights(images, symmetry):
    """The CUDA configuration's structure (autocast around vmap, NHWC weights) exercised with CPU autocast,
    without vmap's slow per-point fallback (which channels_last weights once triggered)."""
    import warnings

    a, b = _pair("resnet20", images, width=0.5, symmetry=symmetry)
    for net in (a, b):
        net.to(memory_format=torch.channels_last)
    path = Path(trainable_state(a), trainable_state(b))
    reference = path_profile(a, path, images, points=3, batch_size=32)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*performance drop.*")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stacked = path_profile(a, path, images, points=3, batch_size=32, parallel_points=3)
    for column in ("train_loss", "test_loss"):
        torch.testing.assert_close(torch.tensor(stacked[column].to_numpy()),
                                   torch.tensor(reference[column].to_numpy()), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("arch", models.available())
@pytest.mark.parametrize("symmetry", ["standard", "w_asym", "sigma_asym"])
def test_every_architecture_stacks_without_vmaps_slow_fallback(images, arch, symmetry):
    """A vmap op without a batching rule silently loops over the K points; none of our layers may need one."""
    import warnings

    a, b = _pair(arch, images, width=0.25, symmetry=symmetry)
    path = Path(trainable_state(a), trainable_state(b))
    stacked = StackedModel(a, [path.weights(t) for t in (0.0, 0.5, 1.0)])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*performance drop.*")
        stacked.recalibrate(clean_batches(images, "train", 64))
        assert stacked(images.batch("test")[0]).shape == (3, images.size("test"), images.num_classes)


def test_the_driver_warns_before_compute_when_a_cpu_study_forces_emulated_bf16(monkeypatch):
    """The workers' warning lands in their logs; the driver says it on the console, before Ray starts."""
    from study.core import runtime as runtime_module
    from study.sweep import driver
    from study.sweep.spec import validate

    def spec(runtime: dict) -> object:
        return validate({"name": "x", "trial": {"data": {"name": "digits"}, "model": {"arch": "mlp"},
                                                "device": "cpu", "runtime": runtime}})

    monkeypatch.setattr(runtime_module, "cpu_has_native_bf16", lambda: False)
    assert driver._forces_emulated_cpu_bf16(spec({"cpu_bf16": True}))
    assert driver._forces_emulated_cpu_bf16(spec({"cpu_bf16": "eval"}))
    assert not driver._forces_emulated_cpu_bf16(spec({"profile": "fast"}))   # auto: decided per CPU, silently
    assert not driver._forces_emulated_cpu_bf16(spec({}))
    mixed = validate({"name": "x", "trial": {"data": {"name": "digits"}, "model": {"arch": "mlp"}, "device": "cpu"},
                      "factors": {"seeds": [[0, 1], [2, 3]], "runtime.cpu_bf16": [False, "eval"]}})
    assert driver._forces_emulated_cpu_bf16(mixed)                          # one level of a factor is enough
    monkeypatch.setattr(runtime_module, "cpu_has_native_bf16", lambda: True)
    assert not driver._forces_emulated_cpu_bf16(spec({"cpu_bf16": True}))
