"""The in-repo baseline: one pair trial done the straightforward way the public reference code does it.

    python bench/baseline_trial.py [--device cuda] [--arch tinyten] [--n-train 50000] [--epochs 10] [--points 25]

Same work as ``study.core.trial.run`` with activation alignment and a 3-bend Bezier curve (same models, same synthetic
data, same recipe), but: fp32 only; data kept on the CPU in a ``TensorDataset`` and fed by a
``DataLoader(batch_size=128, shuffle=True)``, each batch copied to the device; a plain per-batch loop that reads
the loss back every step; and at every evaluated t a full BatchNorm pass over the training set through the
DataLoader, then train and test evaluated through DataLoaders. ``bench/suite.py`` times it next to
``trial.run`` in the same process to report the speed-up. A reference point, deliberately not optimised.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from study.core import align, data as datasets, metrics, models
from study.core import permutation as P
from study.core.paths import CurveModel, Path, trainable_state


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loaders(data: datasets.Dataset, batch_size: int, seed: int) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled) and test loaders over float [0, 1] CPU tensors, like ``ToTensor()`` datasets."""
    def floats(x: torch.Tensor) -> torch.Tensor:
        return x.cpu().float() / 255.0 if x.dtype == torch.uint8 else x.cpu().float()

    train = TensorDataset(floats(data.train_x), data.train_y.cpu())
    test = TensorDataset(floats(data.test_x), data.test_y.cpu())
    generator = torch.Generator().manual_seed(seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
            DataLoader(test, batch_size=batch_size, shuffle=False))


def _fit(model: nn.Module, loader: DataLoader, params: list[nn.Parameter], epochs: int, lr: float, momentum: float,
         weight_decay: float, device: torch.device, curve: CurveModel | None = None) -> float:
    """SGD with momentum and a per-step cosine schedule; for a curve, t is resampled every batch and the L2 term
    of θ(t) replaces the optimiser's weight decay. Returns the last epoch's mean training loss."""
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=0.0 if curve else weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    for _ in range(epochs):
        model.train()
        total, seen = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if curve is not None:
                curve.resample()
            loss = F.cross_entropy(model(x), y)
            objective = loss + curve.l2_penalty() if curve is not None else loss
            optimizer.zero_grad()
            objective.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(y)  # the reference code's per-batch host read
            seen += len(y)
    model.eval()
    return total / max(seen, 1)


@torch.no_grad()
def _evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    return loss / n, correct / n


@torch.no_grad()
def _update_bn(model: nn.Module, loader: DataLoader, device: torch.device) -> None:
    """Reset BN statistics and recompute them as an exact average over one pass of the train loader."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    model.train()
    for x, _ in loader:
        model(x.to(device))
    for layer in layers:
        layer.momentum = 0.1
    model.eval()


def run(arch: str = "tinyten", *, n_train: int = 50000, n_test: int = 10000, epochs: int = 10, points: int = 25,
        seeds: tuple[int, int] = (0, 1), align_samples: int = 10000, batch_size: int = 128, lr: float = 0.05,
        momentum: float = 0.9, weight_decay: float = 5e-4, width: float = 1.0,
        device: str | torch.device = "cpu", equal_work: bool = False) -> dict:
    """One pair trial the reference way; returns ``timings`` (seconds per phase, as ``trial.run``) and metrics.

    ``equal_work``: the reference's own definition of the trial (``bench/equal_work.py``): only the Bezier curve
    is evaluated, and each point is a BN recalibration plus one test pass (no training-split evaluation)."""
    device = torch.device(device)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    data = datasets.load("synthetic", in_shape=(3, 32, 32), n_train=n_train, n_test=n_test, val_fraction=0.0,
                         device="cpu")
    train_loader, test_loader = _loaders(data, batch_size, seed=seeds[0])
    timings["setup"] = time.perf_counter() - clock

    clock = time.perf_counter()
    endpoints = []
    for seed in seeds:
        model = models.build(arch, width=width, num_classes=data.num_classes, in_shape=data.in_shape, seed=seed,
                             mean=data.mean, std=data.std).to(device)
        _fit(model, train_loader, list(model.parameters()), epochs, lr, momentum, weight_decay, device)
        endpoints.append(model)
    _sync(device)
    timings["endpoints"] = time.perf_counter() - clock
    model_a, model_b = endpoints

    clock = time.perf_counter()
    inputs = train_loader.dataset.tensors[0][:align_samples]  # the first training images, as trial.run
    alignment = align.match(model_a, model_b, method="activation", data=inputs.to(device))
    model_b = P.apply(model_b, alignment.perms)
    _sync(device)
    timings["align"] = time.perf_counter() - clock
    out = {f"endpoint_{k}/test_acc": _evaluate(m, test_loader, device)[1] for k, m in (("a", model_a), ("b", model_b))}

    clock = time.perf_counter()
    theta_a, theta_b = trainable_state(model_a), trainable_state(model_b)
    bezier = Path(theta_a, theta_b, kind="bezier", n_bends=3).to(device)
    curve = CurveModel(copy.deepcopy(model_a), bezier, weight_decay=weight_decay, seed=seeds[0])
    out["curve/train_loss"] = _fit(curve, train_loader, curve.trainable_parameters(), epochs, lr, momentum,
                                   weight_decay, device, curve=curve)
    _sync(device)
    timings["curve"] = time.perf_counter() - clock

    clock = time.perf_counter()
    work = copy.deepcopy(model_a)
    evaluated = [("bezier", bezier)] if equal_work else [("linear", Path(theta_a, theta_b, kind="linear").to(device)),
                                                          ("bezier", bezier)]
    for name, path in evaluated:
        grid, test_losses = torch.linspace(0, 1, points).tolist(), []
        for t in grid:
            with torch.no_grad():
                for key, value in path.weights(t).items():
                    work.get_parameter(key).copy_(value)
            _update_bn(work, train_loader, device)
            if not equal_work:
                _evaluate(work, train_loader, device)
            test_losses.append(_evaluate(work, test_loader, device)[0])
        out[f"barrier_chord/{name}/test_loss"] = metrics.barrier_chord(grid, test_losses)
    _sync(device)
    timings["eval"] = time.perf_counter() - clock
    return {"timings": timings, "metrics": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="tinyten")
    parser.add_argument("--n-train", type=int, default=50000)
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--points", type=int, default=25)
    args = parser.parse_args()
    result = run(args.arch, n_train=args.n_train, n_test=args.n_test, epochs=args.epochs, points=args.points,
                 device=args.device)
    timings = result["timings"]
    print(f"baseline pair trial, {args.arch}: {sum(timings.values()):.1f} s  "
          + "  ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print("  " + "  ".join(f"{k} {v:.3f}" for k, v in result["metrics"].items()))


if __name__ == "__main__":
    main()
