"""Permutation specs are right: a permuted standard network computes the same function, BN stats included."""

from __future__ import annotations

import pytest
import torch

from study.core import models
from study.core import permutation as P

# (arch, options, in_shape, width): small widths keep the suite fast; every architecture × norm is covered.
STANDARD_CASES = [
    ("mlp", {"norm": "layernorm", "act": "gelu"}, (1, 8, 8), 0.125),
    ("mlp", {"norm": "batchnorm", "act": "relu"}, (40,), 0.125),
    ("mlp", {"norm": "none", "act": "relu", "depth": 2}, (40,), 0.125),
    ("tinyten", {}, (3, 16, 16), 1.0),
    ("tinyten", {"norm": "groupnorm", "act": "gelu"}, (1, 8, 8), 1.0),
    ("tinyten", {"norm": "none"}, (3, 16, 16), 1.0),
    ("vgg11", {"norm": "batchnorm"}, (3, 16, 16), 0.125),
    ("vgg11", {"norm": "layernorm"}, (3, 16, 16), 0.125),
    ("resnet20", {"norm": "batchnorm"}, (3, 16, 16), 0.5),
    ("resnet20", {"norm": "groupnorm"}, (3, 16, 16), 0.5),
    ("resnet32", {"norm": "batchnorm"}, (1, 8, 8), 0.5),
    ("resnet32", {"norm": "groupnorm"}, (3, 8, 8), 0.5),
]


def _case_id(case: tuple) -> str:
    arch, options, shape, _ = case
    return f"{arch}-{options.get('norm', 'default')}-{'x'.join(map(str, shape))}"


def _train_a_little(model: torch.nn.Module, shape: tuple[int, ...], steps: int = 3) -> None:
    """A few SGD steps in train mode, so BN running statistics and weights are no longer at their init."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        x, y = torch.rand(32, *shape, generator=g), torch.randint(0, 10, (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


@pytest.fixture(params=STANDARD_CASES, ids=_case_id)
def trained_standard(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, tuple[int, ...]]:
    arch, options, shape, width = request.param
    model = models.build(arch, num_classes=10, in_shape=shape, width=width, seed=1, **options)
    _train_a_little(model, shape)
    return model, shape


def test_random_permutation_preserves_function(trained_standard):
    model, shape = trained_standard
    spec = models.permutation_spec(model)
    perms = P.random(spec, torch.Generator().manual_seed(3), model=model)
    assert not P.is_identity(perms)
    permuted = P.apply(model, perms)
    # The weights really moved (a spec that permutes nothing would pass the function check trivially).
    moved = [k for k in spec.axes if not torch.equal(model.state_dict()[k], permuted.state_dict()[k])]
    assert len(moved) >= len(spec.axes) // 2
    x = torch.rand(64, *shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert _relative_change(model(x), permuted(x)) <= 1e-5


def test_spec_covers_every_per_unit_tensor(trained_standard):
    """Every parameter and BN running statistic is in the spec; only input normalisation and counters are not."""
    model, _ = trained_standard
    spec = models.permutation_spec(model)
    expected = {k for k in model.state_dict() if not k.startswith("normalize.") and not k.endswith("num_batches_tracked")}
    assert set(spec.axes) == expected
    assert all(len(axes) == model.state_dict()[k].dim() for k, axes in spec.axes.items())


def test_wrong_permutation_changes_function():
    """Sanity of the test above: permuting a layer's outputs without its consumer's inputs breaks the net."""
    model = models.build("mlp", num_classes=10, in_shape=(40,), width=0.125, seed=1)
    _train_a_little(model, (40,))
    spec = models.permutation_spec(model)
    broken = P.PermutationSpec({k: v for k, v in spec.axes.items() if not k.startswith("linears.1.weight")})
    perms = P.random(spec, torch.Generator().manual_seed(3), model=model)
    x = torch.rand(64, 40)
    with torch.no_grad():
        assert _relative_change(model(x), P.apply(model, perms, broken)(x)) > 1e-2


def test_resnet_ties_residual_streams():
    model = models.build("resnet20", num_classes=10, in_shape=(3, 8, 8), width=0.25)
    spec = model.permutation_spec()
    axes = spec.axes
    assert axes["stem_conv.weight"][0] == axes["stages.0.2.conv2.weight"][0] == "P_stream0"
    assert axes["stages.1.0.shortcut_conv.weight"][:2] == ("P_stream1", "P_stream0")
    assert axes["stages.2.2.norm2.running_mean"] == ("P_stream2",)
    assert axes["head.weight"] == (None, "P_stream2")
    assert len(spec.names) == 3 + 9  # three streams, nine inner widths
    assert spec.activations["P_stream0"] == ("stem_act", "stages.0.0.act_out", "stages.0.1.act_out",
                                             "stages.0.2.act_out")


def test_inverse_and_compose():
    model = models.build("resnet20", num_classes=10, in_shape=(3, 8, 8), width=0.25, seed=2)
    spec = model.permutation_spec()
    g = torch.Generator().manual_seed(0)
    p, q = P.random(spec, g, model=model), P.random(spec, g, model=model)
    restored = P.apply(P.apply(model, p), P.inverse(p))
    for key, value in model.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key
    sequential = P.apply(P.apply(model, p), q).state_dict()
    composed = P.apply(model, P.compose(p, q)).state_dict()
    for key in spec.axes:
        assert torch.equal(sequential[key], composed[key]), key
    assert P.is_identity(P.compose(p, P.inverse(p)))


def test_spec_sizes_are_checked():
    model = models.build("mlp", num_classes=10, in_shape=(40,), width=0.125)
    spec = model.permutation_spec()
    sizes = spec.sizes(model.state_dict())
    assert sizes == {"P_layer0": 64, "P_layer1": 64, "P_layer2": 64}
    # A spec that puts P_layer0 on the head's 10 output rows disagrees with the 64-unit layers it also acts on.
    bad = P.PermutationSpec({**spec.axes, "head.weight": ("P_layer0", "P_layer2")})
    with pytest.raises(ValueError, match=r"'P_layer0' acts on axes of sizes 64 and 10 \(head.weight\[0\]\)"):
        bad.sizes(model.state_dict())
    # A state dict whose first layer has grown disagrees with the correct spec.
    state = dict(model.state_dict())
    state["linears.0.weight"] = torch.zeros(65, 40)
    with pytest.raises(ValueError, match="P_layer0"):
        spec.sizes(state)
