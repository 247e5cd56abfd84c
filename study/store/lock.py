"""A lock file that works across processes and hosts sharing a file system, and survives its holder's death.

Why not ``fcntl``/``filelock``: POSIX locks are not reliable on every network file system a cluster mounts
(NFS without lockd, EFS in some set-ups), and a lock held by a dead node must be taken over. So the lock is an
``O_CREAT | O_EXCL`` file holding a token, pid and host; the holder keeps it fresh by touching it (a heartbeat
thread), and a waiter breaks it when it has not been refreshed for ``stale_after_s`` or when its holder is a
dead process on the waiter's own host. Breaking goes through a guard file, so judging and removing a stale lock
is one step and two waiters cannot both break it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_BREAK_GUARD_STALE_S = 60.0  # a lock-breaking guard older than this was left by a crashed breaker
#: Writing a lock's few bytes takes microseconds, so a lock file that still cannot be read after this long was
#: left half-written (a full disk, a crash between create and write) and no one holds it.
UNREADABLE_STALE_S = 15.0


@dataclass(frozen=True)
class LockInfo:
    """What a lock file says about its holder (fields are None while it is being written)."""

    token: str | None
    pid: int | None
    host: str | None
    age_s: float
    hostname: str | None = None
    since: float | None = None


def host_identity() -> str:
    """Hostname plus PID namespace: containers sharing a hostname (host networking) have separate PID spaces,
    so a pid is only meaningful (checkable with kill 0) when both match."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "-"
    return f"{socket.gethostname()}/pidns:{namespace}"


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists on this host (permission errors mean it exists but is someone else's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists but belongs to someone else
        return True
    return True


class HeartbeatLock:
    """The lock file at ``path``; ``stale_after_s`` is how long an unrefreshed lock is trusted."""

    def __init__(self, path: Path, *, stale_after_s: float = 600.0):
        self.path, self.stale_after_s = Path(path), float(stale_after_s)

    def try_acquire(self) -> str | None:
        """Create the lock file exclusively; its token if we now hold it, else None."""
        token = uuid.uuid4().hex
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        try:
            payload = {"token": token, "pid": os.getpid(), "hostname": socket.gethostname(), "host": host_identity(),
                       "time": time.time()}
            os.write(fd, json.dumps(payload).encode())
            os.fsync(fd)
        except BaseException:
            # A full disk creates the file but refuses its bytes: an empty lock nobody holds would make every
            # waiter wait ``stale_after_s``, so a lock we could not write is removed before the error goes on.
            os.close(fd)
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise
        os.close(fd)
        return token

    @contextlib.contextmanager
    def heartbeat(self, token: str) -> Iterator[None]:
        """Keep the lock fresh while the body runs, then release it (only if it is still ours)."""
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(stop,), daemon=True, name=f"lock-{self.path.name[:16]}")
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            self.release(token)

    def _beat(self, stop: threading.Event) -> None:
        interval = min(self.stale_after_s / 4.0, 60.0)
        while not stop.wait(interval):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self, token: str) -> None:
        """Remove the lock only if it is still ours (it may have been broken as stale and retaken)."""
        info = self.read()
        if info is not None and info.token == token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        else:
            logger.warning("lock %s was taken over while we held it (judged stale?); leaving it alone", self.path)

    def read(self) -> LockInfo | None:
        try:
            age = time.time() - self.path.stat().st_mtime
            raw = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            info = json.loads(raw)
            return LockInfo(token=str(info["token"]), pid=int(info["pid"]), host=str(info["host"]), age_s=age,
                            hostname=info.get("hostname"), since=info.get("time"))
        except (ValueError, KeyError, TypeError):  # being written right now, or a crash mid-write
            return LockInfo(token=None, pid=None, host=None, age_s=age)

    def stale_reason(self, info: LockInfo) -> str | None:
        if info.token is None and info.age_s > min(UNREADABLE_STALE_S, self.stale_after_s):
            return f"unreadable for {info.age_s:.0f}s (left half-written by a crash or a full disk)"
        if info.age_s > self.stale_after_s:
            return f"not refreshed for {info.age_s:.0f}s (> {self.stale_after_s:.0f}s)"
        if info.pid is not None and info.host == host_identity() and not pid_alive(info.pid):
            return f"its holder, pid {info.pid} on this host, is dead"
        return None

    def break_if_stale(self) -> bool:
        """Remove a stale lock; True if this call removed it."""
        info = self.read()
        if info is None or self.stale_reason(info) is None:
            return False
        guard = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - guard.stat().st_mtime > _BREAK_GUARD_STALE_S:
                    guard.unlink()
            return False
        try:
            again = self.read()
            reason = None if again is None or again.token != info.token else self.stale_reason(again)
            if reason is None:
                return False
            logger.warning("breaking stale lock %s: %s", self.path, reason)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return True
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                guard.unlink()
