"""Starting, joining and cleaning up Ray for a study driver.

A driver that starts its own local Ray notes the session in the study folder, so that after a SIGKILL of that
driver (which orphans two Ray agent processes, reparented to init: ``ray::DashboardAgent`` and
``ray::RuntimeEnvAgent``, while gcs, raylet and workers die with it) the next run or resume of the study stops
exactly that session's leftovers, never another cluster's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import ray

from study.common.errors import UsageError

import psutil  # noqa: E402 - Ray vendors psutil and puts it on the path when it is imported

log = logging.getLogger(__name__)

RAY_SESSION_FILE = ".ray_session.json"


def init_ray(address: str | None) -> str | None:
    """Connect to ``address``, or start a local Ray; returns the session folder of a Ray this call started."""
    if address is None:  # a throwaway local cluster needs no token file in ~/.ray
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner: the progress line says it all
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    if ray.is_initialized():
        return None
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except ConnectionError as error:
            raise UsageError(f"cannot connect to the Ray cluster at {address!r}: {str(error).splitlines()[0]}") \
                from None
        return None
    context = ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
                       object_store_memory=200 * 1024**2)
    return os.path.realpath(context.address_info["session_dir"])


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A ``host:port`` address must accept a connection; Ray itself would retry an unreachable one for minutes."""
    if address in ("auto", "local") or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise UsageError(f"--address {address!r}: expected host:port, 'auto' or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise UsageError(f"cannot reach the Ray cluster at {address} ({error.strerror or error}); is it running? "
                         f"(`ray status` on the head; --address auto there)") from None


def record_session(study_dir: Path, session_dir: str) -> None:
    me = psutil.Process()
    (study_dir / RAY_SESSION_FILE).write_text(json.dumps({
        "session_dir": session_dir, "host": socket.gethostname(), "driver_pid": me.pid,
        "driver_started": me.create_time()}))


def stop_local_ray(study_dir: Path) -> None:
    ray.shutdown()
    (study_dir / RAY_SESSION_FILE).unlink(missing_ok=True)


def stop_orphaned_ray(study_dir: Path) -> list[str]:
    """Stop the Ray processes still alive from the local Ray of a dead driver of this study (on this host).

    Only processes that name that driver's session folder on their command line or hold a file open in it are
    touched (a session folder is unique to one ``ray.init``), never another cluster's; nothing happens while
    that driver is still alive. Returns the names of the processes stopped."""
    marker = study_dir / RAY_SESSION_FILE
    try:
        info = json.loads(marker.read_text())
        session, pid, started = str(info["session_dir"]), int(info["driver_pid"]), float(info["driver_started"])
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, OSError):
        log.warning("ignoring unreadable %s", marker)
        marker.unlink(missing_ok=True)
        return []
    if info.get("host") != socket.gethostname():
        return []  # that driver ran elsewhere: its processes are not ours to see
    try:
        if abs(psutil.Process(pid).create_time() - started) < 1.0:
            return []  # the driver is alive (another `study run` on this folder): leave its Ray alone
    except psutil.Error:
        pass
    prefix = session.rstrip("/") + "/"
    victims = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if any(prefix in arg or arg.endswith(session) for arg in proc.cmdline()) or any(
                    f.path.startswith(prefix) for f in proc.open_files()):
                victims.append(proc)
        except psutil.Error:
            continue
    names = []
    for proc in victims:
        try:
            names.append(proc.name())
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(victims, timeout=3)
    for proc in alive:  # the orphaned agents can ignore SIGTERM for 10 s or more
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=3)
    if names:
        log.warning("stopped %d Ray process(es) left running by this study's killed driver (pid %d, %s): %s",
                    len(names), pid, session, ", ".join(sorted(names)))
    marker.unlink(missing_ok=True)
    return names
