"""The benchmark suite runs end to end at a tiny size, and its baseline trains like the real trial."""

from __future__ import annotations

import json
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
        capture_output=True, text=True, timeout=300, env=env, cwd=BENCH.parent, check=False)
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^device: CPU .*; torch \S+", out, re.MULTILINE)
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
    mean = lambda m: (m["endpoint_a/test_acc"] + m["endpoint_b/test_acc"]) / 2
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
    row = re.search(r"^\| 1 \| ([\d.]+) \| (\d+) \| 1\.00x \| ([\d.]+) of \d+ cores \(\d+%\)[^|]* \|$", out, re.MULTILINE)
    assert row and float(row.group(1)) > 0 and int(row.group(2)) > 0 and float(row.group(3)) > 0, out
    assert "threads per trial not set (Ray already running" in out
    assert re.search(r"^recommended: 1 per device \(highest trials/hour", out, re.MULTILINE), out


def test_runtime_options_bench_times_every_option_and_checks_agreement():
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(
        [sys.executable, str(BENCH / "runtime_options.py"), "--device", "cpu", "--archs", "tinyten", "--n-train",
         "128", "--n-test", "64", "--points", "4", "--parallel", "1", "4", "--epochs", "2", "--skip-compile"],
        capture_output=True, text=True, timeout=300, env=env, cwd=BENCH.parent, check=False)
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^\| tinyten \| (\d+) \| fp32, (NCHW|channels_last) \| ([\d.]+) \| [\d,]+ \| ([\d.]+)x \| "
                      r"([\d.e+-]+) \|$", out, re.MULTILINE)
    assert [r[:2] for r in rows] == [("1", "NCHW"), ("1", "channels_last"), ("4", "NCHW")], out
    assert all(float(r[4]) < 1e-4 for r in rows[1:]), out  # same numbers as one NCHW point at a time
    options = re.findall(r"^\| tinyten \| (eager|channels_last) \| ([\d.]+) \| ([\d.]+) \|", out, re.MULTILINE)
    assert [o[0] for o in options] == ["eager", "channels_last"] and all(float(o[2]) > 0 for o in options), out


def _gpu_check():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCH))
    return gpu_check


def test_gpu_check_runs_every_step_at_a_tiny_size_on_cpu(tmp_path):
    """bench/gpu_check.sh's check, the way this machine can run it: every step on the CPU at tiny sizes (about
    35 s on 2 quiet cores, most of it 7 Python starts). The suite step needs ``bench/suite.py --equal-work``,
    so it may fail without failing this test; whatever each step did, both summaries exist and say it."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHON": sys.executable}
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--allow-cpu", "--tiny", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: some step failed; summaries still written
    summary = json.loads((out / "gpu_check.json").read_text())
    text = (out / "gpu_check.md").read_text()
    assert summary["device"] == "cpu" and summary["tiny"] and summary["environment"]["torch"]
    assert summary["command"].startswith("bash bench/gpu_check.sh --allow-cpu --tiny --out ")
    steps = {step["name"]: step for step in summary["steps"]}
    assert list(steps) == ["suite", "runtime", "packing"]
    for step in steps.values():
        assert step["status"] in ("ok", "failed", "timeout"), step
        assert step["wall_seconds"] > 0 and step["command"], step
    assert steps["suite"]["command"].startswith("python ") and "--equal-work" in steps["suite"]["command"]
    packing = steps["packing"]
    assert packing["status"] == "ok", packing
    levels = packing["results"]["levels"]
    assert [lv["n"] for lv in levels] == [1, 2] and all(lv["finished"] == lv["trials"] == 2 for lv in levels)
    assert all(lv["trials_per_hour"] > 0 and lv["mean_trial_s"] > 0 for lv in levels), levels
    assert packing["results"]["recommended"] in (1, 2)
    assert re.search(r"^## \d{4}-\d\d-\d\d \d\d:\d\d–\d\d:\d\d UTC — GPU check .*CPU ", text, re.MULTILINE), text
    assert "`bash bench/gpu_check.sh --allow-cpu --tiny --out " in text
    for heading in ("### Equal-work pair trial", "### Runtime switches", "### Packing without Ray"):
        assert heading in text
    assert re.search(r"^\| 1 \| 2 of 2 \| [\d.]+ \| \d+ \| 1\.00x \|", text, re.MULTILINE), text
    for name, step in steps.items():  # a step without numbers says why in its table, never leaves it blank
        assert re.search(rf"^\| {name} \| {step['status']} \|", text, re.MULTILINE), text
        if step["status"] != "ok":
            assert re.search(r"\| (failed|timeout|pending) \|", text), text


def test_gpu_check_refuses_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has CUDA")
    env = {**os.environ, "PYTHON": sys.executable}
    for command in (["bash", str(BENCH / "gpu_check.sh"), str(tmp_path / "out")],
                    [sys.executable, str(BENCH / "gpu_check.py"), "--out", str(tmp_path / "out")]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
                                check=False)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "torch.cuda.is_available() is false" in result.stderr and "--allow-cpu" in result.stderr, result.stderr
        assert not (tmp_path / "out").exists()


def test_gpu_check_reads_the_suite_json_defensively(tmp_path, monkeypatch):
    """A missing file, a file without rows, or rows missing keys: the step is failed, the Markdown says so."""
    gpu_check = _gpu_check()
    ctx = gpu_check.Context(gpu_check.parse_args([]), "cpu", gpu_check.SIZES["tiny"], tmp_path, 0.0)
    written = {}

    def fake_run(command, timeout, record, device, env=None):
        record.update(status="ok", exit_code=0, wall_seconds=1.0, command="python bench/suite.py ...")
        if written.get("text") is not None:
            (tmp_path / "suite_tinyten.json").write_text(written["text"])
        return ""

    monkeypatch.setattr(gpu_check, "run_command", fake_run)
    cases = {None: "no JSON written", "{not json": "unreadable JSON", '{"mode": "x"}': "no 'rows' list",
             '{"rows": []}': "rows empty"}
    for text, problem in cases.items():
        written["text"] = text
        record = gpu_check.step_record("suite", "suite")
        gpu_check.suite_step(ctx, record, 10.0)
        assert record["status"] == "failed" and problem in record["results"]["error"], record
        table = "\n".join(gpu_check.suite_markdown(record))
        assert "| tinyten | default | failed | | failed | | failed |" in table, table
    written["text"] = json.dumps({"rows": [{"arch": "tinyten", "ours_seconds": 2.0, "baseline_seconds": 10.0,
                                            "ratio": 5.0, "phases": {"endpoints": {"ours": 1.0, "baseline": 6.0},
                                                                     "eval": 0.5}}]})
    record = gpu_check.step_record("suite", "suite")
    gpu_check.suite_step(ctx, record, 10.0)
    assert record["status"] == "ok", record
    assert "| tinyten | default | 2.0 | 1.0 / n/a / n/a / 0.5 | 10.0 | 6.0 / n/a / n/a / n/a | **5.00x** |" in \
        "\n".join(gpu_check.suite_markdown(record))


def test_gpu_check_parses_printed_tables_with_pipes_in_a_header():
    gpu_check = _gpu_check()
    out = ("noise\n| arch | k | max |Δ| vs 1 point |\n|---|---:|---:|\n| tinyten | 5 | 1.0e-07 |\n| tinyten | 25 |  |\n"
           "text\n| a | b |\n|---|---|\n")
    tables = gpu_check.parse_tables(out)
    assert tables == [{"header": ["arch", "k", "max |Δ| vs 1 point"],
                       "rows": [["tinyten", "5", "1.0e-07"], ["tinyten", "25", ""]]},
                      {"header": ["a", "b"], "rows": []}]
    assert gpu_check.table_markdown(tables[0], [], "failed")[0] == "| arch | k | max \\|Δ\\| vs 1 point |"
