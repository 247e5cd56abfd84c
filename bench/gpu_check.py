"""A prepared check for a lent CUDA machine: the pending GPU measurements of bench/RESULTS.md that fit in ten
minutes (TinyTen) in one command, inside a time budget, written as one JSON and one Markdown summary (the latter
pasteable into bench/RESULTS.md).

    bash bench/gpu_check.sh [OUTDIR] [--deadline 450] [--steps suite runtime packing] [--tiny]
    python bench/gpu_check.py [OUTDIR | --out OUTDIR] [--allow-cpu] [--tiny] ...

OUTDIR (first, before the options: ``--steps`` takes several values) defaults to ``$OUT`` if set, else
``bench/gpu_check_out/``. It receives ``gpu_check.json``, ``gpu_check.md`` and the suite's own
``suite_tinyten.json``. Steps, in order, each a subprocess with a timeout:

1. ``suite``: the equal-work pair trial for TinyTen, ours against the fp32 DataLoader baseline
   (``bench/suite.py --equal-work --archs tinyten``; CUDA sizes 50k/10k images, 10 epochs, 25 points);
2. ``runtime``: the runtime switches (``bench/runtime_options.py``: ``parallel_points`` 1 vs 5 vs 25 with bf16
   and fp32, eager vs channels_last vs ``torch.compile``), TinyTen on 20k/5k images, about 2 minutes;
3. ``packing``: a Ray-free packing measurement (``bench/packing.py`` needs Ray): M small TinyTen pair trials
   (``study.core.trial.run``), each its own process as a Ray trial is, run 1, 2 and 4 at a time on the one GPU,
   each process capping its CUDA allocations at 1/N of the device as ``study.sweep`` does for ``gpu: 1/N``;
   wall seconds, trials/hour and GPU utilisation (``nvidia-smi`` every 0.5 s). This decides the ``gpu: 0.25``
   default of the search spaces.

A global deadline (``--deadline``, default 450 s) bounds the whole run: each step's timeout is what the deadline
leaves after reserving the later steps' budgets; a step that hits its timeout is recorded as "timeout" and the
next one runs; steps the deadline leaves no time for are "skipped: time budget". The summaries are written even
when steps fail. Without CUDA it refuses (exit 2) unless ``--allow-cpu``, which runs every step on the CPU at
tiny sizes (how the tests run it); ``--tiny`` uses those tiny sizes on any device (a few seconds per step).
Nothing here needs Ray, MLflow or Optuna: only torch, numpy, pandas and ``study.core``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
STEPS = ("suite", "runtime", "packing")
TAIL = 4000  # characters of each step's output kept in the JSON
TIE = 0.05  # packing levels within 5 % of the best trials/hour count as tied; the smallest N wins (as packing.py)
PHASES = ("setup", "endpoints", "align", "curve", "eval")
WORKER_FLAG = "--packing-worker"

# Sizes per mode. "cuda": what an H200 is lent for (the suite at the CUDA sizes RESULTS.md's table asks for;
# the runtime and packing steps sized to fit their budgets). "tiny": seconds per step, on 2 CPU cores too.
SIZES = {
    "cuda": {"suite": {"n_train": 50000, "n_test": 10000, "epochs": 10, "points": 25, "align_samples": 10000},
             "runtime": {"n_train": 20000, "n_test": 5000, "points": 25, "parallel": [1, 5, 25], "epochs": 3,
                         "compile": True},
             "packing": {"levels": [1, 2, 4], "trials": 4, "n_train": 10000, "n_test": 2000, "epochs": 2, "points": 5,
                         "width": 1.0, "align_samples": 2000},
             # seconds each step is planned for (sum within the default deadline)
             "budget": {"suite": 275.0, "runtime": 90.0, "packing": 80.0}},
    "tiny": {"suite": {"n_train": 128, "n_test": 64, "epochs": 1, "points": 3, "align_samples": 64},
             "runtime": {"n_train": 64, "n_test": 32, "points": 3, "parallel": [1, 3], "epochs": 2,
                         "compile": False},
             "packing": {"levels": [1, 2], "trials": 2, "n_train": 64, "n_test": 32, "epochs": 1, "points": 3,
                         "width": 0.25, "align_samples": 32},
             "budget": {"suite": 60.0, "runtime": 45.0, "packing": 60.0}},
}


# --------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------
def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def tail(text: str, n: int = TAIL) -> str:
    return text if len(text) <= n else "…" + text[-n:]


def kill_group(proc: subprocess.Popen) -> None:
    """End a child started in its own session, and everything it started: SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def number(value: Any) -> float | None:
    """``value`` as a float if it is a finite number, else None (for JSON read defensively)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def fmt(value: Any, spec: str = ".1f", missing: str = "n/a") -> str:
    v = number(value)
    return missing if v is None else format(v, spec)


# --------------------------------------------------------------------------------------------------------------
# GPU utilisation, sampled with nvidia-smi in a background thread
# --------------------------------------------------------------------------------------------------------------
def gpu_index() -> str:
    return (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip() or "0"


def smi(*query: str, index: str | None = None) -> str | None:
    """``nvidia-smi --query-gpu=...`` text of one GPU, or None when nvidia-smi is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    command = [exe, *(["-i", index] if index is not None else []), f"--query-gpu={','.join(query)}",
               "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None
    return out.splitlines()[0].strip() if out else None


@dataclass
class Utilisation:
    """What the sampler saw: ``utilization.gpu`` (%) and ``memory.used`` (MiB) samples."""

    available: bool
    note: str = ""
    util: list[float] = field(default_factory=list)
    memory: list[float] = field(default_factory=list)
    interval: float = 0.5

    def summary(self) -> dict[str, Any]:
        if not self.available:
            return {"measured": False, "note": self.note}
        out: dict[str, Any] = {"measured": bool(self.util), "samples": len(self.util), "interval_s": self.interval,
                               "note": self.note}
        if self.util:
            out.update(util_mean=sum(self.util) / len(self.util),
                       util_active_share=sum(u > 0 for u in self.util) / len(self.util),
                       memory_used_mib_first=self.memory[0], memory_used_mib_peak=max(self.memory))
        return out


class Sampler:
    """Samples ``nvidia-smi`` every ``interval`` s between ``__enter__`` and ``__exit__`` (when ``enabled``)."""

    def __init__(self, enabled: bool, interval: float = 0.5):
        self.index = gpu_index()
        if not enabled:
            self.result = Utilisation(False, "not measured: CPU run")
        elif shutil.which("nvidia-smi") is None:
            self.result = Utilisation(False, "not measured: nvidia-smi not found")
        else:
            self.result = Utilisation(True, f"nvidia-smi -i {self.index} every {interval:g} s", interval=interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="gpu-check-sampler")

    def _once(self) -> None:
        text = smi("utilization.gpu", "memory.used", index=self.index)
        try:
            util, memory = (float(v) for v in (text or "").split(","))
        except ValueError:  # a failed or odd sample is skipped
            return
        self.result.util.append(util)
        self.result.memory.append(memory)

    def _loop(self) -> None:
        while True:
            self._once()
            if self._stop.wait(self.result.interval):
                return

    def __enter__(self) -> Sampler:  # noqa: PYI034 - a final class
        if self.result.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.result.available:
            self._stop.set()
            self._thread.join(timeout=15)
            if not self.result.util:
                self.result.note += "; no sample succeeded"


# --------------------------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Context:
    args: argparse.Namespace
    device: str  # "cuda" or "cpu"
    sizes: dict[str, Any]
    out: Path
    deadline: float  # time.monotonic() value
    python: str = sys.executable


def step_record(name: str, title: str) -> dict[str, Any]:
    return {"name": name, "title": title, "status": "pending", "command": None, "exit_code": None,
            "wall_seconds": None, "timeout_s": None, "output_tail": "", "results": {}, "gpu": {}}


def run_command(command: list[str], timeout: float, record: dict[str, Any], device: str,
                env: dict[str, str] | None = None) -> str:
    """Run ``command`` (in its own process group, so a timeout ends all of it) with its output shown live and
    kept; fills ``exit_code``, ``wall_seconds``, ``timeout_s``, ``output_tail``, ``gpu`` and a first
    ``status`` ("ok", "failed" or "timeout") into ``record``; returns the whole output."""
    record["command"] = shlex.join(["python", *[str(c) for c in command[1:]]])
    record["timeout_s"] = round(timeout, 1)
    print(f"\n$ {record['command']}    (timeout {timeout:.0f} s)", flush=True)
    chunks: list[str] = []
    start = time.perf_counter()
    with Sampler(device == "cuda") as sampler:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", bufsize=1, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                chunks.append(line)
                sys.stdout.write(line)
                sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code: int | None = proc.wait(timeout=max(timeout, 0.1))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
            code = proc.poll()
        reader.join(timeout=10)
    record["wall_seconds"] = round(time.perf_counter() - start, 2)
    record["exit_code"] = code
    record["gpu"] = sampler.result.summary()
    output = "".join(chunks)
    record["output_tail"] = tail(output)
    record["status"] = "timeout" if timed_out else ("ok" if code == 0 else "failed")
    return output


def suite_step(ctx: Context, record: dict[str, Any], timeout: float) -> None:
    """Step 1: ``bench/suite.py --equal-work`` for TinyTen; rows read from its JSON, defensively."""
    s = ctx.sizes["suite"]
    path = ctx.out / "suite_tinyten.json"
    if path.exists():
        path.unlink()  # a stale file from an earlier run must not pass for this run's result
    command = [ctx.python, "bench/suite.py", "--equal-work", "--archs", "tinyten", "--device", ctx.device,
               "--n-train", str(s["n_train"]), "--n-test", str(s["n_test"]), "--epochs", str(s["epochs"]),
               "--points", str(s["points"]), "--align-samples", str(s["align_samples"]), "--json", str(path)]
    run_command(command, timeout, record, ctx.device)
    record["results"] = {"json": str(path), "sizes": s}
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        summary, problem = None, f"no JSON written ({path.name})"
    except (OSError, ValueError) as error:
        summary, problem = None, f"unreadable JSON ({path.name}): {error}"
    rows = summary.get("rows") if isinstance(summary, dict) else None
    if summary is not None and (not isinstance(rows, list) or not rows):
        problem = f"{path.name} has no 'rows' list" if not isinstance(rows, list) else f"{path.name}: rows empty"
        rows = None
    if rows is None:
        record["results"]["error"] = problem
        if record["status"] == "ok":
            record["status"] = "failed"
        return
    clean = []
    for row in rows:
        row = row if isinstance(row, dict) else {}
        phases = row.get("phases") if isinstance(row.get("phases"), dict) else {}
        split: dict[str, dict[str, float | None]] = {}
        for phase in PHASES:
            value = phases.get(phase)
            if isinstance(value, dict):
                split[phase] = {"ours": number(value.get("ours")), "baseline": number(value.get("baseline"))}
            else:  # a bare number: ours
                split[phase] = {"ours": number(value), "baseline": None}
        missing = [k for k in ("arch", "ours_seconds", "baseline_seconds", "ratio", "phases") if k not in row]
        clean.append({"arch": str(row.get("arch", "?")), "profile": str(row.get("profile", "default")),
                      "ours_seconds": number(row.get("ours_seconds")),
                      "baseline_seconds": number(row.get("baseline_seconds")), "ratio": number(row.get("ratio")),
                      "phases": split, "missing_keys": missing,
                      "barrier_ours": number((row.get("metrics") or {}).get("barrier_chord/bezier/test_loss"))
                      if isinstance(row.get("metrics"), dict) else None})
    record["results"]["rows"] = clean
    record["results"]["suite_device"] = summary.get("device")
    if any(r["missing_keys"] for r in clean) and record["status"] == "ok":
        record["results"]["error"] = "rows lack keys: " + ", ".join(sorted({k for r in clean for k in r["missing_keys"]}))


def parse_tables(output: str) -> list[dict[str, Any]]:
    """The Markdown tables a bench script printed: [{"header": [...], "rows": [[...], ...]}], in order."""
    tables, block = [], []
    for line in [*output.splitlines(), ""]:
        line = line.strip()
        if len(line) > 1 and line.startswith("|") and line.endswith("|"):
            # cells split at pipes with space on both sides, so a header like "max |Δ| vs 1 point" stays one cell
            separator = set(line) <= set("|-: ")
            block.append([c.strip() for c in (line[1:-1].split("|") if separator else
                                              re.split(r"(?<=\s)\|(?=\s)", f" {line[1:-1]} "))])
            continue
        if len(block) >= 2 and all(set(c) <= set("-:") for c in block[1]):
            tables.append({"header": block[0], "rows": [r for r in block[2:] if len(r) == len(block[0])]})
        block = []
    return tables


def runtime_step(ctx: Context, record: dict[str, Any], timeout: float) -> None:
    """Step 2: ``bench/runtime_options.py``; its printed tables are parsed, so a timeout keeps the rows so far."""
    s = ctx.sizes["runtime"]
    command = [ctx.python, "bench/runtime_options.py", "--device", ctx.device, "--archs", "tinyten",
               "--n-train", str(s["n_train"]), "--n-test", str(s["n_test"]), "--points", str(s["points"]),
               "--parallel", *[str(k) for k in s["parallel"]], "--epochs", str(s["epochs"]),
               *([] if s["compile"] else ["--skip-compile"])]
    output = run_command(command, timeout, record, ctx.device)
    tables = parse_tables(output)
    path_table = next((t for t in tables if "points together" in t["header"]), None)
    train_table = next((t for t in tables if "option" in t["header"]), None)
    record["results"] = {"sizes": s, "path_evaluation": path_table, "training": train_table}
    if record["status"] == "ok" and not (path_table and path_table["rows"] and train_table and train_table["rows"]):
        record["status"] = "failed"
        record["results"]["error"] = "exit 0 but no table rows in its output"


# ---- step 3: packing without Ray ------------------------------------------------------------------------------
def packing_config(p: dict[str, Any], device: str, trial_index: int) -> dict[str, Any]:
    """One small pair trial (bench/suite.py's ``trial_dict`` workload); trials differ only in their seeds."""
    recipe = {"epochs": p["epochs"], "batch_size": 128, "augment": False}
    return {"data": {"name": "synthetic", "val_fraction": 0.0,
                     "options": {"in_shape": [3, 32, 32], "n_train": p["n_train"], "n_test": p["n_test"]}},
            "model": {"arch": "tinyten", "width": p["width"]}, "train": recipe,
            "seeds": [trial_index, trial_index + 1000],
            "align": {"method": "activation", "samples": p["align_samples"]},
            "curve": {"kind": "bezier", "bends": 3, "train": recipe}, "eval": {"points": p["points"]},
            "device": device}


def packing_worker(spec_path: str) -> int:
    """Entry point of one packing trial process: ``gpu_check.py --packing-worker SPEC.json``."""
    spec = json.loads(Path(spec_path).read_text())
    result: dict[str, Any] = {"ok": False, "index": spec["index"]}
    try:
        import torch

        sys.path.insert(0, str(ROOT))
        from study.core import trial

        fraction = float(spec["memory_fraction"])
        if spec["config"]["device"] == "cuda" and 0 < fraction < 1:
            torch.cuda.set_per_process_memory_fraction(fraction)  # as study.sweep does for gpu: 1/N
        result["startup_s"] = time.time() - float(spec["spawned_at"])
        start = time.perf_counter()
        out = trial.run(spec["config"])
        result["trial_s"] = time.perf_counter() - start
        result["timings"] = {k: float(v) for k, v in out["timings"].items()}
        if spec["config"]["device"] == "cuda":
            result["max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["ok"] = True
    except Exception:  # noqa: BLE001 - reported to the parent, which records the failure
        result["error"] = tail(traceback.format_exc(), 2000)
    Path(spec["result"]).write_text(json.dumps(result))
    return 0 if result["ok"] else 1


def run_level(ctx: Context, n: int, p: dict[str, Any], timeout: float, folder: Path) -> dict[str, Any]:
    """M trials, at most ``n`` at a time, each its own process; timed and sampled."""
    cores = os.cpu_count() or 1
    # CUDA: one thread per trial (as bench/packing.py); CPU: the cores shared out, unless OMP_NUM_THREADS says
    given = os.environ.get("OMP_NUM_THREADS", "")
    threads = 1 if ctx.device == "cuda" else int(given) if given.isdigit() and int(given) > 0 else max(1, cores // n)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    queue = list(range(p["trials"]))
    running: dict[int, tuple[subprocess.Popen, Any]] = {}
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    timed_out = False
    start = time.perf_counter()
    end_by = time.monotonic() + timeout
    with Sampler(ctx.device == "cuda") as sampler:
        while queue or running:
            while queue and len(running) < n:
                i = queue.pop(0)
                spec = {"index": i, "config": packing_config(p, ctx.device, i), "memory_fraction": 1.0 / n,
                        "spawned_at": time.time(), "result": str(folder / f"level{n}-trial{i}.json")}
                (folder / f"level{n}-trial{i}.spec.json").write_text(json.dumps(spec))
                log = open(folder / f"level{n}-trial{i}.log", "w")  # noqa: SIM115 - closed when the trial ends
                proc = subprocess.Popen([ctx.python, str(Path(__file__).resolve()), WORKER_FLAG,
                                         str(folder / f"level{n}-trial{i}.spec.json")], cwd=ROOT, env=env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                running[i] = (proc, log)
            for i, (proc, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[i]
                try:
                    result = json.loads((folder / f"level{n}-trial{i}.json").read_text())
                except (OSError, ValueError):
                    result = {"ok": False, "index": i,
                              "error": f"exit {proc.returncode}, no result: "
                                       + tail((folder / f"level{n}-trial{i}.log").read_text(errors="replace"), 1500)}
                if result.get("ok"):
                    results.append(result)
                else:
                    failures.append(f"trial {i}: {result.get('error', '?')}")
            if time.monotonic() > end_by:
                timed_out = True
                for i, (proc, log) in running.items():
                    kill_group(proc)
                    log.close()
                    failures.append(f"trial {i}: killed at the level's timeout")
                running.clear()
                break
            time.sleep(0.05)
    wall = time.perf_counter() - start
    finished = len(results)

    def mean(key: str) -> float | None:
        return sum(r[key] for r in results) / finished if finished else None

    level = {"n": n, "trials": p["trials"], "finished": finished, "failed": p["trials"] - finished,
             "wall_seconds": round(wall, 2), "timeout_s": round(timeout, 1), "threads_per_trial": threads,
             "memory_fraction": round(1.0 / n, 4) if ctx.device == "cuda" else None,
             "status": "timeout" if timed_out else ("ok" if finished == p["trials"] else "failed"),
             "trials_per_hour": finished / wall * 3600 if finished and not timed_out and wall > 0 else None,
             "mean_trial_s": mean("trial_s"), "mean_startup_s": mean("startup_s"),
             "max_allocated_mib": max((r.get("max_allocated_mib", 0.0) for r in results), default=None),
             "gpu": sampler.result.summary(), "errors": failures[:8]}
    return level


def recommend(levels: list[dict[str, Any]]) -> int | None:
    """Highest trials/hour among complete levels; within ``TIE`` of the best, the smallest N (as packing.py)."""
    ok = [lv for lv in levels if lv["status"] == "ok" and lv["trials_per_hour"]]
    if not ok:
        return None
    best = max(lv["trials_per_hour"] for lv in ok)
    return min(lv["n"] for lv in ok if lv["trials_per_hour"] >= (1 - TIE) * best)


def packing_step(ctx: Context, record: dict[str, Any], timeout: float) -> None:
    """Step 3: trials/hour and GPU utilisation at 1, 2, 4 trials at a time, without Ray."""
    p = ctx.sizes["packing"]
    levels_wanted = p["levels"]
    record["command"] = (f"(in gpu_check.py) {p['trials']} TinyTen pair trials via study.core.trial.run, one process "
                         f"each, {'/'.join(map(str, levels_wanted))} at a time")
    record["timeout_s"] = round(timeout, 1)
    print(f"\n$ {record['command']}    (timeout {timeout:.0f} s)", flush=True)
    # a level's share of the step's time: one wave per n trials, plus process start
    weight = {n: -(-p["trials"] // n) + 0.5 for n in levels_wanted}
    levels: list[dict[str, Any]] = []
    start = time.perf_counter()
    end_by = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="gpu-check-packing-") as folder:
        for k, n in enumerate(levels_wanted):
            remaining = end_by - time.monotonic()
            later = sum(weight[m] for m in levels_wanted[k + 1:])
            share = remaining * weight[n] / (weight[n] + later)
            if remaining < 2:
                levels.append({"n": n, "trials": p["trials"], "status": "skipped: time budget"})
                continue
            level = run_level(ctx, n, p, share, Path(folder))
            levels.append(level)
            print(f"packing: {n} at a time: {level['finished']}/{level['trials']} trials in "
                  f"{level['wall_seconds']:.1f} s ({level['status']}); trials/hour "
                  f"{fmt(level['trials_per_hour'], '.0f')}; mean trial {fmt(level['mean_trial_s'], '.2f')} s in-process, "
                  f"process start {fmt(level['mean_startup_s'], '.2f')} s; GPU {level['gpu'].get('note', '')}"
                  + (f"; errors: {'; '.join(level['errors'])[:600]}" if level["errors"] else ""), flush=True)
    record["wall_seconds"] = round(time.perf_counter() - start, 2)
    one = next((lv for lv in levels if lv["n"] == 1 and lv.get("trials_per_hour")), None)
    for lv in levels:
        lv["speedup_vs_1"] = (lv["trials_per_hour"] / one["trials_per_hour"]
                              if one and lv.get("trials_per_hour") else None)
    record["results"] = {"sizes": p, "levels": levels, "recommended": recommend(levels)}
    statuses = [lv["status"] for lv in levels]
    record["status"] = ("ok" if all(s == "ok" for s in statuses) else
                        "timeout" if "timeout" in statuses or any(s.startswith("skipped") for s in statuses) else
                        "failed")
    record["exit_code"] = 0 if record["status"] == "ok" else 1
    record["output_tail"] = tail("\n".join(e for lv in levels for e in lv.get("errors", [])))


# --------------------------------------------------------------------------------------------------------------
# Environment facts
# --------------------------------------------------------------------------------------------------------------
def environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "cpu_count": os.cpu_count(), "torch": torch.__version__,
                           "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                           "device": device, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    for package in ("torchvision", "numpy", "pandas", "scipy", "pyyaml", "ray", "mlflow", "optuna"):
        try:  # the installed version, without importing it (torchvision takes seconds to import)
            env[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            env[package] = None
    try:
        env["cudnn"] = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001
        env["cudnn"] = None
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                           timeout=10, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    if device == "cuda":
        env["device_count"] = torch.cuda.device_count()
        env["device_name"] = torch.cuda.get_device_name(0)
        props = torch.cuda.get_device_properties(0)
        facts = {}
        for key in dir(props):
            value = getattr(props, key, None) if not key.startswith("_") else None
            if value is None or callable(value):
                continue
            facts[key] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
        env["device_properties"] = facts
        env["nvidia_smi"] = smi("name", "driver_version", "memory.total", "power.limit", "clocks.max.sm",
                                index=gpu_index()) or "nvidia-smi not found or failed"
    else:
        model = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
        except OSError:
            pass
        env["device_name"] = f"CPU {model}, {os.cpu_count()} cores"
        env["nvidia_smi"] = "nvidia-smi not found" if shutil.which("nvidia-smi") is None else smi("name") or "failed"
    return env


# --------------------------------------------------------------------------------------------------------------
# The Markdown summary
# --------------------------------------------------------------------------------------------------------------
def word(record: dict[str, Any]) -> str:
    """What a table cell says when a step gave no number."""
    status = record.get("status", "pending")
    return "timeout" if status == "timeout" else "failed" if status == "failed" else "pending"


def status_line(record: dict[str, Any]) -> str:
    bits = [f"status: **{record['status']}**"]
    if record.get("wall_seconds") is not None:
        bits.append(f"{record['wall_seconds']:.1f} s wall")
    if record.get("timeout_s") is not None:
        bits.append(f"timeout {record['timeout_s']:.0f} s")
    if record.get("exit_code") is not None:
        bits.append(f"exit {record['exit_code']}")
    gpu = record.get("gpu") or {}
    if gpu.get("util_mean") is not None:
        bits.append(f"GPU util mean {gpu['util_mean']:.0f}% (>0 in {gpu['util_active_share']:.0%} of "
                    f"{gpu['samples']} samples), peak memory used {gpu['memory_used_mib_peak'] / 1024:.1f} GiB")
    if (record.get("results") or {}).get("error"):
        bits.append(f"problem: {record['results']['error']}")
    return "; ".join(bits)


def suite_markdown(record: dict[str, Any]) -> list[str]:
    s = (record.get("results") or {}).get("sizes", {})
    workload = (f"Workload: synthetic 3x32x32, {s.get('n_train')} train / {s.get('n_test')} test images, 2 endpoints "
                f"x {s.get('epochs')} epochs, activation alignment on {s.get('align_samples')} images, 3-bend Bezier "
                f"{s.get('epochs')} epochs, {s.get('points')} points on the curve (BN recalibration + test pass each); "
                f"{status_line(record)}")
    header = ("| arch | profile | ours s | endpoints / align / curve / eval | baseline s | "
              "endpoints / align / curve / eval | baseline/ours |")
    lines = ["### Equal-work pair trial, TinyTen (`bench/suite.py --equal-work`)", "",
             f"`{record['command'] or 'not run'}`", "", workload, "", header, "|---|---|---:|---|---:|---|---:|"]
    rows = (record.get("results") or {}).get("rows")
    if not rows:
        w = word(record)
        return [*lines, f"| tinyten | default | {w} | | {w} | | {w} |"]
    for r in rows:
        ours = " / ".join(fmt(r["phases"][k]["ours"]) for k in PHASES[1:])
        base = " / ".join(fmt(r["phases"][k]["baseline"]) for k in PHASES[1:])
        ratio = f"**{r['ratio']:.2f}x**" if r["ratio"] is not None else "n/a"
        lines.append(f"| {r['arch']} | {r['profile']} | {fmt(r['ours_seconds'], missing=word(record))} | {ours} | "
                     f"{fmt(r['baseline_seconds'], missing='skipped')} | {base} | {ratio} |")
    return lines


def table_markdown(table: dict[str, Any] | None, fallback_header: list[str], w: str) -> list[str]:
    header = table["header"] if table else fallback_header
    rows = table["rows"] if table and table["rows"] else [["tinyten", w] + [""] * (len(header) - 2)]
    align = ["---" if i in (0, 1) else "---:" for i in range(len(header))]
    cells = lambda row: "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
    return [cells(header), "|" + "|".join(align) + "|", *(cells(r) for r in rows)]


def runtime_markdown(record: dict[str, Any]) -> list[str]:
    res = record.get("results") or {}
    s = res.get("sizes", {})
    w = word(record)
    path_intro = (f"Path evaluation, {s.get('points')} points, BN pass over {s.get('n_train')} + eval of "
                  f"{s.get('n_train')} train + {s.get('n_test')} test images per point:")
    train_intro = f"Endpoint training, {s.get('n_train')} images/epoch, batch 128, {s.get('epochs')} epochs:"
    return ["### Runtime switches, TinyTen (`bench/runtime_options.py`)", "", f"`{record['command'] or 'not run'}`",
            "", status_line(record), "", path_intro, "",
            *table_markdown(res.get("path_evaluation"), ["arch", "points together", "precision", "seconds",
                                                         "images/s", "speed-up", "max |Δ| vs 1 point"], w),
            "", train_intro, "",
            *table_markdown(res.get("training"), ["arch", "option", "first epoch s", "steady epoch s", "images/s",
                                                  "speed-up", "compile pays after"], w)]


def level_cells(lv: dict[str, Any]) -> str:
    """One packing table row."""
    status = lv.get("status", "pending")
    w = "timeout" if status == "timeout" else "failed" if status == "failed" else "pending"
    gpu = lv.get("gpu") or {}
    if gpu.get("util_mean") is not None:
        util = f"{gpu['util_mean']:.0f}% ({gpu['util_active_share']:.0%})"
    else:
        util = str(gpu.get("note") or "n/a").replace("not measured: ", "n/a: ")
    peak = gpu.get("memory_used_mib_peak")
    memory = fmt(peak / 1024 if number(peak) else None)
    done = f"{lv['finished']} of {lv['trials']}" if "finished" in lv else w
    wall = fmt(lv.get("wall_seconds"), missing=w) + (" (timeout)" if status == "timeout" else "")
    speed = f"{lv['speedup_vs_1']:.2f}x" if number(lv.get("speedup_vs_1")) else "n/a"
    return (f"| {lv['n']} | {done} | {wall} | {fmt(lv.get('trials_per_hour'), '.0f', w)} | {speed} | "
            f"{fmt(lv.get('mean_trial_s'), '.2f', w)} | {fmt(lv.get('mean_startup_s'), '.2f', w)} | {util} | "
            f"{memory} |")


def packing_markdown(record: dict[str, Any], device: str) -> list[str]:
    res = record.get("results") or {}
    p = res.get("sizes", {})
    counts = sorted({lv["threads_per_trial"] for lv in res.get("levels") or [] if "threads_per_trial" in lv})
    threads = f"{'/'.join(map(str, counts)) or '?'} torch thread(s)" + ("" if device == "cuda" else " (CPU)")
    intro = (f"{p.get('trials')} pair trials (`study.core.trial.run`), each its own process (as a Ray trial), at most "
             f"N at a time; each caps its CUDA allocations at 1/N of the device (as `study.sweep` does for `gpu: 1/N`); "
             f"TinyTen width {p.get('width')}, synthetic {p.get('n_train')} train / {p.get('n_test')} test images, "
             f"2 x {p.get('epochs')} + {p.get('epochs')} epochs, {p.get('points')} points per path; wall includes "
             f"each process's start (torch import, CUDA context); {threads} per trial; {status_line(record)}")
    header = ("| trials at once | trials done | wall s | trials/hour | speed-up vs 1 | mean trial s (in-process) | "
              "mean process start s | GPU util mean (>0 share) | peak GPU memory used GiB |")
    lines = ["### Packing without Ray (TinyTen pair trials sharing one device)", "", intro, "", header,
             "|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    levels = res.get("levels")
    if not levels:
        w = word(record)
        return [*lines, *(f"| {n} | {w} | {w} | {w} | | | | | |" for n in p.get("levels", [1, 2, 4]))]
    lines += [level_cells(lv) for lv in levels]
    best = res.get("recommended")
    if best:
        advice = (f"recommended: {best} at a time (`gpu: {1 / best:g}`; highest trials/hour, ties within {TIE:.0%} "
                  "to the smaller N)")
        lines += ["", advice]
    else:
        lines += ["", "recommended: none (no complete level)"]
    return lines


def targets_markdown(records: dict[str, dict[str, Any]]) -> list[str]:
    """The GPU table's measures that this run answers, as cells for bench/RESULTS.md."""
    suite, runtime, packing = records["suite"], records["runtime"], records["packing"]
    row = next((r for r in (suite.get("results") or {}).get("rows") or [] if r["profile"] == "default"), None)
    ours = f"{row['ours_seconds']:.1f} s" if row and row["ours_seconds"] is not None else word(suite)
    ratio = f"{row['ratio']:.2f}x" if row and row["ratio"] is not None else word(suite)
    levels = (packing.get("results") or {}).get("levels") or []
    per_hour = ", ".join(f"{lv['n']}: {fmt(lv.get('trials_per_hour'), '.0f', word(packing))}" for lv in levels)
    best = (packing.get("results") or {}).get("recommended")
    if per_hour and best:
        per_hour += f"; best {best} per GPU"
    busy = ", ".join(f"{lv['n']}: {lv['gpu']['util_mean']:.0f}%" for lv in levels
                     if (lv.get("gpu") or {}).get("util_mean") is not None)
    path = (runtime.get("results") or {}).get("path_evaluation") or {}
    first_precision = path["rows"][0][2] if path.get("rows") else None
    parallel = ", ".join(f"{r[1]}: {r[3]} s" for r in path.get("rows", []) if r[2] == first_precision)
    training = (runtime.get("results") or {}).get("training") or {}
    compiled = next((r for r in training.get("rows", []) if r[1] == "compile"), None)
    if compiled:
        compile_cell = f"{compiled[6] or 'n/a'} (first epoch {compiled[2]} s, steady {compiled[3]} s)"
    else:
        compile_cell = word(runtime) if runtime.get("status") != "ok" else "not timed"
    trial_measure = "pair trial TinyTen, equal-work (curve points only), 50k/10k, 2×10 + 10 epochs, 25 points"
    return ["| measure | target | measured |", "|---|---|---|",
            f"| {trial_measure} | ≤ 30 s | {ours} |",
            f"| ours vs in-repo fp32 DataLoader baseline, same run (equal work) | ≥ 5× | {ratio} |",
            f"| GPU util (mean nvidia-smi utilization.gpu) with N trials at once | ≥ 80% | {busy or word(packing)} |",
            f"| trials/hour at N per GPU (small trials) | choose the default | {per_hour or word(packing)} |",
            f"| `parallel_points` 1 vs 5 vs 25 ({first_precision or 'path eval'}) | — | {parallel or word(runtime)} |",
            f"| `torch.compile` break-even epochs on CUDA (default off) | — | {compile_cell} |"]


def markdown(summary: dict[str, Any]) -> str:
    env = summary["environment"]
    records = {r["name"]: r for r in summary["steps"]}
    props = env.get("device_properties") or {}
    memory = f", {props['total_memory'] / 2**30:.0f} GiB" if number(props.get("total_memory")) else ""
    sms = f", {props['multi_processor_count']} SMs" if number(props.get("multi_processor_count")) else ""
    cc = f", compute capability {props['major']}.{props['minor']}" if "major" in props else ""
    heading = (f"## {summary['started'][:16]}–{summary['finished'][11:]} — GPU check (`bench/gpu_check.sh`), "
               f"{env.get('device_name')}")
    budget = (f"`{summary['command']}` ({summary['total_seconds']:.0f} s of a {summary['deadline_s']:.0f} s budget"
              + ("; --tiny sizes" if summary["tiny"] else "") + ")")
    facts = (f"torch {env.get('torch')}, CUDA build {env.get('cuda_build') or 'none'}, cuDNN {env.get('cudnn')}, "
             f"python {env.get('python')}; device {env.get('device_name')}{memory}{sms}{cc}; nvidia-smi: "
             f"{env.get('nvidia_smi')}; {env.get('cpu_count')} CPU cores; commit "
             f"{(env.get('git_commit') or 'n/a')[:12]}")
    steps = [f"| {r['name']} | {r['status']} | {fmt(r.get('wall_seconds'), missing='')} | "
             f"{'' if r.get('exit_code') is None else r['exit_code']} |" for r in summary["steps"]]
    lines = [heading, "", budget, "", facts, "", "| step | status | wall s | exit |", "|---|---|---:|---:|", *steps,
             "", *targets_markdown(records), "", *suite_markdown(records["suite"]), "",
             *runtime_markdown(records["runtime"]), "", *packing_markdown(records["packing"], summary["device"])]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", nargs="?", type=Path, help="output folder (default $OUT, else bench/gpu_check_out)")
    parser.add_argument("--out", type=Path, help="output folder (the same as OUTDIR)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="without CUDA, run every step on the CPU at tiny sizes instead of refusing")
    parser.add_argument("--tiny", action="store_true", help="minimal sizes: a few seconds per step")
    parser.add_argument("--deadline", type=float, default=450.0,
                        help="seconds for the whole run; steps it leaves no time for are skipped (default 450)")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="steps to run (default all)")
    parser.add_argument("--budget", action="append", default=[], metavar="STEP=SECONDS",
                        help="a step's planned seconds (default: suite 275, runtime 90, packing 80; tiny 60/45/60)")
    parser.add_argument("--pack-levels", type=int, nargs="+", help="trials at once to measure (CUDA 1 2 4)")
    parser.add_argument("--pack-trials", type=int, help="trials per packing level (CUDA 4)")
    args = parser.parse_args(argv)
    if args.outdir is not None and args.out is not None and args.outdir != args.out:
        parser.error("give the output folder once: OUTDIR or --out")
    if not args.deadline > 0:
        parser.error("--deadline must be > 0")
    if args.pack_levels is not None and (min(args.pack_levels) < 1 or len(set(args.pack_levels)) != len(args.pack_levels)):
        parser.error("--pack-levels: distinct values >= 1")
    if args.pack_trials is not None and args.pack_trials < 1:
        parser.error("--pack-trials must be >= 1")
    budgets = {}
    for item in args.budget:
        name, _, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if name not in STEPS or not seconds > 0:
            parser.error(f"--budget {item!r}: expected STEP=SECONDS with STEP one of {', '.join(STEPS)}")
        budgets[name] = seconds
    args.budgets = budgets
    return args


def plan_timeout(ctx: Context, steps: list[str], k: int) -> float:
    """Step ``k``'s timeout: what the deadline leaves after the later steps' budgets, but at least its own budget
    (or what is left, if less), so time a step does not use passes on to the next."""
    remaining = ctx.deadline - time.monotonic()
    budget = ctx.sizes["budget"]
    later = sum(budget[s] for s in steps[k + 1:])
    return max(remaining - later, min(budget[steps[k]], remaining))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WORKER_FLAG]:
        return packing_worker(argv[1])
    args = parse_args(argv)
    began, clock = utc_now(), time.monotonic()
    import torch

    if torch.cuda.is_available():
        device = "cuda"
    elif args.allow_cpu:
        device = "cpu"
    else:
        print(f"gpu_check: torch.cuda.is_available() is false (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}): this check is for a CUDA machine; pass --allow-cpu to run every step "
              "on the CPU at tiny sizes", file=sys.stderr)
        return 2
    tiny = args.tiny or device == "cpu"
    sizes = json.loads(json.dumps(SIZES["tiny" if tiny else "cuda"]))
    sizes["budget"].update(args.budgets)
    if args.pack_levels:
        sizes["packing"]["levels"] = sorted(args.pack_levels)
    if args.pack_trials:
        sizes["packing"]["trials"] = args.pack_trials
    out = (args.out or args.outdir or (Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" /
                                       "gpu_check_out")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, device, sizes, out, clock + args.deadline)
    entry = os.environ.get("GPU_CHECK_ENTRY", "python bench/gpu_check.py")
    command = " ".join([entry, *(shlex.quote(a) for a in argv)])
    print(f"# symstudy GPU check, {stamp(began)}\ncommand: {command}\ndevice: {device}"
          f"{' (tiny sizes)' if tiny else ''}; output: {out}; deadline {args.deadline:.0f} s", flush=True)

    records = {"suite": step_record("suite", "equal-work pair trial, TinyTen"),
               "runtime": step_record("runtime", "runtime switches"),
               "packing": step_record("packing", "packing without Ray")}
    try:
        env = environment(device)
    except Exception as error:  # noqa: BLE001 - the summaries are written anyway
        env = {"error": f"{type(error).__name__}: {error}", "torch": torch.__version__, "device": device}
    functions: dict[str, Callable[[Context, dict[str, Any], float], None]] = {
        "suite": suite_step, "runtime": runtime_step, "packing": packing_step}
    chosen = [s for s in STEPS if s in args.steps]
    for name in STEPS:
        records[name]["results"]["sizes"] = sizes[name]  # what was planned, said even when a step never ran
    for k, name in enumerate(chosen):
        record = records[name]
        timeout = plan_timeout(ctx, chosen, k)
        if timeout < 5:
            record["status"] = "skipped: time budget"
            print(f"\n{name}: skipped: time budget ({max(timeout, 0):.0f} s left)", flush=True)
            continue
        try:
            functions[name](ctx, record, timeout)
        except Exception:  # noqa: BLE001 - a step's crash is its result, not the check's end
            record["status"] = "failed"
            record["output_tail"] = tail(record.get("output_tail", "") + "\n" + traceback.format_exc())
        print(f"{name}: {record['status']}", flush=True)
    for name in STEPS:
        if name not in chosen:
            records[name]["status"] = "skipped: not selected"

    finished = utc_now()
    summary = {"schema": 1, "tool": "bench/gpu_check.py", "started": stamp(began), "finished": stamp(finished),
               "date": began.isoformat(timespec="seconds"), "command": command, "argv": [sys.executable, *argv],
               "cwd": os.getcwd(), "out": str(out), "device": device, "tiny": tiny, "deadline_s": args.deadline,
               "total_seconds": round(time.monotonic() - clock, 2), "sizes": sizes, "environment": env,
               "steps": [records[s] for s in STEPS]}
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    try:
        text = markdown(summary)
    except Exception:  # noqa: BLE001 - a summary with the error beats none
        text = (f"## {summary['started']} — GPU check (`bench/gpu_check.sh`), {device}\n\n`{command}`\n\n"
                f"The Markdown summary failed; see gpu_check.json.\n\n```\n{traceback.format_exc()}```\n")
    (out / "gpu_check.md").write_text(text)
    print(f"\n### Markdown (also {out / 'gpu_check.md'})\n\n{text}\nJSON: {out / 'gpu_check.json'}", flush=True)
    return 0 if all(records[s]["status"] == "ok" for s in chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
