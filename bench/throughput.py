"""Training throughput (samples/s) per architecture on this device, and the cost of a PGD-trained epoch.

    python bench/throughput.py [--device cuda] [--epochs 2] [--archs mlp tinyten resnet20]

Synthetic data of the shape each architecture is usually trained on (offline); numbers are what this machine
does, so print the device with them.
"""

from __future__ import annotations

import argparse
import platform

import torch

from study.core import data as datasets
from study.core import models
from study.core.attacks import AttackConfig
from study.core.train import Recipe, train

SHAPES = {"mlp": (1, 28, 28), "tinyten": (3, 32, 32), "resnet20": (3, 32, 32), "resnet32": (3, 32, 32),
          "vgg11": (3, 32, 32)}


def epoch_seconds(arch: str, data: datasets.Dataset, recipe: Recipe, device: torch.device) -> float:
    model = models.build(arch, num_classes=data.num_classes, in_shape=data.in_shape, mean=data.mean, std=data.std)
    history = train(model, data, recipe, seed=0, device=device).history
    return min(h["seconds"] for h in history)  # best epoch: excludes warm-up (allocator, autotuning)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", nargs="+", default=["mlp", "tinyten", "resnet20"])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--pgd-steps", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'} " \
        f"({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; {args.samples} samples/epoch, batch 128, best of "
          f"{args.epochs} epochs")
    print(f"{'arch':10s} {'clean samples/s':>16s} {'PGD samples/s':>14s} {'PGD/clean time':>15s}")
    for arch in args.archs:
        data = datasets.load("synthetic", in_shape=SHAPES[arch], n_train=args.samples, n_test=256,
                             val_fraction=0.0, device=device)
        clean = Recipe(epochs=args.epochs, batch_size=128, augment=False)
        robust = Recipe(epochs=args.epochs, batch_size=128, augment=False,
                        attack=AttackConfig(eps=8 / 255, steps=args.pgd_steps))
        t_clean = epoch_seconds(arch, data, clean, device)
        t_robust = epoch_seconds(arch, data, robust, device)
        n = data.size("train")
        print(f"{arch:10s} {n / t_clean:16.0f} {n / t_robust:14.0f} {t_robust / t_clean:14.2f}x")


if __name__ == "__main__":
    main()
