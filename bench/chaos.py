"""Chaos runs: a study keeps going through a dead worker node, a SIGKILLed driver and failing trials.

    python bench/chaos.py [--quick]

Each scenario drives the real ``study`` command in a subprocess and prints one line: what was done, what
survived, the numbers. ``--quick`` uses the sizes of tests/test_reliability.py (which imports this file).

- node loss: a Ray cluster of a head with no CPUs and three 1-CPU worker nodes on this machine
  (``ray.cluster_utils.Cluster``, owned by a helper process: ``python bench/chaos.py --serve-cluster N``); the
  study is submitted with ``--address``; a worker node that is running a trial is SIGKILLed (all its processes,
  ``remove_node(allow_graceful=False)``) once in each stage, and a fresh node joins after each kill.
- driver death: ``study run`` is SIGKILLed after its first pair trial finished, then ``study resume`` finishes
  the study; Ray processes left by either driver are counted.
- trial faults: injected transient (retried) and permanent (reported) trial failures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the integrity audit lives with the fault tests (tests/support/audit.py)

from tests.support.audit import integrity_problems  # noqa: E402

TRIAL = {"data": {"name": "digits"}, "model": {"arch": "mlp", "width": 0.125},
         "train": {"epochs": 1, "batch_size": 128, "augment": False}, "eval": {"points": 3}, "device": "cpu"}


def make_spec(name: str, seeds: list[list[int]], aligns: list[str], *, cpu: int = 1, max_failures: int = 3,
              epochs: int = 1) -> dict[str, Any]:
    trial = copy.deepcopy(TRIAL)
    trial["train"]["epochs"] = epochs
    return {"name": name, "trial": trial, "factors": {"seeds": seeds, "align.method": aligns},
            "resources": {"cpu": cpu}, "execution": {"max_failures": max_failures}}


def ring(n: int) -> list[list[int]]:
    """n seed pairs over n seeds: [0, 1], [1, 2], ..., [n-1, 0] (n unique endpoints)."""
    return [[i, (i + 1) % n] for i in range(n)]


def short_tmp(prefix: str) -> Path:
    """A short folder for RAY_TMPDIR: Ray's unix socket paths below it must stay under 107 characters."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _env(ray_tmp: Path) -> dict[str, str]:
    return {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def study_cli(args: list[str], *, env: dict[str, str], log: Path, faults: bool = False) -> subprocess.Popen:
    """``study ARGS`` in a subprocess, output to ``log`` (a pipe could fill up and stall the driver).

    ``faults``: the same command with pair trials that obey ``<study>/.faults`` markers (tests/support/faults.py)."""
    handle = open(log, "a")  # noqa: SIM115 - the child owns it for its lifetime
    command = [str(ROOT / "tests" / "support" / "faults.py")] if faults else ["-m", "study.cli"]
    try:
        return subprocess.Popen([sys.executable, *command, *args], cwd=ROOT, env=env, stdout=handle,
                                stderr=subprocess.STDOUT)
    finally:
        handle.close()


# ----------------------------------------------------------------------------------------------------------------
# Looking at a study from outside: MLflow (read-only while the driver writes), the endpoint store, processes.
# ----------------------------------------------------------------------------------------------------------------
def live_runs(study_dir: Path) -> Counter:
    """(kind, status) -> number of MLflow runs, read straight from sqlite in read-only mode: safe while the driver
    writes, and never creates or migrates the DB (an MLflow client would, racing the driver's migration)."""
    db = study_dir / "mlflow.db"
    if not db.exists():
        return Counter()
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2) as connection:
            rows = connection.execute("SELECT t.value, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                      "WHERE t.key = 'kind'").fetchall()
    except sqlite3.Error:  # not created yet, mid-migration, or locked for a moment
        return Counter()
    return Counter(rows)


def audit(study_dir: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """What a finished (or stopped) study left: MLflow runs by kind and status, the endpoint store, retries."""
    import mlflow

    from study.sweep.spec import validate
    from study.store import EndpointStore

    planned = validate(spec)
    client = mlflow.MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(spec["name"])
    runs = client.search_runs([experiment.experiment_id], max_results=10_000)
    by_kind: dict[str, list] = {}
    for run in runs:
        by_kind.setdefault(run.data.tags.get("kind", "?"), []).append(run)
    trials, endpoint_runs = by_kind.get("trial", []), by_kind.get("endpoint", [])
    store = EndpointStore(study_dir / "endpoints")
    files = [p for p in (study_dir / "endpoints").glob("*/*.pt")] if (study_dir / "endpoints").is_dir() else []
    uncached = 0  # endpoints a pair trial trained itself instead of reading them from the store
    for result in (study_dir / "artifacts").glob("*/result.json"):
        uncached += sum(not e.get("cached", True) for e in json.loads(result.read_text())["endpoints"].values())
    return {
        "planned_trials": len(planned.trials),
        "planned_trial_keys": sorted(t.key for t in planned.trials),
        "planned_endpoints": sorted(planned.endpoints()),
        "trial_runs": len(trials),
        "trial_keys": sorted(r.data.tags.get("trial_key", "") for r in trials),
        "trial_status": Counter(r.info.status for r in trials),
        "trial_errors": sorted(r.data.tags["error"] for r in trials if r.data.tags.get("error")),
        "trials_retried": sum(bool(r.data.tags.get("retried")) for r in trials),
        "endpoint_runs": len(endpoint_runs),
        "endpoint_keys": sorted(r.data.tags.get("trial_key", "") for r in endpoint_runs),
        "endpoint_status": Counter(r.info.status for r in endpoint_runs),
        "endpoints_retried": sum(bool(r.data.tags.get("retried")) for r in endpoint_runs),
        "study_status": Counter(r.info.status for r in by_kind.get("study", [])),
        "running": sum(r.info.status == "RUNNING" for r in runs),
        "store_keys": store.keys(),
        "store_files": len(files),
        "store_written": _store_written(study_dir),
        "pair_trials_training_endpoints": uncached,
        "integrity": integrity_problems(study_dir, spec),
    }


def _psutil():
    import ray  # noqa: F401 - Ray vendors psutil and puts it on the path

    import psutil

    return psutil


def ray_processes(root: Path) -> list[tuple[int, str]]:
    """(pid, name) of live processes that belong to Ray sessions under ``root`` (a RAY_TMPDIR): the folder is
    on their command line, in their RAY_TMPDIR, or they hold a file open below it. Ray renames its agents
    (``ray::DashboardAgent``), so the command line alone would miss them."""
    psutil = _psutil()
    root_s = str(root)
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if (any(root_s in arg for arg in proc.cmdline()) or proc.environ().get("RAY_TMPDIR") == root_s
                    or any(f.path.startswith(root_s + "/") for f in proc.open_files())):
                found.append((proc.pid, proc.name()))
        except psutil.Error:
            continue
    return found


def kill_processes(pids: list[int]) -> None:
    """Last-resort cleanup of a scenario's own leftovers (pids found by :func:`ray_processes` under its folder)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# ----------------------------------------------------------------------------------------------------------------
# A multi-node Ray cluster on this machine, owned by a helper process (so the caller's own Ray, e.g. pytest's
# session fixture, never shares global state with it), driven by one JSON line per command.
# ----------------------------------------------------------------------------------------------------------------
def serve_cluster(workers: int) -> None:
    """Helper side: start the cluster, print its layout, then answer ``busy``/``kill ID``/``add``/``quit``."""
    from ray.cluster_utils import Cluster

    def reply(**fields: Any) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    # The GCS declares a silent node dead after health_check_failure_threshold missed checks, health_check_period_ms
    # apart (defaults 5 x 3 s); until then a retried trial can wait for the dead node's resources. A faster check
    # only makes the runs shorter, it does not change what survives.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": 100 * 1024**2,
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 2,
                           "health_check_timeout_ms": 1000}})
    nodes = {}
    for _ in range(workers):
        node = cluster.add_node(num_cpus=1, object_store_memory=80 * 1024**2)
        nodes[node.node_id] = node
    cluster.wait_for_nodes()
    reply(address=cluster.address, head=cluster.head_node.node_id, workers=list(nodes))
    try:
        for line in sys.stdin:
            command, *args = line.split()
            if command == "busy":  # worker node -> ids of the trial actors alive on it (one per running trial)
                busy: dict[str, list[str]] = {node_id: [] for node_id in nodes}
                for actor_id, actor in cluster.global_state.actor_table(None).items():
                    node_id = actor["Address"]["NodeID"]
                    if actor["State"] == "ALIVE" and "ImplicitFunc" in actor["ActorClassName"] and node_id in busy:
                        busy[node_id].append(actor_id)
                reply(busy=busy)
            elif command == "kill":
                start = time.perf_counter()
                cluster.remove_node(nodes.pop(args[0]), allow_graceful=False)
                reply(killed=args[0], seconds=time.perf_counter() - start)
            elif command == "add":
                node = cluster.add_node(num_cpus=1, object_store_memory=80 * 1024**2)
                nodes[node.node_id] = node
                reply(added=node.node_id)
            elif command == "quit":
                break
    finally:
        cluster.shutdown()
        reply(bye=True)


class LocalCluster:
    """Client side of :func:`serve_cluster`: ``address``, ``workers``, ``busy()``, ``kill(id)``, ``add()``."""

    def __init__(self, workers: int, ray_tmp: Path, log: Path):
        self.ray_tmp = ray_tmp
        self._stderr = open(log, "a")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-cluster", str(workers)],
                                     cwd=ROOT, env=_env(ray_tmp), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True)
        layout = self._read()
        self.address, self.head, self.workers = layout["address"], layout["head"], layout["workers"]

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"cluster helper exited ({self.proc.poll()}); see {self._stderr.name}")
        return json.loads(line)

    def _ask(self, command: str) -> dict[str, Any]:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def busy(self) -> dict[str, list[str]]:
        return self._ask("busy")["busy"]

    def kill(self, node_id: str) -> float:
        seconds = self._ask(f"kill {node_id}")["seconds"]
        self.workers.remove(node_id)
        return seconds

    def add(self) -> str:
        node_id = self._ask("add")["added"]
        self.workers.append(node_id)
        return node_id

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._ask("quit")
                self.proc.wait(timeout=60)
            except (OSError, RuntimeError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
        self._stderr.close()
        kill_processes([pid for pid, _ in ray_processes(self.ray_tmp)])  # nothing, unless the helper crashed

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------------------
# Scenarios
# ----------------------------------------------------------------------------------------------------------------
def node_loss(work: Path, spec: dict[str, Any], *, workers: int = 3, kill_in: tuple[str, ...] = ("endpoints", "pairs"),
              add_fresh: bool = True, timeout_s: float = 300) -> dict[str, Any]:
    """Submit ``spec`` to a local multi-node cluster and kill a worker node that runs a trial in each stage of
    ``kill_in`` (an endpoint trial, then a pair trial), adding a fresh node after each kill."""
    import yaml

    from study.sweep.spec import validate

    endpoints = len(validate(spec).endpoints())
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    study_dir = work / "out" / spec["name"]
    ray_tmp = short_tmp("ssn-")
    kills: list[dict[str, Any]] = []
    try:
        with LocalCluster(workers, ray_tmp, work / "cluster.log") as cluster:
            start = time.time()
            driver = study_cli(["run", str(work / "spec.yaml"), "--out", str(work / "out"), "--quiet", "--address",
                                cluster.address], env=_env(ray_tmp), log=work / "driver.log")
            pending = list(kill_in)
            first_seen: dict[str, str] = {}  # trial actor id -> the stage it was first seen in
            while driver.poll() is None and time.time() - start < timeout_s:
                if pending:
                    runs = live_runs(study_dir)
                    stage = "pairs" if runs[("endpoint", "FINISHED")] >= endpoints else "endpoints"
                    busy = cluster.busy()
                    for actors in busy.values():
                        for actor in actors:
                            first_seen.setdefault(actor, stage)
                    kind = "endpoint" if pending[0] == "endpoints" else "trial"
                    running = runs[(kind, "RUNNING")]
                    # Once the stage is under way, kill a node with one of this stage's trial actors on it (an
                    # actor of the endpoint stage may linger for a moment while the pair stage starts).
                    victim = next((node for node, actors in busy.items()
                                   if any(first_seen[a] == pending[0] for a in actors)), None)
                    if running and victim is not None:
                        stored = _store_written(study_dir)
                        at = time.time() - start
                        seconds = cluster.kill(victim)
                        kills.append({"stage": pending.pop(0), "at_s": at, "node": victim, "kill_s": seconds,
                                      "running": running, "actors_on_node": len(busy[victim]),
                                      "stored_before": stored, "fresh_node": cluster.add() if add_fresh else None})
                time.sleep(0.2)
            if driver.poll() is None:
                driver.kill()
            returncode = driver.wait()
            wall = time.time() - start
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return {"returncode": returncode, "wall_s": wall, "kills": kills, "study_dir": study_dir,
            "output": (work / "driver.log").read_text(), "audit": audit(study_dir, spec)}


def _store_written(study_dir: Path) -> dict[str, str]:
    """Endpoint key -> when it was stored: the sidecar's ``created`` (whole seconds) and the weights file's
    mtime in ns (a retraining rewrites the file via ``os.replace``, even with bit-identical weights)."""
    from study.store import EndpointStore

    store = EndpointStore(study_dir / "endpoints")
    out = {}
    for key in store.keys():
        entry = store.get(key)
        if entry is not None:
            out[key] = f"{entry.created} {store.weights_path(key).stat().st_mtime_ns}"
    return out


def _wait_quiet(root: Path, seconds: float = 10.0) -> list[tuple[int, str]]:
    """The processes under ``root`` once those that die with the driver are gone (they go within a second or
    two; the ones still there after ``seconds``, or after the set stops shrinking for 3 s, are orphans)."""
    deadline, last, since = time.time() + seconds, None, time.time()
    while time.time() < deadline:
        now = ray_processes(root)
        if now != last:
            last, since = now, time.time()
        elif time.time() - since > 3:
            break
        time.sleep(0.5)
    return last or []


def driver_death(work: Path, spec: dict[str, Any], *, timeout_s: float = 300) -> dict[str, Any]:
    """SIGKILL ``study run`` while a pair trial runs, after at least one finished, then ``study resume`` it."""
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    study_dir = work / "out" / spec["name"]
    ray_tmp = short_tmp("ssd-")
    env = _env(ray_tmp)
    total = None
    try:
        start = time.time()
        driver = study_cli(["run", str(work / "spec.yaml"), "--out", str(work / "out"), "--quiet"], env=env,
                           log=work / "run.log")
        finished = 0
        while driver.poll() is None and time.time() - start < timeout_s:
            counts = live_runs(study_dir)
            finished = counts[("trial", "FINISHED")]
            total = total or _planned(spec)
            if 1 <= finished < total and counts[("trial", "RUNNING")]:  # mid-study, with a trial in flight
                driver.send_signal(signal.SIGKILL)
                break
            time.sleep(0.1)
        killed_at = time.time() - start
        run_rc = driver.wait()
        left_after_kill = _wait_quiet(ray_tmp)
        runs_after_kill = live_runs(study_dir)
        stored_before = _store_written(study_dir)
        marker = json.loads((study_dir / ".ray_session.json").read_text()) \
            if (study_dir / ".ray_session.json").exists() else None

        start = time.time()
        resumed = study_cli(["resume", str(study_dir), "--quiet"], env=env, log=work / "resume.log")
        resume_rc = resumed.wait(timeout=timeout_s)
        resume_s = time.time() - start
        left_after_resume = _wait_quiet(ray_tmp, seconds=3)
    finally:
        leftovers = ray_processes(ray_tmp)
        kill_processes([pid for pid, _ in leftovers])
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return {"run_returncode": run_rc, "killed_at_s": killed_at, "finished_before_kill": finished,
            "left_after_kill": left_after_kill, "runs_after_kill": runs_after_kill, "stored_before": stored_before,
            "session_marker": marker, "resume_returncode": resume_rc, "resume_s": resume_s,
            "left_after_resume": left_after_resume, "marker_after_resume": (study_dir / ".ray_session.json").exists(),
            "resume_output": (work / "resume.log").read_text(), "run_output": (work / "run.log").read_text(),
            "study_dir": study_dir, "audit": audit(study_dir, spec)}


def _planned(spec: dict[str, Any]) -> int:
    factors = spec["factors"]
    total = 1
    for values in factors.values():
        total *= len(values)
    return total


def trial_faults(work: Path, spec: dict[str, Any], *, once: list[str], always: list[str]) -> dict[str, Any]:
    """Run ``spec`` locally with ``.faults/once-<seeds>`` (fails one attempt) and ``always-<seeds>`` markers."""
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    study_dir = work / "out" / spec["name"]
    (study_dir / ".faults").mkdir(parents=True, exist_ok=True)
    for seeds in once:
        (study_dir / ".faults" / f"once-{seeds}").touch()
    for seeds in always:
        (study_dir / ".faults" / f"always-{seeds}").touch()
    ray_tmp = short_tmp("ssf-")
    try:
        start = time.time()
        rc = study_cli(["run", str(work / "spec.yaml"), "--out", str(work / "out"), "--quiet"], env=_env(ray_tmp),
                       log=work / "run.log", faults=True).wait()
        wall = time.time() - start
        status = subprocess.run([sys.executable, "-m", "study.cli", "status", str(study_dir)], cwd=ROOT,
                                env=_env(ray_tmp), capture_output=True, text=True)
        left = ray_processes(ray_tmp)
    finally:
        kill_processes([pid for pid, _ in ray_processes(ray_tmp)])
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return {"returncode": rc, "wall_s": wall, "status_output": status.stdout, "left": left,
            "once_left": sorted(p.name for p in (study_dir / ".faults").glob("once-*")),
            "audit": audit(study_dir, spec)}


# ----------------------------------------------------------------------------------------------------------------
def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


def _retrained(audit_: dict[str, Any], before: dict[str, float]) -> int:
    """Endpoints trained again after they were stored, plus endpoints a pair trial had to train itself."""
    after = audit_["store_written"]
    return sum(after.get(k) != v for k, v in before.items()) + audit_["pair_trials_training_endpoints"]


def _survival(a: dict[str, Any]) -> str:
    status = a["trial_status"]
    return (f"{status.get('FINISHED', 0)}/{a['planned_trials']} trials finished, {a['trial_runs']} trial runs "
            f"({len(set(a['trial_keys']))} distinct), {len(a['store_keys'])} endpoints stored in "
            f"{a['store_files']} files, {a['endpoint_runs']} endpoint runs, {a['running']} runs left RUNNING; "
            f"integrity audit: {'; '.join(a['integrity']) or 'clean'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the test sizes (about a minute less)")
    parser.add_argument("--serve-cluster", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the study folders (printed at the end)")
    args = parser.parse_args()
    if args.serve_cluster:
        serve_cluster(args.serve_cluster)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("SYMSTUDY_CACHE", str(ROOT / ".pytest_cache" / "data"))
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    n = 3 if args.quick else 4
    total_start = time.time()
    try:
        # 1. node loss
        spec = make_spec("chaos-nodes", ring(n), ["none", "weight"], epochs=1 if args.quick else 2)
        r = node_loss(work / "nodes", spec)
        a = r["audit"]
        for kill in r["kills"]:
            retried = a["endpoints_retried"] if kill["stage"] == "endpoints" else a["trials_retried"]
            print(f"node loss: worker node killed at {_clock(kill['at_s'])} in stage {kill['stage']} with "
                  f"{kill['running']} trial(s) running ({kill['actors_on_node']} on it; {retried} "
                  f"{'endpoint' if kill['stage'] == 'endpoints' else 'pair'} trial(s) retried), fresh node added")
        before = r["kills"][-1]["stored_before"] if r["kills"] else {}
        print(f"node loss: exit {r['returncode']} after {r['wall_s']:.0f} s: {_survival(a)}, "
              f"{_retrained(a, before)} retrained")

        # 2. driver death
        spec = make_spec("chaos-driver", ring(n)[:n - 1], ["none", "weight", "activation"], cpu=2)
        d = driver_death(work / "driver", spec)
        a = d["audit"]
        orphans = ", ".join(sorted(name for _, name in d["left_after_kill"])) or "none"
        closed = re.search(r"closed (\d+) MLflow run", d["resume_output"])
        print(f"driver death: `study run` SIGKILLed at {_clock(d['killed_at_s'])} after {d['finished_before_kill']}/"
              f"{a['planned_trials']} pair trials; MLflow runs left RUNNING: "
              f"{sum(v for (_, status), v in d['runs_after_kill'].items() if status == 'RUNNING')} (study + trials); "
              f"Ray processes orphaned: {len(d['left_after_kill'])} ({orphans})")
        print(f"driver death: `study resume` exit {d['resume_returncode']} after {d['resume_s']:.0f} s, closed "
              f"{closed.group(1) if closed else 0} orphaned trial run(s) as KILLED and stopped "
              f"{len(d['left_after_kill'])} orphaned Ray process(es): {_survival(a)}, "
              f"{_retrained(a, d['stored_before'])} retrained; Ray processes left: {len(d['left_after_resume'])}")

        # 3. trial faults
        spec = make_spec("chaos-faults", ring(n), ["none", "weight"], max_failures=2)
        f = trial_faults(work / "faults", spec, once=["0-1"], always=["1-2"])
        a = f["audit"]
        reasons = sorted(set(a["trial_errors"]))
        print(f"trial faults: one attempt of a seeds-0-1 trial and every attempt of the 2 seeds-1-2 trials raise "
              f"(max_failures 2), exit {f['returncode']} after {f['wall_s']:.0f} s: "
              f"{a['trial_status'].get('FINISHED', 0)}/{a['planned_trials']} finished, "
              f"{a['trial_status'].get('FAILED', 0)} failed ({'; '.join(reasons)}), {a['trials_retried']} retried, "
              f"{a['trial_runs']} trial runs, integrity audit: {'; '.join(a['integrity']) or 'clean'}, "
              f"`study status` names the reason: "
              f"{'yes' if reasons and all(r in f['status_output'] for r in reasons) else 'NO'}; "
              f"Ray processes left: {len(f['left'])}")
        print(f"chaos: all scenarios in {time.time() - total_start:.0f} s")
    finally:
        if args.keep:
            print(f"study folders kept under {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
