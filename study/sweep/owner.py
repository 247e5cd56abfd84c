"""One driver per study folder. A second ``study run``/``resume`` of the same folder, on this host or another one
sharing the file system, is refused with the first one's host, pid and start time; the lock of a driver that
died is taken over (at once on its own host, after ``stale_after_s`` elsewhere: a live holder refreshes it)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from study.common.errors import UserError
from study.store.lock import HeartbeatLock

STALE_AFTER_S = 120.0  # the holder touches the lock every 30 s


class StudyBusy(UserError):
    """Another live driver owns the study folder."""


@contextlib.contextmanager
def driver_lock(lock_path: Path, *, stale_after_s: float = STALE_AFTER_S) -> Iterator[None]:
    lock = HeartbeatLock(lock_path, stale_after_s=stale_after_s)
    token = lock.try_acquire()
    if token is None and lock.break_if_stale():
        token = lock.try_acquire()
    if token is None:
        info = lock.read()
        if info is None or info.pid is None:
            holder = "a driver that is starting right now"
        else:
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.since)) if info.since else "?"
            holder = f"pid {info.pid} on {info.hostname or info.host}, running since {since}"
        raise StudyBusy(f"{lock_path.parent}: another driver is running this study ({holder}); wait for it, or "
                        f"stop it (Ctrl-C) and then `study resume {lock_path.parent}`")
    with lock.heartbeat(token):
        yield
