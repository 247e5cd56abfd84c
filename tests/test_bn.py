"""BatchNorm recalibration gives each layer the exact statistics of its input over the whole pass.

The reference is computed independently: forward pre-hooks collect every BN layer's input during one train-mode
pass over the same batches (upstream layers normalising each batch by its own statistics, as during
recalibration), and the mean and unbiased variance are taken over all samples and positions at once. The data
set size is deliberately not a multiple of the batch size: PyTorch's ``momentum=None`` averages per-batch
statistics with equal weights, so a short last batch would count as much as a full one.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from study.core import bn, models
from study.core import data as datasets
from study.core.ensemble import StackedModel
from study.core.evaluate import clean_batches, load_weights
from study.core.paths import Path, trainable_state

SHAPE = (3, 8, 8)
BATCH = 64
N_TRAIN = 150  # batches of 64, 64 and 22


@pytest.fixture(scope="module")
def images():
    return datasets.load("synthetic", in_shape=SHAPE, n_train=N_TRAIN, n_test=16, val_fraction=0.0)


def _net(arch: str, data: datasets.Dataset, seed: int, **kwargs) -> nn.Module:
    net = models.build(arch, num_classes=data.num_classes, in_shape=data.in_shape, seed=seed, mean=data.mean,
                       std=data.std, **kwargs)
    for layer in bn.batchnorm_layers(net):  # statistics that recalibration must replace, not build on
        layer.running_mean.normal_(0, 1)
        layer.running_var.uniform_(0.5, 2.0)
    return net.eval()


@torch.no_grad()
def reference_statistics(model: nn.Module, data: datasets.Dataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(mean, unbiased variance) per channel of every BN layer's input over one train-mode pass of ``data``."""
    model = copy.deepcopy(model).train()
    layers = bn.batchnorm_layers(model)
    inputs: dict[nn.Module, list[torch.Tensor]] = {layer: [] for layer in layers}
    hooks = [layer.register_forward_pre_hook(lambda m, args: inputs[m].append(args[0].detach().double()))
             for layer in layers]
    for x in clean_batches(data, "train", BATCH):
        model(x)
    for hook in hooks:
        hook.remove()
    out = []
    for layer in layers:
        x = torch.cat(inputs[layer]).transpose(0, 1).reshape(layer.num_features, -1)  # [C, samples * positions]
        out.append((x.mean(dim=1), x.var(dim=1, unbiased=True)))
    return out


def _assert_statistics(layers: list[nn.Module], expected: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    assert len(layers) == len(expected) > 0
    for i, (layer, (mean, var)) in enumerate(zip(layers, expected)):
        torch.testing.assert_close(layer.running_mean.double(), mean, rtol=1e-5, atol=1e-6, msg=lambda m, i=i: f"layer {i} mean: {m}")
        torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-5, atol=1e-6, msg=lambda m, i=i: f"layer {i} var: {m}")


CASES = [
    ("tinyten", {"width": 0.25}),
    ("resnet20", {"width": 0.5}),
    ("mlp", {"width": 0.125, "norm": "batchnorm"}),
    ("tinyten", {"width": 0.25, "symmetry": "w_asym"}),
]
IDS = [f"{a}-{'-'.join(map(str, k.values()))}" for a, k in CASES]


@pytest.mark.parametrize("arch, kwargs", CASES, ids=IDS)
def test_recalibrated_statistics_are_the_exact_statistics_of_each_layers_input(images, arch, kwargs):
    assert N_TRAIN % BATCH != 0
    model = _net(arch, images, seed=0, **kwargs)
    expected = reference_statistics(model, images)
    assert bn.recalibrate(model, clean_batches(images, "train", BATCH))
    assert not model.training
    _assert_statistics(bn.batchnorm_layers(model), expected)


def test_recalibrating_a_tensor_in_chunks_is_the_same_as_batches(images):
    model = _net("tinyten", images, seed=0, width=0.25)
    expected = reference_statistics(model, images)
    bn.recalibrate(model, images.batch("train")[0], batch_size=BATCH)
    _assert_statistics(bn.batchnorm_layers(model), expected)


def test_recalibration_keeps_the_layers_momentum(images):
    model = _net("resnet20", images, seed=0, width=0.5)
    momenta = [layer.momentum for layer in bn.batchnorm_layers(model)]
    bn.recalibrate(model, clean_batches(images, "train", BATCH))
    assert [layer.momentum for layer in bn.batchnorm_layers(model)] == momenta


@pytest.mark.parametrize("arch, kwargs", CASES, ids=IDS)
def test_stacked_recalibration_gives_every_point_its_exact_statistics(images, arch, kwargs):
    a, b = _net(arch, images, seed=0, **kwargs), _net(arch, images, seed=1, **kwargs)
    path = Path(trainable_state(a), trainable_state(b))
    weights = [{k: v.detach() for k, v in path.weights(t).items()} for t in (0.0, 0.4, 1.0)]
    stacked = StackedModel(a, weights)
    assert stacked.recalibrate(clean_batches(images, "train", BATCH))
    for i, w in enumerate(weights):
        alone = copy.deepcopy(a)
        load_weights(alone, w)
        _assert_statistics(bn.batchnorm_layers(stacked.point(i)), reference_statistics(alone, images))
