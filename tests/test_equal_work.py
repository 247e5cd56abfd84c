"""``bench/suite.py --equal-work``: symstudy's pair trial and the baseline's do the same work, image for image.

The ratio it prints only means something if both sides forward the same images through the network: the
endpoints' epochs, the alignment's inputs, the curve's epochs and, at each of the P points, one BN pass over the
training set and one test pass. A global forward hook counts the images every top-level network call sees, on
each side, for a whole trial."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


equal_work, baseline_trial = _module("equal_work"), _module("baseline_trial")

N_TRAIN, N_TEST, EPOCHS, POINTS, ALIGN = 192, 64, 1, 3, 100


def config(arch: str) -> dict:
    recipe = {"epochs": EPOCHS, "batch_size": 64, "augment": False}
    return {"data": {"name": "synthetic", "val_fraction": 0.0,
                     "options": {"in_shape": [3, 32, 32], "n_train": N_TRAIN, "n_test": N_TEST}},
            "model": {"arch": arch, "width": 0.25}, "train": recipe, "seeds": [0, 1],
            "align": {"method": "activation", "samples": ALIGN},
            "curve": {"kind": "bezier", "bends": 3, "train": recipe}, "eval": {"points": POINTS}, "device": "cpu"}


class ImageCounter:
    """Images seen by calls of modules of one class (the architecture's top-level network), by train/eval mode."""

    def __init__(self, cls: type[nn.Module]):
        self.cls, self.seen = cls, Counter()

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if type(module) is self.cls:
            self.seen["train mode" if module.training else "eval mode"] += args[0].shape[0]

    def __enter__(self) -> "ImageCounter":
        self.handle = nn.modules.module.register_module_forward_pre_hook(self)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.mark.parametrize("arch", ["tinyten"])
def test_ours_and_the_baseline_forward_the_same_images_in_the_same_modes(arch):
    from study.core import models

    network = type(models.build(arch, width=0.25, num_classes=10, in_shape=(3, 32, 32), seed=0))
    torch.manual_seed(0)
    with ImageCounter(network) as ours:
        result = equal_work.run(config(arch))
    with ImageCounter(network) as base:
        reference = baseline_trial.run(arch, n_train=N_TRAIN, n_test=N_TEST, epochs=EPOCHS, points=POINTS,
                                       align_samples=ALIGN, batch_size=64, width=0.25, equal_work=True)
    assert ours.seen == base.seen, (ours.seen, base.seen)
    # and what that work is: 2 endpoints + the curve trained for E epochs; P BN passes in train mode; alignment
    # (2 models x the alignment images), P test passes and the endpoints' test accuracy (2 x test) in eval mode
    assert ours.seen["train mode"] == 3 * EPOCHS * N_TRAIN + POINTS * N_TRAIN
    assert ours.seen["eval mode"] == 2 * ALIGN + POINTS * N_TEST + 2 * N_TEST
    for r in (result, reference):
        assert set(r["timings"]) == {"setup", "endpoints", "align", "curve", "eval"}
        assert r["metrics"]["barrier_chord/bezier/test_loss"] >= 0


def test_the_equal_work_mode_prints_phase_ratios_and_writes_json(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = tmp_path / "suite.json"
    result = subprocess.run(
        [sys.executable, str(BENCH / "suite.py"), "--equal-work", "--device", "cpu", "--archs", "tinyten",
         "--n-train", "256", "--n-test", "128", "--epochs", "1", "--points", "3", "--profiles", "default", "fast",
         "--json", str(out)], capture_output=True, text=True, timeout=300, env=env, cwd=BENCH.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "each a BN recalibration over the training set + one test pass" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["profile"] for r in rows] == ["default", "fast"]
    for r in rows:
        assert r["ratio"] == pytest.approx(r["baseline_seconds"] / r["ours_seconds"])
        assert set(r["phases"]) == {"setup", "endpoints", "align", "curve", "eval"}
        assert all(p["ours"] > 0 and p["baseline"] > 0 for p in r["phases"].values())
    table = [line for line in result.stdout.splitlines() if line.startswith("| tinyten |")]
    assert len(table) == 2 and all("x** |" in line for line in table), table
