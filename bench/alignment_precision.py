"""Activation matching's moments: float32 batch products into float64 totals (the code) vs all-float64.

    python bench/alignment_precision.py [--images 1000] [--arch tinyten] [--repeats 3]

Two TinyTen (or any conv architecture) nets at random init on CIFAR-shaped random images; times
``activation_matching`` as shipped against the same function with every batch's activations cast to float64
first (what it did before), and compares the permutations: at random init many units are near-ties, so it
prints the share of identical assignments and both runs' mean matched correlation (equal optima agree there).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.core import models  # noqa: E402
from study.core.align import activation  # noqa: E402


def _float64_add(self: activation._Moments, a: torch.Tensor, b: torch.Tensor) -> None:
    a, b = a.double(), b.double()
    if self.sum_ab is None:
        c = a.shape[1]
        self.sum_a, self.sum_b = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
        self.sum_aa, self.sum_bb = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
        self.sum_ab = torch.zeros(c, c, dtype=torch.float64)
    self.n += a.shape[0]
    self.sum_a += a.sum(0)
    self.sum_b += b.sum(0)
    self.sum_aa += (a * a).sum(0)
    self.sum_bb += (b * b).sum(0)
    self.sum_ab += a.t() @ b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--arch", default="tinyten")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = (3, 32, 32)
    a, b = (models.build(args.arch, num_classes=10, in_shape=shape, width=args.width, seed=s).eval() for s in (0, 1))
    data = torch.rand(args.images, *shape, generator=torch.Generator().manual_seed(0))
    shipped = activation._Moments.add
    seconds: dict[str, float] = {}
    perms, corr = {}, {}
    for name, add in (("float64", _float64_add), ("float32 batches", shipped)):
        activation._Moments.add = add
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            found = activation.activation_matching(a, b, data=data)
            perms[name], corr[name] = found.perms, found.diagnostics["mean_corr_after"]
            best = min(best, time.perf_counter() - start)
        seconds[name] = best
    activation._Moments.add = shipped
    equal = sum(int((perms["float64"][k] == perms["float32 batches"][k]).sum()) for k in perms["float64"])
    total = sum(len(v) for v in perms["float64"].values())
    print(f"{args.arch} ×{args.width}, {args.images} images 32×32, {platform.machine()} CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; best of {args.repeats}")
    for name, s in seconds.items():
        print(f"  {name:16s} {s:7.3f} s")
    print(f"  speed-up {seconds['float64'] / seconds['float32 batches']:.2f}×; identical assignments {equal}/{total}; "
          f"mean matched correlation {corr['float64']:.7f} (float64) vs {corr['float32 batches']:.7f}")


if __name__ == "__main__":
    main()
