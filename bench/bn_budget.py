"""What a BatchNorm-recalibration budget (``eval.bn_samples``) changes: barriers and evaluation time (issue 16).

    OMP_NUM_THREADS=1 python bench/bn_budget.py        # 2 seed pairs × 2 alignments × 5 budgets × 3 repeats

The quickstart's conv net (TinyTen ×0.5 on scikit-learn's digits, its recipe from ``searchspaces/quickstart.yaml``:
8 epochs, a 3-bend Bezier curve fitted 4 epochs, 9 points per path, 500 alignment samples; without the eval
attack, so the eval phase is the clean profiles and merges whose BN passes the budget shortens), for each seed
pair, unaligned and weight-matched, with every budget. Every trial runs through ``study.core.trial.run`` with one
endpoint store, so the endpoints are trained once per seed and every budget evaluates the same networks (and the
same curve: its fit does not depend on the budget). Printed: the linear and Bezier test-loss barriers
(``barrier_chord/{linear,bezier}/test_loss``) per seed pair, their largest change from the whole-split policy,
and the trial's eval-phase seconds (``timings["eval"]``: both profiles and the merged midpoints; the fastest of
``--repeats`` runs, whose barriers must agree exactly), as a Markdown table headed by the date, the machine
and the command.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from study.core import trial
from study.store import EndpointStore

QUICKSTART_CONV = {
    "data": {"name": "digits"},
    "model": {"arch": "tinyten", "width": 0.5},
    "train": {"epochs": 8, "batch_size": 64, "lr": 0.05, "weight_decay": 5.0e-4, "augment": False},
    "align": {"samples": 500},
    "curve": {"kind": "bezier", "bends": 3,
              "train": {"epochs": 4, "batch_size": 64, "lr": 0.05, "weight_decay": 5.0e-4, "augment": False}},
    "eval": {"points": 9},
    "device": "cpu",
}
METRICS = ("barrier_chord/linear/test_loss", "barrier_chord/bezier/test_loss")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def budget(text: str) -> int | None:
    return None if text.lower() in ("none", "full") else int(text)


def config(seeds: list[int], method: str, bn_samples: int | None, epochs: int, curve_epochs: int,
           points: int) -> dict[str, Any]:
    out = copy.deepcopy(QUICKSTART_CONV)
    out["seeds"] = seeds
    out["align"]["method"] = method
    out["train"]["epochs"] = epochs
    out["curve"]["train"]["epochs"] = curve_epochs
    out["eval"] = {"points": points, "bn_samples": bn_samples}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2, help="seed pairs [0,1], [2,3], ...")
    parser.add_argument("--budgets", type=budget, nargs="+", default=[None, 1000, 500, 256, 128],
                        help="eval.bn_samples values (none: the whole training split); the first is the reference")
    parser.add_argument("--align", nargs="+", default=["none", "weight"], help="align.method values")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--curve-epochs", type=int, default=4)
    parser.add_argument("--points", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each trial; eval seconds: the fastest (the barriers must repeat exactly)")
    args = parser.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    clock = time.perf_counter()
    seed_pairs = [[2 * i, 2 * i + 1] for i in range(args.pairs)]
    results: dict[tuple[str, int | None], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bn-budget-") as directory:
        store = EndpointStore(Path(directory) / "endpoints")
        for seeds in seed_pairs:
            for method in args.align:
                for bn_samples in args.budgets:
                    cfg = config(seeds, method, bn_samples, args.epochs, args.curve_epochs, args.points)
                    runs = [trial.run(cfg, store=store) for _ in range(args.repeats)]
                    result = runs[0]
                    row = {name: float(result["metrics"][name]) for name in METRICS}
                    if any(float(r["metrics"][name]) != row[name] for r in runs for name in METRICS):
                        raise AssertionError(f"seeds {seeds}, {method}, bn_samples {bn_samples}: barriers differ "
                                             f"between repeats")
                    row["eval_s"] = min(float(r["timings"]["eval"]) for r in runs)
                    row["acc"] = min(result["metrics"]["endpoint_a/test_acc"], result["metrics"]["endpoint_b/test_acc"])
                    results.setdefault((method, bn_samples), []).append(row)
                    print(f"# seeds {seeds} align {method} bn_samples {bn_samples}: "
                          + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    wall = time.perf_counter() - clock

    def pairs(values: list[float]) -> str:
        return " / ".join(f"{v:.4f}" for v in values)

    print()
    print(f"date: {started}; machine: {cpu_model()}, {torch.get_num_threads()} torch thread(s), "
          f"torch {torch.__version__}, Python {platform.python_version()}; wall {wall:.0f} s; load average "
          f"{'/'.join(f'{v:.1f}' for v in os.getloadavg())} (1/5/15 min) at the end")
    print(f"command: {command}")
    print()
    print("| align | eval.bn_samples | linear barrier (per pair) | max \\|Δ\\| vs full | Bezier barrier (per pair) "
          "| max \\|Δ\\| vs full | eval s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    reference = args.budgets[0]
    for method in args.align:
        full = results[(method, reference)]
        for bn_samples in args.budgets:
            rows = results[(method, bn_samples)]
            cells = []
            for name in METRICS:
                values = [r[name] for r in rows]
                delta = max(abs(r[name] - f[name]) for r, f in zip(rows, full))
                cells += [pairs(values), "—" if bn_samples == reference else f"{delta:.4f}"]
            eval_s = sum(r["eval_s"] for r in rows) / len(rows)
            label = "full split" if bn_samples is None else str(bn_samples)
            print(f"| {method} | {label} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {eval_s:.2f} |")
    worst = min(r["acc"] for rows in results.values() for r in rows)
    print()
    print(f"eval s: the trial's eval phase (both profiles and merges), fastest of {args.repeats} run(s), mean over "
          f"seed pairs; barriers: identical in every repeat")
    print(f"endpoints: worst test accuracy {worst:.3f} over {len(seed_pairs)} seed pair(s)")


if __name__ == "__main__":
    main()
