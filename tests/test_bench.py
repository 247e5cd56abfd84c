"""The benchmark suite runs end to end at a tiny size, and its baseline trains like the real trial."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_suite_prints_every_row_at_a_tiny_size():
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(
        [sys.executable, str(BENCH / "suite.py"), "--device", "cpu", "--archs", "tinyten", "--n-train", "256",
         "--n-test", "128", "--epochs", "1", "--points", "3"],
        capture_output=True, text=True, timeout=300, env=env, cwd=BENCH.parent)
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^device: CPU .*; torch \S+", out, re.M)
    assert "command: python " in out and "--n-train 256" in out
    speeds = re.search(r"endpoint ([\d.]+) img/s \| curve ([\d.]+) img/s \| PGD-5 ([\d.]+) img/s", out)
    assert speeds and all(float(v) > 0 for v in speeds.groups()), out
    assert float(re.search(r"endpoint training: ([\d.]+) TFLOP/s achieved", out).group(1)) > 0
    ours = re.search(r"pair trial \(ours, trial.run\): ([\d.]+) s = setup .* eval ", out)
    base = re.search(r"pair trial \(baseline, fp32 DataLoader\): ([\d.]+) s = setup .* eval ", out)
    ratio = re.search(r"ratio baseline/ours: ([\d.]+)x", out)
    assert ours and base and ratio, out
    assert float(ours.group(1)) > 0 and float(base.group(1)) > 0 and float(ratio.group(1)) > 0, out
    assert "### Markdown" in out
    table = [line for line in out.splitlines() if line.startswith("| tinyten |")]
    assert len(table) == 2 and table[1].count("|") == 8, table  # throughput row and pair-trial row


def test_baseline_and_trial_train_endpoints_to_similar_accuracy():
    """Same seeds, models, data and recipe; different data order and loop, so only the ballpark must agree.

    A quarter-width MLP on 512 CIFAR-shaped synthetic images for 3 epochs: both loops reach about 0.8 test
    accuracy (measured for seed pairs (0, 1), (2, 3), (4, 5): baseline 0.795 / 0.805 / 0.803, trial.run 0.778 /
    0.811 / 0.797; chance is 0.10), in about 2 s for both on one CPU thread. The loop that fails to train, or
    trains markedly worse, falls below the floor or outside the band."""
    sys.path.insert(0, str(BENCH))
    try:
        import baseline_trial
    finally:
        sys.path.remove(str(BENCH))
    from study.core import trial
    from tests.support.threads import torch_threads

    arch, n_train, n_test, epochs, lr, width = "mlp", 512, 512, 3, 0.05, 0.25
    recipe = {"epochs": epochs, "batch_size": 128, "augment": False, "lr": lr}
    with torch_threads(1):
        base = baseline_trial.run(arch, n_train=n_train, n_test=n_test, epochs=epochs, points=3, align_samples=256,
                                  lr=lr, width=width)["metrics"]
        ours = trial.run({
            "data": {"name": "synthetic", "val_fraction": 0.0,
                     "options": {"in_shape": [3, 32, 32], "n_train": n_train, "n_test": n_test}},
            "model": {"arch": arch, "width": width}, "train": recipe, "seeds": [0, 1],
            "align": {"method": "activation", "samples": 256}, "curve": {"kind": "bezier", "train": recipe},
            "eval": {"points": 3}, "device": "cpu"})["metrics"]
    mean = lambda m: (m["endpoint_a/test_acc"] + m["endpoint_b/test_acc"]) / 2  # noqa: E731
    assert mean(base) > 0.6 and mean(ours) > 0.6, (base, ours)  # sd of one mean ≈ 0.013 on 2 × 512 images
    assert abs(mean(base) - mean(ours)) < 0.06, (base, ours)


def test_packing_bench_measures_one_level_on_cpu(ray_session, capsys):
    """bench/packing.py's core at a tiny size: one level, one pair trial, in the tests' shared Ray."""
    sys.path.insert(0, str(BENCH))
    try:
        import packing
    finally:
        sys.path.remove(str(BENCH))
    code = packing.main(["--device", "cpu", "--levels", "1", "--trials", "1", "--arch", "mlp", "--width", "0.25",
                         "--n-train", "128", "--n-test", "64", "--epochs", "1", "--points", "3",
                         "--align-samples", "128"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "| trials per device | wall s | trials/hour | speed-up vs 1 | device busy |" in out
    row = re.search(r"^\| 1 \| ([\d.]+) \| (\d+) \| 1\.00x \| ([\d.]+) of \d+ cores \(\d+%\)[^|]* \|$", out, re.M)
    assert row and float(row.group(1)) > 0 and int(row.group(2)) > 0 and float(row.group(3)) > 0, out
    assert "threads per trial not set (Ray already running" in out
    assert re.search(r"^recommended: 1 per device \(highest trials/hour", out, re.M), out


def test_runtime_options_bench_times_every_option_and_checks_agreement():
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(
        [sys.executable, str(BENCH / "runtime_options.py"), "--device", "cpu", "--archs", "tinyten", "--n-train",
         "128", "--n-test", "64", "--points", "4", "--parallel", "1", "4", "--epochs", "2", "--skip-compile"],
        capture_output=True, text=True, timeout=300, env=env, cwd=BENCH.parent)
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^\| tinyten \| (\d+) \| fp32 \| ([\d.]+) \| [\d,]+ \| ([\d.]+)x \| ([\d.e+-]+) \|$", out, re.M)
    assert [r[0] for r in rows] == ["1", "4"], out
    assert float(rows[1][3]) < 1e-4, out  # four points together give the numbers of one at a time
    options = re.findall(r"^\| tinyten \| (eager|channels_last) \| ([\d.]+) \| ([\d.]+) \|", out, re.M)
    assert [o[0] for o in options] == ["eager", "channels_last"] and all(float(o[2]) > 0 for o in options), out
