"""What ``trial.runtime.profile: fast`` does to the quickstart's barriers, and what it buys.

    python bench/fast_profile.py [--pairs 2]

For the quickstart's clean standard nets (TinyTen ×0.5 and MLP ×0.25 on digits, its recipe, unaligned and
weight-matched), per seed pair:
- **end to end**: the pair trial under the default profile and under the fast one (endpoints trained again under
  each: CPU bf16 trains other endpoints), the linear and Bezier test-loss barriers and the trial's seconds;
- **evaluation only**: the default profile's endpoints and curve, evaluated once more with CPU bf16 (BN
  recalibration and every split's pass in bf16), which separates what bf16 evaluation changes from what training
  other endpoints changes.
The seed-pair spread (the difference between the pairs' barriers) is printed beside, as the yardstick: a change
smaller than the spread does not change what a table says. Prints Markdown with the date, machine and command.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time

import torch

from study.core import metrics, trial
from study.core.evaluate import path_profile
from study.core.runtime import Runtime, cpu_has_native_bf16

RECIPE = {"epochs": 8, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4, "augment": False}
CURVE = {"epochs": 4, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4, "augment": False}
MODELS = (("tinyten", 0.5), ("mlp", 0.25))
PATHS = ("linear", "bezier")


def config(arch: str, width: float, method: str, seeds: list[int], profile: str) -> dict:
    return {"data": {"name": "digits"}, "model": {"arch": arch, "width": width}, "seeds": seeds,
            "train": RECIPE, "align": {"samples": 500, "method": method},
            "curve": {"kind": "bezier", "bends": 3, "train": CURVE}, "eval": {"points": 9, "merge": False},
            "device": "cpu", "runtime": {"profile": profile}}


class Keep:
    """Captures the paths a trial evaluates (``trial.path_profile`` wrapped) so they can be evaluated again."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self.original = trial.path_profile

    def __enter__(self) -> "Keep":
        def spy(*args, **kwargs):
            self.calls.append((args, kwargs))
            return self.original(*args, **kwargs)
        trial.path_profile = spy
        return self

    def __exit__(self, *exc) -> None:
        trial.path_profile = self.original


def barriers(profiles: dict) -> dict[str, float]:
    return {name: metrics.barrier_chord(p["t"].tolist(), p["test_loss"].tolist()) for name, p in profiles.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2, help="seed pairs [0,1], [2,3], ...")
    args = parser.parse_args(argv)
    pairs = [[2 * i, 2 * i + 1] for i in range(args.pairs)]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", *sys.argv] if argv is None else ["python", "bench/fast_profile.py", *argv])
    print(f"# fast profile vs default, {stamp}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"CPU native bf16: {cpu_has_native_bf16()}\n`{command}`\n")
    print("| net | align | pair | path | default | fast (end to end) | Δ | bf16 evaluation only | Δ | "
          "trial s default → fast |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---|")
    spread: dict[tuple, list[float]] = {}
    deltas: dict[str, list[float]] = {"end to end": [], "evaluation only": []}
    for arch, width in MODELS:
        for method in ("none", "weight"):
            for seeds in pairs:
                with Keep() as kept:
                    start = time.perf_counter()
                    plain = trial.run(config(arch, width, method, seeds, "default"))
                    plain_s = time.perf_counter() - start
                start = time.perf_counter()
                fast = trial.run(config(arch, width, method, seeds, "fast"))
                fast_s = time.perf_counter() - start
                with Runtime(cpu_bf16=True).scope(torch.device("cpu")):  # the same endpoints and curve, bf16 passes
                    again = {name: kept.original(*a, **{**k, "shared_ends": None}) for name, (a, k)
                             in zip(PATHS, kept.calls)}
                b_plain, b_fast, b_eval = barriers(plain["profiles"]), barriers(fast["profiles"]), barriers(again)
                for name in PATHS:
                    spread.setdefault((arch, method, name), []).append(b_plain[name])
                    deltas["end to end"].append(abs(b_fast[name] - b_plain[name]))
                    deltas["evaluation only"].append(abs(b_eval[name] - b_plain[name]))
                    print(f"| {arch} ×{width} | {method} | {seeds} | {name} | {b_plain[name]:.4f} | {b_fast[name]:.4f} "
                          f"| {b_fast[name] - b_plain[name]:+.4f} | {b_eval[name]:.4f} | "
                          f"{b_eval[name] - b_plain[name]:+.4f} | {plain_s:.1f} → {fast_s:.1f} |", flush=True)
    gaps = [max(v) - min(v) for v in spread.values() if len(v) > 1]
    print(f"\nlargest |Δ| end to end {max(deltas['end to end']):.4f}, evaluation only "
          f"{max(deltas['evaluation only']):.4f}; seed-pair spread of the default's barriers: median "
          f"{sorted(gaps)[len(gaps) // 2]:.4f}, largest {max(gaps):.4f}" if gaps else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
