"""The training loop: learning, reproducibility, optimizers, schedules, Madry training, divergence, Recipe I/O."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from study.core.attacks import AttackConfig
from study.core.data import Dataset
from study.core.evaluate import evaluate
from study.core.train import DivergenceError, Recipe, TrainResult, lr_schedule, train

CLASSES = 4


def toy_data(shape: tuple[int, ...] = (16,), n_train: int = 512, n_eval: int = 256, noise: float = 0.15,
             augment: str = "none") -> Dataset:
    """Four Gaussian blobs clipped to [0, 1]: learnable to ~100% in a few epochs, with real overlap under attack."""
    g = torch.Generator().manual_seed(0)
    dim = math.prod(shape)
    centers = 0.2 + 0.6 * torch.rand(CLASSES, dim, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(CLASSES, (n,), generator=g)
        return (centers[y] + noise * torch.randn(n, dim, generator=g)).clamp(0, 1).view(n, *shape), y

    (trx, try_), (vx, vy), (tx, ty) = draw(n_train), draw(n_eval), draw(n_eval)
    return Dataset(name="blobs", train_x=trx, train_y=try_, val_x=vx, val_y=vy, test_x=tx, test_y=ty,
                   in_shape=shape, num_classes=CLASSES, mean=(0.5,), std=(0.25,), augment=augment)


def mlp(in_features: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 32), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Linear(32, CLASSES))


FAST = dict(epochs=4, batch_size=64, lr=0.05, eval_batch_size=256)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return toy_data()


def test_training_learns_the_toy_problem(data):
    result = train(mlp(), data, Recipe(**FAST), seed=0)
    assert isinstance(result, TrainResult)
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < 0.5 * first["train_loss"]
    assert last["val_acc"] > 0.9 and last["train_acc"] > 0.9
    assert not result.model.training
    assert evaluate(result.model, data, "test")["acc"] > 0.9


def test_same_seed_gives_bit_identical_weights_different_seed_does_not():
    """Images with crop/flip augmentation and an attack: every random draw must come from the seeded generator."""
    images = toy_data(shape=(1, 8, 8), n_train=256, augment="crop_flip")
    recipe = Recipe(epochs=2, batch_size=50, lr=0.05, attack=AttackConfig(eps=0.05, steps=1))

    def weights(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(123)  # the global RNG must not matter...
        model = mlp(64, seed=0)  # ...beyond the (fixed) initialisation
        torch.manual_seed(seed * 1000 + 7)
        return [t.clone() for t in train(model, images, recipe, seed=seed).model.state_dict().values()]

    a, b, c = weights(1), weights(1), weights(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize(
    "overrides",
    [dict(optimizer="sgd", nesterov=True, momentum=0.9), dict(optimizer="adamw", lr=1e-2, weight_decay=1e-2)],
    ids=["sgd-nesterov", "adamw"],
)
def test_optimizers_train(data, overrides):
    result = train(mlp(), data, Recipe(**{**FAST, **overrides}), seed=0)
    assert result.history[-1]["val_acc"] > 0.9


def _factors(schedule: str, **kw) -> list[float]:
    recipe = Recipe(epochs=10, schedule=schedule, **kw)
    factor = lr_schedule(recipe, steps_per_epoch=10)
    return [factor(s) for s in range(100)]


def test_constant_schedule_with_warmup():
    f = _factors("constant", warmup_epochs=2)
    assert f[0] == pytest.approx(1 / 20)  # warmup starts small...
    assert f[9] == pytest.approx(0.5)
    assert f[19] == pytest.approx(1.0)  # ...and reaches the peak at its last step
    assert all(v == 1.0 for v in f[20:])


def test_step_schedule_drops_by_gamma_at_milestones():
    f = _factors("step", step_milestones=(0.5, 0.75), step_gamma=0.1)
    assert f[49] == 1.0 and f[50] == pytest.approx(0.1)
    assert f[74] == pytest.approx(0.1) and f[75] == pytest.approx(0.01) and f[99] == pytest.approx(0.01)


def test_cosine_schedule_decays_to_near_zero():
    f = _factors("cosine", warmup_epochs=1)
    assert f[0] == pytest.approx(0.1) and f[10] == 1.0
    assert f[55] == pytest.approx(0.5)  # halfway through the post-warmup steps
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert 0 < f[99] < 1e-2


def test_history_records_the_lr_actually_used(data):
    recipe = Recipe(**{**FAST, "epochs": 3, "schedule": "step", "step_milestones": (0.5,), "step_gamma": 0.5})
    lrs = [m["lr"] for m in train(mlp(), data, recipe, seed=0).history]
    assert lrs == pytest.approx([0.05, 0.025, 0.025])  # 24 steps, drop at step 12 (mid epoch 2)


def test_madry_training_reports_robust_accuracy_below_clean(data):
    recipe = Recipe(**{**FAST, "epochs": 3, "attack": AttackConfig(eps=0.15, steps=3)})
    last = train(mlp(), data, recipe, seed=0).history[-1]
    assert {"val_robust_loss", "val_robust_acc"} <= last.keys()
    assert last["val_robust_acc"] < last["val_acc"] - 0.05
    assert last["val_robust_loss"] > last["val_loss"]


def test_disabled_attack_is_clean_training(data):
    assert Recipe(attack=AttackConfig(eps=0.0)) == Recipe()
    assert "val_robust_acc" not in train(mlp(), data, Recipe(**{**FAST, "epochs": 1}), seed=0).history[0]


class NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * float("nan")


@pytest.mark.parametrize("case", ["nan-forward", "huge-lr"])
def test_divergence_raises_helpful_error(data, case):
    model, lr = (NaNModel(), 0.05) if case == "nan-forward" else (mlp(), 1e6)
    recipe = Recipe(**{**FAST, "lr": lr, "weight_decay": 0.0})
    with pytest.raises(DivergenceError) as info:
        train(model, data, recipe, seed=0)
    message = str(info.value)
    assert "epoch 1" in message and f"lr={lr:g}" in message and "lower lr" in message


def test_callback_gets_one_dict_per_epoch(data):
    seen: list[dict] = []
    result = train(mlp(), data, Recipe(**{**FAST, "epochs": 3}), seed=0, callback=seen.append)
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    assert seen == result.history
    assert {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"} <= seen[0].keys()
    json.dumps(seen)  # plain numbers only: loggable as-is


def test_extra_loss_and_parameter_subset(data):
    """The hooks a curve module needs: its own loss term, and optimising only some parameters."""
    model = mlp()
    first = model[1].weight.detach().clone()
    calls = []

    def extra() -> torch.Tensor:
        calls.append(1)
        return 0.5 * model[4].weight.pow(2).sum()

    recipe = Recipe(**{**FAST, "epochs": 2})
    history = train(model, data, recipe, seed=0, extra_loss=extra, parameters=model[4].parameters()).history
    assert len(calls) == 2 * math.ceil(512 / 64)
    assert torch.equal(model[1].weight, first)  # not in `parameters`: untouched
    assert history[-1]["train_objective"] > history[-1]["train_loss"]


def test_recipe_round_trips_through_json():
    recipe = Recipe.from_dict({"lr": 1, "step_milestones": [0.3, 0.6], "attack": {"eps": 8 / 255, "steps": 7}})
    assert recipe.lr == 1.0 and recipe.step_milestones == (0.3, 0.6) and recipe.attack.steps == 7
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


@pytest.mark.parametrize(
    "d,fragments",
    [
        ({"lrr": 0.1}, ["'lrr'", "did you mean 'lr'"]),
        ({"weight_decay": 0.0, "wieght_decay": 1e-4}, ["'wieght_decay'", "did you mean 'weight_decay'"]),
        ({"attack": {"epsilon": 0.1}}, ["'epsilon'", "did you mean 'eps'"]),
        ({"schedule": "cosin"}, ["'cosin'", "constant, step, cosine", "did you mean 'cosine'"]),
        ({"optimizer": "adam"}, ["'adam'", "sgd, adamw"]),
        ({"lr": -0.1}, ["lr", "-0.1", "(0, inf)"]),
        ({"lr": "1e-3"}, ["lr", "'1e-3'", "str"]),
        ({"epochs": -1}, ["epochs", "-1", "[1, inf)"]),
        ({"weight_decay": -1e-4}, ["weight_decay", "-0.0001"]),
        ({"momentum": 1.5}, ["momentum", "1.5", "[0, 1)"]),
        ({"warmup_epochs": 11}, ["warmup_epochs", "11", "[0, 10]"]),
        ({"step_milestones": [0.75, 0.5]}, ["step_milestones", "increasing"]),
        ({"step_milestones": [1.5]}, ["step_milestones", "1.5"]),
        ({"label_smoothing": -0.1}, ["label_smoothing", "-0.1"]),
        ({"optimizer": "adamw", "nesterov": True}, ["nesterov", "'adamw'"]),
        ({"attack": {"eps": -0.1}}, ["eps", "-0.1"]),
    ],
)
def test_recipe_rejects_bad_input_with_helpful_message(d, fragments):
    with pytest.raises(ValueError) as info:
        Recipe.from_dict(d)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_resuming_from_a_checkpoint_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    """A retried trial continues from its last epoch: same weights as if it had never stopped (CPU, bitwise)."""
    images = toy_data(shape=(1, 8, 8), n_train=256, augment="crop_flip")
    recipe = Recipe(epochs=4, batch_size=50, lr=0.05, attack=AttackConfig(eps=0.05, steps=1))
    straight = train(mlp(64, seed=0), images, recipe, seed=3).model.state_dict()

    saved = {}

    class Interrupted(Exception):
        pass

    def checkpoint(state):
        torch.save(state, tmp_path / "ck.pt")
        saved["epoch"] = state["epoch"]
        if state["epoch"] == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(mlp(64, seed=0), images, recipe, seed=3, checkpoint=checkpoint)
    state = torch.load(tmp_path / "ck.pt", weights_only=True)  # checkpoints are plain tensors and numbers
    resumed = train(mlp(64, seed=5), images, recipe, seed=3, resume=state)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for key, value in straight.items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


# --- what identifies a trained endpoint ---------------------------------------------------------------------------
# A setting that cannot change the trained weights must not change the endpoint's store key (changing it would
# retrain every endpoint for nothing); one that can must.

def _key(train: dict, seed: int = 0) -> str:
    from study.core.config import parse

    return parse({"train": train}).endpoint_key(seed)


WEIGHT_NEUTRAL = [  # (recipe, the same recipe with a setting changed that training never reads)
    ({}, {"eval_batch_size": 17}),  # only the per-epoch val pass uses it
    ({"schedule": "cosine"}, {"schedule": "cosine", "step_milestones": [0.2, 0.9], "step_gamma": 0.5}),
    ({"schedule": "constant"}, {"schedule": "constant", "step_gamma": 0.3}),
    ({"optimizer": "adamw", "lr": 1e-3}, {"optimizer": "adamw", "lr": 1e-3, "momentum": 0.0}),  # SGD-only
    ({"attack": {"eps": 0.04}}, {"attack": {"eps": 0.04, "alpha": 0.01}}),  # alpha=None means eps/4
]


@pytest.mark.parametrize("recipe, same", WEIGHT_NEUTRAL, ids=[str(s) for _, s in WEIGHT_NEUTRAL])
def test_settings_that_cannot_change_the_weights_do_not_change_the_endpoint_key(recipe, same):
    assert _key(same) == _key(recipe)
    assert Recipe.from_dict(same).to_dict() != Recipe.from_dict(recipe).to_dict()  # the full recipe keeps them


WEIGHT_CHANGING = [
    {"lr": 0.02}, {"epochs": 11}, {"batch_size": 64}, {"optimizer": "adamw"}, {"momentum": 0.8},
    {"nesterov": True}, {"weight_decay": 0.0}, {"schedule": "step"}, {"warmup_epochs": 1},
    {"schedule": "step", "step_milestones": [0.4, 0.8]}, {"schedule": "step", "step_gamma": 0.5},
    {"label_smoothing": 0.1}, {"augment": False}, {"bf16": False}, {"attack": {"eps": 0.03}},
    {"attack": {"eps": 0.03, "alpha": 0.01}}, {"attack": {"eps": 0.03, "steps": 3}},
    {"attack": {"eps": 0.03, "norm": "l2"}}, {"attack": {"eps": 0.03, "random_start": False}},
]


@pytest.mark.parametrize("change", WEIGHT_CHANGING, ids=[str(c) for c in WEIGHT_CHANGING])
def test_settings_that_change_the_weights_change_the_endpoint_key(change):
    base = {"schedule": "step"} if "step_milestones" in change or "step_gamma" in change else {}
    if "attack" in change:
        base = {"attack": {"eps": 0.04}} if change["attack"] == {"eps": 0.03} else {"attack": {"eps": 0.03}}
    assert _key(change) != _key(base)


def test_the_seed_and_the_attack_strength_change_the_endpoint_key():
    assert _key({}, seed=1) != _key({}, seed=0)
    assert _key({"attack": {"eps": 0.03}}) != _key({"attack": {"eps": 0.02}}) != _key({})


def test_endpoint_keys_of_recipes_at_the_defaults_are_unchanged():
    """Weight-neutral settings are pinned, not dropped, in the identity: endpoint stores stay valid across
    versions until a default that changes weights changes ``IDENTITY_FORMAT`` (2: W-Asym n_fix as fractions)."""
    from study.core.config import parse

    assert parse({}).endpoint_key(0) == "0b523dd1d704d37fb9920f29"
    cfg = parse({"train": {"attack": {"eps": 0.03}}, "model": {"arch": "tinyten", "width": 0.5}})
    assert cfg.endpoint_key(3) == "28f68ffb446c9778d1d073e3"


@pytest.mark.parametrize("same", [{"eval_batch_size": 7}, {"step_milestones": (0.1, 0.2), "step_gamma": 0.9}],
                         ids=["eval_batch_size", "step-under-cosine"])
def test_weight_neutral_settings_really_give_the_same_weights(same):
    data = toy_data(n_train=128, n_eval=64)
    recipe = Recipe(**{**FAST, "epochs": 2})
    a, b = mlp(), mlp()
    train(a, data, recipe, seed=0)
    train(b, data, Recipe(**{**FAST, "epochs": 2, **same}), seed=0)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
