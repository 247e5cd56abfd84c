"""Reliability: a study survives a dead worker node and a SIGKILLed driver, and loses or duplicates nothing.

Both tests drive the real ``study`` command in a subprocess (never the session's ``ray_session``), with their own
Ray clusters under their own short RAY_TMPDIR, through the scenario code of ``bench/chaos.py`` (which runs the
same scenarios at a larger size and prints what survived).

What Ray does on a SIGKILL of a driver that started its own local Ray (measured here, Ray 2.60): gcs_server,
raylet, the dashboard/monitor/log-monitor processes and the workers die with it within a second or two, but
``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` are reparented to init and keep running indefinitely
(they also ignore SIGTERM for 10 s or more). The driver notes its Ray session in ``<study>/.ray_session.json``;
the next ``study run``/``study resume`` of that study stops exactly the live processes of that session (by
its session folder) once the noted driver is dead, and a driver that exits normally shuts its Ray down and
removes the note.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("chaos", Path(__file__).resolve().parents[1] / "bench" / "chaos.py")
chaos = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chaos)

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux process inspection")


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.mark.faults  # a fault scenario of 1-2 minutes: make test-faults
def test_study_on_a_multi_node_cluster_survives_losing_a_worker_node_in_each_stage(tmp_path):
    """Head with no CPUs + three 1-CPU worker nodes; a node running an endpoint trial and later one running a
    pair trial are SIGKILLed (all their processes) and a fresh node joins after each: the study finishes."""
    spec = chaos.make_spec("nodes", chaos.ring(3), ["none", "weight"], max_failures=3)
    r = chaos.node_loss(tmp_path, spec, workers=3, kill_in=("endpoints", "pairs"), add_fresh=True)
    assert r["returncode"] == 0, _tail(r["output"])

    # The kills really hit running trials: a node with a trial actor of that stage, while MLflow showed RUNNING
    # trials, and the trial that ran there was retried (Tune saw the failure; the run is tagged `retried`).
    assert [k["stage"] for k in r["kills"]] == ["endpoints", "pairs"]
    assert all(k["running"] >= 1 and k["actors_on_node"] >= 1 for k in r["kills"])
    a = r["audit"]
    assert a["endpoints_retried"] >= 1 and a["trials_retried"] >= 1

    # Every planned trial has exactly one MLflow run, FINISHED; nothing is left RUNNING.
    assert a["trial_runs"] == a["planned_trials"] == 6
    assert a["trial_keys"] == a["planned_trial_keys"]
    assert a["trial_status"] == {"FINISHED": 6}
    assert a["running"] == 0 and a["study_status"] == {"FINISHED": 1}

    # No endpoint trained twice: one stored file and one MLflow run per unique endpoint; the endpoints stored
    # before the pair-stage kill were not retrained; no pair trial trained an endpoint itself.
    assert a["store_keys"] == a["planned_endpoints"] and a["store_files"] == 3
    assert a["endpoint_keys"] == a["planned_endpoints"] and a["endpoint_status"] == {"FINISHED": 3}
    before = r["kills"][1]["stored_before"]
    assert len(before) == 3 and {k: a["store_written"][k] for k in before} == before
    assert a["pair_trials_training_endpoints"] == 0
    assert not (r["study_dir"] / ".ray_session.json").exists()  # it joined a cluster: no local Ray of its own


@pytest.mark.faults  # a fault scenario of 1-2 minutes: make test-faults
def test_sigkilled_driver_is_resumed_without_duplicates_retraining_or_leftover_ray_processes(tmp_path):
    spec = chaos.make_spec("driver", [[0, 1], [1, 2]], ["none", "weight", "activation"], cpu=2)  # 1 at a time
    r = chaos.driver_death(tmp_path, spec)
    a = r["audit"]
    assert r["run_returncode"] == -9, _tail(r["run_output"])
    assert 1 <= r["finished_before_kill"] < 6

    # The dead driver left MLflow runs RUNNING (the study's parent run and the trials in flight). The resume
    # finishes those whose result record the folder already holds (the trial ended before MLflow heard of it) and
    # closes the others as KILLED before rerunning them; and, per the module docstring, Ray's two agents orphaned
    # (only processes of its own session are counted).
    assert r["runs_after_kill"][("study", "RUNNING")] == 1 and r["runs_after_kill"][("trial", "RUNNING")] >= 1
    closed = re.search(r"closed (\d+) MLflow run\(s\) left RUNNING", r["resume_output"])
    logged = re.search(r"logged (\d+) trial run\(s\)", r["resume_output"])
    assert (int(closed.group(1)) if closed else 0) + (int(logged.group(1)) if logged else 0) == \
        r["runs_after_kill"][("trial", "RUNNING")], _tail(r["resume_output"])
    marker = r["session_marker"]
    assert marker is not None and marker["session_dir"].startswith(str(Path("/tmp")))
    left = sorted(name for _, name in r["left_after_kill"])
    assert not set(left) & {"raylet", "gcs_server"}  # the core dies with the driver ...
    # ... the agents do not (Ray 2.60): the resume stops exactly the processes of that session left running,
    # and reports them (no report when none were left).
    stopped = re.search(r"stopped (\d+) Ray process\(es\) left running by this study's killed driver "
                        r"\(pid \d+, [^)]*\): (.*)$", r["resume_output"], re.M)
    reported = (int(stopped.group(1)), sorted(stopped.group(2).strip().split(", "))) if stopped else (0, [])
    assert reported == (len(left), left), _tail(r["resume_output"])

    # `study resume` finishes it: one run per trial, all FINISHED, none RUNNING (orphans were closed as KILLED
    # on resume and then re-opened and finished by the rerun), the parent run FINISHED.
    assert r["resume_returncode"] == 0, _tail(r["resume_output"])
    assert a["trial_runs"] == 6 and a["trial_keys"] == a["planned_trial_keys"]
    assert a["trial_status"] == {"FINISHED": 6}
    assert a["running"] == 0 and a["study_status"] == {"FINISHED": 1}

    # Endpoints were not retrained (files as written before the resume), one file and one run each.
    assert len(r["stored_before"]) == 3 and a["store_written"] == r["stored_before"]
    assert a["store_files"] == 3 and a["endpoint_runs"] == 3 and a["pair_trials_training_endpoints"] == 0

    # No Ray process of either driver's session is left: the resume stopped the orphans of the killed driver,
    # and shut down its own Ray when it finished (a normal exit), removing the session note.
    assert r["left_after_resume"] == []
    assert not r["marker_after_resume"]


def test_orphan_cleanup_stops_only_the_dead_drivers_session_and_never_a_live_one(tmp_path):
    """The unit behind the resume above, on stand-in processes (no Ray needed): a process naming the dead
    driver's session folder, or holding a file open in it under another name (like ``ray::DashboardAgent``), is
    stopped; one of a session whose name merely starts the same, or of another session, is not; and nothing
    is touched while the noted driver is still alive."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time

    import ray  # noqa: F401 - Ray vendors psutil

    import psutil

    from study.sweep.ray_session import RAY_SESSION_FILE, stop_orphaned_ray

    session = tmp_path / "ray" / "session_2026-01-01_00-00-00_000001_42"
    (session / "logs").mkdir(parents=True)
    sleeper = "import os, sys, time\nf = open(os.environ['HOLD'], 'w') if 'HOLD' in os.environ else None\ntime.sleep(60)"

    def spawn(*args: str, hold: Path | None = None) -> subprocess.Popen:
        env = {**os.environ, **({"HOLD": str(hold)} if hold else {})}
        return subprocess.Popen([sys.executable, "-c", sleeper, *args], env=env)

    ours_cmdline = spawn(f"--session-dir={session}")
    ours_open_file = spawn(hold=session / "logs" / "agent.out")
    lookalike = spawn(f"--session-dir={session}7", f"--logs-dir={session}7/logs")
    other = spawn(f"--session-dir={tmp_path / 'ray' / 'session_other'}")
    everyone = [ours_cmdline, ours_open_file, lookalike, other]
    try:
        deadline = time.time() + 20  # let the stand-ins start and open their files
        while time.time() < deadline and not any(
                f.path.endswith("agent.out") for f in psutil.Process(ours_open_file.pid).open_files()):
            time.sleep(0.05)

        marker = tmp_path / RAY_SESSION_FILE
        me = psutil.Process()
        marker.write_text(json.dumps({"session_dir": str(session), "host": socket.gethostname(),
                                      "driver_pid": me.pid, "driver_started": me.create_time()}))
        assert stop_orphaned_ray(tmp_path) == [] and marker.exists()  # its driver (here: us) is alive
        assert all(p.poll() is None for p in everyone)

        dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        started = psutil.Process(dead.pid).create_time()
        dead.kill()
        dead.wait()
        marker.write_text(json.dumps({"session_dir": str(session), "host": socket.gethostname(),
                                      "driver_pid": dead.pid, "driver_started": started}))
        stopped = stop_orphaned_ray(tmp_path)
        assert len(stopped) == 2 and not marker.exists()
        assert ours_cmdline.wait(timeout=10) is not None and ours_open_file.wait(timeout=10) is not None
        assert lookalike.poll() is None and other.poll() is None
        assert stop_orphaned_ray(tmp_path) == []  # note gone: nothing more to do
    finally:
        for proc in everyone:
            proc.kill()
            proc.wait()
