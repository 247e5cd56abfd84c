"""Many trials per device: study throughput (pair trials per hour) when N trials share one GPU (or the CPU),
for each N in ``--levels``, with the device's busy share of the wall time, and the N to use by default.

    python bench/packing.py [--device cuda|cpu] [--levels 1 2 4 8] [--trials M] [--arch tinyten] [--width 1.0]
                            [--n-train 50000] [--n-test 10000] [--epochs 10] [--points 25]
                            [--align-samples 2000] [--threads-per-trial T] [--interval 0.5]

Each level runs a fresh study (``study.sweep.driver.run_study``) in its own temporary folder, so every level trains its
endpoints (nothing comes from a store) and pays its own Ray start, as a real ``study run`` does. The study is
M pair trials that differ only in their seed pair (``seeds: [[i, i + 1000] for i in range(M)]``): synthetic
CIFAR-shaped data (3x32x32, 10 classes, offline, no augmentation), batch 128, activation alignment, a 3-bend
Bezier curve trained with the endpoints' recipe, ``--points`` points on the linear path and on the curve.

- Level N on CUDA: ``resources: {cpu: 1, gpu: 1/N}``, ``device: cuda`` (Ray packs N trials on the GPU;
  ``study.sweep.driver`` also caps each trial's CUDA allocations at 1/N of the device). One thread per trial. Ray is
  started with only the first visible GPU (``CUDA_VISIBLE_DEVICES``), so N trials share one device.
- Level N on CPU: ``resources: {cpu: C/N}`` with C = ``os.cpu_count()``, ``device: cpu``, and
  ``floor(C/N)`` (at least 1) torch threads per trial. Nothing in ``study/`` sets threads: a Ray worker uses
  ``OMP_NUM_THREADS`` from the environment Ray was started with (if unset, Ray sets it to the trial's whole
  CPUs). So this bench sets ``OMP_NUM_THREADS`` while ``run_study`` starts its Ray, and restores it after.
  When Ray is already running in this process (the tests' shared session), that cannot be done: the trials
  get whatever threads that Ray's workers have, and the output says so.

Measured per level: wall seconds from the start of ``run_study`` to its end (Ray start, MLflow set-up, both
Tune stages, results table), trials/hour = finished trials / wall x 3600 (every trial finishes unless the
level reports failures), the speed-up over N = 1, and the device's busy share over the same wall time:

- CUDA: ``utilization.gpu`` (the share of time a kernel was running, as NVML reports it) sampled every
  ``--interval`` s through pynvml if it imports, else ``nvidia-smi``: its mean, and the share of samples above
  0 %; also the peak memory in use.
- CPU: CPU seconds of this process and all its descendants (the driver, Ray's processes, the trial workers),
  read from ``/proc/<pid>/stat`` every ``--interval`` s, over wall seconds x C: "busy cores of C". The last
  fraction of an interval of a process that exits is missed, so this is a slight lower bound. Other programs
  are not in it; the busy cores of the whole machine (``/proc/stat``, every program) are shown beside it, and
  the 1-minute load average before each level: on a shared machine, both say how much others took.

The recommendation is the N with the highest trials/hour among levels without failed trials; levels within 5 %
of the best go to the smallest N, which needs less memory per device. On CPU, small defaults are used unless
given explicitly (levels 1 2, TinyTen at width 0.25, 2000 images, 2 epochs: about 1.5 minutes on 2 quiet
cores; a trial is about 10 s of one core there, so Ray start and Tune's per-trial overhead weigh in).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from suite import cpu_model  # noqa: E402  (bench/ is not a package)

from study.core import models  # noqa: E402
from study.sweep.spec import StudySpec, validate  # noqa: E402

IN_SHAPE = (3, 32, 32)
BATCH = 128
TIE = 0.05  # levels within 5 % of the best trials/hour count as tied; the smallest N wins
DEFAULTS = {"cuda": {"levels": [1, 2, 4, 8], "arch": "tinyten", "width": 1.0, "n_train": 50000, "n_test": 10000,
                     "epochs": 10, "points": 25},
            "cpu": {"levels": [1, 2], "arch": "tinyten", "width": 0.25, "n_train": 2000, "n_test": 500,
                    "epochs": 2, "points": 5}}
MAX_GPU_SHARERS = 10_000  # Ray keeps resource quantities to 1e-4, so gpu = 1/N must stay >= 0.0001


def default_trials(device_type: str, n: int) -> int:
    """Trials per level: at least two waves of N concurrent trials (CUDA: at least 8, CPU: at least 4)."""
    return max(8 if device_type == "cuda" else 4, 2 * n)


# --------------------------------------------------------------------------------------------------------------
# The study of one level
# --------------------------------------------------------------------------------------------------------------
def study_spec(n: int, trials: int, args: argparse.Namespace, cores: int) -> StudySpec:
    """M pair trials of one size, differing only in their seeds, packed N per device."""
    recipe = {"epochs": args.epochs, "batch_size": BATCH, "augment": False}
    resources = {"cpu": 1, "gpu": 1 / n} if args.device == "cuda" else {"cpu": cores / n}
    return validate({
        "name": f"packing-{n}",
        "description": f"bench/packing.py: {trials} pair trials, {n} per {args.device} device",
        "trial": {"data": {"name": "synthetic", "val_fraction": 0.0,
                           "options": {"in_shape": list(IN_SHAPE), "n_train": args.n_train, "n_test": args.n_test}},
                  "model": {"arch": args.arch, "width": args.width}, "train": recipe,
                  "align": {"method": "activation", "samples": args.align_samples},
                  "curve": {"kind": "bezier", "bends": 3, "train": recipe}, "eval": {"points": args.points},
                  "device": args.device},
        "factors": {"seeds": [[i, i + 1000] for i in range(trials)]},
        "resources": resources,
        "execution": {"max_failures": 0},  # a failure is a finding here, not something to paper over by retrying
    })


def threads_per_trial(n: int, args: argparse.Namespace, cores: int) -> int:
    if args.threads_per_trial is not None:
        return args.threads_per_trial
    return 1 if args.device == "cuda" else max(1, cores // n)


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration (Ray's processes inherit them when Ray starts)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --------------------------------------------------------------------------------------------------------------
# Device busy share, sampled in a background thread
# --------------------------------------------------------------------------------------------------------------
class ProcessTreeCPU:
    """CPU seconds used by this process and its descendants, from ``/proc`` (Linux only)."""

    def __init__(self, root: int | None = None):
        self.root = root or os.getpid()
        self.tick = os.sysconf("SC_CLK_TCK")
        self.seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> CPU seconds at the last sample
        self.total = 0.0

    def _stats(self) -> dict[int, tuple[int, int, float]]:
        """pid -> (parent pid, start time in ticks, user + system CPU seconds) for every readable process."""
        out = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    text = f.read()
            except OSError:  # gone, or not ours to read
                continue
            rest = text[text.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
            # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15, starttime 22
            out[int(entry.name)] = (int(rest[1]), int(rest[19]), (int(rest[11]) + int(rest[12])) / self.tick)
        return out

    def sample(self) -> float:
        """Add the CPU seconds the tree used since the last call; returns the running total."""
        stats = self._stats()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        tree, stack = [], [self.root]
        while stack:
            pid = stack.pop()
            if pid in stats:
                tree.append(pid)
                stack.extend(children.get(pid, []))
        first = not self.seen
        current = {}
        for pid in tree:
            key, seconds = (pid, stats[pid][1]), stats[pid][2]
            current[key] = seconds
            if not first:  # a process new to the tree started (or joined) since the last sample: count it all
                self.total += max(0.0, seconds - self.seen.get(key, 0.0))
        self.seen = current
        return self.total


def machine_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole machine so far (all processes, all cores), from ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def gpu_probe(index: str) -> Callable[[], tuple[float, float]] | None:
    """A function returning (utilization %, memory used MiB) of GPU ``index``: pynvml, else nvidia-smi, else None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = (pynvml.nvmlDeviceGetHandleByIndex(int(index)) if index.isdigit()
                  else pynvml.nvmlDeviceGetHandleByUUID(index))

        def nvml() -> tuple[float, float]:
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            return float(util.gpu), pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20

        nvml()
        return nvml
    except Exception:  # noqa: BLE001 - not installed, no driver library, unknown index: try nvidia-smi
        pass
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None

    def smi() -> tuple[float, float]:
        text = subprocess.run([exe, "-i", index, "--query-gpu=utilization.gpu,memory.used",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10,
                              check=True).stdout
        util, memory = text.strip().splitlines()[0].split(",")
        return float(util), float(memory)

    try:
        smi()
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None
    return smi


@dataclass
class Busy:
    """What the sampler saw over one level."""

    kind: str  # "cuda", "cpu" or "none"
    samples: int = 0
    seconds: float = 0.0
    util: list[float] = field(default_factory=list)  # CUDA: utilization.gpu samples (%)
    peak_memory_mib: float = 0.0
    cpu_seconds: float = 0.0  # CPU: CPU seconds of the process tree
    machine_seconds: float | None = None  # CPU: busy CPU seconds of the whole machine (other programs too)
    cores: int = 1

    def short(self) -> str:
        """The table cell."""
        if self.kind == "cuda" and self.util:
            return f"{sum(self.util) / len(self.util):.0f}% mean util, >0 in {self.active_share():.0%} of samples"
        if self.kind == "cpu" and self.seconds > 0:
            busy = self.cpu_seconds / self.seconds
            machine = "" if self.machine_seconds is None else f"; machine {self.machine_seconds / self.seconds:.2f}"
            return f"{busy:.2f} of {self.cores} cores ({busy / self.cores:.0%}){machine}"
        return "n/a"

    def long(self) -> str:
        if self.kind == "cuda" and self.util:
            return (f"GPU utilization mean {sum(self.util) / len(self.util):.1f}%, above 0 in "
                    f"{self.active_share():.0%} of {self.samples} samples, peak memory in use "
                    f"{self.peak_memory_mib / 1024:.1f} GiB")
        if self.kind == "cpu" and self.seconds > 0:
            busy = self.cpu_seconds / self.seconds
            text = f"CPU busy (this process tree) {busy:.2f} of {self.cores} cores ({busy / self.cores:.0%})"
            if self.machine_seconds is not None:
                machine = self.machine_seconds / self.seconds
                others = max(0.0, machine - self.cpu_seconds / self.seconds)
                text += f", whole machine {machine:.2f} cores (other programs ~{others:.2f})"
            return text
        return "device busy share not measured (no pynvml or nvidia-smi)"

    def active_share(self) -> float:
        return sum(u > 0 for u in self.util) / max(1, len(self.util))


class Sampler:
    """Samples the device every ``interval`` s in a daemon thread between ``__enter__`` and ``__exit__``."""

    def __init__(self, device_type: str, interval: float, cores: int, gpu_index: str = "0"):
        self.interval = interval
        self.probe = gpu_probe(gpu_index) if device_type == "cuda" else None
        kind = device_type if device_type == "cpu" or self.probe else "none"
        self.busy = Busy(kind, cores=cores)
        self.cpu = ProcessTreeCPU() if kind == "cpu" else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="packing-sampler")

    def _once(self) -> None:
        try:
            if self.cpu is not None:
                self.busy.cpu_seconds = self.cpu.sample()
            elif self.probe is not None:
                util, memory = self.probe()
                self.busy.util.append(util)
                self.busy.peak_memory_mib = max(self.busy.peak_memory_mib, memory)
            self.busy.samples += 1
        except Exception:  # noqa: BLE001 - a failed sample is skipped, never kills the benchmark
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._once()

    def __enter__(self) -> "Sampler":
        self._once()  # the baseline of the CPU counters
        self._machine = machine_cpu_seconds() if self.cpu is not None else None
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._once()
        self.busy.seconds = time.perf_counter() - self._start
        end = machine_cpu_seconds() if self._machine is not None else None
        if end is not None and self._machine is not None:
            self.busy.machine_seconds = end - self._machine


# --------------------------------------------------------------------------------------------------------------
# Levels, the table and the recommendation
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Level:
    n: int
    trials: int
    finished: int
    failed: int
    wall: float
    busy: Busy
    threads: str
    errors: list[str] = field(default_factory=list)

    @property
    def per_hour(self) -> float:
        return self.finished / self.wall * 3600 if self.wall > 0 else 0.0


def run_level(n: int, args: argparse.Namespace, cores: int) -> Level:
    """One fresh study with N trials per device, timed and sampled."""
    import ray

    from study.sweep.driver import run_study

    trials = args.trials or default_trials(args.device, n)
    running = ray.is_initialized()
    if running:  # a caller's Ray (the tests): pack into the CPUs it has, or trials would wait forever
        cores = max(1, min(cores, int(ray.cluster_resources().get("CPU", cores))))
    spec = study_spec(n, trials, args, cores)
    threads = threads_per_trial(n, args, cores)
    if running:  # ... and its workers' environment is fixed already
        env: dict[str, str] = {}
        note = f"not set (Ray already running; driver OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
    else:
        env = {"OMP_NUM_THREADS": str(threads)}
        note = str(threads)
    gpu_index = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
    if args.device == "cuda" and not running:
        env["CUDA_VISIBLE_DEVICES"] = gpu_index  # one device, or Ray would spread the 1/N trials over all GPUs
    with tempfile.TemporaryDirectory(prefix="symstudy-packing-") as directory, environment(**env):
        with Sampler(args.device, args.interval, cores, gpu_index) as sampler:
            start = time.perf_counter()
            outcome = run_study(spec, Path(directory) / spec.name, show_progress=False)
            wall = time.perf_counter() - start
    results = outcome.results
    status = results["status"] if len(results) else []
    finished = int(sum(s == "FINISHED" for s in status))
    errors = sorted({str(e) for e in results.get("error", []) if str(e) not in ("", "nan")}) if len(results) else []
    if outcome.interrupted:
        errors.append("interrupted")
    return Level(n, trials, finished, trials - finished, wall, sampler.busy, note, errors)


def recommend(levels: list[Level]) -> Level | None:
    """Highest trials/hour among levels without failures; within ``TIE`` of the best, the smallest N."""
    ok = [lv for lv in levels if lv.failed == 0 and lv.finished > 0]
    if not ok:
        return None
    best = max(lv.per_hour for lv in ok)
    return min((lv for lv in ok if lv.per_hour >= (1 - TIE) * best), key=lambda lv: lv.n)


def speedup(level: Level, levels: list[Level]) -> str:
    one = next((lv for lv in levels if lv.n == 1 and lv.per_hour > 0), None)
    return f"{level.per_hour / one.per_hour:.2f}x" if one else "n/a"


def table(levels: list[Level]) -> list[str]:
    lines = ["| trials per device | wall s | trials/hour | speed-up vs 1 | device busy |", "|---:|---:|---:|---:|---|"]
    for lv in levels:
        failed = f" ({lv.failed} of {lv.trials} failed)" if lv.failed else ""
        lines.append(f"| {lv.n} | {lv.wall:.1f} | {lv.per_hour:.0f}{failed} | {speedup(lv, levels)} | "
                     f"{lv.busy.short()} |")
    return lines


def device_name(device_type: str, cores: int) -> str:
    if device_type == "cuda":
        return f"{torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible; levels use one)"
    return f"CPU {cpu_model()}, {cores} cores"


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--levels", type=int, nargs="+", help="trials per device to measure (CUDA 1 2 4 8, CPU 1 2)")
    parser.add_argument("--trials", type=int, help="pair trials per level (default: CUDA max(8, 2N), CPU max(4, 2N))")
    parser.add_argument("--arch", choices=models.available(), help="architecture (default tinyten)")
    parser.add_argument("--width", type=float, help="width multiplier (CUDA 1.0, CPU 0.25)")
    parser.add_argument("--n-train", type=int, help="training images (CUDA 50000, CPU 2000)")
    parser.add_argument("--n-test", type=int, help="test images (CUDA 10000, CPU 500)")
    parser.add_argument("--epochs", type=int, help="epochs per endpoint and for the curve (CUDA 10, CPU 2)")
    parser.add_argument("--points", type=int, help="evaluation points per path (CUDA 25, CPU 5)")
    parser.add_argument("--align-samples", type=int, default=2000, help="alignment images (capped at n_train)")
    parser.add_argument("--threads-per-trial", type=int,
                        help="torch threads per trial (default: CUDA 1, CPU floor(cores/N), at least 1)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between device samples")
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    for key in ("trials", "n_train", "n_test", "epochs", "align_samples", "threads_per_trial"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.points is not None and args.points < 3:
        parser.error("--points must be >= 3")
    if args.width is not None and not args.width > 0:
        parser.error("--width must be > 0")
    if not args.interval > 0:
        parser.error("--interval must be > 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device on this machine (torch "
                     f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use --device cpu")
    defaults = DEFAULTS[args.device]
    args.filled = [k for k in defaults if getattr(args, k) is None]
    for key in args.filled:
        setattr(args, key, defaults[key])
    bad = [n for n in args.levels if n < 1]
    if bad:
        parser.error(f"--levels: every value must be >= 1 (trials per device), got {bad}")
    if len(set(args.levels)) != len(args.levels):
        parser.error(f"--levels: each value once, got {args.levels}")
    args.levels = sorted(args.levels)
    if args.device == "cuda":
        too_many = [n for n in args.levels if n > MAX_GPU_SHARERS]
        if too_many:
            parser.error(f"--levels {too_many}: gpu = 1/N must be at least 1/{MAX_GPU_SHARERS} (Ray keeps resource "
                         "quantities to 4 decimals)")
        starved = [n for n in args.levels if n > cores]
        if starved:
            parser.error(f"--levels {starved}: each CUDA trial takes 1 CPU and this machine has {cores}, so at most "
                         f"{cores} trials could share the GPU at once")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cores = os.cpu_count() or 1
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", *sys.argv] if argv is None else ["python", "bench/packing.py", *argv])
    epochs = f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}"
    print(f"# symstudy packing benchmark (many trials per device), {stamp}")
    print(f"device: {device_name(args.device, cores)}; torch {torch.__version__}; python {platform.python_version()}")
    print(f"command: {command}")
    print(f"workload per pair trial: {args.arch} (width {args.width:g}) on synthetic 3x32x32, {args.n_train} train / "
          f"{args.n_test} test images, batch {BATCH}, no augmentation; 2 endpoints x {epochs}, activation alignment "
          f"on {min(args.align_samples, args.n_train)} images, 3-bend Bezier {epochs}, {args.points} points per path; "
          f"trials differ only in their seed pair; each level is a fresh study (endpoints trained, Ray started)")
    if args.device == "cuda":
        print("resources per trial: cpu 1, gpu 1/N; 1 torch thread per trial unless --threads-per-trial")
    else:
        print(f"resources per trial: cpu {cores}/N; torch threads per trial floor({cores}/N) (>= 1) via "
              "OMP_NUM_THREADS at Ray start, unless --threads-per-trial")
    if args.filled and args.device == "cpu":
        print("note: CPU defaults applied (" + ", ".join(f"{k.replace('_', '-')} {getattr(args, k)}"
                                                         for k in args.filled) + "); pass them explicitly to override")
    sys.stdout.flush()

    levels = []
    for n in args.levels:
        load = load_average()
        level = run_level(n, args, cores)
        levels.append(level)
        failed = f", {level.failed} FAILED: {'; '.join(level.errors)[:500]}" if level.failed or level.errors else ""
        print(f"level {n} per device: {level.finished}/{level.trials} trials finished in {level.wall:.1f} s = "
              f"{level.per_hour:.0f} trials/hour ({speedup(level, levels)} vs 1){failed}; {level.busy.long()}; "
              f"threads per trial {level.threads}; load average before {load}", flush=True)

    print(f"\n### Markdown ({stamp}, {device_name(args.device, cores)}, torch {torch.__version__})\n")
    print(f"`{command}`\n")
    print("\n".join(table(levels)))
    if args.device == "cpu":
        print("\ndevice busy: CPU seconds of this process and its descendants (driver, Ray, trials) per wall second, "
              f"of {cores} cores; machine: all programs on the machine, this benchmark included")
    else:
        print("\ndevice busy: NVML utilization.gpu (share of time a kernel ran) sampled every "
              f"{args.interval:g} s: its mean, and the share of samples above 0")
    one = next((lv for lv in levels if lv.n == 1 and lv.per_hour > 0), None)
    for lv in levels:
        if one and lv.per_hour > lv.n * one.per_hour * 1.05:
            print(f"\nwarning: {lv.n} per device is {lv.per_hour / one.per_hour:.1f}x as fast as 1, more than packing "
                  f"{lv.n} trials can give: level 1 was held back (threads per trial oversubscribing cores that other "
                  "programs were using, or a noisy machine); compare `--threads-per-trial 1` and the whole-machine "
                  "CPU above")
    best = recommend(levels)
    if best is None:
        print("\nrecommended: none (every level had failed trials)")
        return 1
    print(f"\nrecommended: {best.n} per device (highest trials/hour; ties within {TIE:.0%} go to the smaller N, "
          "which needs less memory)")
    return 1 if any(lv.failed for lv in levels) else 0


if __name__ == "__main__":
    sys.exit(main())
