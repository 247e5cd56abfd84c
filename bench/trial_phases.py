"""Seconds per phase of one pair trial (endpoint training, alignment, curve fitting, evaluation).

    python bench/trial_phases.py [--device cuda] [--epochs 4] [--points 25]

Two workloads: an MLP on digits (the quickstart's) and TinyTen on synthetic CIFAR-shaped data (32×32×3,
10 classes, offline). Prints each phase's seconds and its share of the trial.
"""

from __future__ import annotations

import argparse
import platform

import torch

from study.core import trial

WORKLOADS = {
    "mlp/digits": {"data": {"name": "digits"}, "model": {"arch": "mlp", "width": 0.25}, "batch": 64},
    "tinyten/synthetic-cifar": {"data": {"name": "synthetic", "options": {"in_shape": [3, 32, 32], "n_train": 5000,
                                                                          "n_test": 1000}},
                                "model": {"arch": "tinyten"}, "batch": 128},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--points", type=int, default=25)
    parser.add_argument("--align", default="activation")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--n-train", type=int, default=5000, help="training images of the synthetic CIFAR workload")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {args.epochs} epochs per endpoint and curve, "
          f"{args.points} evaluation points, alignment {args.align}")
    for workload in args.workloads:
        w = WORKLOADS[workload]
        if w["data"]["name"] == "synthetic":
            w["data"]["options"]["n_train"] = args.n_train
        recipe = {"epochs": args.epochs, "batch_size": w["batch"], "augment": False}
        result = trial.run({"data": w["data"], "model": w["model"], "train": recipe, "seeds": [0, 1],
                            "align": {"method": args.align}, "curve": {"kind": "bezier", "train": recipe},
                            "eval": {"points": args.points}, "device": str(device)})
        timings = result["timings"]
        total = sum(timings.values())
        print(f"\n{workload}: {total:.1f} s in total; linear barrier "
              f"{result['metrics']['barrier_chord/linear/test_loss']:.3f}, Bezier barrier "
              f"{result['metrics']['barrier_chord/bezier/test_loss']:.3f}")
        for phase, seconds in timings.items():
            print(f"  {phase:10s} {seconds:8.2f} s  {100 * seconds / total:5.1f}%")


if __name__ == "__main__":
    main()
