"""Does each runtime switch (study.core.runtime.Runtime) pay on this device? Measured, so the defaults are chosen from data.

    python bench/runtime_options.py [--device cuda|cpu] [--archs tinyten resnet20] [--n-train N] [--points 25]
                                    [--parallel 1 5 25] [--epochs 3] [--skip-compile]

For each architecture, on synthetic CIFAR-shaped data (3×32×32, 10 classes):
- path evaluation: seconds of ``path_profile`` over a linear path (``--points`` points, BN recalibration over
  the training set and clean train + test evaluation at each) with ``parallel_points`` = each of ``--parallel``,
  and, on CUDA, with and without bf16 autocast; the largest difference in any profile value against
  ``parallel_points=1`` shows the numbers agree;
- the same path evaluated one point at a time in channels_last (``path_profile(channels_last=True)``, the CPU
  default for conv nets), against the same NCHW reference;
- endpoint training: seconds per epoch in eager fp32 NCHW (the CPU default), channels_last, and
  ``torch.compile`` (first epoch, which includes compilation, and the steady-state epoch), with the number of
  epochs after which compilation has paid for itself.
Each timing is the fastest of ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite import device_name  # noqa: E402

from study.core import data as datasets, models
from study.core import trial  # noqa: E402
from study.core.runtime import Runtime  # noqa: E402
from study.core.evaluate import path_profile  # noqa: E402
from study.core.paths import Path as WeightPath, trainable_state  # noqa: E402
from study.core.train import Recipe, train  # noqa: E402

DEFAULTS = {"cuda": {"n_train": 50000, "n_test": 10000, "points": 25, "parallel": [1, 5, 25]},
            "cpu": {"n_train": 1000, "n_test": 250, "points": 10, "parallel": [1, 5, 10]}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int):
    """(fastest seconds of ``repeats`` calls after one warm-up call, the last call's result)."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def path_evaluation(arch: str, data: datasets.Dataset, args: argparse.Namespace, device: torch.device) -> list[str]:
    build = lambda seed: models.build(arch, num_classes=10, in_shape=data.in_shape, seed=seed,  # noqa: E731
                                      mean=data.mean, std=data.std).to(device)
    a, b = build(0), build(1)
    path = WeightPath(trainable_state(a), trainable_state(b)).to(device)
    rows, reference, base_seconds = [], None, None
    precisions = [True, False] if device.type == "cuda" else [False]
    # (points together, bf16, channels_last): NCHW first (the reference numbers), then channels_last one point at
    # a time (the CPU default for conv nets since 2026-12-02), then the stacked variants
    variants = [(k, bf16, False) for bf16 in precisions for k in args.parallel]
    variants.insert(1, (1, precisions[0], True))
    for k, bf16, channels_last in variants:
        seconds, profile = timed(lambda: path_profile(a, path, data, points=args.points, parallel_points=k,
                                                      bf16=bf16, channels_last=channels_last),
                                 device, args.repeats)
        values = torch.tensor(profile.drop(columns=["t"]).to_numpy())
        if reference is None:
            reference, base_seconds = values, seconds
        diff = (values - reference).abs().max().item()
        images = args.points * (2 * data.size("train") + data.size("test"))
        layout = "channels_last" if channels_last else "NCHW"
        rows.append(f"| {arch} | {k} | {'bf16' if bf16 else 'fp32'}, {layout} | {seconds:.2f} | "
                    f"{images / seconds:,.0f} | {base_seconds / seconds:.2f}x | {diff:.1e} |")
        print(rows[-1], flush=True)
    return rows


def training_options(arch: str, data: datasets.Dataset, args: argparse.Namespace, device: torch.device) -> list[str]:
    recipe = Recipe(epochs=args.epochs, batch_size=128, augment=False)
    options = {"eager": Runtime(channels_last=False), "channels_last": Runtime(channels_last=True)}
    if not args.skip_compile:
        options["compile"] = Runtime(channels_last=device.type == "cuda", compile=True)
    rows, eager_epoch = [], None
    for name, runtime in options.items():
        model = models.build(arch, num_classes=10, in_shape=data.in_shape, seed=0, mean=data.mean, std=data.std)
        history = train(model, data, recipe, seed=0, device=device, validate=False, runtime=runtime).history
        first, steady = history[0]["seconds"], min(h["seconds"] for h in history[1:])
        eager_epoch = steady if eager_epoch is None else eager_epoch
        overhead = first - steady
        gain = eager_epoch - steady
        pays = f"{overhead / gain:.0f} epochs" if name == "compile" and gain > 0 else (
            "never" if name == "compile" else "")
        rows.append(f"| {arch} | {name} | {first:.2f} | {steady:.2f} | {data.size('train') / steady:,.0f} | "
                    f"{eager_epoch / steady:.2f}x | {pays} |")
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", nargs="+", default=["tinyten", "resnet20"], choices=models.available())
    parser.add_argument("--n-train", type=int)
    parser.add_argument("--n-test", type=int)
    parser.add_argument("--points", type=int)
    parser.add_argument("--parallel", type=int, nargs="+", help="parallel_points values to time")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per option (>= 2)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-compile", action="store_true", help="do not time torch.compile (slow to compile)")
    args = parser.parse_args(argv)
    device = trial.resolve_device(args.device)
    for key, value in DEFAULTS[device.type].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch includes compilation)")
    if args.points < 3 or min(args.parallel) < 1 or min(args.n_train, args.n_test, args.repeats) < 1:
        parser.error("--points must be >= 3; --parallel, --n-train, --n-test and --repeats must be >= 1")

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "bench/runtime_options.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"# runtime options, {stamp}\ndevice: {device_name(device)}; torch {torch.__version__}\ncommand: {command}")
    data = datasets.load("synthetic", in_shape=(3, 32, 32), n_train=args.n_train, n_test=args.n_test,
                         val_fraction=0.0, device=device)
    print(f"\npath evaluation: {args.points} points, BN pass over {args.n_train} + eval of {args.n_train} train + "
          f"{args.n_test} test images per point\n")
    print("| arch | points together | precision, layout | seconds | images/s | speed-up | max |Δ| vs 1 point |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for arch in args.archs:
        path_evaluation(arch, data, args, device)
    print(f"\nendpoint training: {args.n_train} images/epoch, batch 128, {args.epochs} epochs\n")
    print("| arch | option | first epoch s | steady epoch s | images/s | speed-up | compile pays after |")
    print("|---|---|---:|---:|---:|---:|---|")
    for arch in args.archs:
        training_options(arch, data, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
