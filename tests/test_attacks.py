"""PGD: constraints, effectiveness, side-effect freedom (BN stats, .grad) and determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from study.core.attacks import AttackConfig, frozen_batchnorm_stats, pgd

DIM, CLASSES = 16, 4


def make_mlp(seed: int = 0, momentum: float | None = 0.1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(DIM, 32), nn.BatchNorm1d(32, momentum=momentum), nn.ReLU(), nn.Linear(32, CLASSES)
    )


def toy_batch(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """4 Gaussian blobs in [0, 1]^16 (clipped, so some pixels sit on the box boundary)."""
    g = torch.Generator().manual_seed(seed)
    centers = 0.2 + 0.6 * torch.rand(CLASSES, DIM, generator=torch.Generator().manual_seed(1234))
    y = torch.randint(CLASSES, (n,), generator=g)
    x = (centers[y] + 0.2 * torch.randn(n, DIM, generator=g)).clamp(0, 1)
    return x, y


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP fitted full-batch to the blobs (plain loop: these tests do not depend on study.core.train)."""
    model = make_mlp()
    x, y = toy_batch(512, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    xt, yt = toy_batch(256, seed=2)
    return model, xt, yt


NORM_EPS = [("linf", 0.1), ("l2", 0.5)]


@pytest.mark.parametrize("norm,eps", NORM_EPS)
def test_result_in_eps_ball_and_pixel_box(trained, norm, eps):
    model, x, y = trained
    adv = pgd(model, x, y, AttackConfig(eps=eps, steps=5, norm=norm), generator=torch.Generator().manual_seed(0))
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert size.max().item() <= eps + 1e-5
    assert size.max().item() > 0.5 * eps  # it did move
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0
    assert not adv.requires_grad


@pytest.mark.parametrize("norm,eps", NORM_EPS)
def test_attack_raises_loss_of_trained_model(trained, norm, eps):
    model, x, y = trained
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y).item()
    adv = pgd(model, x, y, AttackConfig(eps=eps, steps=10, norm=norm), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        robust = F.cross_entropy(model(adv), y).item()
    assert clean < 0.5, "fixture model should fit the blobs"
    assert robust > clean + 0.5 and robust > 3 * clean


def test_eps_zero_returns_x_without_computing():
    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError("eps=0 must not run the model")

    x, y = toy_batch(8)
    adv = pgd(Exploding(), x, y, AttackConfig(eps=0.0))
    assert torch.equal(adv, x) and adv.data_ptr() == x.data_ptr()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_train_mode_attack_leaves_batchnorm_stats_alone(momentum):
    model = make_mlp(momentum=momentum).train()
    x, y = toy_batch(64)
    model(x)  # give the running stats non-default values first
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pgd(model, x, y, AttackConfig(eps=0.1, steps=3), generator=torch.Generator().manual_seed(0))
    after = model.state_dict()
    assert model.training
    assert model[2].momentum == momentum
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    model(toy_batch(64, seed=5)[0])  # and the module still updates normally afterwards
    assert not torch.equal(before["2.running_mean"], model.state_dict()["2.running_mean"])


def test_frozen_batchnorm_stats_restores_on_error():
    model = make_mlp().train()
    with pytest.raises(RuntimeError), frozen_batchnorm_stats(model):
        assert model[2].momentum == 0.0
        raise RuntimeError("boom")
    assert model[2].momentum == 0.1


def test_attack_never_touches_parameter_grad(trained):
    model, x, y = trained
    pgd(model, x, y, AttackConfig(eps=0.1, steps=2), generator=torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in model.parameters())


def test_seeded_generator_makes_attack_deterministic(trained):
    model, x, y = trained
    cfg = AttackConfig(eps=0.1, steps=2, norm="l2")
    a = pgd(model, x, y, cfg, generator=torch.Generator().manual_seed(7))
    b = pgd(model, x, y, cfg, generator=torch.Generator().manual_seed(7))
    c = pgd(model, x, y, cfg, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_l2_random_start_is_inside_ball_and_spread():
    """Without steps' pull to the boundary, the start alone should fill the ball, not sit on its surface."""
    x = torch.full((2000, DIM), 0.5)
    model = nn.Sequential(nn.Linear(DIM, CLASSES))
    with torch.no_grad():
        model[0].weight.zero_()  # zero gradient: steps leave the random start where it is
    adv = pgd(model, x, torch.zeros(2000, dtype=torch.long), AttackConfig(eps=0.2, steps=1, norm="l2"),
              generator=torch.Generator().manual_seed(0))
    radius = (adv - x).norm(dim=1)
    assert radius.max().item() <= 0.2 + 1e-6
    # Uniform in a 16-d ball: P(r < 0.8 eps) = 0.8^16 ~ 2.8%.
    assert 0.005 < (radius < 0.16).float().mean().item() < 0.08


def test_config_defaults_and_disabled():
    assert AttackConfig().disabled
    cfg = AttackConfig(eps=8 / 255)
    assert not cfg.disabled and cfg.step_size == pytest.approx(2 / 255)
    assert AttackConfig(eps=0.1, alpha=0.05).step_size == 0.05


@pytest.mark.parametrize(
    "kwargs,fragments",
    [
        ({"eps": -0.1}, ["eps", "-0.1", ">= 0"]),
        ({"eps": float("nan")}, ["eps", "nan"]),
        ({"eps": 0.1, "alpha": 0.0}, ["alpha", "0.0", "> 0"]),
        ({"eps": 0.1, "alpha": -1}, ["alpha", "-1"]),
        ({"steps": 0}, ["steps", "0", ">= 1"]),
        ({"steps": 2.5}, ["steps", "2.5"]),
        ({"norm": "l3"}, ["norm", "'l3'", "linf", "l2"]),
    ],
)
def test_bad_config_raises_naming_value(kwargs, fragments):
    with pytest.raises(ValueError) as info:
        AttackConfig(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)
