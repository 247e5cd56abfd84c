"""Orchestration overhead per trial (Ray Tune + MLflow, trials that do no work) and the quickstart's wall time.

    python bench/orchestration.py [--trials 24] [--quickstart]

The no-op study runs the real driver (Tuner, reuse_actors, the MLflow callback, artifacts) with trials that
report one result and return, so the seconds per trial are the cost of the machinery itself.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def noop_overhead(trials: int) -> None:
    import study.sweep.driver as tune_module
    from study.sweep.spec import validate

    def noop_pair(tune_config, *, spec, study_dir):  # same signature as the real pair trainable
        from ray import tune

        item = tune_module.resolve_trial(spec, tune_config)
        tune.report({"final": 1, "trial_key": item.key, "barrier_chord/linear/test_loss": 0.0})

    tune_module.pair_trainable = noop_pair
    spec = validate({"name": "noop", "trial": {"data": {"name": "digits"}, "model": {"arch": "mlp"},
                                               "device": "cpu"},
                     "factors": {"seeds": [[i, i + 1000] for i in range(trials)]}, "resources": {"cpu": 1}})
    with tempfile.TemporaryDirectory() as directory:
        from study.store import EndpointStore

        original = EndpointStore.contains
        EndpointStore.contains = lambda self, key: True  # stage 1 has nothing to do in a no-op study
        start = time.perf_counter()
        outcome = tune_module.run_study(spec, Path(directory) / "noop", show_progress=False)
        seconds = time.perf_counter() - start
        EndpointStore.contains = original
    print(f"no-op study: {trials} trials in {seconds:.1f} s including Ray start and MLflow set-up "
          f"({seconds / trials:.2f} s per trial, {int((outcome.results['status'] == 'FINISHED').sum())} finished)")


def quickstart() -> None:
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "study.cli", "run", str(ROOT / "searchspaces" / "quickstart.yaml"),
                        "--out", directory, "--quiet"], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ})
        print(f"quickstart.yaml: {time.perf_counter() - start:.0f} s wall (72 pair trials, 48 endpoints) on "
              f"{os.cpu_count()} CPU cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--quickstart", action="store_true", help="also time the quickstart study")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    noop_overhead(args.trials)
    if args.quickstart:
        quickstart()


if __name__ == "__main__":
    main()
